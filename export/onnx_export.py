"""PyTorch -> ONNX for any prunekit model, and the export pipeline behind `prunekit export --onnx`.

The exporter is chosen on purpose: torch.onnx.export with dynamo=False (the TorchScript exporter)
and dynamic_axes for batch and sequence. Its graph keeps each layer's Q/K/V reshape as
[batch, seq, <literal heads>, <literal head_dim>], which is the pattern ONNX Runtime's attention
fusion reads per-layer head counts from; dynamo-exported BERT graphs are not fused by it
(tests/test_export.py checks the fused head counts). prunekit's model writes those literals
and has no code at all for absent sublayers, so a layer with no heads or no FFN has no nodes.

The pipeline (export_onnx) works in a temporary directory beside the output (prunekit.io.output_dir)
that becomes the output only after every check has passed:
    export -> parity (fp32, atol 1e-4) -> [optimize -> head-count check -> parity]
           -> [int8 or fp16 -> drift figures] -> model.onnx, config.json (portable.py), tokenizer, export_report.json
"""
import copy
import json
import shutil
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn
from tqdm import tqdm

from prunekit.errors import PrunekitError
from prunekit.io import check_output, output_dir

from . import optimize as opt
from . import portable
from . import quantize as quant
from . import runtime
from . import validate

DEFAULT_OPSET = 17   # first opset with LayerNormalization; ORT's fusions are tested on it
OPSETS = range(14, 21)  # the TorchScript exporter's range that ORT's BERT fusions handle
MAX_IR_VERSION = 10  # onnxruntime-gpu 1.31.1 refuses IR 14; IR 10 loads in every ORT since 1.17
EXTERNAL_DATA_ABOVE = 1 << 30  # weights above 1 GiB go to model.onnx.data (protobuf's limit is 2 GiB)
OUTPUT_NAMES = ("logits",)
DYNAMIC_AXES = {**{name: {0: "batch", 1: "sequence"} for name in runtime.INPUT_NAMES}, "logits": {0: "batch"}}


class LogitsOnly(nn.Module):
    """Positional (input_ids, attention_mask, token_type_ids) -> logits: the graph's signature."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def trace_inputs(config, batch: int = 2, seq: int = 8) -> tuple:
    seq = min(seq, config.longest_sequence)
    ids = torch.randint(1, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def torch_to_onnx(model, path, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export the model's logits with dynamic batch and sequence axes; returns the loaded graph."""
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()  # the caller's model stays where it was
    kernels = model.kernels
    model.set_kernels("torch")  # the eager graph: the pattern ORT's attention fusion recognises
    wrapper = LogitsOnly(model)
    # .eval() on the wrapper right before export: a fresh nn.Module is in train mode and would take
    # the model with it, leaving dropout in the graph (seen: ORT off by 2e-2)
    wrapper.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose
            torch.onnx.export(wrapper, trace_inputs(model.config), str(path), dynamo=False, opset_version=opset,
                              input_names=list(runtime.INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              dynamic_axes=DYNAMIC_AXES, do_constant_folding=True)
    finally:
        wrapper.eval()
        model.set_kernels(kernels)
    return onnx.load(str(path))


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path, external_data_above: int = EXTERNAL_DATA_ABOVE) -> bool:
    """Write a graph (IR version capped for older runtimes); weights go to <name>.data beside it
    when they are large. Returns whether external data was used."""
    path = Path(path)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    external = weight_bytes(model) > external_data_above
    if external:
        copy_ = onnx.ModelProto()
        copy_.CopyFrom(model)  # saving as external data strips the weights from the proto it is given
        onnx.save_model(copy_, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return external


def check_request(opset, quantize, fp16, device) -> None:
    if opset not in OPSETS:
        raise PrunekitError(f"--opset must be between {OPSETS[0]} and {OPSETS[-1]} (the TorchScript exporter's range), "
                            f"not {opset}")
    if device not in runtime.DEVICES:
        raise PrunekitError(f"--device must be one of {runtime.DEVICES}, not {device!r}")
    if quantize not in (None, "int8", "int8-static"):
        raise PrunekitError(f"--quantize takes int8 (dynamic) or int8-static (calibrated), not {quantize!r}")
    if quantize and fp16:
        raise PrunekitError("--quantize int8 and --fp16 exclude each other: int8 is for the CPU, fp16 for CUDA")
    if quantize and device == "cuda":
        raise PrunekitError("--quantize int8 is dynamic quantisation for the CPU provider; use --fp16 with --device cuda")
    if fp16 and device != "cuda":
        raise PrunekitError("--fp16 needs --device cuda (ORT's CPU provider has few fp16 kernels); "
                            "for the CPU use --quantize int8")


def check_runtimes(check_with) -> None:
    """check_with names runtimes other than ORT (which checks every export); each must be installed."""
    for rt in check_with:
        if rt not in runtime.RUNTIMES or rt == "ort":
            raise PrunekitError(f"check_with takes {[r for r in runtime.RUNTIMES if r != 'ort']}, not {rt!r} "
                                "(ONNX Runtime checks every export)")
        if rt == "openvino":
            runtime.openvino_module()  # not installed: say so before any work


def check_output_dir(out: Path, overwrite: bool) -> None:
    """prunekit's one output rule (prunekit.io.check_output), before any work is done."""
    check_output(out, overwrite=overwrite)


def export_onnx(model, out_dir, *, opset: int = DEFAULT_OPSET, optimize: bool = False, quantize: str | None = None,
                fp16: bool = False, device: str = "cpu", overwrite: bool = False, atol: float = validate.ATOL,
                keep_fused: bool | None = None, calibration: list[dict] | None = None,
                external_data_above: int = EXTERNAL_DATA_ABOVE, source: str | None = None,
                check_with: tuple[str, ...] = (), progress: bool = False) -> dict:
    """Export, validate and (optionally) optimise and quantise a prunekit model into out_dir.

    optimize: ORT's transformer fusion; the fused graph is kept when it runs faster than the plain
    one on the target runtime at batch 32 / sequence 128 (keep_fused=None, the default: both are
    timed, and export_report.json's fusion.timing says which won), or always (keep_fused=True).
    check_with: other runtimes the shipped model.onnx must run in, e.g. ("openvino",): an fp32
    graph must meet the same parity there (report["parity"][runtime]), a quantised one has its
    drift recorded (report["drift"][runtime]).

    Raises PrunekitError, with nothing written, when a check fails. Returns the export report
    (also written as out_dir/export_report.json).
    """
    check_request(opset, quantize, fp16, device)
    check_runtimes(check_with)
    out = Path(out_dir)
    check_output_dir(out, overwrite)
    if device == "cuda":
        runtime.require_cuda()  # before any work: no silent CPU fallback
    config = model.config
    stages = ["export"] + ["optimize"] * optimize + ["int8"] * bool(quantize) + ["fp16"] * fp16
    lower_precision = bool(quantize) or fp16
    if quantize == "int8-static" and not calibration:
        raise PrunekitError("--quantize int8-static needs calibration examples: give --task (its training data)")
    cases = validate.make_cases(model)  # PyTorch's logits, once
    report = {"format": "onnx", "file": "model.onnx", "source": source or str(config.name_or_path or ""),
              "variant": "fp16" if fp16 else (quantize or "fp32"), "optimized": optimize, "device": device,
              "exporter": {"api": "torch.onnx.export", "dynamo": False, "dynamic_axes": DYNAMIC_AXES,
                           "do_constant_folding": True, "torch": torch.__version__},
              "opset": opset, "onnx": onnx.__version__, "onnxruntime": _ort_version(),
              "inputs": list(runtime.INPUT_NAMES), "outputs": list(OUTPUT_NAMES),
              "model": {"num_heads": list(config.num_heads), "ffn_dim": list(config.ffn_dim),
                        "hidden_size": config.hidden_size, "head_dim": config.head_dim,
                        "num_labels": config.num_labels, "id2label": {str(k): v for k, v in config.id2label.items()}},
              "validation": {"inputs": [{"name": c["name"], "shape": list(c["batch"]["input_ids"].shape)} for c in cases],
                             "real_text": model.tokenizer is not None},
              "node_counts": {}, "parity": {}}
    bar = tqdm(total=2 * len(stages) + 1 + len(check_with), desc="export", disable=not progress, leave=False)
    with output_dir(out, overwrite) as tmp, bar:
        work = tmp / ".work"
        work.mkdir()
        path_of = lambda stage: tmp / "model.onnx" if stage == stages[-1] else work / f"{stage}.onnx"

        def step(stage, what):
            bar.set_description(f"{stage}: {what}")

        # 1. export and check the plain graph
        step("export", "torch.onnx.export")
        graph = torch_to_onnx(model, work / "traced.onnx", opset)
        save_onnx(graph, path_of("export"), external_data_above)
        report["node_counts"]["exported"] = opt.op_counts(graph)
        bar.update()
        step("export", "parity")
        report["parity"]["exported"] = validate.check_parity(cases, path_of("export"), atol, "exported graph")
        bar.update()
        current = path_of("export")

        # 2. fuse for ORT, then check head counts and parity again
        if optimize:
            step("optimize", "ORT transformer fusion")
            graph, report["fusion"] = opt.optimize_graph(graph, config)
            save_onnx(graph, path_of("optimize"), external_data_above)
            report["node_counts"]["optimized"] = opt.op_counts(graph)
            bar.update()
            step("optimize", "parity")
            report["parity"]["optimized"] = validate.check_parity(cases, path_of("optimize"), atol,
                                                                  "optimised graph")
            bar.update()
            current = path_of("optimize")
            if keep_fused is None:  # race the two graphs on the target runtime: fusion must not lose
                step("optimize", "timing plain vs fused")
                fused_path = path_of("optimize")
                if fused_path == tmp / "model.onnx":  # the last stage: race a copy, so either can become the output
                    fused_path = work / "fused.onnx"
                    save_onnx(graph, fused_path, external_data_above)
                report["fusion"]["timing"] = opt.keep_faster(path_of("export"), fused_path, config,
                                                             "cuda" if device == "cuda" else "cpu")
                if report["fusion"]["timing"]["kept"] == "plain":
                    graph = onnx.load(str(path_of("export")))
                    report["optimized"] = False
                    if path_of("optimize") == tmp / "model.onnx":
                        for f in tmp.glob("model.onnx*"):
                            f.unlink()
                        save_onnx(graph, tmp / "model.onnx", external_data_above)
                    current = path_of("export")

        # 3. lower precision; measured here, judged by the task metric (prunekit eval)
        if quantize:
            big = weight_bytes(graph) > external_data_above
            if quantize == "int8-static":
                step("int8", "static quantisation (calibration)")
                info = quant.quantize_int8_static(current, work / "int8_raw.onnx", calibration, external_data=big)
            else:
                step("int8", "dynamic quantisation")
                info = quant.quantize_int8(current, work / "int8_raw.onnx", external_data=big)
            graph = onnx.load(str(work / "int8_raw.onnx"))
            save_onnx(graph, path_of("int8"), external_data_above)
            bar.update()
            step("int8", "drift")
            report["quantized"] = {**info, **validate.drift(cases, path_of("int8"), "cpu")}
            bar.update()
        if fp16:
            step("fp16", "float16 conversion")
            graph, info = quant.to_fp16(graph)
            save_onnx(graph, path_of("fp16"), external_data_above)
            bar.update()
            step("fp16", "drift")
            report["quantized"] = {**info, **validate.drift(cases, path_of("fp16"), "cuda")}
            bar.update()

        if device == "cuda" and not fp16:  # the fp32 graph was checked on the CPU; record what CUDA gives
            step("cuda", "drift")
            report["cuda"] = validate.drift(cases, tmp / "model.onnx", "cuda")

        for rt in check_with:  # the same file in another runtime: same parity, or drift for int8 / fp16
            step(rt, "drift" if lower_precision else "parity")
            if lower_precision:
                report.setdefault("drift", {})[rt] = validate.drift(cases, tmp / "model.onnx", runtime=rt)
            else:
                report["parity"][rt] = validate.check_parity(cases, tmp / "model.onnx", atol, f"the graph in {rt}",
                                                             runtime=rt)
            bar.update()

        # 4. the directory a deployer uses: model, config, tokenizer, report
        final = onnx.load(str(tmp / "model.onnx"), load_external_data=False)
        report["node_counts"]["final"] = opt.op_counts(final)
        report["ir_version"] = final.ir_version
        report["external_data"] = (tmp / "model.onnx.data").exists()
        report["size_bytes"] = sum(f.stat().st_size for f in tmp.glob("model.onnx*"))
        shutil.rmtree(work)
        # the base architecture's config (nominal dense sizes, the real structure under "prunekit"):
        # what transformers, Optimum and pipeline() read on a serving machine without prunekit
        (tmp / "config.json").write_text(json.dumps(portable.portable_config(config, report["source"]), indent=2) + "\n")
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp))
        (tmp / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        bar.update()
    return report


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__
