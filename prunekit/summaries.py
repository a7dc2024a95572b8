"""The few lines the CLI prints after a verb's work, from the report it wrote (report.json,
export_report.json): one formatter per kind of report."""


def structure_line(r: dict) -> str:
    return ("heads per layer " + " ".join(str(x["heads"]) for x in r["structure"]) +
            "; FFN per layer " + " ".join(str(x["ffn"]) for x in r["structure"]))


def summarise_cofi(r: dict, output) -> str:
    c, m = r["constraint"], r["main_metric"]
    want = {"sparsity": "sparsity", "macs": "MACs kept", "latency": "block latency kept"}[c["kind"]] + f" {c['value']:g}"
    lines = [f"{r['task']}: CoFi to {want} -> sparsity {r['sparsity']:.3f}, MACs kept {r['macs_kept']:.3f}, "
             f"params kept {r['params_kept']:.3f}, hidden size {r['hidden_size']}", structure_line(r)]
    dev = r["dev_metrics"]
    lines.append(f"dev {m}: " + ", ".join(f"{stage} {v[m]:.4f}" for stage, v in dev.items() if m in v))
    if lat := r.get("latency"):
        lines.append(f"latency at b{lat['batch']}/s{lat['seq_len']}: {lat['kept_by_table']:.3f} of the teacher's by the "
                     f"tables, {lat['kept_measured']:.3f} measured in ONNX Runtime ({lat['measured_ms']['compact']:.1f} vs "
                     f"{lat['measured_ms']['teacher']:.1f} ms)")
    sec = r["seconds"]
    lines.append(f"pruning {sec.get('prune_train', 0):.0f} s, fine-tuning {sec.get('finetune_train', 0):.0f} s of "
                 f"training ({r['seconds_per_step']['prune']:.3f} s/step while pruning)")
    lines.append(f"compact model, masks.safetensors and report.json in {output}")
    return "\n".join(lines)


def summarise_post_training(r: dict, output) -> str:
    c = r["constraint"]
    lines = [f"{r['task']}: {c['kind']} kept <= {c['value']:g} -> MACs kept {r['macs_kept']:.3f}, "
             f"params kept {r['params_kept']:.3f}" + (f", block latency kept {r['latency_kept_table']:.3f} (table)"
                                                    if "latency_kept_table" in r else ""), structure_line(r)]
    if r["dev_metrics"]:
        m = r["main_metric"]
        lines.append(f"dev {m}: " + ", ".join(f"{stage} {v[m]:.4f}" for stage, v in r["dev_metrics"].items()))
    for g in r.get("gradual", []):
        lines.append(f"gradual round at {c['kind']} {g['value']:g}: heads {sum(g['num_heads'])}, FFN units "
                     f"{sum(g['ffn_dim'])}" + (f", distilled dev {r['main_metric']} {g['dev_metrics'][r['main_metric']]:.4f}"
                                               if "dev_metrics" in g else ""))
    if r.get("heldout_examples"):
        held = ", ".join(f"{stage} {v[r['main_metric']]:.4f}" for stage, v in r["heldout_metrics"].items())
        lines.append(f"kept the {r['stage_kept']} masks (held-out {r['main_metric']} on {r['heldout_examples']} training "
                     f"examples outside the sample: {held})")
    sec = r["seconds"]
    lines.append(f"pruning {sec['pruning']:.1f} s (" + ", ".join(f"{s} {sec.get(s, 0):.1f}" for s in
                                                           ("gradual", "fisher", "search", "rearrange", "tune",
                                                            "choose") if s in sec or s != "gradual") + ")" +
                 (f"; evaluation {sec['evaluation']:.1f} s" if "evaluation" in sec else ""))
    lines.append(f"compact model, masks.safetensors and report.json in {output}")
    return "\n".join(lines)


SUMMARIES = {"post-training": summarise_post_training, "cofi": summarise_cofi}  # report["method"] -> formatter


def summarise_compress(r: dict, output) -> str:
    return SUMMARIES[r["method"]](r, output)


def summarise_export(r: dict, model, output, device: str) -> str:
    parity = ", ".join(f"{k} {v['max_abs_diff']:.1e}" for k, v in r["parity"].items())
    lines = [f"{model} -> {output}/model.onnx ({r['variant']}{', optimised' if r['optimized'] else ''}, "
             f"opset {r['opset']}, {r['size_bytes'] / 2**20:.1f} MiB{', external data' if r['external_data'] else ''})",
             f"parity with PyTorch on {len(r['validation']['inputs'])} inputs (ORT CPU, max abs diff of logits, "
             f"atol {next(iter(r['parity'].values()))['atol']:.0e}): {parity}"]
    timing = r.get("fusion", {}).get("timing")
    if timing:
        lines.append(f"fusion timed at b{timing['shape'][0]}/s{timing['shape'][1]} on {timing['device']}: plain "
                     f"{timing['plain_ms']:.1f} ms, fused {timing['fused_ms']:.1f} ms -> {timing['kept']} graph kept")
    if r["optimized"]:
        f = r["fusion"]
        lines.append(f"fused: {f['attention_nodes']} Attention nodes for {f['layers_with_heads']} layers with heads "
                     f"(heads {f['attention_num_heads']}); " + ", ".join(f"{k} {v}" for k, v in f["fused_ops"].items()))
    if "quantized" in r:
        q = r["quantized"]
        agree = "" if q["argmax_agreement"] is None else f", argmax agreement {q['argmax_agreement']:.1%}"
        lines.append(f"{r['variant']}: logits move by up to {q['max_abs_diff']:.1e}{agree}; judge it by the task metric: "
                     f"prunekit eval --model {output} --task TASK" + (" --device cuda" if device == "cuda" else ""))
    if "cuda" in r:
        lines.append(f"CUDA provider: logits within {r['cuda']['max_abs_diff']:.1e} of PyTorch")
    lines.append(f"report: {output}/export_report.json")
    return "\n".join(lines)


def summarise_eval(task, metrics: dict) -> str:
    sizes = ", ".join(f"{name} {len(ex)}" for name, ex in task.dev_sets.items())
    return f"{task.name} ({sizes} examples): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
