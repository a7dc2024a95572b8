"""Surgery: fold mask values into the weights, then cut out everything the masks zero.

prune(model, masks) returns a new, compact model of the same class whose forward equals the masked
model's forward (model(x, masks=masks)) up to float rounding. Where each mask goes:
  z_head[l, h]  -> rows of W_V and b_V of head h   (context = probs @ V, so scaling V scales the head)
  z_mha[l]      -> W_O and b_O                      (the attention output projection)
  z_int[l, j]   -> column j of W_down               (the post-GELU activation it scales)
  z_ffn[l]      -> W_down and b_down
  z_hidden      -> pre-LayerNorm:  embedding tables (columns), rows of W_O / b_O and W_down / b_down;
                   post-LayerNorm: the LayerNorm weight and bias (so the residual stream carries it);
                   with ELECTRA's embedding projection: its rows (the embeddings themselves stay).
Then zero heads, zero FFN units, dead sublayers (gate zero or no unit left) and zero hidden dims are
dropped; everything reading the residual stream (Q, K, V, W_up, pooler) loses those input columns.
compact_vs_masked(compact, model, masks, examples) measures how far the two are apart on real inputs.
"""
import torch

from .data import collate
from .errors import PrunekitError
from .masks import Masks


def _nonzero(t):
    return torch.nonzero(t != 0, as_tuple=False).flatten()


@torch.no_grad()
def prune(model, masks: Masks):
    """The compact model for `masks` (see the module docstring). One function on purpose, though long:
    its helpers (norm, linear, sublayer) share the source weights and the kept hidden dims, and its body
    reads in the model's order (embeddings, layers, pooler, classifier) like the map above."""
    cfg = model.config
    masks.validate(cfg)
    src = model.state_dict()
    dev = next(model.parameters()).device
    f32 = lambda t, n: (t.to(dev, torch.float32) if t is not None else torch.ones(n, device=dev))
    z_hid = f32(masks.z_hidden, cfg.hidden_size)
    hid = _nonzero(z_hid)                      # kept hidden dims, in order
    zh_kept = z_hid[hid]

    out, num_heads, ffn_dim = {}, [], []

    def norm(prefix, new_prefix):
        # post-LayerNorm z_hidden folds exactly into the LayerNorm's affine part
        out[f"{new_prefix}.weight"] = src[f"{prefix}.weight"][hid] * zh_kept
        out[f"{new_prefix}.bias"] = src[f"{prefix}.bias"][hid] * zh_kept

    def linear(name, rows=None, cols=None, row_scale=None, col_scale=None):
        """Keep rows (outputs) and columns (inputs) of a Linear, scaling rows (bias too) and columns."""
        w, bias = src[f"{name}.weight"], src[f"{name}.bias"]
        if rows is not None:
            w, bias = w[rows], bias[rows]
        if cols is not None:
            w = w[:, cols]
        if row_scale is not None:
            w, bias = w * row_scale[:, None], bias * row_scale
        if col_scale is not None:
            w = w * col_scale
        out[f"{name}.weight"], out[f"{name}.bias"] = w, bias

    def sublayer(units, gate, l, width):
        """(per-unit scales, layer gate, kept unit indices) of one sublayer of layer l; no unit is kept
        when the sublayer is absent, its gate is zero or all its units are."""
        z = f32(None if units is None else units[l], width)
        g = f32(None if gate is None else gate[l], ())
        alive = width > 0 and g != 0 and (z != 0).any()
        return z, g, _nonzero(z if alive else torch.zeros(0, device=dev))

    e = "bert.embeddings"
    if f"{e}.project.weight" in src:      # ELECTRA: the embeddings stay; their projection's rows are the hidden dims
        for name in [k for k in src if k.startswith(e) and not k.startswith(f"{e}.project.")]:
            out[name] = src[name]
        linear(f"{e}.project", rows=hid, row_scale=zh_kept)
    else:
        for table in ("word", "position", "token_type"):       # columns = hidden dims
            if f"{e}.{table}.weight" in src:
                out[f"{e}.{table}.weight"] = src[f"{e}.{table}.weight"][:, hid] * zh_kept
        norm(f"{e}.norm", f"{e}.norm")

    dh = cfg.head_dim
    for l in range(cfg.num_layers):
        p = f"bert.layers.{l}"
        z_head, z_mha, heads = sublayer(masks.z_head, masks.z_mha, l, cfg.num_heads[l])
        num_heads.append(len(heads))
        if len(heads):
            a = f"{p}.attention"
            rows = (heads[:, None] * dh + torch.arange(dh, device=dev)).flatten()  # Q/K/V output rows of kept heads
            linear(f"{a}.query", rows, hid)                                        # rows: heads, cols: hidden
            linear(f"{a}.key", rows, hid)
            linear(f"{a}.value", rows, hid, row_scale=z_head[heads].repeat_interleave(dh))  # z_head scales V
            linear(f"{a}.output", hid, rows, row_scale=z_mha * zh_kept)             # rows: hidden (z_mha, z_hidden)
            norm(f"{a}.residual.norm", f"{a}.residual.norm")

        z_int, z_ffn, units = sublayer(masks.z_int, masks.z_ffn, l, cfg.ffn_dim[l])
        ffn_dim.append(len(units))
        if len(units):
            f = f"{p}.ffn"
            linear(f"{f}.up", units, hid)                                           # rows: units, cols: hidden
            linear(f"{f}.down", hid, units, row_scale=z_ffn * zh_kept, col_scale=z_int[units])  # cols: units (z_int)
            norm(f"{f}.residual.norm", f"{f}.residual.norm")

    out["bert.pooler.weight"] = src["bert.pooler.weight"][:, hid]                      # cols: hidden
    out["bert.pooler.bias"] = src["bert.pooler.bias"]
    out["classifier.weight"] = src["classifier.weight"]
    out["classifier.bias"] = src["classifier.bias"]

    bad = [name for name, t in out.items() if not torch.isfinite(t).all()]
    if bad:  # e.g. mask values of 1e38: the masked model computed inf or NaN too
        raise PrunekitError(f"the mask values make folded weights non-finite ({', '.join(bad[:3])}"
                            f"{', ...' if len(bad) > 3 else ''}): refusing to save a model that computes inf or NaN")
    if not any(num_heads) and not any(ffn_dim):
        raise PrunekitError("the masks remove every attention and FFN sublayer: nothing of the encoder would be left")
    new_cfg = type(cfg).from_dict({**cfg.to_dict(), "hidden_size": len(hid), "num_heads": num_heads,
                                   "ffn_dim": ffn_dim, "pooler_size": cfg.pooler_size})
    compact = type(model)(new_cfg)
    compact.load_state_dict({k: v.to(src[k].dtype) if k in src else v for k, v in out.items()}, strict=True)
    compact.to(dev).train(model.training)
    compact.tokenizer = model.tokenizer
    check_finite_outputs(compact)
    return compact


@torch.no_grad()
def check_finite_outputs(model) -> None:
    """Weights can all be finite and still overflow to inf / NaN in the forward (a mask of 1e38 folded
    into V): run a small fixed batch and refuse a model whose logits are not finite."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, cfg.vocab_size, (2, min(8, cfg.longest_sequence)), generator=g)
    was = model.training
    model.eval()
    logits = model(input_ids=ids.to(next(model.parameters()).device)).logits
    model.train(was)
    if not torch.isfinite(logits).all():
        raise PrunekitError("the mask values make the pruned model's outputs inf or NaN (e.g. scales of 1e38): "
                            "refusing to save it")


@torch.no_grad()
def compact_vs_masked(compact, model, masks: Masks, examples: list, device) -> float:
    """Max abs logit difference between the compact model and the masked dense model on a batch of
    examples (data.collate's format): surgery's promise, checked on the run's own data."""
    batch = collate(examples)
    batch.pop("labels", None)
    batch = {k: v.to(device) for k, v in batch.items()}
    return (compact(**batch).logits - model(**batch, masks=masks.to(device)).logits).abs().max().item()


@torch.no_grad()
def expand(compact, dense_config, masks: Masks):
    """prune's inverse for heads and FFN units: a model of `dense_config`'s shape that computes what
    `compact` computes, each kept head and unit back at the position `masks` kept it (z_head, z_int
    non-zero) and zero weights everywhere else (a zero head or unit adds nothing to its sublayer).
    Gradual pruning prunes such a model again, so a later round's masks are in the dense model's
    positions. The compact model must keep the hidden size and every sublayer (a removed sublayer took
    its LayerNorm with it)."""
    cfg = compact.config
    masks.validate(dense_config)
    if cfg.hidden_size != dense_config.hidden_size or cfg.num_layers != dense_config.num_layers:
        raise PrunekitError("expand needs the compact model's hidden size and layer count to be the dense model's")
    heads = [_nonzero(z) for z in masks.z_head]
    units = [_nonzero(z) for z in masks.z_int]
    if [len(h) for h in heads] != cfg.num_heads or [len(u) for u in units] != cfg.ffn_dim or 0 in cfg.num_heads \
            or 0 in cfg.ffn_dim:
        raise PrunekitError("expand: the masks do not match the compact model's heads and FFN units, or a sublayer "
                            "was removed")
    dense = type(compact)(dense_config).to(next(compact.parameters()).device)
    src, out = compact.state_dict(), dense.state_dict()
    dh = dense_config.head_dim
    for name, t in out.items():
        if not name.startswith("bert.layers."):
            t.copy_(src[name])
            continue
        l, part = int(name.split(".")[2]), name.split(".", 3)[3]
        rows = (heads[l][:, None] * dh + torch.arange(dh)).flatten().to(t.device)
        index = {"attention.query": rows, "attention.key": rows, "attention.value": rows, "ffn.up": units[l],
                 "attention.output": rows, "ffn.down": units[l]}.get(part.rsplit(".", 1)[0])
        t.zero_()
        if index is None or part.endswith("output.bias") or part.endswith("down.bias"):
            t.copy_(src[name])                            # LayerNorms and the output biases: same shape
        elif part.startswith(("attention.output", "ffn.down")):
            t[:, index.to(t.device)] = src[name]          # inputs: the kept heads' / units' columns
        else:
            t[index.to(t.device)] = src[name]             # outputs: the kept heads' rows / units
    dense.load_state_dict(out)
    dense.tokenizer = compact.tokenizer
    return dense.train(compact.training)
