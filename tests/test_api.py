"""prunekit.compress (issue 21 §2): the README's Python API examples run as written (a tiny teacher,
tiny data, a few steps), both methods; tables, datasets and DataLoaders give the task the CLI's files
give; output= writes what `prunekit compress --output` writes and nothing is written without it;
progress=False draws no bar; bad input is the CLI's one-line PrunekitError."""
import json
import random
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers
from datasets import ClassLabel, Dataset, DatasetDict

import prunekit
from conftest import sentence, small_model, tiny_model, write_sentiment_glue
from prunekit.cli import main
from prunekit.data import batches, collate, load_task
from prunekit.errors import PrunekitError
from prunekit.inputs import user_task

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parent.parent / "README.md"
QUICK = dict(num_samples=48, heldout=16, progress=False)   # post-training on 96 examples, quietly


def readme_examples() -> list[str]:
    """The ```python blocks of the README's "## Python API" section that call prunekit.compress."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return [b for b in blocks if "prunekit.compress(" in b]


def reviews(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame({"text": [sentence(rng, i % 2) for i in range(n)], "label": [i % 2 for i in range(n)]})


@pytest.fixture(scope="module")
def workspace(tok, tmp_path_factory):
    """The files the README's examples read, relative to a working directory: runs/teacher-sst2 (a tiny
    HF BERT classifier with the MiniLM tokenizer), reviews/{train,dev}.csv and glue/SST-2."""
    d = tmp_path_factory.mktemp("work")
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=12, max_position_embeddings=64,
                                  num_labels=2)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(d / "runs" / "teacher-sst2")
    tok.save_pretrained(d / "runs" / "teacher-sst2")
    (d / "reviews").mkdir()
    reviews(96, 0).to_csv(d / "reviews" / "train.csv", index=False)
    reviews(40, 1).to_csv(d / "reviews" / "dev.csv", index=False)
    write_sentiment_glue((d / "glue").mkdir() or d / "glue", 96, 40, max_filler=9)
    return d


@pytest.fixture
def in_workspace(workspace, tmp_path, monkeypatch):
    """A fresh working directory holding a copy of the workspace's inputs."""
    shutil.copytree(workspace, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "glue"))
    return tmp_path


def tree(d: Path) -> set:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# ---------------------------------------------------------------- the README's examples, as written


def test_the_readme_has_an_example_for_each_method():
    examples = readme_examples()
    assert len(examples) == 2
    assert 'method="post-training"' in examples[0] and 'method="cofi"' in examples[1]


def test_readme_post_training_example_runs(in_workspace, capsys):
    code = readme_examples()[0]
    assert code.count("distill_steps=1000") == 1
    before = tree(in_workspace)
    namespace = {}
    exec(code.replace("distill_steps=1000", "distill_steps=3"), namespace)  # a few steps: the only change
    compact, report = namespace["compact"], namespace["report"]
    assert isinstance(report, prunekit.Report) and report["method"] == report.method == "post-training"
    assert report.task == "custom" and set(report.dev_metrics) >= {"teacher", "compact", "distilled"}
    assert report.macs_kept <= 0.5 and report.distill_steps == 3
    assert report.teacher == "runs/teacher-sst2"
    assert f"{report.macs_kept} " in capsys.readouterr().out
    saved = prunekit.load_model("runs/compact-reviews")
    assert saved.config.num_heads == compact.config.num_heads and saved.tokenizer is not None
    assert {p.split("/")[:2] == ["runs", "compact-reviews"] for p in tree(in_workspace) - before} == {True}


@pytest.mark.slow
def test_readme_cofi_example_runs_and_writes_what_the_cli_writes(in_workspace):
    namespace = {}
    exec(readme_examples()[1], namespace)
    report = namespace["report"]
    out = in_workspace / "runs" / "cofi-sst2"
    assert report.method == "cofi" and report.task == "sst2"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report.constraint["target_sparsity"] == 0.9 and report.params_kept < 1   # a tiny run: short of the target, but pruned
    assert main(["compress", "--method", "cofi", "--teacher", "runs/teacher-sst2", "--task", "sst2",
                 "--target-sparsity", "0.9", "--output", "cli", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (in_workspace / "cli").iterdir())
    cli = json.loads((in_workspace / "cli" / "report.json").read_text())
    assert set(cli) == set(report)
    same = ("sparsity", "macs_kept", "params_kept", "structure", "dev_metrics", "max_length", "task")
    assert {k: cli[k] for k in same} == {k: report[k] for k in same}   # one code path: one result


# ---------------------------------------------------------------- inputs: tables, datasets, loaders


@pytest.fixture(scope="module")
def teacher(tok):
    return small_model(tok)


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_sentiment_glue(tmp_path_factory.mktemp("glue"), 96, 40, max_filler=9)


def glue_frames(glue: Path):
    read = lambda split: pd.read_csv(glue / "SST-2" / f"{split}.tsv", sep="\t", quoting=3)  # noqa: E731
    return read("train"), read("dev")


def test_a_table_dataset_and_loader_give_the_task_the_glue_files_give(teacher, glue, tok):
    reference = load_task("sst2", tok, glue_dir=str(glue), max_length=64)  # the CLI's reading of the files
    train, dev = glue_frames(glue)
    got = {
        "DataFrame": user_task(teacher, train, dev, task="sst2", max_length=64)[0],
        "Dataset": user_task(teacher, Dataset.from_pandas(train), Dataset.from_pandas(dev), text_column="sentence",
                             task="sst2", max_length=64)[0],
        "DatasetDict with ClassLabel names": user_task(teacher, DatasetDict(
            train=Dataset.from_pandas(train), validation=Dataset.from_pandas(dev)).cast_column(
            "label", ClassLabel(names=["negative", "positive"])), task="sst2", max_length=64)[0],
    }
    loaders = [torch.utils.data.DataLoader(examples, batch_size=7, collate_fn=collate)
               for examples in (reference.train, reference.dev)]
    got["DataLoader"] = user_task(teacher, *loaders, task="sst2")[0]
    for kind, task in got.items():
        assert (task.name, task.labels, task.num_labels) == ("sst2", ["negative", "positive"], 2), kind
        assert task.train == reference.train and task.dev == reference.dev, kind


def test_string_labels_are_mapped_like_a_files(teacher):
    train, dev = reviews(20, 0), reviews(8, 1)
    for df in (train, dev):
        df["label"] = df["label"].map({0: "neg", 1: "pos"})
    task, _ = user_task(teacher, train, dev, text_column="text")
    assert task.labels == ["neg", "pos"] and [e["label"] for e in task.train[:4]] == [0, 1, 0, 1]


def test_no_output_writes_nothing_and_progress_false_is_quiet(teacher, glue, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # CoFi's temporary work directory lands here
    train, dev = glue_frames(glue)
    prunekit.compress(teacher, train, dev, task="sst2", macs=0.5, **QUICK)
    prunekit.compress(teacher, train, dev, task="sst2", method="cofi", target_sparsity=0.5, prune_epochs=1,
                      finetune_epochs=1, progress=False)
    assert list(tmp_path.iterdir()) == []
    out, err = capfd.readouterr()
    assert "it/s]" not in err and "step/s]" not in err and "\r" not in err, err[-500:]
    assert "step " not in out, out[-500:]   # nor CoFi's evaluation lines
    prunekit.compress(teacher, train, dev, task="sst2", macs=0.5, num_samples=48, heldout=16)
    assert "%|" in capfd.readouterr().err   # the bars, on by default


def test_output_refuses_to_replace_what_it_did_not_write_unless_overwrite(teacher, glue, tmp_path):
    train, dev = glue_frames(glue)
    prunekit.compress(teacher, train, dev, task="sst2", macs=0.5, output=tmp_path / "o", **QUICK)
    with pytest.raises(PrunekitError, match="exists"):
        prunekit.compress(teacher, train, dev, task="sst2", macs=0.5, output=tmp_path / "o", **QUICK)
    prunekit.compress(teacher, train, dev, task="sst2", macs=0.5, output=tmp_path / "o", overwrite=True, **QUICK)


# ---------------------------------------------------------------- bad input: one line, the CLI's words


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("change, message", [
    (dict(model=torch.nn.Linear(2, 2)), "a Linear is not a model prunekit takes"),
    (dict(model=tiny_model(num_labels=2)), "a PrunekitBertForSequenceClassification object carries no tokenizer and the "
                                    "data is text: give tokenizer="),
    (dict(text_column="review"), "train_data: no column 'review' (columns: sentence, label)"),
    (dict(label_column="stars"), "train_data: no column 'stars'"),
    (dict(frames=lambda t, d: (t.assign(label=t.label * 3), d)), "train_data row 1: label '3' is not in the label "
                                                                 "set (0, 1)"),
    (dict(frames=lambda t, d: (t.iloc[:0], d)), "train_data is empty"),
    (dict(distill_stepz=3), "'distill_stepz' is not a setting of method post-training (its settings: "),
    (dict(target_sparsity=0.5), "method post-training takes exactly one budget: macs=F"),
    (dict(method="magic"), "unknown method 'magic'"),
    (dict(macs=1.5), "--macs must be a fraction strictly between 0 and 1, got 1.5"),
])
def test_bad_input_is_one_line(teacher, glue, change, message):
    train, dev = glue_frames(glue)
    if "frames" in change:
        train, dev = change.pop("frames")(train, dev)
    kw = dict(model=teacher, text_column="sentence", macs=0.5, **QUICK)
    if "target_sparsity" in change:
        kw.pop("macs")
    kw.update(change)
    with pytest.raises(PrunekitError) as e:
        prunekit.compress(kw.pop("model"), train, dev, **kw)
    assert message in one_line(e)


def test_a_loader_label_outside_the_task_is_one_line(teacher, glue, tok):
    task = load_task("sst2", tok, glue_dir=str(glue), max_length=64)
    bad = [{**e, "label": 2 if i == 9 else e["label"]} for i, e in enumerate(task.train)]
    loader = list(batches(bad, 8))
    with pytest.raises(PrunekitError) as e:
        prunekit.compress(teacher, loader_of(loader), loader_of(list(batches(task.dev, 8))), macs=0.5, **QUICK)
    assert one_line(e) == "train_data batch 1 row 1: label 2 is outside the task's labels 0..1"


def loader_of(batch_list):
    return torch.utils.data.DataLoader(batch_list, batch_size=None)


def test_the_cli_prints_the_same_line_and_exits_2(teacher, glue, tmp_path, capfd):
    """The CLI and the API share the checks: a custom file with a label outside the set."""
    bad = tmp_path / "train.csv"
    reviews(20, 0).assign(label=lambda d: d.label * 3).to_csv(bad, index=False)
    teacher.save_pretrained(tmp_path / "teacher")
    assert main(["compress", "--teacher", str(tmp_path / "teacher"), "--task", "mine", "--train-file", str(bad),
                 "--dev-file", str(bad), "--text-columns", "text", "--label-list", "0,1", "--macs", "0.5",
                 "--output", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert f"{bad} line 3: label '3' is not in the label set (0, 1)" in capfd.readouterr().err
    with pytest.raises(PrunekitError) as e:
        prunekit.compress(teacher, str(bad), str(bad), text_column="text", label_list=["0", "1"], macs=0.5,
                          **QUICK)
    assert one_line(e) == f"{bad} line 3: label '3' is not in the label set (0, 1)"
