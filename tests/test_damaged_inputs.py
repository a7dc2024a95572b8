"""Damaged inputs that used to load or run (issue 23): a pickle reached through a safetensors index,
weights that do not fit their config (missing, unexpected, misshapen, NaN), configs that `info` trusted,
text in the label column, a byte-order mark, GLUE without GLUE_DIR and without a network.

Every refusal is checked as the bad-input contract says: exit code 2, one line on stderr naming the
problem, nothing written; and on the library paths (prunekit.load_model, from_pretrained, the Auto
classes) a PrunekitError with the same line."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import prunekit
from conftest import sentence
from prunekit import Masks
from prunekit.cli import main
from prunekit.data import load_task
from prunekit.errors import PrunekitError
from prunekit.model import PrunekitBertForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# helpers: run a verb under the contract; damage a copy of a good model directory


def refused(verb: str, args: list, where: Path, capfd) -> str:
    """Run `prunekit VERB ARGS`; assert exit 2, one line on stderr, nothing new under `where`; return the line."""
    before = sorted(p.relative_to(where) for p in where.rglob("*"))
    capfd.readouterr()
    assert main([verb, *map(str, args)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"prunekit {verb}: error: ") and "Traceback" not in err[0], err[0]
    assert sorted(p.relative_to(where) for p in where.rglob("*")) == before     # nothing written, no temp leftovers
    return err[0]


def copy_of(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    return dest


def edit_weights(d: Path, change) -> Path:
    """Rewrite d/model.safetensors as change(dict of tensors) leaves it."""
    weights = load_file(str(d / "model.safetensors"))
    change(weights)
    save_file(weights, str(d / "model.safetensors"))
    return d


def edit_config(d: Path, **changes) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def pickle_through_index(d: Path) -> Path:
    """The probe's case: no model.safetensors; model.safetensors.index.json maps every tensor to a
    pytorch_model.bin whose classifier is 0.125; masks.safetensors beside it."""
    weights = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    weights["classifier.weight"] = torch.full_like(weights["classifier.weight"], 0.125)
    torch.save(weights, d / "pytorch_model.bin")
    index = {"metadata": {"total_size": 0}, "weight_map": {k: "pytorch_model.bin" for k in weights}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    Masks(z_mha=torch.ones(3)).save(d / "masks.safetensors")
    return d


@pytest.fixture
def no_unpickling(monkeypatch):
    """Every torch.load is recorded and refused: a test that sees one has seen a pickle opened."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[:1])
        raise AssertionError("a pickle was opened")
    monkeypatch.setattr(torch, "load", refuse)
    return calls


def verb_args(verb: str, model: Path, t: Path, glue: Path) -> list:
    """Arguments with which `verb` gets as far as loading `model` (a tiny SST-2 model)."""
    data = ["--task", "sst2", "--glue-dir", glue]
    return {
        "info": [model],
        "prune": ["--model", model, "--masks", t / "keep.safetensors", "--output", t / "out"],
        "finetune": ["--model", model, *data, "--output", t / "out", "--max-steps", "1"],
        "eval": ["--model", model, *data],
        "export": ["--onnx", "--model", model, "--output", t / "out"],
        "compress": ["--teacher", model, *data, "--macs", "0.5", "--output", t / "out", "--no-eval"],
        "compress-cofi": ["--method", "cofi", "--teacher", model, *data, "--target-sparsity", "0.5",
                          "--output", t / "out", "--max-steps", "1"],
    }[verb]


VERBS = ("info", "prune", "finetune", "eval", "export", "compress", "compress-cofi")


@pytest.fixture
def workdir(tmp_path):
    """tmp_path with a masks file for `prune` (written before the verb runs: not its output)."""
    Masks(z_head=torch.ones(3, 4)).save(tmp_path / "keep.safetensors")
    return tmp_path


# ---------------------------------------------------------------------------------------------
# A. nothing is ever unpickled: an index naming a pickle is refused on every loading path


@pytest.mark.parametrize("verb", VERBS)
def test_a_pickle_named_by_the_index_is_refused_by_every_verb(verb, tiny_model_dir, sst2_glue_dir, workdir, capfd,
                                                              no_unpickling):
    bad = pickle_through_index(copy_of(tiny_model_dir, workdir / "bad"))
    line = refused(verb.split("-")[0], verb_args(verb, bad, workdir, sst2_glue_dir), workdir, capfd)
    assert "model.safetensors.index.json names 'pytorch_model.bin'" in line and "never unpickles" in line, line
    assert no_unpickling == []


def test_a_pickle_named_by_the_index_is_refused_by_the_library_and_the_auto_classes(tiny_model_dir, tmp_path,
                                                                                   no_unpickling):
    from transformers import AutoModelForSequenceClassification
    bad = pickle_through_index(copy_of(tiny_model_dir, tmp_path / "bad"))
    message = "model.safetensors.index.json names 'pytorch_model.bin': an index may name only .safetensors files"
    for load in (prunekit.load_model, PrunekitBertForSequenceClassification.from_pretrained,
                 AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(PrunekitError, match=message):
            load(str(bad))
    assert no_unpickling == []


def test_a_pickle_named_by_the_index_is_refused_by_bench_latency(tiny_model_dir, tmp_path, capsys, no_unpickling):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_latency", ROOT / "bench" / "latency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bad = pickle_through_index(copy_of(tiny_model_dir, tmp_path / "bad"))
    rc = bench.main(["--dense", str(bad), "--runtimes", "torch", "--batch", "1", "--seq", "8", "--budget", "0.01",
                     "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "res" / "lat")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "names 'pytorch_model.bin'" in err, err
    assert no_unpickling == [] and not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_index_entries_outside_the_directory_and_config_redirects_are_refused(tiny_model_dir, tmp_path,
                                                                              no_unpickling):
    from transformers import AutoModelForSequenceClassification
    d = copy_of(tiny_model_dir, tmp_path / "m")
    (d / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.safetensors"}}))
    with pytest.raises(PrunekitError, match=r"names '../elsewhere.safetensors': an index may name only .safetensors "
                                            "files beside it"):
        prunekit.load_model(d)
    # config.json's transformers_weights makes transformers torch.load the file it names
    d = copy_of(tiny_model_dir, tmp_path / "redirect")
    torch.save(load_file(str(d / "model.safetensors")), d / "adapter_model.bin")
    edit_config(d, transformers_weights="adapter_model.bin")
    for load in (prunekit.load_model, AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(PrunekitError, match="transformers_weights names 'adapter_model.bin'; prunekit reads "
                                                "model.safetensors or model.safetensors.index.json only"):
            load(str(d))
    assert no_unpickling == []


def test_a_hub_repo_whose_index_names_a_pickle_is_refused_before_download(tiny_model_dir, tmp_path, no_unpickling):
    """The Auto class given a hub id: the index transformers would follow is read (here from a hub
    cache, offline) and refused before any weight file is fetched."""
    snapshot = tmp_path / "cache" / "models--someone--tiny" / "snapshots" / ("0" * 40)
    pickle_through_index(copy_of(tiny_model_dir, snapshot))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    with pytest.raises(PrunekitError, match="names 'pytorch_model.bin'"):
        PrunekitBertForSequenceClassification.from_pretrained("someone/tiny", cache_dir=str(tmp_path / "cache"))
    assert no_unpickling == []


def test_sharded_safetensors_load_on_every_path_and_equal_the_unsharded_model(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    model = prunekit.load_model(tiny_model_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="400KB")
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    want = model.state_dict()
    for load in (prunekit.load_model, AutoModelForSequenceClassification.from_pretrained):
        got = load(str(tmp_path / "sharded")).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert main(["info", str(tmp_path / "sharded")]) == 0 and "layer" in capsys.readouterr().out
    # an HF checkpoint in shards
    torch.manual_seed(0)
    hf = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=12,
                                                  max_position_embeddings=32, num_labels=3))
    hf.save_pretrained(tmp_path / "hf", max_shard_size="10KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    ours = prunekit.load_model(tmp_path / "hf")
    assert torch.equal(ours.classifier.weight, hf.classifier.weight)
    assert torch.equal(ours.bert.layers[1].ffn.up.weight, hf.bert.encoder.layer[1].intermediate.dense.weight)


# ---------------------------------------------------------------------------------------------
# 1. weights must be the ones the config implies


def drop(*names):
    return lambda w: [w.pop(n) for n in names]


def layer_gone(layer):
    return lambda w: [w.pop(k) for k in [k for k in w if k.startswith(f"bert.layers.{layer}.")]]


def poisoned(name, value):
    def change(w):
        w[name] = w[name].clone()
        w[name].view(-1)[3] = value
    return change


def extra(w):
    w["bert.layers.3.ffn.up.weight"] = torch.zeros(12, 16)


def reshaped(w):
    w["classifier.weight"] = torch.zeros(5, 16)


DAMAGE = {  # name -> (change to model.safetensors, what the error line must say)
    "missing": (drop("classifier.weight"), "its weights do not fit its config.json (missing classifier.weight)"),
    "layer-missing": (layer_gone(2), "(missing bert.layers.2.attention.query.weight, bert.layers.2.attention.query.bias, "
                                     "bert.layers.2.attention.key.weight, ... (16 in all))"),
    "unexpected": (extra, "(unexpected bert.layers.3.ffn.up.weight)"),
    "shape": (reshaped, "(shape classifier.weight [5, 16] for [2, 16])"),
    "nan": (poisoned("bert.layers.1.ffn.up.weight", float("nan")), "weights hold NaN or inf (bert.layers.1.ffn.up.weight)"),
    "inf": (poisoned("bert.embeddings.word.weight", float("-inf")), "weights hold NaN or inf (bert.embeddings.word.weight)"),
}
VALUES = ("nan", "inf")  # `info` reads no tensor data: it checks names and shapes, not values


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_weights_that_do_not_fit_the_config_are_refused_by_every_verb(verb, damage, tiny_model_dir, sst2_glue_dir,
                                                                      workdir, capfd):
    if verb == "info" and damage in VALUES:
        pytest.skip("info reads the safetensors headers only")
    change, message = DAMAGE[damage]
    bad = edit_weights(copy_of(tiny_model_dir, workdir / "bad"), change)
    args = verb_args(verb, bad, workdir, sst2_glue_dir)
    line = refused(verb.split("-")[0], args, workdir, capfd)
    assert message in line, line


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_weights_that_do_not_fit_the_config_are_refused_by_the_library_and_the_auto_classes(damage, tiny_model_dir,
                                                                                            tmp_path):
    from transformers import AutoModelForSequenceClassification
    change, message = DAMAGE[damage]
    bad = edit_weights(copy_of(tiny_model_dir, tmp_path / "bad"), change)
    for load in (prunekit.load_model, AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(PrunekitError) as e:
            load(str(bad))
        assert message in str(e.value) and "\n" not in str(e.value)


def test_a_truncated_weight_file_is_one_line(tiny_model_dir, tmp_path, capfd):
    bad = copy_of(tiny_model_dir, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:len(data) // 2])
    for verb in ("info", "eval"):
        line = refused(verb, [bad] if verb == "info" else ["--model", bad, "--task", "sst2"], tmp_path, capfd)
        assert "model.safetensors is not a readable safetensors file (" in line


def tiny_hf_bert(d: Path, classifier=True, num_labels=3, **config):
    from transformers import BertConfig, BertForSequenceClassification, BertModel
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=12,
                     max_position_embeddings=32, num_labels=num_labels)
    torch.manual_seed(0)
    model = (BertForSequenceClassification if classifier else BertModel)(cfg)
    model.save_pretrained(d)
    if config:
        edit_config(d, **config)
    return d


HF_DAMAGE = {  # HF BERT checkpoints (names in the file, 'bert.' prefix removed)
    "classifier-bias": (drop("classifier.bias"), "(missing classifier.bias)"),
    "pooler": (drop("bert.pooler.dense.weight"), "(missing pooler.dense.weight)"),
    "layer": (lambda w: [w.pop(k) for k in [k for k in w if ".layer.1." in k]], "(missing encoder.layer.1."),
    "extra-layer": (lambda w: w.update({"bert.encoder.layer.2.output.dense.bias": torch.zeros(16)}),
                    "(unexpected encoder.layer.2.output.dense.bias)"),
    "nan": (poisoned("bert.encoder.layer.0.output.dense.weight", float("nan")),
            "weights hold NaN or inf (encoder.layer.0.output.dense.weight)"),
}


@pytest.mark.parametrize("damage", list(HF_DAMAGE))
def test_a_fine_tuned_hf_checkpoint_must_be_complete(damage, tmp_path, capfd):
    change, message = HF_DAMAGE[damage]
    bad = edit_weights(tiny_hf_bert(tmp_path / "hf"), change)
    with pytest.raises(PrunekitError) as e:
        prunekit.load_model(bad)
    assert message in str(e.value), str(e.value)
    if damage != "nan":
        assert message in refused("info", [bad], tmp_path, capfd)


def test_a_base_checkpoint_loads_with_one_line_saying_the_head_is_new(tmp_path, recwarn, capfd):
    """A pre-trained encoder (BertModel: no classifier; a pooler, or none) is what fine-tuning starts from."""
    from transformers import BertConfig, BertModel
    base = tiny_hf_bert(tmp_path / "base", classifier=False)
    model = prunekit.load_model(base, num_labels=2)
    assert model.config.num_labels == 2
    new_head = [str(w.message) for w in recwarn if "classification head" in str(w.message)]
    assert new_head == [f"{base}: it has no classification head; a new, untrained one of 2 labels is initialised"]
    assert torch.equal(model.bert.pooler.weight, BertModel.from_pretrained(base).pooler.dense.weight)
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=12, max_position_embeddings=32),
              add_pooling_layer=False).save_pretrained(tmp_path / "no-pooler")
    assert prunekit.load_model(tmp_path / "no-pooler", num_labels=2).config.num_labels == 2
    capfd.readouterr()
    assert main(["info", str(base)]) == 0                    # info reports it without a word about the head
    assert capfd.readouterr().err == ""


@pytest.mark.slow  # loads the packaged MiniLM
def test_the_packaged_minilm_still_loads_for_fine_tuning_with_one_warning(recwarn):
    model = prunekit.load_model("minilm", num_labels=2)
    assert model.config.num_layers == 6
    assert [str(w.message) for w in recwarn] == ["minilm: it has no classification head; a new, untrained one of 2 "
                                                 "labels is initialised"]


# ---------------------------------------------------------------------------------------------
# 5. `info` makes load_model's config checks, from config.json and the headers alone


PRUNEKIT_CONFIGS = {  # config.json change -> what the error line must say
    "one-layer-lists": ({"num_heads": [4], "ffn_dim": [12]}, "(unexpected bert.layers.1."),
    "four-layer-lists": ({"num_heads": [4] * 4, "ffn_dim": [12] * 4}, "(missing bert.layers.3."),
    "no-attention": ({"num_heads": [0, 0, 0]}, "(unexpected bert.layers.0.attention."),
    "num-hidden-layers": ({"num_hidden_layers": 1}, "num_hidden_layers is 1 but num_heads and ffn_dim list 3 layers"),
    "string-eps": ({"layer_norm_eps": "1e-12"}, "layer_norm_eps must be a positive number, got '1e-12'"),
    "unknown-arch": ({"arch": "gpt2"}, "arch must be one of bert, roberta, distilbert, electra, got 'gpt2'"),
    "dropout": ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob must be a probability in [0, 1), got 1.5"),
    "activation": ({"pooler_activation": "swish"}, "pooler_activation must be one of tanh, gelu, relu"),
    "pad": ({"pad_token_id": 10 ** 9}, "pad_token_id must be a token id below vocab_size"),
}
HF_CONFIGS = {
    "negative-layers": ({"num_hidden_layers": -2}, "bert config.json: num_hidden_layers must be a positive whole "
                                                   "number, got -2"),
    "zero-heads": ({"num_attention_heads": 0}, "num_attention_heads must be a positive whole number, got 0"),
    "string-eps": ({"layer_norm_eps": "small"}, "bert config.json: layer_norm_eps must be a positive number"),
    "fewer-layers": ({"num_hidden_layers": 1}, "(unexpected encoder.layer.1."),
    "more-layers": ({"num_hidden_layers": 3}, "(missing encoder.layer.2."),
}


@pytest.mark.parametrize("case", list(PRUNEKIT_CONFIGS) + [f"hf-{c}" for c in HF_CONFIGS])
def test_info_makes_the_config_checks_load_model_makes(case, tiny_model_dir, tmp_path, capfd):
    if case.startswith("hf-"):
        changes, message = HF_CONFIGS[case[3:]]
        bad = tiny_hf_bert(tmp_path / "bad", **changes)
    else:
        changes, message = PRUNEKIT_CONFIGS[case]
        bad = edit_config(copy_of(tiny_model_dir, tmp_path / "bad"), **changes)
    assert message in refused("info", [bad], tmp_path, capfd)
    with pytest.raises(PrunekitError) as e:
        prunekit.load_model(bad)
    assert message in str(e.value)


def test_info_reads_no_tensor_data(tiny_model_dir, tmp_path, monkeypatch, capfd):
    import prunekit.weights
    hf = tiny_hf_bert(tmp_path / "hf")

    def no(*args, **kwargs):
        raise AssertionError("info read the weights")
    monkeypatch.setattr(prunekit.weights, "load_file", no)
    monkeypatch.setattr(PrunekitBertForSequenceClassification, "from_pretrained", no)
    for model in (tiny_model_dir, hf):
        assert main(["info", str(model)]) == 0
        assert "layer" in capfd.readouterr().out


# ---------------------------------------------------------------------------------------------
# 2. text in the label column


def write_tsv(path: Path, rows, header=("sentence", "label"), bom=False):
    text = "\n".join("\t".join(r) for r in [header, *rows]) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory):
    import random
    rng = random.Random(1)
    d = tmp_path_factory.mktemp("custom")
    rows = [(sentence(rng, i % 2, 9), str(i % 2)) for i in range(80)]
    return write_tsv(d / "train.tsv", rows[:60]), write_tsv(d / "dev.tsv", rows[60:])


def test_a_text_column_given_as_the_label_column_is_refused(tiny_model_dir, sentiment_files, tmp_path, capfd):
    train, dev = sentiment_files
    line = refused("finetune", ["--model", tiny_model_dir, "--task", "mytask", "--train-file", train, "--dev-file", dev,
                                "--text-columns", "sentence", "--label-column", "sentence", "--output", tmp_path / "o"],
                   tmp_path, capfd)
    assert "train.tsv: the label column 'sentence' has" in line and "distinct values in 60 rows ('" in line
    assert "looks like text, not labels" in line and "--label-list" in line


def test_many_classes_pass_and_a_label_list_insists(tok, tmp_path):
    rows = [(f"text {i}", f"intent{i % 150}") for i in range(3000)]   # CLINC150-like: many classes, each repeated
    task = load_task("intents", tok, train_file=write_tsv(tmp_path / "intents.tsv", rows), text_columns=["sentence"])
    assert task.num_labels == 150
    rare = write_tsv(tmp_path / "rare.tsv", [(f"t {i}", f"c{i % 30}") for i in range(40)])  # 30 classes in 40 rows
    with pytest.raises(PrunekitError, match="the label column 'label' has 30 distinct values in 40 rows"):
        load_task("rare", tok, train_file=rare, text_columns=["sentence"])
    names = [f"c{i}" for i in range(30)]
    task = load_task("rare", tok, train_file=rare, text_columns=["sentence"], label_list=names)
    assert task.labels == names and [e["label"] for e in task.train[:3]] == [0, 1, 2]


def test_label_list_errors(tok, sentiment_files, tmp_path, capfd):
    train, dev = sentiment_files
    with pytest.raises(PrunekitError, match=r"--label-list 0,1 differs from the labels the model was trained with"):
        load_task("x", tok, dev_file=dev, text_columns=["sentence"], labels=["neg", "pos"], label_list=["0", "1"])
    with pytest.raises(PrunekitError, match="must name distinct, non-empty labels"):
        load_task("x", tok, dev_file=dev, text_columns=["sentence"], label_list=["0", "0"])
    with pytest.raises(PrunekitError, match="does not fit task stsb: it is a regression task"):
        load_task("stsb", tok, dev_file=dev, label_list=["0", "1"])
    with pytest.raises(PrunekitError, match=r"label '1' is not in the label set \(0, 2\)"):
        load_task("x", tok, dev_file=dev, text_columns=["sentence"], label_list=["0", "2"])


def test_label_list_reaches_the_trained_model(tiny_model_dir, sentiment_files, tmp_path, capfd):
    train, dev = sentiment_files
    assert main(["finetune", "--model", str(tiny_model_dir), "--task", "mytask", "--train-file", str(train),
                 "--dev-file", str(dev), "--text-columns", "sentence", "--label-list", "1,0", "--output",
                 str(tmp_path / "o"), "--max-steps", "2", "--batch-size", "8"]) == 0
    assert prunekit.load_model(tmp_path / "o").config.id2label == {0: "1", 1: "0"}


# ---------------------------------------------------------------------------------------------
# 3. a byte-order mark (what spreadsheet exports write) is not part of the first column name


@pytest.mark.parametrize("kind", ["tsv", "csv", "jsonl"])
def test_a_byte_order_mark_does_not_rename_the_first_column(kind, tok, tiny_model_dir, tmp_path, capfd):
    rows = [("a fine film", "1"), ("a dull film", "0"), ("great", "1")]
    f = tmp_path / f"dev.{kind}"
    if kind == "jsonl":
        text = "".join(json.dumps({"sentence": s, "label": y}) + "\n" for s, y in rows)
    else:
        sep = "\t" if kind == "tsv" else ","
        text = "".join(sep.join(r) + "\n" for r in [("sentence", "label"), *rows])
    f.write_text("\ufeff" + text, encoding="utf-8")
    task = load_task("mine", tok, dev_file=f, text_columns=["sentence"])
    assert [e["label"] for e in task.dev] == [1, 0, 1]
    assert task.dev[0]["input_ids"] == tok("a fine film")["input_ids"]
    capfd.readouterr()
    assert main(["eval", "--model", str(tiny_model_dir), "--task", "mine", "--dev-file", str(f),
                 "--text-columns", "sentence"]) == 0
    assert "mine (dev 3 examples): accuracy" in capfd.readouterr().out


# ---------------------------------------------------------------------------------------------
# 4. GLUE without GLUE_DIR and without a network fails at once


def test_offline_without_glue_dir_fails_within_seconds(tiny_model_dir, tmp_path, monkeypatch, capfd):
    import datasets  # noqa: F401  (imported here, so its import time is not counted)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    line = refused("eval", ["--model", tiny_model_dir, "--task", "sst2"], tmp_path, capfd)
    assert time.perf_counter() - start < 10
    assert "no GLUE_DIR set" in line and "set GLUE_DIR" in line


@pytest.mark.slow  # subprocesses: the hub settings are read when huggingface_hub is imported
@pytest.mark.parametrize("command", [["eval", "--model", "MODEL", "--task", "sst2"], ["info", "someone/some-model"]])
def test_an_unreachable_hub_fails_at_once_instead_of_retrying(command, tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                             "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"))  # nothing listens on port 9
    timed = ("import sys, time, datasets, prunekit.cli\n"   # imports first: the clock times the verb alone
             "start = time.perf_counter()\n"
             "rc = prunekit.cli.main(sys.argv[1:])\n"
             "print(time.perf_counter() - start)\n"
             "sys.exit(rc)\n")
    args = [str(tiny_model_dir) if a == "MODEL" else a for a in command]
    r = subprocess.run([sys.executable, "-c", timed, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert ("hub unreachable" if command[0] == "eval" else "could not be fetched from the hub") in r.stderr, r.stderr
    assert float(r.stdout.split()[-1]) < 8      # datasets' retries took 27 s and more
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["hf-home"])
