"""GLUE readers for every task's real format, custom files, the HF datasets path, batching, and the
bad-input errors. Small files written here stand in for every task; the real SST-2, MRPC and RTE
files are read too when $GLUE_DIR points at them (skipped otherwise)."""
import json
from pathlib import Path

import pytest
import torch

from conftest import needs_glue, real_glue
from prunekit.data import (GLUE, batch_indices, batches, canonical_task, collate, lengths, load_task, read_tsv)
from prunekit.errors import PrunekitError


def write(path: Path, lines, bom=False, final_newline=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join("\t".join(row) for row in lines) + ("\n" if final_newline else "")
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


MNLI_TRAIN_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                   "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEAD = MNLI_TRAIN_HEAD[:11] + ["label2", "label3", "label4", "label5", "gold_label"]
STSB_HEAD = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]


def mnli_row(i, a, b, label, dev=False):
    return [str(i), "31193", f"{i}n", "government", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b, label] + \
        ([label] * 4 if dev else []) + [label]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """One tiny glue_data tree with every task in the format GLUE distributes (only this module reads
    it; the synthetic SST-2 / STS-B trees other modules share are in conftest)."""
    d = tmp_path_factory.mktemp("glue_data")
    # CoLA: no header; source, label, original mark, sentence; dev without a final newline
    write(d / "CoLA/train.tsv", [["gj04", "1", "", "Our friends won't buy this analysis."],
                                 ["gj04", "0", "*", "They drank the pub."]])
    write(d / "CoLA/dev.tsv", [["gj04", "0", "*", "The more he talks, the more does he annoy."],
                               ["gj04", "1", "", "Fred watered the plants flat."]], final_newline=False)
    write(d / "SST-2/train.tsv", [["sentence", "label"], ["hide new secretions ", "0"], ["a charming film ", "1"]])
    write(d / "SST-2/dev.tsv", [["sentence", "label"], ["it 's a charming journey . ", "1"]])
    mrpc = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write(d / "MRPC/train.tsv", [mrpc, ["1", "702876", "702977", "Amrozi accused his brother .", "Referring to him ."],
                                 ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought it ."]], bom=True)
    write(d / "MRPC/dev.tsv", [mrpc, ["0", "1", "2", "He said no .", "She said yes ."]], bom=True)
    write(d / "STS-B/train.tsv", [STSB_HEAD, ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                                              "A plane is taking off.", "An air plane is taking off.", "5.000"],
                                  ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none",
                                   "A man is playing a flute.", "A man is eating.", "0.500"]])
    write(d / "STS-B/dev.tsv", [STSB_HEAD, ["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
                                            "A man with a hard hat is dancing.", "A man is dancing.", "3.8"]])
    qqp = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write(d / "QQP/train.tsv", [qqp, ["133273", "213221", "213222", "How is the life of a math student?",
                                      "Which level of prepration is enough?", "0"],
                                ["402555", "536040", "536041", "How do I control my horny emotions?",
                                 "How do you control your horniness?", "1"]])
    write(d / "QQP/dev.tsv", [qqp, ["1", "2", "3", "Why do rockets look white?", "Why are rockets white?", "1"]])
    write(d / "MNLI/train.tsv", [MNLI_TRAIN_HEAD, mnli_row(0, "Conceptually cream skimming has two dimensions.",
                                                           "Product and geography are what make it work.", "neutral"),
                                 mnli_row(1, "you know during the season", "You lose the things.", "entailment")])
    write(d / "MNLI/dev_matched.tsv", [MNLI_DEV_HEAD, mnli_row(0, "The new rights are nice enough",
                                                               "Everyone really likes the newest benefits", "neutral", True),
                                       mnli_row(1, "This site includes a list", "The site is old.", "contradiction", True)])
    write(d / "MNLI/dev_mismatched.tsv", [MNLI_DEV_HEAD, mnli_row(0, "Your contribution helped make it possible",
                                                                  "Your contributions were of no help.",
                                                                  "contradiction", True)])
    for task, head in (("QNLI", ["index", "question", "sentence", "label"]),
                       ("RTE", ["index", "sentence1", "sentence2", "label"])):
        write(d / f"{task}/train.tsv", [head, ["0", "When did it start?", "It started in 1990.", "entailment"],
                                        ["1", "Who won?", "Nobody played.", "not_entailment"]])
        write(d / f"{task}/dev.tsv", [head, ["0", "Where is it?", "It is in Paris.", "not_entailment"]])
    wnli = ["index", "sentence1", "sentence2", "label"]
    write(d / "WNLI/train.tsv", [wnli, ["0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1"],
                                 ["1", "John couldn't see the stage.", "John is so tall.", "0"]])
    write(d / "WNLI/dev.tsv", [wnli, ["0", "The drain is clogged with hair.", "The hair has to be cleaned.", "0"]])
    return d


def encoded(tok, a, b=None, max_length=128):
    """The reference: what the tokenizer itself makes of the text."""
    enc = tok(a, b, truncation=True, max_length=max_length)
    return enc["input_ids"], enc["token_type_ids"]


# task, train rows (texts, label id), dev rows, label names
EXPECTED = {
    "cola": ([(("Our friends won't buy this analysis.",), 1), (("They drank the pub.",), 0)],
             [(("The more he talks, the more does he annoy.",), 0), (("Fred watered the plants flat.",), 1)],
             ["unacceptable", "acceptable"]),
    "sst2": ([(("hide new secretions ",), 0), (("a charming film ",), 1)],
             [(("it 's a charming journey . ",), 1)], ["negative", "positive"]),
    "mrpc": ([(("Amrozi accused his brother .", "Referring to him ."), 1),
              (("Yucaipa owned Dominick 's .", "Yucaipa bought it ."), 0)],
             [(("He said no .", "She said yes ."), 0)], ["not_equivalent", "equivalent"]),
    "stsb": ([(("A plane is taking off.", "An air plane is taking off."), 5.0),
              (("A man is playing a flute.", "A man is eating."), 0.5)],
             [(("A man with a hard hat is dancing.", "A man is dancing."), 3.8)], None),
    "qqp": ([(("How is the life of a math student?", "Which level of prepration is enough?"), 0),
             (("How do I control my horny emotions?", "How do you control your horniness?"), 1)],
            [(("Why do rockets look white?", "Why are rockets white?"), 1)], ["not_duplicate", "duplicate"]),
    "mnli": ([(("Conceptually cream skimming has two dimensions.", "Product and geography are what make it work."), 1),
              (("you know during the season", "You lose the things."), 0)],
             [(("The new rights are nice enough", "Everyone really likes the newest benefits"), 1),
              (("This site includes a list", "The site is old."), 2)],
             ["entailment", "neutral", "contradiction"]),
    "qnli": ([(("When did it start?", "It started in 1990."), 0), (("Who won?", "Nobody played."), 1)],
             [(("Where is it?", "It is in Paris."), 1)], ["entailment", "not_entailment"]),
    "rte": ([(("When did it start?", "It started in 1990."), 0), (("Who won?", "Nobody played."), 1)],
            [(("Where is it?", "It is in Paris."), 1)], ["entailment", "not_entailment"]),
    "wnli": ([(("I stuck a pin through a carrot.", "The carrot had a hole."), 1),
              (("John couldn't see the stage.", "John is so tall."), 0)],
             [(("The drain is clogged with hair.", "The hair has to be cleaned."), 0)],
             ["not_entailment", "entailment"]),
}


def assert_examples(tok, got, want):
    assert len(got) == len(want)
    for ex, (texts, label) in zip(got, want):
        ids, types = encoded(tok, *texts)
        assert ex["input_ids"] == ids and ex["token_type_ids"] == types
        assert ex["label"] == label and type(ex["label"]) is type(label)


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_every_glue_format_reads_text_pairs_and_labels(tok, glue_dir, task):
    train, dev, names = EXPECTED[task]
    t = load_task(GLUE[task].folder, tok, glue_dir=glue_dir)  # the folder spelling: 'SST-2', 'STS-B', ...
    assert t.name == task
    assert t.labels == names and t.is_regression == (names is None)
    assert t.num_labels == (1 if names is None else len(names))
    assert_examples(tok, t.train, train)
    assert_examples(tok, t.dev, dev)
    if len(train[0][0]) == 2:  # the second sentence is segment 1
        assert set(t.train[0]["token_type_ids"]) == {0, 1}


def test_mnli_has_matched_and_mismatched_dev_sets(tok, glue_dir):
    t = load_task("MNLI", tok, glue_dir=glue_dir)
    assert list(t.dev_sets) == ["dev_matched", "dev_mismatched"]
    assert t.dev is t.dev_sets["dev_matched"]
    assert_examples(tok, t.dev_sets["dev_mismatched"],
                    [(("Your contribution helped make it possible", "Your contributions were of no help."), 2)])


def test_glue_dir_comes_from_the_environment(tok, glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert len(load_task("sst-2", tok).train) == 2


def test_task_names_are_canonicalised():
    assert [canonical_task(n) for n in ("SST-2", "sst2", "STS-B", "MNLI", "cola", "qnli", "sst3")] == \
        ["sst2", "sst2", "stsb", "mnli", "cola", "qnli", None]


def test_bom_is_not_part_of_the_first_column(glue_dir):
    rows = read_tsv(glue_dir / "MRPC/train.tsv")
    assert "Quality" in rows[0][1] and rows[0][0] == 2  # data starts on line 2


@needs_glue("SST-2", "MRPC", "RTE")
def test_real_sst2_mrpc_rte_files(tok):
    real = real_glue("SST-2", "MRPC", "RTE")
    # counts and dev label counts from the data README (the official GLUE numbers)
    for task, n_train, dev_counts in (("sst2", 67349, [428, 444]), ("mrpc", 3668, [129, 279]), ("rte", 2490, [146, 131])):
        t = load_task(task, tok, glue_dir=real, max_train_samples=64)
        assert len(read_tsv(real / GLUE[task].folder / "train.tsv")) == n_train
        assert len(t.train) == 64
        assert [sum(e["label"] == k for e in t.dev) for k in range(2)] == dev_counts
        assert max(lengths(t.dev)) <= 128
    mrpc = load_task("mrpc", tok, glue_dir=real, with_train=False)
    assert mrpc.train == []
    first = mrpc.dev[0]  # "1 \t 1355540 \t 1355592 \t He said the foodservice pie business ..."
    assert first["label"] == 1
    assert tok.decode(first["input_ids"]).startswith("[CLS] he said the foodservice pie business")


def test_max_length_truncates_pairs_longest_first(tok, glue_dir):
    t = load_task("mnli", tok, glue_dir=glue_dir, max_length=12)
    assert max(lengths(t.train)) == 12
    ids, _ = encoded(tok, "Conceptually cream skimming has two dimensions.",
                     "Product and geography are what make it work.", max_length=12)
    assert t.train[0]["input_ids"] == ids


def test_max_train_samples_keeps_the_first_examples(tok, glue_dir):
    t = load_task("qqp", tok, glue_dir=glue_dir, max_train_samples=1)
    assert len(t.train) == 1 and t.train[0]["label"] == 0


# ---------------------------------------------------------------------------------------------
# HF datasets path


def fake_glue_hub(tmp_path, monkeypatch, names_in_hub_order):
    """Make datasets.load_dataset('glue', cfg) build a real DatasetDict from local JSON files."""
    import datasets
    real_load = datasets.load_dataset
    rows = {
        "rte": {"train": [{"sentence1": "A cat sat.", "sentence2": "A cat is sitting.", "label": "entailment"},
                          {"sentence1": "A dog ran.", "sentence2": "Nothing moved.", "label": "not_entailment"}],
                "validation": [{"sentence1": "It rained.", "sentence2": "It was dry.", "label": "not_entailment"}]},
        "mnli": {"train": [{"premise": "P one.", "hypothesis": "H one.", "label": "neutral"}],
                 "validation_matched": [{"premise": "P two.", "hypothesis": "H two.", "label": "contradiction"}],
                 "validation_mismatched": [{"premise": "P three.", "hypothesis": "H three.", "label": "entailment"}]},
        "stsb": {"train": [{"sentence1": "A.", "sentence2": "B.", "label": 4.25}],
                 "validation": [{"sentence1": "C.", "sentence2": "D.", "label": 1.5}]},
    }
    calls = []

    def load_dataset(path, name=None, **kw):
        calls.append((path, name))
        assert path == "glue"
        data_files = {}
        for split, items in rows[name].items():
            f = tmp_path / f"{name}-{split}.jsonl"
            names = names_in_hub_order.get(name)
            # the hub stores ClassLabel ids: encode the label names with the hub's own order
            f.write_text("".join(json.dumps({**r, "label": names.index(r["label"]) if names else r["label"]}) + "\n"
                                 for r in items))
            data_files[split] = str(f)
        text = [k for k in rows[name]["train"][0] if k != "label"]
        features = datasets.Features({**{k: datasets.Value("string") for k in text},
                                      "label": datasets.ClassLabel(names=names) if names else datasets.Value("float32")})
        return real_load("json", data_files=data_files, features=features)

    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_without_glue_dir_the_hub_dataset_is_read_and_labels_map_by_name(tok, tmp_path, monkeypatch):
    # a hub whose ClassLabel order differs from ours: ids must be mapped by name, not copied
    calls = fake_glue_hub(tmp_path, monkeypatch, {"rte": ["not_entailment", "entailment"],
                                                  "mnli": ["entailment", "neutral", "contradiction"]})
    rte = load_task("RTE", tok)
    assert calls == [("glue", "rte")]
    assert rte.labels == ["entailment", "not_entailment"]
    assert_examples(tok, rte.train, [(("A cat sat.", "A cat is sitting."), 0), (("A dog ran.", "Nothing moved."), 1)])
    assert_examples(tok, rte.dev, [(("It rained.", "It was dry."), 1)])
    mnli = load_task("mnli", tok)
    assert list(mnli.dev_sets) == ["dev_matched", "dev_mismatched"]
    assert_examples(tok, mnli.dev_sets["dev_mismatched"], [(("P three.", "H three."), 0)])
    assert_examples(tok, mnli.dev, [(("P two.", "H two."), 2)])
    stsb = load_task("stsb", tok)
    assert stsb.is_regression and stsb.train[0]["label"] == pytest.approx(4.25)


def test_without_glue_dir_and_without_the_hub_the_error_says_set_glue_dir(tok, monkeypatch):
    import datasets

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(PrunekitError, match="no GLUE_DIR set and HF datasets could not load glue/sst2.*GLUE_DIR"):
        load_task("sst2", tok)


# ---------------------------------------------------------------------------------------------
# custom data


def test_custom_tsv_csv_and_jsonl_files(tok, tmp_path):
    write(tmp_path / "train.tsv", [["id", "review", "stars"], ["1", "great food", "5"], ["2", "cold soup", "1"],
                                   ["3", "fine", "3"], ["4", "superb", "5"]])
    (tmp_path / "dev.csv").write_text('review,stars\n"okay, I guess",3\n"awful, just awful",1\n')
    (tmp_path / "dev.jsonl").write_text(json.dumps({"review": "loved it", "stars": 5}) + "\n\n" +
                                        json.dumps({"review": "meh", "stars": "3"}) + "\n")
    for dev in ("dev.csv", "dev.jsonl"):
        t = load_task("reviews", tok, train_file=tmp_path / "train.tsv", dev_file=tmp_path / dev,
                      text_columns=["review"], label_column="stars")
        assert t.name == "reviews" and not t.is_regression
        assert t.labels == ["1", "3", "5"]  # numeric order, not the order seen
        assert [e["label"] for e in t.train] == [2, 0, 1, 2]
        want = [(("okay, I guess",), 1), (("awful, just awful",), 0)] if dev == "dev.csv" else \
            [(("loved it",), 2), (("meh",), 1)]
        assert_examples(tok, t.dev, want)


def test_custom_labels_can_be_given_and_unknown_ones_are_refused(tok, tmp_path):
    (tmp_path / "dev.jsonl").write_text('{"a": "x", "b": "y", "label": "no"}\n{"a": "z", "b": "w", "label": "maybe"}\n')
    t = load_task("pairs", tok, dev_file=tmp_path / "dev.jsonl", text_columns=["a", "b"], labels=["no", "yes", "maybe"])
    assert [e["label"] for e in t.dev] == [0, 2] and t.train == []
    with pytest.raises(PrunekitError, match=r"dev.jsonl line 2: label 'maybe' is not in the label set \(no, yes\)"):
        load_task("pairs", tok, dev_file=tmp_path / "dev.jsonl", text_columns=["a", "b"], labels=["no", "yes"])


def test_a_glue_task_with_custom_files_keeps_its_columns_and_labels(tok, tmp_path):
    write(tmp_path / "my_rte.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "A.", "B.", "not_entailment"]])
    t = load_task("rte", tok, train_file=tmp_path / "my_rte.tsv", dev_file=tmp_path / "my_rte.tsv")
    assert t.name == "rte" and t.labels == ["entailment", "not_entailment"] and t.dev[0]["label"] == 1
    write(tmp_path / "my_sst.tsv", [["sentence", "label"], ["good", "1"], ["bad", "negative"]])
    t = load_task("sst2", tok, dev_file=tmp_path / "my_sst.tsv")  # GLUE's '1' and HF's names both accepted
    assert [e["label"] for e in t.dev] == [1, 0]


# ---------------------------------------------------------------------------------------------
# bad input: one PrunekitError naming the file and line


def test_unknown_task(tok):
    with pytest.raises(PrunekitError, match="unknown task 'sst3'.*cola, sst2"):
        load_task("sst3", tok, glue_dir="/nonexistent")


def test_missing_task_folder(tok, tmp_path):
    (tmp_path / "SST-2").mkdir()
    with pytest.raises(PrunekitError, match=r"QNLI not found: expected the GLUE layout"):
        load_task("qnli", tok, glue_dir=tmp_path)
    with pytest.raises(PrunekitError, match=r"SST-2/train.tsv"):
        load_task("sst2", tok, glue_dir=tmp_path)  # folder there, file not
    with pytest.raises(PrunekitError, match="GLUE directory not found"):
        load_task("sst2", tok, glue_dir=tmp_path / "nope")


@pytest.mark.parametrize("lines, message", [
    ([["sentence", "label"], ["good", "1"], ["bad"]], r"SST-2/train.tsv line 3: 1 tab-separated fields, expected 2"),
    ([["sentence", "label"], ["good", "1", "extra"]], r"SST-2/train.tsv line 2: 3 tab-separated fields, expected 2"),
    ([["sentence", "label"], ["good", "1"], ["bad", "2"]], r"SST-2/train.tsv line 3: label '2' is not in the label set"),
    ([["text", "label"], ["good", "1"]], r"SST-2/train.tsv: no column 'sentence' \(columns: text, label\)"),
    ([["sentence", "label"]], r"SST-2/train.tsv has a header but no data rows"),
    ([], r"SST-2/train.tsv is empty"),
])
def test_bad_tsv_names_file_and_line(tok, tmp_path, lines, message):
    write(tmp_path / "SST-2/train.tsv", lines)
    write(tmp_path / "SST-2/dev.tsv", [["sentence", "label"], ["ok", "1"]])
    with pytest.raises(PrunekitError, match=message):
        load_task("sst2", tok, glue_dir=tmp_path)


def test_bad_regression_label_and_ragged_headerless_cola(tok, tmp_path):
    write(tmp_path / "STS-B/train.tsv", [STSB_HEAD, ["0"] * 9 + ["high"]])
    with pytest.raises(PrunekitError, match="STS-B/train.tsv line 2: label 'high' is not a number"):
        load_task("stsb", tok, glue_dir=tmp_path)
    write(tmp_path / "CoLA/train.tsv", [["gj04", "1", "", "Fine."], ["gj04", "0", "Broken."]])
    with pytest.raises(PrunekitError, match="CoLA/train.tsv line 2: 3 tab-separated fields, expected 4"):
        load_task("cola", tok, glue_dir=tmp_path)


def test_custom_data_errors(tok, tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(PrunekitError, match="t.jsonl line 2: no label"):
        load_task("c", tok, train_file=tmp_path / "t.jsonl", text_columns=["text"])
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "x"}\n[1, 2]\n')
    with pytest.raises(PrunekitError, match="t.jsonl line 2: expected a JSON object"):
        load_task("c", tok, train_file=tmp_path / "t.jsonl", text_columns=["text"])
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,y,z\n")
    with pytest.raises(PrunekitError, match="t.csv line 3: 3 fields, expected 2"):
        load_task("c", tok, train_file=tmp_path / "t.csv", text_columns=["text"])
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,y\n")
    with pytest.raises(PrunekitError, match=r"t.csv: no column 'body' \(columns: text, label\)"):
        load_task("c", tok, train_file=tmp_path / "t.csv", text_columns=["body"])
    with pytest.raises(PrunekitError, match="needs --text-columns"):
        load_task("c", tok, train_file=tmp_path / "t.csv")
    with pytest.raises(PrunekitError, match="data file not found"):
        load_task("c", tok, train_file=tmp_path / "missing.csv", text_columns=["text"])
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(PrunekitError, match="unknown data file type"):
        load_task("c", tok, train_file=tmp_path / "t.xlsx", text_columns=["text"])


# ---------------------------------------------------------------------------------------------
# batching


def fake_examples(lens, float_labels=False):
    return [{"input_ids": list(range(100, 100 + n)), "token_type_ids": [0] * (n // 2) + [1] * (n - n // 2),
             "label": float(i) / 2 if float_labels else i % 2} for i, n in enumerate(lens)]


def test_collate_pads_to_the_longest_in_the_batch():
    b = collate(fake_examples([3, 5, 2]))
    assert b["input_ids"].shape == (3, 5)
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["input_ids"][0].tolist() == [100, 101, 102, 0, 0]
    assert b["token_type_ids"][1].tolist() == [0, 0, 1, 1, 1]
    assert b["labels"].dtype == torch.long and b["labels"].tolist() == [0, 1, 0]
    r = collate(fake_examples([2, 2], float_labels=True))
    assert r["labels"].dtype == torch.float and r["labels"].tolist() == [0.0, 0.5]


def test_batch_plans_cover_every_example_once_and_depend_only_on_the_seed():
    ex = fake_examples([(7 * i) % 40 + 2 for i in range(300)])
    for kw in (dict(), dict(shuffle=True), dict(shuffle=True, group_by_length=True)):
        plan = batch_indices(ex, 32, seed=3, **kw)
        assert sorted(i for b in plan for i in b) == list(range(300))
        assert all(len(b) == 32 for b in plan[:-1] if not kw.get("group_by_length"))
        assert plan == batch_indices(ex, 32, seed=3, **kw)
    assert batch_indices(ex, 32) == [list(range(i, min(i + 32, 300))) for i in range(0, 300, 32)]
    assert batch_indices(ex, 32, shuffle=True, seed=3) != batch_indices(ex, 32, shuffle=True, seed=4)


def test_length_grouping_pads_much_less():
    ex = fake_examples([(37 * i) % 120 + 3 for i in range(2000)])
    padded = lambda plan: sum(len(b) * max(len(ex[i]["input_ids"]) for i in b) for b in plan)
    plain = padded(batch_indices(ex, 32, shuffle=True, seed=0))
    grouped = padded(batch_indices(ex, 32, shuffle=True, seed=0, group_by_length=True))
    assert grouped < 0.6 * plain
    assert grouped >= sum(lengths(ex))
    # the batches' order is shuffled too: not simply longest first
    maxes = [max(len(ex[i]["input_ids"]) for i in b) for b in batch_indices(ex, 32, shuffle=True, group_by_length=True)]
    assert maxes != sorted(maxes, reverse=True)


def test_batches_yields_collated_tensors():
    ex = fake_examples([4, 9, 2, 6, 5])
    got = list(batches(ex, 2))
    assert [b["input_ids"].shape for b in got] == [(2, 9), (2, 6), (1, 5)]
