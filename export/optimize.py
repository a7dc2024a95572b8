"""ONNX Runtime's transformer optimisation, made safe for pruned models with uneven heads.

ORT's BERT optimizer fuses each layer's Q/K/V MatMuls, softmax and mask into one Attention node
(plus SkipLayerNormalization and BiasGelu). The Attention node's num_heads attribute is what its
kernel splits the projections by, so it must be the layer's own head count. The optimizer reads it
per layer from the constant shape of that layer's Q Reshape ([0, 0, heads, head_dim], which
prunekit's model writes as literals) when called with num_heads=0, hidden_size=0. Passing one global
head count instead (what Optimum does) makes every layer use it: silently wrong logits or a
session that fails to load on pruned models (tests/test_export.py, test_wrong_fused_head_count_is_caught_and_repaired).

So: fuse with 0/0, then check that there is exactly one Attention node per layer with heads, that
each node's num_heads matches the head count its weight shape implies (and set it from the weight
if ORT guessed wrong), and let the caller validate the numbers again.
"""
import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import onnx
from onnx import numpy_helper

from prunekit.errors import PrunekitError

class _FromOnnxRuntime(logging.Filter):
    """Drops log records of warning level and below that were emitted by onnxruntime's Python code."""

    def __init__(self):
        super().__init__()
        import onnxruntime
        self.root = str(Path(onnxruntime.__file__).parent)

    def filter(self, record):
        return record.levelno > logging.WARNING or not record.pathname.startswith(self.root)


@contextmanager
def quiet_logs():
    """ORT's optimizer and quantizer log routine notes as warnings; keep the user's terminal clean.

    Only records from onnxruntime's own modules are dropped, and only inside this block: its
    transformers tools import their modules under top-level names (fusion_attention, onnx_model...)
    and the quantizer logs on the root logger, so the filter goes by the emitting file, on the root
    logger and on every handler a record can reach (the root's handlers, or logging.lastResort).
    """
    drop = _FromOnnxRuntime()
    root = logging.getLogger()
    targets = [root, *root.handlers, *([logging.lastResort] if logging.lastResort else [])]
    for t in targets:
        t.addFilter(drop)
    try:
        yield
    finally:
        for t in targets:
            t.removeFilter(drop)


def op_counts(model: onnx.ModelProto) -> dict:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def initializer_shape(model: onnx.ModelProto, name: str):
    for t in model.graph.initializer:
        if t.name == name:
            return tuple(t.dims)
    for n in model.graph.node:  # a weight kept as a Constant node
        if n.op_type == "Constant" and n.output[0] == name:
            return tuple(numpy_helper.to_array(n.attribute[0].t).shape)
    return None


def attention_nodes(model: onnx.ModelProto) -> list:
    return [n for n in model.graph.node if n.op_type == "Attention"]


def attribute(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def heads_from_weight(model: onnx.ModelProto, node, head_dim: int) -> int:
    """The head count an Attention node's packed QKV weight (d_in, q + k + v) implies."""
    sizes = attribute(node, "qkv_hidden_sizes")
    if sizes:
        q_width = sizes[0]
    else:
        shape = initializer_shape(model, node.input[1])
        if shape is None or len(shape) != 2 or shape[1] % 3:
            raise PrunekitError(f"fused Attention node {node.name} has an unreadable QKV weight {shape}")
        q_width = shape[1] // 3
    if q_width % head_dim:
        raise PrunekitError(f"fused Attention node {node.name}: Q width {q_width} is not a multiple of head_dim {head_dim}")
    return q_width // head_dim


def fix_attention_heads(model: onnx.ModelProto, head_dim: int) -> list[dict]:
    """Set every Attention node's num_heads to what its weight implies; returns the changes made."""
    fixes = []
    for node in attention_nodes(model):
        want, have = heads_from_weight(model, node, head_dim), attribute(node, "num_heads")
        if want != have:
            for a in node.attribute:
                if a.name == "num_heads":
                    a.i = want
            fixes.append({"node": node.name, "num_heads_was": have, "num_heads": want})
    return fixes


def check_attention(model: onnx.ModelProto, config) -> list[int]:
    """One Attention node per layer with heads, each with that layer's head count, in layer order."""
    want = [h for h in config.num_heads if h > 0]
    got = [attribute(n, "num_heads") for n in attention_nodes(model)]
    if len(got) != len(want):
        raise PrunekitError(f"ORT fused {len(got)} Attention nodes but the model has {len(want)} layers with heads; "
                            "refusing a partly fused graph")
    if got != want:
        raise PrunekitError(f"fused Attention head counts {got} do not match the model's per-layer heads {want}")
    return got


TIMING_SHAPE = (32, 128)  # batch, sequence: the shape the plain and fused graphs are raced at


def time_graphs(paths: dict, config, shape=TIMING_SHAPE, device: str = "cpu", rounds: int = 16) -> dict:
    """name -> median ms of one run of each ONNX file at `shape`, timed round-robin in ONNX Runtime
    (the order rotating every round) after a warm-up, with the same random inputs."""
    import numpy as np

    from prunekit.benchmark import time_interleaved, warm_up
    from . import runtime
    b, s = shape
    s = min(s, config.longest_sequence)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config.vocab_size, size=(b, s), dtype=np.int64)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    runners = {}
    for name, path in paths.items():
        clf = runtime.OnnxClassifier(path, device, spinning=False)
        runners[name] = (lambda c: lambda: c(batch))(clf)  # logits: time_interleaved clocks the call
    for run in runners.values():  # a fresh session's first calls grow its memory arena: warm up well
        warm_up(run, 5, 1.0)
    times = time_interleaved(runners, rounds)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


FUSED_MARGIN = 0.03  # the fused graph must be this much faster to be shipped: a race within noise keeps plain


def keep_faster(plain_path, fused_path, config, device: str = "cpu") -> dict:
    """Which graph to ship: the fused one only when it is clearly faster than the plain one on this
    runtime (by FUSED_MARGIN: fusion does not always pay on pruned models, bench/results/optimize_race.md,
    and a race of a few seconds has noise). Returns the timing record."""
    ms = time_graphs({"plain": plain_path, "fused": fused_path}, config, device=device)
    kept = "fused" if ms["fused"] <= (1 - FUSED_MARGIN) * ms["plain"] else "plain"
    return {"kept": kept, "plain_ms": round(ms["plain"], 3), "fused_ms": round(ms["fused"], 3),
            "shape": list(TIMING_SHAPE), "device": device}


def optimize_graph(model: onnx.ModelProto, config) -> tuple[onnx.ModelProto, dict]:
    """Fuse with per-layer head detection, repair and check head counts; returns (graph, figures)."""
    from onnxruntime.transformers.optimizer import optimize_model
    with quiet_logs():
        # opt_level 1: ORT's basic rewrites (constant folding) before the fusion. They are the same for
        # every provider, so the fused graph serves CPU and CUDA alike; level 2+ would tie it to one.
        optimizer = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=1)
    fused = optimizer.model
    fixes = fix_attention_heads(fused, config.head_dim)
    heads = check_attention(fused, config)
    stats = {k: v for k, v in optimizer.get_fused_operator_statistics().items() if v}
    return fused, {"fused_ops": stats, "attention_nodes": len(heads), "layers_with_heads": len(heads),
                   "attention_num_heads": heads, "num_heads_fixed": fixes}
