"""BERT's relatives through the one encoder: RoBERTa, DistilBERT and ELECTRA checkpoints (and BERT as
the control) of an odd shape, random weights, saved by transformers and loaded by prunekit, against
transformers' own models; then surgery, save/load, ONNX and both compression methods on them."""
import json

import pytest
import torch
import transformers
from transformers import AutoModelForSequenceClassification

import prunekit
from prunekit import Masks
from prunekit.errors import PrunekitError

SHAPE = dict(L=3, d=96, H=6, F=200)
# most models here are saved without tokenizer files on purpose; one test checks the warning itself
pytestmark = pytest.mark.filterwarnings("ignore:.*has no tokenizer files:UserWarning")


def hf_model(arch: str, vocab: int = 120, num_labels: int = 3, seed: int = 0, **over):
    """A randomly initialised HF sequence classifier of SHAPE, every weight perturbed (no fold can
    hide behind ones and zeros), eager attention (the reference path)."""
    L, d, H, F = SHAPE["L"], SHAPE["d"], SHAPE["H"], SHAPE["F"]
    common = dict(vocab_size=vocab, num_labels=num_labels, attn_implementation="eager")
    cfg = {
        "bert": lambda: transformers.BertConfig(hidden_size=d, num_hidden_layers=L, num_attention_heads=H,
                                                intermediate_size=F, max_position_embeddings=64, **common),
        "roberta": lambda: transformers.RobertaConfig(hidden_size=d, num_hidden_layers=L, num_attention_heads=H,
                                                      intermediate_size=F, max_position_embeddings=66, pad_token_id=1,
                                                      type_vocab_size=1, **common),
        "distilbert": lambda: transformers.DistilBertConfig(dim=d, n_layers=L, n_heads=H, hidden_dim=F,
                                                            max_position_embeddings=64, **common),
        "electra": lambda: transformers.ElectraConfig(embedding_size=48, hidden_size=d, num_hidden_layers=L,
                                                      num_attention_heads=H, intermediate_size=F,
                                                      max_position_embeddings=64, **common),
    }[arch]()
    for k, v in over.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position_embeddings" in name and getattr(cfg, "sinusoidal_pos_embds", False):
                continue
            p.add_(torch.randn_like(p) * 0.2)
    return model


def batch(arch: str, vocab: int = 120, seed: int = 1):
    """Ragged batch: padded positions hold the pad id (RoBERTa counts positions from it)."""
    pad = 1 if arch == "roberta" else 0
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = pad
    out = {"input_ids": ids, "attention_mask": mask}
    if arch == "bert":
        types = torch.zeros_like(ids)
        types[:, 5:] = 1
        out["token_type_ids"] = types
    return out


ARCHS = ["bert", "roberta", "distilbert", "electra"]


@pytest.fixture(scope="module", params=ARCHS)
def saved(request, tmp_path_factory):
    """(arch, HF model, its directory written by save_pretrained)."""
    arch = request.param
    model = hf_model(arch)
    d = tmp_path_factory.mktemp(arch)
    model.save_pretrained(d)
    return arch, model, d


def test_loaded_model_equals_transformers_on_real_tokens(saved):
    arch, hf, d = saved
    ours = prunekit.load_model(str(d))
    assert ours.config.arch == arch
    b = batch(arch)
    with torch.no_grad():
        want = hf(**b, output_hidden_states=True)
        got = ours(**b, output_hidden_states=True)
    real = b["attention_mask"].bool()
    assert (got.logits - want.logits).abs().max() < 1e-5
    assert len(got.hidden_states) == len(want.hidden_states)
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert (g[real] - w[real]).abs().max() < 1e-5


def test_a_model_object_converts_to_what_its_saved_directory_loads_as(saved):
    """prunekit.compress takes a model object: converted in memory, it equals transformers' forward and
    the model load_model reads from the object's saved directory, tensor for tensor."""
    from prunekit.checkpoints import from_object
    arch, hf, d = saved
    ours, loaded = from_object(hf), prunekit.load_model(str(d))
    b = batch(arch)
    with torch.no_grad():
        assert (ours(**b).logits - hf(**b).logits).abs().max() < 1e-5
    assert ours.config.to_dict() | {"_name_or_path": ""} == loaded.config.to_dict() | {"_name_or_path": ""}
    want = loaded.state_dict()
    assert all(torch.equal(t, want[k]) for k, t in ours.state_dict().items()) and ours.state_dict().keys() == want.keys()


def test_a_model_object_prunekit_does_not_take_is_one_line():
    from prunekit.checkpoints import from_object
    gpt2 = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2,
                                                                              vocab_size=10, bos_token_id=0,
                                                                              eos_token_id=0))
    with pytest.raises(PrunekitError, match="model_type 'gpt2' is not supported"):
        from_object(gpt2)
    with pytest.raises(PrunekitError, match="a BertModel is not a sequence classifier"):
        from_object(hf_model("bert").bert)
    with pytest.raises(PrunekitError, match="a Linear is not a model prunekit takes"):
        from_object(torch.nn.Linear(2, 2))


def test_distilbert_with_sinusoidal_positions_loads_a_fixed_table(tmp_path):
    hf = hf_model("distilbert", sinusoidal_pos_embds=True)
    hf.save_pretrained(tmp_path)
    ours = prunekit.load_model(str(tmp_path))
    assert ours.config.position_embedding_type == "sinusoidal"
    assert not ours.bert.embeddings.position.weight.requires_grad   # fixed, as in DistilBERT
    b = batch("distilbert")
    with torch.no_grad():
        assert (ours(**b).logits - hf(**b).logits).abs().max() < 1e-5


def arch_masks(model, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    L, H, F, d = cfg.num_layers, cfg.num_heads[0], cfg.ffn_dim[0], cfg.hidden_size
    z_head = torch.rand(L, H, generator=g) * (torch.rand(L, H, generator=g) > 0.4)
    z_head[1] = 0                                                    # a layer without attention
    return Masks(z_mha=torch.tensor([1.0, 0.7, 1.3]), z_head=z_head, z_ffn=torch.tensor([0.9, 1.0, 0.0]),
                 z_int=torch.rand(L, F, generator=g) * (torch.rand(L, F, generator=g) > 0.5),
                 z_hidden=(torch.rand(d, generator=g) + 0.5) * (torch.arange(d) % 5 != 0))


def test_surgery_is_exact_with_hidden_dims_pruned(saved):
    arch, _, d = saved
    model = prunekit.load_model(str(d))
    masks = arch_masks(model)
    compact = prunekit.prune(model, masks)
    assert compact.config.hidden_size == int((masks.z_hidden != 0).sum()) and compact.config.num_heads[1] == 0
    b = batch(arch)
    with torch.no_grad():
        assert (compact(**b).logits - model(**b, masks=masks).logits).abs().max() < 1e-5


def test_compact_round_trip_and_auto_class(saved, tmp_path):
    arch, _, d = saved
    model = prunekit.load_model(str(d))
    compact = prunekit.prune(model, arch_masks(model))
    compact.save_pretrained(tmp_path / "c")
    back = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "c"))
    assert type(back) is type(compact) and back.config.arch == arch
    b = batch(arch)
    with torch.no_grad():
        assert torch.equal(back.eval()(**b).logits, compact.eval()(**b).logits)


@pytest.mark.slow
def test_onnx_export_matches_and_fuses_one_attention_per_layer_with_heads(saved, tmp_path):
    from prunekit.export.onnx_export import export_onnx
    from prunekit.export.runtime import OnnxClassifier
    arch, _, d = saved
    model = prunekit.load_model(str(d))
    compact = prunekit.prune(model, arch_masks(model))
    r = export_onnx(compact, tmp_path / "onnx", optimize=True, keep_fused=True, progress=False)   # parity is checked inside
    assert r["fusion"]["attention_nodes"] == sum(h > 0 for h in compact.config.num_heads) == 2
    b = batch(arch)
    got = OnnxClassifier(tmp_path / "onnx")(b)
    with torch.no_grad():
        assert (got - compact(**b).logits).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------
# tokenizers and the verbs


def roberta_tokenizer(texts):
    """A byte-level BPE tokenizer trained here on the task's text (the hub is out of reach)."""
    from tokenizers import ByteLevelBPETokenizer
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return transformers.RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                             sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                             pad_token="<pad>", mask_token="<mask>")


@pytest.fixture(scope="module")
def arch_dirs(tok, sst2_glue_dir, tmp_path_factory):
    """arch -> a directory with a tiny HF classifier of that family (2 labels) and a matching tokenizer."""
    texts = [line.split("\t")[0] for line in (sst2_glue_dir / "SST-2" / "train.tsv").read_text().splitlines()[1:]]
    out = {}
    for arch in ARCHS:
        tokenizer = roberta_tokenizer(texts) if arch == "roberta" else tok
        model = hf_model(arch, vocab=len(tokenizer), num_labels=2)
        d = tmp_path_factory.mktemp(f"{arch}-model")
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        out[arch] = d
    return out


def test_roberta_tokenizer_gives_no_token_types_and_data_still_loads(arch_dirs, sst2_glue_dir):
    from prunekit.data import load_task
    model = prunekit.load_model(str(arch_dirs["roberta"]))
    assert "token_type_ids" not in model.tokenizer("a b")
    task = load_task("sst2", model.tokenizer, glue_dir=sst2_glue_dir)
    assert task.train[0]["input_ids"][0] == model.tokenizer.cls_token_id
    assert set(task.train[0]["token_type_ids"]) == {0}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["post-training", "cofi"])
def test_both_methods_compress_every_architecture(arch, method, arch_dirs, sst2_glue_dir, tmp_path, capsys):
    from prunekit.cli import main
    out = tmp_path / "out"
    extra = (["--macs", "0.5", "--num-samples", "32", "--batch-size", "16", "--no-eval"] if method == "post-training"
             else ["--target-sparsity", "0.4", "--batch-size", "16", "--prune-epochs", "1", "--finetune-epochs", "1"])
    assert main(["compress", "--method", method, "--teacher", str(arch_dirs[arch]), "--task", "sst2", "--glue-dir",
                 str(sst2_glue_dir), "--output", str(out), "--device", "cpu", "--threads", "1", *extra]) == 0, \
        capsys.readouterr().err
    r = json.loads((out / "report.json").read_text())
    compact = prunekit.load_model(str(out))
    assert compact.config.arch == arch and compact.tokenizer is not None
    assert r["method"] == method
    assert main(["eval", "--model", str(out), "--glue-dir", str(sst2_glue_dir), "--device", "cpu"]) == 0


# ---------------------------------------------------------------------------------------------
# loading without tokenizer files, and the hub path


def test_a_model_without_tokenizer_files_loads_with_a_warning_and_text_verbs_say_what_is_missing(tmp_path, capsys):
    from prunekit.cli import main
    hf_model("bert", num_labels=2).save_pretrained(tmp_path / "m")
    with pytest.warns(UserWarning, match="has no tokenizer files .tokenizer.json, tokenizer_config.json, vocab.txt"):
        model = prunekit.load_model(str(tmp_path / "m"))
    assert model.tokenizer is None
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "m"), "--task", "sst2", "--glue-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("prunekit eval: error:") and "has no tokenizer files (tokenizer.json / " in err[-1]


def test_a_hub_name_loads_through_snapshot_download_and_offline_it_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from prunekit.cli import main
    hf_model("electra", num_labels=2).save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append(repo_id)
        return str(tmp_path / "snapshot")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.warns(UserWarning, match="no tokenizer files"):
        model = prunekit.load_model("some-org/tiny-electra")
    assert calls == ["some-org/tiny-electra"] and model.config.arch == "electra"

    def offline(repo_id, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not in the cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(PrunekitError, match="'some-org/tiny-electra' is not a local directory and could not be "
                                            "fetched from the hub"):
        prunekit.load_model("some-org/tiny-electra")
    assert main(["info", "some-org/tiny-electra"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_unsupported_relatives_are_named(tmp_path):
    cfg = {"model_type": "albert", "vocab_size": 10}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PrunekitError, match="model_type 'albert' is not supported .supported: bert, roberta, "
                                            "distilbert, electra, prunekit-bert."):
        prunekit.load_model(str(tmp_path))


def test_electra_surgery_keeping_as_many_hidden_dims_as_its_embedding_size(tmp_path):
    hf_model("electra").save_pretrained(tmp_path)
    model = prunekit.load_model(str(tmp_path))
    keep = torch.zeros(SHAPE["d"])
    keep[:48] = 1.0                                                   # exactly embedding_size (48) dims kept
    masks = Masks(z_hidden=keep)
    compact = prunekit.prune(model, masks)
    assert compact.config.hidden_size == 48 and compact.bert.embeddings.project is not None
    b = batch("electra")
    with torch.no_grad():
        assert (compact(**b).logits - model(**b, masks=masks).logits).abs().max() < 1e-5
