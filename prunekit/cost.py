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


@dataclass(frozen=True)
class UnitCosts:
    """What each prunable unit costs, split into the part proportional to the hidden width d (the
    residual stream, which z_hidden shrinks) and a fixed part. Both the exact counts below and CoFi's
    expected counts (prunekit.cofi, with expected unit counts in place of integers) use these.

      one head           head_per_dim * d + head_fixed
      one FFN unit       unit_per_dim * d + unit_fixed
      a present sublayer attention_per_dim * d (O bias)  /  ffn_per_dim * d (down bias)
    """
    head_per_dim: float
    head_fixed: float
    unit_per_dim: float
    unit_fixed: float
    attention_per_dim: float = 0
    ffn_per_dim: float = 0

    def layer(self, d, heads, units, attention_present=1.0, ffn_present=1.0):
        """(attention, FFN) cost of one layer; every argument may be a number or a tensor of expectations."""
        return (attention_present * (heads * (self.head_per_dim * d + self.head_fixed) + self.attention_per_dim * d),
                ffn_present * (units * (self.unit_per_dim * d + self.unit_fixed) + self.ffn_per_dim * d))


def param_unit_costs(config) -> UnitCosts:
    """Parameters (CoFi's encoder definition): a head owns d_h rows of Q, K, V (weights and biases) and
    d_h columns of O; an FFN unit a row of W_up, its bias and a column of W_down."""
    dh = config.head_dim
    return UnitCosts(head_per_dim=4 * dh, head_fixed=3 * dh, unit_per_dim=2, unit_fixed=1,
                     attention_per_dim=1, ffn_per_dim=1)


def mac_unit_costs(config, seq_len=None, lengths=None) -> UnitCosts:
    """MACs per sequence (Kwon et al.): a head 4*s*d*d_h + 2*s^2*d_h, an FFN unit 2*s*d."""
    s, s2 = length_moments(seq_len, lengths)
    dh = config.head_dim
    return UnitCosts(head_per_dim=4 * s * dh, head_fixed=2 * s2 * dh, unit_per_dim=2 * s, unit_fixed=0)


def per_layer(costs: UnitCosts, config) -> tuple[list, list]:
    """(attention, FFN) cost of every layer of a (dense or compact) config."""
    d = config.hidden_size
    rows = [costs.layer(d, h, f, int(h > 0), int(f > 0)) for h, f in zip(config.num_heads, config.ffn_dim)]
    return [a for a, _ in rows], [f for _, f in rows]


def param_counts(config) -> dict:
    d = config.hidden_size
    attn, ffn = per_layer(param_unit_costs(config), config)
    encoder = sum(attn) + sum(ffn)
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * d
    norms = 2 * d * (1 + sum(h > 0 for h in config.num_heads) + sum(f > 0 for f in config.ffn_dim))
    head = d * config.pooler_size + config.pooler_size + config.pooler_size * config.num_labels + config.num_labels
    return {"encoder": encoder, "total": encoder + embeddings + norms + head,
            "per_layer_attention": attn, "per_layer_ffn": ffn}


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
    c, d = mac_unit_costs(config, seq_len, lengths), config.hidden_size
    return c.head_per_dim * d + c.head_fixed, c.unit_per_dim * d + c.unit_fixed


def macs(config, seq_len=None, lengths=None) -> dict:
    attn, ffn = per_layer(mac_unit_costs(config, seq_len, lengths), config)
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
