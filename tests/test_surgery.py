"""Surgery's contract: the compact model computes exactly what the masked model computed."""
import pytest
import torch

import prunekit
from prunekit import Masks
from conftest import random_batch, tiny_model

L, H, F, D = 3, 4, 12, 16


def assert_compact_equals_masked(model, masks, batch, tol=1e-5):
    with torch.no_grad():
        want = model(**batch, masks=masks, output_hidden_states=True)
        compact = prunekit.prune(model, masks)
        got = compact(**batch, output_hidden_states=True)
    assert (got.logits - want.logits).abs().max() < tol, f"logits differ by {(got.logits - want.logits).abs().max():.2e}"
    keep = torch.ones(model.config.hidden_size, dtype=torch.bool) if masks.z_hidden is None else masks.z_hidden != 0
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert (a - b[..., keep]).abs().max() < tol
        assert b[..., ~keep].abs().max() == 0 if (~keep).any() else True  # pruned dims are exactly zero
    return compact


def random_masks(seed, binary=False, hidden=True):
    g = torch.Generator().manual_seed(seed)
    def draw(*shape):
        if binary:
            return (torch.rand(*shape, generator=g) > 0.4).float()
        v = torch.rand(*shape, generator=g) * 1.5 + 0.1
        return v * (torch.rand(*shape, generator=g) > 0.35)
    return Masks(z_mha=draw(L), z_head=draw(L, H), z_ffn=draw(L), z_int=draw(L, F),
                 z_hidden=draw(D) if hidden else None)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("binary", [False, True])
def test_compact_equals_masked_for_random_masks(seed, binary):
    masks = random_masks(seed, binary)
    masks.z_hidden[0] = 1.0  # keep at least one hidden dim
    compact = assert_compact_equals_masked(tiny_model(seed), masks, random_batch())
    assert compact.config.hidden_size == int((masks.z_hidden != 0).sum())


def test_compact_equals_masked_when_layer_has_no_heads():
    masks = random_masks(10)
    masks.z_head[1] = 0
    compact = assert_compact_equals_masked(tiny_model(), masks, random_batch())
    assert compact.config.num_heads[1] == 0


def test_compact_equals_masked_when_layer_has_no_ffn_units():
    # CoFi issue #36: an all-zero z_int with z_ffn != 0 must not leak the down-projection bias
    masks = random_masks(11)
    masks.z_int[2] = 0
    masks.z_ffn[2] = 0.7
    compact = assert_compact_equals_masked(tiny_model(), masks, random_batch())
    assert compact.config.ffn_dim[2] == 0


def test_compact_equals_masked_when_sublayer_gates_are_zero():
    masks = random_masks(12)
    masks.z_mha[0] = 0
    masks.z_ffn[1] = 0
    masks.z_mha[2] = 0
    masks.z_ffn[2] = 0  # layer 2 disappears entirely
    compact = assert_compact_equals_masked(tiny_model(), masks, random_batch())
    assert compact.config.num_heads[0] == 0 and compact.config.ffn_dim[1] == 0
    assert compact.config.num_heads[2] == 0 and compact.config.ffn_dim[2] == 0


def test_compact_equals_masked_when_most_hidden_dims_are_zero():
    masks = random_masks(13)
    masks.z_hidden = torch.zeros(D)
    masks.z_hidden[[3, 9]] = torch.tensor([0.8, 1.2])
    compact = assert_compact_equals_masked(tiny_model(), masks, random_batch())
    assert compact.config.hidden_size == 2 and compact.config.pooler_size == D


def test_compact_equals_masked_with_exactly_one_head_and_one_unit_left():
    masks = Masks(z_head=torch.zeros(L, H), z_int=torch.zeros(L, F))
    masks.z_head[:, 2] = 0.9
    masks.z_int[:, 5] = 1.3
    compact = assert_compact_equals_masked(tiny_model(), masks, random_batch())
    assert compact.config.num_heads == [1, 1, 1] and compact.config.ffn_dim == [1, 1, 1]


def test_fully_masked_sublayer_is_identity():
    model = tiny_model()
    x = torch.randn(3, 9, D)
    bias = torch.zeros(3, 1, 1, 9)
    from prunekit.model import LayerMasks
    layer = model.bert.layers[0]
    with torch.no_grad():
        assert torch.equal(layer.attention(x, bias, LayerMasks(head=torch.zeros(H), mha=torch.tensor(1.0))), x)
        assert torch.equal(layer.ffn(x, LayerMasks(unit=torch.zeros(F), ffn=torch.tensor(0.5))), x)
        assert torch.equal(layer.ffn(x, LayerMasks(ffn=torch.tensor(0.0))), x)


def test_pruning_a_compact_model_again_with_hidden_mask():
    model = tiny_model()
    first = prunekit.prune(model, random_masks(14, hidden=False))
    masks = Masks(z_hidden=(torch.arange(D) % 3 != 0).float() * 0.9, z_mha=torch.tensor([1.0, 0.0, 0.5]))
    assert_compact_equals_masked(first, masks, random_batch())


def test_prune_refuses_nan_and_wrong_shapes():
    model = tiny_model()
    with pytest.raises(prunekit.PrunekitError, match=r"z_head has shape \(3, 5\), the model needs \(3, 4\)"):
        prunekit.prune(model, Masks(z_head=torch.ones(L, H + 1)))
    with pytest.raises(prunekit.PrunekitError, match="mask z_int contains NaN"):
        prunekit.prune(model, Masks(z_int=torch.full((L, F), float("nan"))))
    with pytest.raises(prunekit.PrunekitError, match="mask z_hidden is all zero"):
        prunekit.prune(model, Masks(z_hidden=torch.zeros(D)))


@pytest.mark.slow  # loads the real MiniLM
@pytest.mark.parametrize("seed", [0, 1])
def test_compact_equals_masked_on_minilm(minilm, minilm_batch, seed):
    g = torch.Generator().manual_seed(seed)
    Lm, Hm, Fm, Dm = 6, 12, 1536, 384
    masks = Masks(z_mha=torch.ones(Lm), z_head=(torch.rand(Lm, Hm, generator=g) > 0.5) * (0.5 + torch.rand(Lm, Hm, generator=g)),
                  z_ffn=torch.ones(Lm), z_int=(torch.rand(Lm, Fm, generator=g) > 0.5) * (0.5 + torch.rand(Lm, Fm, generator=g)),
                  z_hidden=(torch.rand(Dm, generator=g) > 0.2).float())
    masks.z_head[3] = 0          # a layer with no heads
    masks.z_int[4] = 0           # a layer with no FFN
    masks.z_head[5] = 0
    masks.z_head[5, 7] = 1.1     # exactly one head left
    masks.z_mha[1] = 0.0         # a dropped attention sublayer
    compact = assert_compact_equals_masked(minilm, masks, minilm_batch)
    assert compact.config.num_heads[3] == 0 and compact.config.ffn_dim[4] == 0 and compact.config.num_heads[5] == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_expand_puts_the_compact_model_back_in_the_dense_shape_exactly(seed):
    from prunekit.surgery import expand
    model = tiny_model(seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    L, H, F = model.config.num_layers, model.config.num_heads[0], model.config.ffn_dim[0]
    keep_h, keep_f = torch.rand(L, H, generator=g) < 0.5, torch.rand(L, F, generator=g) < 0.5
    keep_h[:, 1], keep_f[:, 2] = True, True                                    # every sublayer keeps a unit
    masks = Masks(z_head=keep_h * (0.5 + torch.rand(L, H, generator=g)), z_int=keep_f * (0.5 + torch.rand(L, F, generator=g)))
    compact = prunekit.prune(model, masks).eval()
    dense = expand(compact, model.config, masks).eval()
    assert dense.config.num_heads == model.config.num_heads and dense.config.ffn_dim == model.config.ffn_dim
    batch = random_batch(batch=3, seq=9, seed=seed)
    with torch.no_grad():
        want = model(**batch, masks=masks).logits
        assert (dense(**batch).logits - want).abs().max() < 1e-5                 # computes what the compact one does
        binary = Masks(z_head=keep_h.float(), z_int=keep_f.float())
        again = prunekit.prune(dense, binary)                                   # and prunes back to it exactly
        assert (again(**batch).logits - compact(**batch).logits).abs().max() == 0
    state = dense.state_dict()
    dropped = (~keep_h[0]).nonzero().flatten()
    assert state["bert.layers.0.attention.value.weight"].view(H, -1, model.config.hidden_size)[dropped].abs().sum() == 0


def test_expand_refuses_masks_that_do_not_match_and_removed_sublayers():
    from prunekit.errors import PrunekitError
    from prunekit.surgery import expand
    model = tiny_model().eval()
    L, H, F = model.config.num_layers, model.config.num_heads[0], model.config.ffn_dim[0]
    masks = Masks(z_head=torch.ones(L, H).index_fill_(1, torch.tensor([0]), 0.0), z_int=torch.ones(L, F))
    compact = prunekit.prune(model, masks)
    with pytest.raises(PrunekitError, match="do not match"):
        expand(compact, model.config, Masks(z_head=torch.ones(L, H), z_int=torch.ones(L, F)))
    no_attention = masks.z_head.clone()
    no_attention[1] = 0
    empty = Masks(z_head=no_attention, z_int=torch.ones(L, F))
    with pytest.raises(PrunekitError, match="sublayer was removed"):
        expand(prunekit.prune(model, empty), model.config, empty)
