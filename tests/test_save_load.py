"""save_pretrained / from_pretrained of compact models: self-describing, bit-exact, Auto-loadable."""
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import prunekit
from prunekit import Masks
from conftest import random_batch, tiny_model


def compact_tiny():
    masks = Masks(z_head=torch.tensor([[1., 0, 0.5, 1], [0, 0, 0, 0], [1, 1, 1, 0]]),
                  z_int=(torch.arange(36).view(3, 12) % 4 != 0).float(), z_ffn=torch.tensor([1., 1, 0]),
                  z_hidden=(torch.arange(16) % 5 != 0).float())
    return prunekit.prune(tiny_model(), masks)


def test_round_trip_is_bit_exact_and_needs_no_dense_model(tmp_path):
    compact = compact_tiny()
    compact.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "prunekit-bert"
    assert cfg["num_heads"] == [3, 0, 3] and cfg["ffn_dim"] == [9, 9, 0] and cfg["hidden_size"] == 12
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded = prunekit.load_model(tmp_path / "m")
    for (n, a), (m, b) in zip(compact.state_dict().items(), loaded.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(compact.eval()(**batch).logits, loaded(**batch).logits)


def test_auto_model_loads_prunekit_directories(tmp_path):
    compact = compact_tiny()
    compact.save_pretrained(tmp_path / "m")
    auto = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "m")).eval()
    assert isinstance(auto, prunekit.PrunekitBertForSequenceClassification)
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(compact.eval()(**batch).logits, auto(**batch).logits)


@pytest.mark.slow  # loads the real MiniLM
def test_minilm_compact_saves_tokenizer_and_reloads(minilm, minilm_batch, tmp_path):
    masks = Masks(z_head=(torch.arange(72).view(6, 12) % 3 != 0).float(), z_int=(torch.arange(6 * 1536).view(6, 1536) % 2).float())
    compact = prunekit.prune(minilm, masks)
    compact.save_pretrained(tmp_path / "c")
    assert (tmp_path / "c" / "tokenizer.json").is_file()  # the fast tokenizer, saved whole
    loaded = prunekit.load_model(tmp_path / "c")
    assert loaded.config.num_heads == [8] * 6 and loaded.config.ffn_dim == [768] * 6
    text = ["it 's a dull , lifeless mess", "a gripping, beautifully shot film ."]
    assert loaded.tokenizer(text)["input_ids"] == minilm.tokenizer(text)["input_ids"]
    with torch.no_grad():
        assert torch.equal(compact(**minilm_batch).logits, loaded(**minilm_batch).logits)


def test_hf_fine_tuned_classifier_keeps_its_head_and_labels(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=20, max_position_embeddings=32, num_labels=3,
                     id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    torch.manual_seed(0)
    hf = BertForSequenceClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = prunekit.load_model(tmp_path / "hf")
    assert ours.config.num_labels == 3 and ours.config.id2label[2] == "c"
    batch = random_batch(vocab=40)
    with torch.no_grad():
        assert (ours(**batch).logits - hf(**batch).logits).abs().max() < 1e-5


@pytest.mark.parametrize("setup,message", [
    (lambda d: None, "not found"),
    (lambda d: d.mkdir(), "no config.json"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "gpt2"}')), "model_type 'gpt2' is not supported"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{oops")), "not valid JSON"),
])
def test_bad_model_directories_give_one_line_errors(tmp_path, setup, message):
    d = tmp_path / "model"
    setup(d)
    with pytest.raises(prunekit.PrunekitError, match=message):
        prunekit.load_model(str(d))


def test_corrupt_or_pickle_only_weights_are_refused(tmp_path):
    compact_tiny().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(prunekit.PrunekitError, match="not a readable safetensors"):
        prunekit.load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(prunekit.PrunekitError, match="pickle"):
        prunekit.load_model(tmp_path / "m")


def test_a_pickle_beside_a_masks_file_is_never_loaded(tmp_path, monkeypatch):
    """model.safetensors gone, pytorch_model.bin and masks.safetensors there: refused, torch.load never called."""
    import pickle
    from prunekit.errors import PrunekitError
    d = tmp_path / "m"
    model = tiny_model()
    model.save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    Masks(z_mha=torch.ones(3)).save(d / "masks.safetensors")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was opened")
    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    with pytest.raises(PrunekitError, match="no model.safetensors .it has pickle weights, which prunekit never loads"):
        prunekit.load_model(str(d))
    with pytest.raises(PrunekitError, match="no model.safetensors .it has pickle weights"):  # the Auto path too
        type(model).from_pretrained(str(d))
    with pytest.raises(ValueError, match="safetensors only"):
        type(model).from_pretrained(str(d), use_safetensors=False)
