"""The encoder, loaded from the packaged all-MiniLM-L6-v2, against transformers' own BertModel."""
import pytest
import torch
from transformers import BertModel

from prunekit.checkpoints import resolve

pytestmark = pytest.mark.slow  # every test here loads the real MiniLM


def test_encoder_matches_transformers_bert_on_minilm(minilm, minilm_batch):
    ref = BertModel.from_pretrained(str(resolve("minilm"))).eval()
    with torch.no_grad():
        want = ref(**minilm_batch, output_hidden_states=True)
        got = minilm.bert(minilm_batch["input_ids"], minilm_batch["attention_mask"],
                          minilm_batch["token_type_ids"], output_hidden_states=True)
    real = minilm_batch["attention_mask"].bool()
    assert not real.all(), "the batch must contain padding"
    for layer, (a, b) in enumerate(zip(got.hidden_states, want.hidden_states)):
        diff = (a - b).abs()
        assert diff[real].max() < 1e-5, f"hidden state {layer} differs by {diff[real].max():.2e} at real tokens"
        # states at padded positions are read by nothing (padding is masked out of every key), and
        # HF's own eager and sdpa paths differ there by ~5e-5; hold them to 1e-5 relative instead
        assert diff[~real].max() < 1e-5 * b.abs().max(), f"hidden state {layer} at padding differs by {diff[~real].max():.2e}"
    assert (got.pooler_output - want.pooler_output).abs().max() < 1e-5


def test_sequence_classifier_gives_loss_logits_and_hidden_states(minilm, minilm_batch):
    labels = torch.tensor([1, 0, 1])
    out = minilm(**minilm_batch, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (3, 2)
    assert len(out.hidden_states) == 7
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
