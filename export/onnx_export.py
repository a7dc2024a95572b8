"""PyTorch -> ONNX for any prunekit model, and the export pipeline behind `prunekit export --onnx`.

The exporter is chosen on purpose: torch.onnx.export with dynamo=False (the TorchScript exporter)
and dynamic_axes for batch and sequence. Its graph keeps each layer's Q/K/V reshape as
[batch, seq, <literal heads>, <literal head_dim>], which is the pattern ONNX Runtime's attention
fusion reads per-layer head counts from; dynamo-exported BERT graphs are not fused by it
(tests/test_export.py checks the fused head counts). prunekit's model writes those literals
and has no code at all for absent sublayers, so a layer with no heads or no FFN has no nodes.

The pipeline (export_onnx) works in a temporary directory beside the output (prunekit.io.output_dir)
that becomes the output only after every check has passed:
    export -> parity (fp32, atol 1e-4)                          _export_plain
    -> [optimize -> head-count check -> parity -> race]         _fuse_for_ort, _race_plain_and_fused
    -> [int8 or fp16 -> drift figures]                          _quantize_int8, _to_fp16
    -> [CUDA drift, parity or drift in check_with runtimes]     _check_other_runtimes
    -> model.onnx, config.json (portable.py), tokenizer, export_report.json     _write_directory
Every check that needs no work runs first (_check_export_request); the steps share an _ExportRun.
"""
import copy
import json
import shutil
import warnings
from dataclasses import dataclass
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
    _check_export_request(out_dir, opset, quantize, fp16, device, overwrite, calibration, check_with)
    out = Path(out_dir)
    stages = ["export"] + ["optimize"] * optimize + ["int8"] * bool(quantize) + ["fp16"] * fp16
    cases = validate.make_cases(model)  # PyTorch's logits, once
    report = _report_header(model, cases, source, opset, optimize, quantize, fp16, device)
    bar = tqdm(total=2 * len(stages) + 1 + len(check_with), desc="export", disable=not progress, leave=False)
    with output_dir(out, overwrite) as tmp, bar:
        run = _ExportRun(tmp, stages, bar, cases, atol, external_data_above, report)
        run.work.mkdir()
        graph = _export_plain(run, model, opset)
        current = run.path_of("export")
        if optimize:
            graph, current = _fuse_for_ort(run, graph, model.config, device, keep_fused)
        if quantize:
            _quantize_int8(run, graph, current, quantize, calibration)
        if fp16:
            _to_fp16(run, graph)
        _check_other_runtimes(run, device, fp16, bool(quantize) or fp16, check_with)
        _write_directory(run, model)
    return report


def _check_export_request(out_dir, opset, quantize, fp16, device, overwrite, calibration, check_with) -> None:
    """Every check that needs no work, in the order a user meets them; nothing is written."""
    check_request(opset, quantize, fp16, device)
    check_runtimes(check_with)
    check_output_dir(Path(out_dir), overwrite)
    if device == "cuda":
        runtime.require_cuda()  # before any work: no silent CPU fallback
    if quantize == "int8-static" and not calibration:
        raise PrunekitError("--quantize int8-static needs calibration examples: give --task (its training data)")


def _report_header(model, cases, source, opset, optimize, quantize, fp16, device) -> dict:
    """What export_report.json says before any stage has run: the request, the tools, the model, the inputs."""
    config = model.config
    return {"format": "onnx", "file": "model.onnx", "source": source or str(config.name_or_path or ""),
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


@dataclass
class _ExportRun:
    """One export's working state, shared by its steps: the temporary output directory (it becomes
    out_dir only when every step has passed), the stages asked for, the progress bar, the parity
    cases and the report the steps fill in."""
    tmp: Path
    stages: list[str]
    bar: tqdm
    cases: list[dict]
    atol: float
    external_data_above: int
    report: dict

    @property
    def work(self) -> Path:
        return self.tmp / ".work"  # intermediate graphs; removed before the directory is published

    @property
    def model_onnx(self) -> Path:
        return self.tmp / "model.onnx"

    def path_of(self, stage: str) -> Path:
        """The last stage writes model.onnx itself; the others write to the work folder."""
        return self.model_onnx if stage == self.stages[-1] else self.work / f"{stage}.onnx"

    def step(self, stage: str, what: str) -> None:
        self.bar.set_description(f"{stage}: {what}")

    def save(self, graph: onnx.ModelProto, path: Path) -> None:
        save_onnx(graph, path, self.external_data_above)


def _export_plain(run: _ExportRun, model, opset: int) -> onnx.ModelProto:
    """1. export and check the plain graph."""
    run.step("export", "torch.onnx.export")
    graph = torch_to_onnx(model, run.work / "traced.onnx", opset)
    run.save(graph, run.path_of("export"))
    run.report["node_counts"]["exported"] = opt.op_counts(graph)
    run.bar.update()
    run.step("export", "parity")
    run.report["parity"]["exported"] = validate.check_parity(run.cases, run.path_of("export"), run.atol,
                                                             "exported graph")
    run.bar.update()
    return graph


def _fuse_for_ort(run: _ExportRun, graph, config, device: str, keep_fused: bool | None) -> tuple[onnx.ModelProto, Path]:
    """2. fuse for ORT, then check head counts and parity again; returns the graph kept and its path."""
    report = run.report
    run.step("optimize", "ORT transformer fusion")
    graph, report["fusion"] = opt.optimize_graph(graph, config)
    run.save(graph, run.path_of("optimize"))
    report["node_counts"]["optimized"] = opt.op_counts(graph)
    run.bar.update()
    run.step("optimize", "parity")
    report["parity"]["optimized"] = validate.check_parity(run.cases, run.path_of("optimize"), run.atol,
                                                          "optimised graph")
    run.bar.update()
    if keep_fused is None:  # race the two graphs on the target runtime: fusion must not lose
        return _race_plain_and_fused(run, graph, config, device)
    return graph, run.path_of("optimize")


def _race_plain_and_fused(run: _ExportRun, fused, config, device: str) -> tuple[onnx.ModelProto, Path]:
    """Time the plain and fused graphs; when the plain one wins it becomes the graph the later steps
    take (and model.onnx, when optimisation was the last stage)."""
    run.step("optimize", "timing plain vs fused")
    fused_path = run.path_of("optimize")
    if fused_path == run.model_onnx:  # the last stage: race a copy, so either can become the output
        fused_path = run.work / "fused.onnx"
        run.save(fused, fused_path)
    timing = opt.keep_faster(run.path_of("export"), fused_path, config, "cuda" if device == "cuda" else "cpu")
    run.report["fusion"]["timing"] = timing
    if timing["kept"] != "plain":
        return fused, run.path_of("optimize")
    graph = onnx.load(str(run.path_of("export")))
    run.report["optimized"] = False
    if run.path_of("optimize") == run.model_onnx:
        for f in run.tmp.glob("model.onnx*"):
            f.unlink()
        run.save(graph, run.model_onnx)
    return graph, run.path_of("export")


def _quantize_int8(run: _ExportRun, graph, current: Path, quantize: str, calibration) -> None:
    """3. lower precision, int8 (dynamic or calibrated) from the graph at `current`; its drift is
    measured here and judged by the task metric (prunekit eval)."""
    big = weight_bytes(graph) > run.external_data_above
    raw = run.work / "int8_raw.onnx"
    if quantize == "int8-static":
        run.step("int8", "static quantisation (calibration)")
        info = quant.quantize_int8_static(current, raw, calibration, external_data=big)
    else:
        run.step("int8", "dynamic quantisation")
        info = quant.quantize_int8(current, raw, external_data=big)
    run.save(onnx.load(str(raw)), run.path_of("int8"))
    run.bar.update()
    run.step("int8", "drift")
    run.report["quantized"] = {**info, **validate.drift(run.cases, run.path_of("int8"), "cpu")}
    run.bar.update()


def _to_fp16(run: _ExportRun, graph) -> None:
    """3. lower precision, fp16 for CUDA; drift measured as for int8."""
    run.step("fp16", "float16 conversion")
    graph, info = quant.to_fp16(graph)
    run.save(graph, run.path_of("fp16"))
    run.bar.update()
    run.step("fp16", "drift")
    run.report["quantized"] = {**info, **validate.drift(run.cases, run.path_of("fp16"), "cuda")}
    run.bar.update()


def _check_other_runtimes(run: _ExportRun, device: str, fp16: bool, lower_precision: bool, check_with) -> None:
    """The shipped model.onnx on CUDA (when that is the target) and in each runtime of check_with."""
    report = run.report
    if device == "cuda" and not fp16:  # the fp32 graph was checked on the CPU; record what CUDA gives
        run.step("cuda", "drift")
        report["cuda"] = validate.drift(run.cases, run.model_onnx, "cuda")
    for rt in check_with:  # the same file in another runtime: same parity, or drift for int8 / fp16
        run.step(rt, "drift" if lower_precision else "parity")
        if lower_precision:
            report.setdefault("drift", {})[rt] = validate.drift(run.cases, run.model_onnx, runtime=rt)
        else:
            report["parity"][rt] = validate.check_parity(run.cases, run.model_onnx, run.atol, f"the graph in {rt}",
                                                         runtime=rt)
        run.bar.update()


def _write_directory(run: _ExportRun, model) -> None:
    """4. the directory a deployer uses: model, config, tokenizer, report."""
    tmp, report = run.tmp, run.report
    final = onnx.load(str(run.model_onnx), load_external_data=False)
    report["node_counts"]["final"] = opt.op_counts(final)
    report["ir_version"] = final.ir_version
    report["external_data"] = (tmp / "model.onnx.data").exists()
    report["size_bytes"] = sum(f.stat().st_size for f in tmp.glob("model.onnx*"))
    shutil.rmtree(run.work)
    # the base architecture's config (nominal dense sizes, the real structure under "prunekit"):
    # what transformers, Optimum and pipeline() read on a serving machine without prunekit
    (tmp / "config.json").write_text(json.dumps(portable.portable_config(model.config, report["source"]), indent=2)
                                     + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(tmp))
    (tmp / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    run.bar.update()


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__
