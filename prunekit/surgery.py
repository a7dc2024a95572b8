"""Surgery: fold mask values into the weights, then cut out everything the masks zero.

prune(model, masks) returns a new, compact model of the same class whose forward equals the masked
model's forward (model(x, masks=masks)) up to float rounding. Where each mask goes:
  z_head[l, h]  -> rows of W_V and b_V of head h   (context = probs @ V, so scaling V scales the head)
  z_mha[l]      -> W_O and b_O                      (the attention output projection)
  z_int[l, j]   -> column j of W_down               (the post-GELU activation it scales)
  z_ffn[l]      -> W_down and b_down
  z_hidden      -> pre-LayerNorm:  embedding tables (columns), rows of W_O / b_O and W_down / b_down;
                   post-LayerNorm: the LayerNorm weight and bias (so the residual stream carries it).
Then zero heads, zero FFN units, dead sublayers (gate zero or no unit left) and zero hidden dims are
dropped; everything reading the residual stream (Q, K, V, W_up, pooler) loses those input columns.
"""
import torch

from .masks import Masks


def _nonzero(t):
    return torch.nonzero(t != 0, as_tuple=False).flatten()


@torch.no_grad()
def prune(model, masks: Masks):
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

    e = "bert.embeddings"
    for table in ("word", "position", "token_type"):           # columns = hidden dims
        out[f"{e}.{table}.weight"] = src[f"{e}.{table}.weight"][:, hid] * zh_kept
    norm(f"{e}.norm", f"{e}.norm")

    dh = cfg.head_dim
    for l in range(cfg.num_layers):
        p = f"bert.layers.{l}"
        # attention: keep head h when its scale is non-zero and the sublayer is alive
        H = cfg.num_heads[l]
        z_head = f32(None if masks.z_head is None else masks.z_head[l], H)
        z_mha = f32(None if masks.z_mha is None else masks.z_mha[l], ())
        heads = _nonzero(z_head) if (H > 0 and z_mha != 0 and (z_head != 0).any()) else _nonzero(torch.zeros(0))
        num_heads.append(len(heads))
        if len(heads):
            a = f"{p}.attention"
            rows = (heads[:, None] * dh + torch.arange(dh, device=dev)).flatten()      # Q/K/V output rows of kept heads
            row_scale = z_head[heads].repeat_interleave(dh)
            out[f"{a}.query.weight"] = src[f"{a}.query.weight"][rows][:, hid]          # rows: heads, cols: hidden
            out[f"{a}.query.bias"] = src[f"{a}.query.bias"][rows]
            out[f"{a}.key.weight"] = src[f"{a}.key.weight"][rows][:, hid]
            out[f"{a}.key.bias"] = src[f"{a}.key.bias"][rows]
            out[f"{a}.value.weight"] = src[f"{a}.value.weight"][rows][:, hid] * row_scale[:, None]
            out[f"{a}.value.bias"] = src[f"{a}.value.bias"][rows] * row_scale
            scale = z_mha * zh_kept                                                     # per output row (hidden)
            out[f"{a}.output.weight"] = src[f"{a}.output.weight"][hid][:, rows] * scale[:, None]
            out[f"{a}.output.bias"] = src[f"{a}.output.bias"][hid] * scale
            norm(f"{a}.residual.norm", f"{a}.residual.norm")

        # FFN: keep unit j when its scale is non-zero and the sublayer is alive
        Fw = cfg.ffn_dim[l]
        z_int = f32(None if masks.z_int is None else masks.z_int[l], Fw)
        z_ffn = f32(None if masks.z_ffn is None else masks.z_ffn[l], ())
        units = _nonzero(z_int) if (Fw > 0 and z_ffn != 0 and (z_int != 0).any()) else _nonzero(torch.zeros(0))
        ffn_dim.append(len(units))
        if len(units):
            f = f"{p}.ffn"
            out[f"{f}.up.weight"] = src[f"{f}.up.weight"][units][:, hid]                # rows: units, cols: hidden
            out[f"{f}.up.bias"] = src[f"{f}.up.bias"][units]
            scale = z_ffn * zh_kept
            down = src[f"{f}.down.weight"][hid][:, units] * z_int[units]               # cols: units (z_int)
            out[f"{f}.down.weight"] = down * scale[:, None]                            # rows: hidden (z_ffn, z_hidden)
            out[f"{f}.down.bias"] = src[f"{f}.down.bias"][hid] * scale
            norm(f"{f}.residual.norm", f"{f}.residual.norm")

    out["bert.pooler.weight"] = src["bert.pooler.weight"][:, hid]                      # cols: hidden
    out["bert.pooler.bias"] = src["bert.pooler.bias"]
    out["classifier.weight"] = src["classifier.weight"]
    out["classifier.bias"] = src["classifier.bias"]

    new_cfg = type(cfg).from_dict({**cfg.to_dict(), "hidden_size": len(hid), "num_heads": num_heads,
                                   "ffn_dim": ffn_dim, "pooler_size": cfg.pooler_size})
    compact = type(model)(new_cfg)
    compact.load_state_dict({k: v.to(src[k].dtype) if k in src else v for k, v in out.items()}, strict=True)
    compact.to(dev).train(model.training)
    compact.tokenizer = model.tokenizer
    return compact
