"""Parity between an exported graph and the PyTorch model it came from.

An export is only written when ONNX Runtime agrees with PyTorch on the logits (fp32: max abs diff
<= 1e-4) on several inputs: random shapes from a single token up to 128, padded rows of different
lengths (the attention mask path), both token types, and real tokenised text (single sentences and
pairs) when the model has a tokenizer. Quantised graphs cannot meet an fp32 tolerance; for them
drift() measures how far they move (max abs diff, argmax agreement) and the task metric on the dev
set is the real check (`prunekit eval`).
"""
from pathlib import Path

import numpy as np
import torch

from prunekit.errors import PrunekitError

from .runtime import RUNTIME_NAMES, open_classifier

ATOL = 1e-4  # fp32 ORT vs PyTorch on the logits (BERT's tolerance in Optimum and ORT's own tools)

# (batch, sequence) of the random inputs; sequences longer than the model's positions are clipped
RANDOM_SHAPES = ((1, 1), (1, 9), (3, 16), (4, 40), (2, 128))

# Real text, tokenised with the model's own tokenizer: sentences and pairs, short and long, so that
# padding and both token types occur with real vocabulary.
SENTENCES = [
    "a gripping , beautifully shot film that never lets go .",
    "it 's a dull , lifeless mess .",
    "fine.",
    "The committee approved the budget on Tuesday after a long debate about school funding, road "
    "repairs and the new library, which several members said the town could not afford this year.",
]
PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on a mat."),
    ("He bought a new car last week.", "The stock market fell sharply on Monday."),
    ("Revenue rose 12 percent in the third quarter.", "Third-quarter revenue increased by 12%."),
]


def random_batch(config, batch: int, seq: int, rng: np.random.Generator) -> dict:
    """Random ids, random 0/1 token types, and rows padded to random lengths (row 0 unpadded)."""
    ids = rng.integers(1, config.vocab_size, size=(batch, seq), dtype=np.int64)
    lengths = np.concatenate([[seq], rng.integers(1, seq + 1, size=batch - 1)])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)                   # (B, S)
    ids = np.where(mask == 1, ids, config.pad_token_id)
    types = rng.integers(0, max(1, min(2, config.type_vocab_size)), size=(batch, seq), dtype=np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def text_batches(tokenizer, max_length: int) -> list[tuple[str, dict]]:
    def encode(*texts):
        enc = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)
        types = enc.get("token_type_ids", np.zeros_like(ids)).astype(np.int64)
        return {"input_ids": ids, "attention_mask": enc["attention_mask"].astype(np.int64), "token_type_ids": types}
    first, second = zip(*PAIRS)
    return [("text: sentences", encode(SENTENCES)), ("text: pairs", encode(list(first), list(second)))]


def validation_batches(config, tokenizer=None, seed: int = 0) -> list[tuple[str, dict]]:
    """(name, batch of int64 arrays) for every parity check."""
    rng = np.random.default_rng(seed)
    batches = []
    for b, s in RANDOM_SHAPES:
        s = min(s, config.longest_sequence)
        batches.append((f"random b{b} s{s}", random_batch(config, b, s, rng)))
    if tokenizer is not None:
        batches += text_batches(tokenizer, config.longest_sequence)
    return batches


@torch.no_grad()
def reference_logits(model, batch) -> np.ndarray:
    model.eval()  # dropout off, whatever state the caller left the model in
    dev = next(model.parameters()).device
    out = model(**{k: torch.from_numpy(v).to(dev) for k, v in batch.items()})
    return out.logits.float().cpu().numpy()


def make_cases(model, seed: int = 0) -> list[dict]:
    """Every parity input with PyTorch's logits for it, computed once for all the graphs checked."""
    return [{"name": name, "batch": batch, "want": reference_logits(model, batch)}
            for name, batch in validation_batches(model.config, model.tokenizer, seed)]


def compare(cases, predict) -> list[dict]:
    """Per case: shape, max abs diff of the logits and argmax agreement, predict (ORT, OpenVINO) vs PyTorch."""
    rows = []
    for case in cases:
        want, got = case["want"], predict(case["batch"]).float().numpy()
        if got.shape != want.shape:
            raise PrunekitError(f"ONNX logits have shape {got.shape} on '{case['name']}', PyTorch gives {want.shape}")
        diff = float(np.abs(got - want).max()) if np.isfinite(got).all() else float("inf")
        agree = float((got.argmax(-1) == want.argmax(-1)).mean()) if want.shape[-1] > 1 else None
        rows.append({"name": case["name"], "shape": list(case["batch"]["input_ids"].shape), "max_abs_diff": diff,
                     "argmax_agreement": agree})
    return rows


def check_parity(cases, onnx_path, atol: float = ATOL, what: str = "exported graph", runtime: str = "ort") -> dict:
    """The runtime (ORT's CPU provider, or OpenVINO's CPU plugin) vs PyTorch; raises PrunekitError
    naming the worst input if any logit differs by more than atol. Returns the figures for the
    export report."""
    session = open_classifier(onnx_path, runtime)
    rows = compare(cases, session)
    worst = max(rows, key=lambda r: r["max_abs_diff"])
    if not worst["max_abs_diff"] <= atol:
        raise PrunekitError(f"{what} fails parity: {RUNTIME_NAMES[runtime]} and PyTorch logits differ by "
                            f"{worst['max_abs_diff']:.2e} (> {atol:.0e}) on '{worst['name']}'; nothing written")
    return {"atol": atol, "max_abs_diff": worst["max_abs_diff"], "providers": session.providers, "checks": rows}


def drift(cases, onnx_path, device: str = "cpu", runtime: str = "ort") -> dict:
    """How far a quantised (int8/fp16) graph moves the logits; only non-finite output fails here."""
    session = open_classifier(onnx_path, runtime, device)
    rows = compare(cases, session)
    worst = max(r["max_abs_diff"] for r in rows)
    if not np.isfinite(worst):
        raise PrunekitError(f"the quantised graph ({Path(onnx_path).name}) produces NaN or infinite logits; "
                            "nothing written")
    agreement = None
    if rows[0]["argmax_agreement"] is not None:  # over all rows of all batches
        agreement = sum(r["argmax_agreement"] * r["shape"][0] for r in rows) / sum(r["shape"][0] for r in rows)
    return {"max_abs_diff": worst, "argmax_agreement": agreement,
            "providers": session.providers, "checks": rows}
