"""Cost model: parameter counts and MACs for any config (dense or compact).

Parameters, CoFi's definition ("encoder"): the weights and biases of Q, K, V, O and both FFN
projections; embeddings, LayerNorms, pooler and classifier are left out. BERT-base gives
85,017,600. `total` counts everything.

MACs, Kwon et al.'s definition, for a sequence of length s:
  per head   4*s*d*d_h + 2*s^2*d_h   (Q, K, V and its share of O; Q K^T and attention x V)
  per neuron 2*s*d                   (up and down projections)
Biases, LayerNorm, softmax, GELU, embeddings and the classifier are not counted. Given a measured
length distribution, MACs are the mean over it (E[s] and E[s^2] enter separately), not the MACs at
the mean length.
"""
from dataclasses import dataclass

import numpy as np


def _layer_params(config, l):
    d, dh, h, f = config.hidden_size, config.head_dim, config.num_heads[l], config.ffn_dim[l]
    attn = (3 * (d * h * dh + h * dh) + (h * dh * d + d)) if h > 0 else 0
    ffn = (d * f + f + f * d + d) if f > 0 else 0
    return attn, ffn


def param_counts(config) -> dict:
    d = config.hidden_size
    attn, ffn = zip(*(_layer_params(config, l) for l in range(config.num_layers)))
    encoder = sum(attn) + sum(ffn)
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * d
    norms = 2 * d * (1 + sum(h > 0 for h in config.num_heads) + sum(f > 0 for f in config.ffn_dim))
    head = d * config.pooler_size + config.pooler_size + config.pooler_size * config.num_labels + config.num_labels
    return {"encoder": encoder, "total": encoder + embeddings + norms + head,
            "per_layer_attention": list(attn), "per_layer_ffn": list(ffn)}


def length_moments(seq_len: float | None = None, lengths=None) -> tuple[float, float]:
    """(E[s], E[s^2]) from one length or a sample of measured lengths."""
    if lengths is not None:
        s = np.asarray(lengths, dtype=np.float64)
        if s.size == 0:
            raise ValueError("empty length distribution")
        return float(s.mean()), float((s * s).mean())
    if seq_len is None:
        raise ValueError("give seq_len or lengths")
    return float(seq_len), float(seq_len) ** 2


def unit_macs(config, seq_len=None, lengths=None) -> tuple[float, float]:
    """(MACs of one head, MACs of one FFN neuron) at this length (distribution)."""
    s, s2 = length_moments(seq_len, lengths)
    d, dh = config.hidden_size, config.head_dim
    return 4 * s * d * dh + 2 * s2 * dh, 2 * s * d


def macs(config, seq_len=None, lengths=None) -> dict:
    head, neuron = unit_macs(config, seq_len, lengths)
    attn = [h * head for h in config.num_heads]
    ffn = [f * neuron for f in config.ffn_dim]
    return {"total": sum(attn) + sum(ffn), "per_layer_attention": attn, "per_layer_ffn": ffn}


@dataclass
class CostReport:
    structure: list
    hidden_size: int
    params_encoder: int
    params_total: int
    macs: float
    seq_len: float
    params_kept: float | None = None   # fractions of the reference model's, when one is given
    macs_kept: float | None = None
    sparsity: float | None = None      # 1 - params_kept (CoFi's sparsity)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def cost_report(config, seq_len=128, lengths=None, reference=None) -> CostReport:
    """Params and MACs of a config, and fractions of a reference (e.g. the dense teacher) if given."""
    p, m = param_counts(config), macs(config, seq_len, lengths)
    structure = config.structure()
    for row, pa, pf, ma, mf in zip(structure, p["per_layer_attention"], p["per_layer_ffn"],
                                   m["per_layer_attention"], m["per_layer_ffn"]):
        row.update(params=pa + pf, macs=ma + mf)
    report = CostReport(structure, config.hidden_size, p["encoder"], p["total"], m["total"],
                        length_moments(seq_len, lengths)[0])
    if reference is not None:
        ref_p, ref_m = param_counts(reference), macs(reference, seq_len, lengths)
        report.params_kept = p["encoder"] / ref_p["encoder"]
        report.macs_kept = m["total"] / ref_m["total"]
        report.sparsity = 1.0 - report.params_kept
    return report


def format_report(report: CostReport, name: str = "") -> str:
    """The per-layer table `prunekit info` prints."""
    lines = [f"model {name}: hidden size {report.hidden_size}, MACs at seq len {report.seq_len:g}"]
    lines.append(f"{'layer':>5} {'heads':>5} {'ffn':>6} {'mha':>4} {'ffn?':>4} {'params':>11} {'MMACs':>9}")
    for r in report.structure:
        lines.append(f"{r['layer']:>5} {r['heads']:>5} {r['ffn']:>6} {'yes' if r['mha'] else 'no':>4} "
                     f"{'yes' if r['ffn_present'] else 'no':>4} {r['params']:>11,} {r['macs'] / 1e6:>9.1f}")
    lines.append(f"encoder params (CoFi definition) {report.params_encoder:,}; all params {report.params_total:,}; "
                 f"MACs {report.macs / 1e6:,.1f} M per sequence")
    if report.macs_kept is not None:
        lines.append(f"kept vs reference: params {report.params_kept:.3f}, MACs {report.macs_kept:.3f}, "
                     f"sparsity {report.sparsity:.3f}")
    return "\n".join(lines)
