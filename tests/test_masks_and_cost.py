"""The Masks container (validation, safetensors IO) and the cost model (params, MACs)."""
import pytest
import torch

import prunekit
from prunekit import Masks
from prunekit.config import PrunekitBertConfig
from prunekit.cost import cost_report, format_report, macs, param_counts, unit_macs
from conftest import tiny_config, tiny_model


def test_masks_round_trip_through_safetensors(tmp_path):
    cfg = tiny_config()
    masks = Masks(z_head=torch.rand(3, 4), z_hidden=torch.rand(16) + 0.1)
    masks.save(tmp_path / "m.safetensors")
    back = Masks.load(tmp_path / "m.safetensors", cfg)
    assert back.z_mha is None and back.z_int is None
    assert torch.equal(back.z_head, masks.z_head) and torch.equal(back.z_hidden, masks.z_hidden)


def test_masks_load_rejects_wrong_shape_nan_and_corrupt_files(tmp_path):
    cfg = tiny_config()
    Masks(z_int=torch.ones(3, 11)).save(tmp_path / "shape.safetensors")
    with pytest.raises(prunekit.PrunekitError, match=r"z_int has shape \(3, 11\), the model needs \(3, 12\)"):
        Masks.load(tmp_path / "shape.safetensors", cfg)
    Masks(z_mha=torch.tensor([1.0, float("nan"), 1.0])).save(tmp_path / "nan.safetensors")
    with pytest.raises(prunekit.PrunekitError, match="mask z_mha contains NaN"):
        Masks.load(tmp_path / "nan.safetensors", cfg)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(prunekit.PrunekitError, match="cannot read masks"):
        Masks.load(tmp_path / "bad.safetensors", cfg)


def test_masked_forward_rejects_wrong_shape():
    model = tiny_model()
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(prunekit.PrunekitError, match=r"mask z_head has shape \(3, 5\), the model needs \(3, 4\)"):
        model(ids, masks=Masks(z_head=torch.ones(3, 5)))


def test_bert_base_encoder_params_match_cofi_definition():
    # CoFi's prunable model size M for BERT-base (the paper's reference code, L0Module): 12 * (4d^2 + 4d + 2*d*dff + dff + d)
    base = PrunekitBertConfig(hidden_size=768, head_dim=64, num_heads=[12] * 12, ffn_dim=[3072] * 12)
    assert param_counts(base)["encoder"] == 85_017_600


@pytest.mark.slow  # loads the real MiniLM
def test_minilm_total_params_equal_torch_count(minilm):
    assert param_counts(minilm.config)["total"] == sum(p.numel() for p in minilm.parameters())


def test_total_params_equal_torch_count_for_a_compact_model():
    compact = prunekit.prune(tiny_model(), Masks(z_head=torch.tensor([[1., 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]]),
                                                   z_int=(torch.arange(36).view(3, 12) % 4 != 0).float(),
                                                   z_hidden=(torch.arange(16) % 5 != 0).float()))
    assert param_counts(compact.config)["total"] == sum(p.numel() for p in compact.parameters())


def test_macs_follow_kwon_formulas():
    base = PrunekitBertConfig(hidden_size=768, head_dim=64, num_heads=[12] * 12, ffn_dim=[3072] * 12)
    s = 64.59  # Kwon's RTE average length
    head, neuron = unit_macs(base, seq_len=s)
    assert head == pytest.approx(4 * s * 768 * 64 + 2 * s * s * 64)
    assert neuron == pytest.approx(2 * s * 768)
    assert head / neuron == pytest.approx(128 + s / 12)           # Kwon et al.: a head is 4sd*dh + 2s^2*dh, a neuron 2sd
    assert macs(base, seq_len=s)["total"] / 1e9 == pytest.approx(5.56, abs=0.01)


def test_macs_over_a_length_distribution_average_the_quadratic_term():
    cfg = tiny_config(num_heads=[2, 0, 1], ffn_dim=[5, 3, 0])
    lengths = [4, 10, 31]
    want = sum(macs(cfg, seq_len=s)["total"] for s in lengths) / len(lengths)
    assert macs(cfg, lengths=lengths)["total"] == pytest.approx(want)
    assert macs(cfg, lengths=lengths)["total"] != pytest.approx(macs(cfg, seq_len=sum(lengths) / 3)["total"])


def test_cost_report_fractions_against_reference():
    dense = tiny_config()
    half = tiny_config(num_heads=[2, 2, 2], ffn_dim=[6, 6, 6])
    r = cost_report(half, seq_len=8, reference=dense)
    assert r.macs_kept == pytest.approx(0.5) and r.params_kept < 0.55 and r.sparsity == pytest.approx(1 - r.params_kept)
    assert format_report(r).splitlines()[-1] == (f"kept vs reference: params {r.params_kept:.3f}, MACs 0.500, "
                                                 f"sparsity {r.sparsity:.3f}")
