"""Task data: the nine GLUE tasks and custom tsv/csv/jsonl files, tokenised and batched.

Sources, in order of preference:
  1. a GLUE directory (`glue_dir=` or the GLUE_DIR environment variable) in the classic
     `glue_data/<TASK>/{train,dev}.tsv` layout that GLUE's download script, CoFi and HF's legacy
     run_glue use; the files are read exactly as distributed (CoLA has no header, MRPC's header
     starts with a UTF-8 BOM, MNLI has dev_matched and dev_mismatched, RTE/QNLI/MNLI labels are words);
  2. without a GLUE directory, HF `datasets.load_dataset("glue", <config>)`;
  3. custom files (`train_file=`, `dev_file=`) with named text and label columns.

Label ids follow HF's `glue` ClassLabel order for every task, whichever source the data came from,
so a teacher trained from TSV files and one trained from the hub agree on what logit 0 means.
An encoded example is a dict: input_ids, token_type_ids (lists of ints) and label (int, or float
for regression). Every problem with a file is a PrunekitError that names the file and line.
"""
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import hub
from .errors import PrunekitError


@dataclass(frozen=True)
class GlueSpec:
    """How one GLUE task is laid out on disk and on the hub."""
    name: str                           # canonical lower-case name: "sst2"
    folder: str                         # folder under GLUE_DIR: "SST-2"
    text: tuple                         # text column names (or indices when the file has no header)
    label: str | int                    # label column name (or index)
    labels: tuple | None                # label names in id order (HF's order); None = regression
    tsv_labels: tuple | None = None     # how the TSV writes each label, same order (default: the names)
    hf_text: tuple = ()                 # text columns of the HF `glue` config
    dev_files: tuple = (("dev", "dev.tsv"),)               # (dev set name, file) pairs, primary first
    hf_dev_splits: tuple = (("dev", "validation"),)       # (dev set name, HF split) pairs
    header: bool = True


GLUE = {s.name: s for s in [
    GlueSpec("cola", "CoLA", (3,), 1, ("unacceptable", "acceptable"), ("0", "1"), ("sentence",), header=False),
    GlueSpec("sst2", "SST-2", ("sentence",), "label", ("negative", "positive"), ("0", "1"), ("sentence",)),
    GlueSpec("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"), ("0", "1"),
             ("sentence1", "sentence2")),
    GlueSpec("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, None, ("sentence1", "sentence2")),
    GlueSpec("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"), ("0", "1"),
             ("question1", "question2")),
    GlueSpec("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             None, ("premise", "hypothesis"),
             dev_files=(("dev_matched", "dev_matched.tsv"), ("dev_mismatched", "dev_mismatched.tsv")),
             hf_dev_splits=(("dev_matched", "validation_matched"), ("dev_mismatched", "validation_mismatched"))),
    GlueSpec("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), None,
             ("question", "sentence")),
    GlueSpec("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), None,
             ("sentence1", "sentence2")),
    GlueSpec("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), ("0", "1"),
             ("sentence1", "sentence2")),
]}


def canonical_task(task: str) -> str | None:
    """'SST-2', 'sst-2', 'sst2' -> 'sst2'; 'STS-B' -> 'stsb'; None for a name that is not GLUE."""
    key = task.lower().replace("-", "").replace("_", "")
    return key if key in GLUE else None


@dataclass
class Task:
    name: str                       # canonical lower-case name ("sst2"), or the user's name for custom data
    num_labels: int                 # 1 for regression
    is_regression: bool
    labels: list | None             # label strings in id order; None for regression
    train: list = field(default_factory=list)     # encoded examples
    dev_sets: dict = field(default_factory=dict)  # dev set name -> encoded examples, primary first

    @property
    def dev(self) -> list:
        """The primary dev set (MNLI: matched)."""
        return next(iter(self.dev_sets.values()), [])


# ---------------------------------------------------------------------------------------------
# Reading rows: every reader yields (line number, {column: value}) and names the file on errors


def read_tsv(path: Path, header: bool = True) -> list[tuple[int, dict]]:
    """Tab-separated, no quoting (GLUE's own convention: quotes are text). A BOM is dropped.

    Rows must all have as many fields as the header (or as the first row when there is none).
    """
    text = read_text(path)
    lines = text.split("\n")  # not splitlines(): that also splits on \x0b, \x1c, \u2028 inside text
    if lines and lines[-1] == "":
        lines.pop()  # the final newline (CoLA's dev.tsv has none; both are fine)
    if not lines or all(not line.strip() for line in lines):
        raise PrunekitError(f"{path} is empty")
    rows = [line.removesuffix("\r").split("\t") for line in lines]
    if header:
        columns, first = rows[0], 2
        rows = rows[1:]
        if not rows:
            raise PrunekitError(f"{path} has a header but no data rows")
    else:
        columns, first = list(range(len(rows[0]))), 1
    out = []
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise PrunekitError(f"{path} line {i + first}: {len(row)} tab-separated fields, expected "
                                f"{len(columns)} (ragged row)")
        out.append((i + first, dict(zip(columns, row))))
    return out


def read_csv(path: Path) -> list[tuple[int, dict]]:
    """Comma-separated with a header line and standard CSV quoting."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    rows = []
    try:
        for row in reader:
            if row:  # blank lines
                rows.append((reader.line_num, row))
    except csv.Error as e:
        raise PrunekitError(f"{path} line {reader.line_num}: {e}") from e
    if not rows:
        raise PrunekitError(f"{path} is empty")
    (_, columns), rows = rows[0], rows[1:]
    if not rows:
        raise PrunekitError(f"{path} has a header but no data rows")
    out = []
    for line, row in rows:
        if len(row) != len(columns):
            raise PrunekitError(f"{path} line {line}: {len(row)} fields, expected {len(columns)} (ragged row)")
        out.append((line, dict(zip(columns, row))))
    return out


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """One JSON object per line; blank lines are skipped."""
    out = []
    for n, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrunekitError(f"{path} line {n}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise PrunekitError(f"{path} line {n}: expected a JSON object, got {type(obj).__name__}")
        out.append((n, obj))
    if not out:
        raise PrunekitError(f"{path} is empty")
    return out


def read_text(path: Path) -> str:
    if not path.is_file():
        raise PrunekitError(f"data file not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: MRPC's header starts with a BOM
    except UnicodeDecodeError as e:
        raise PrunekitError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e


def read_rows(path: Path, header: bool = True) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix in (".tsv", ".txt", ""):
        return read_tsv(path, header)
    raise PrunekitError(f"{path}: unknown data file type {suffix!r} (use .tsv, .csv or .jsonl)")


def to_examples(path, rows, text_columns, label_column, label2id, unit: str = "line") -> tuple[list, list, list]:
    """rows -> (texts_a, texts_b or None, label values); label2id None means a float label. unit: what a
    row's number counts ("line" of a file, "row" of a table in memory)."""
    if not rows:
        raise PrunekitError(f"{path} has no data rows")
    _, first = rows[0]
    for col in (*text_columns, label_column):
        if col not in first:
            have = ", ".join(str(c) for c in first) or "none"
            raise PrunekitError(f"{path}: no column {col!r} (columns: {have})")
    columns = [[] for _ in text_columns]
    labels = []
    for line, row in rows:
        for col, values in zip(text_columns, columns):
            value = row.get(col)
            if not isinstance(value, str):
                raise PrunekitError(f"{path} {unit} {line}: text column {col!r} is "
                                    f"{'missing' if value is None else 'not a string'}")
            values.append(value)
        labels.append(parse_label(path, line, row.get(label_column), label2id, unit))
    return columns[0], (columns[1] if len(columns) > 1 else None), labels


def parse_label(path, line, value, label2id, unit: str = "line"):
    if value is None:
        raise PrunekitError(f"{path} {unit} {line}: no label")
    raw = str(value).strip()
    if label2id is None:
        try:
            return float(raw)
        except ValueError as e:
            raise PrunekitError(f"{path} {unit} {line}: label {raw!r} is not a number (regression task)") from e
    if raw not in label2id:
        shown = ", ".join(label2id) if len(label2id) <= 10 else f"{len(label2id)} labels"
        raise PrunekitError(f"{path} {unit} {line}: label {raw!r} is not in the label set ({shown})")
    return label2id[raw]


# ---------------------------------------------------------------------------------------------
# Tokenisation


def encode(tokenizer, texts_a, texts_b, labels, max_length: int) -> list[dict]:
    """Tokenise sentences (or sentence pairs, truncating the longer first) without padding."""
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return [{"input_ids": ids, "token_type_ids": tt, "label": y}
            for ids, tt, y in zip(enc["input_ids"], types, labels)]


# ---------------------------------------------------------------------------------------------
# Loading a task


def load_task(task: str, tokenizer, glue_dir=None, max_length: int = 128, train_file=None, dev_file=None,
              text_columns=None, label_column=None, max_train_samples=None, labels=None, label_list=None,
              with_train: bool = True) -> Task:
    """Read, check and tokenise a task's train and dev sets.

    task: a GLUE name ('sst2', 'SST-2', 'mnli', ...) or, with train_file/dev_file, any name for
    custom data. GLUE data comes from glue_dir (default: $GLUE_DIR) or else from HF datasets.
    Custom data: text_columns (one or two names) and label_column (default 'label'); the label set
    is `labels` when given (e.g. from a trained model's config), else the user's `label_list`
    (--label-list), else the sorted values seen in the training file, unless they look like text
    (infer_labels). A GLUE name with custom files keeps that task's columns, label set and metrics.
    Either split may be absent for custom data (train_file only, or dev_file only for evaluation).
    max_train_samples keeps the first N training examples; with_train=False reads the dev sets only.
    """
    if max_length < 2:
        raise PrunekitError(f"max_length must be at least 2, got {max_length}")
    spec = GLUE.get(canonical_task(task) or "")
    labels = chosen_labels(spec, labels, label_list)
    if train_file or dev_file:
        texts, label_col, names, is_regression = custom_layout(spec, text_columns, label_column, labels)
        raw = {}
        if train_file and with_train:
            raw["train"] = read_rows(Path(train_file))
        if dev_file:
            raw["dev"] = read_rows(Path(dev_file))
        if not raw:
            raise PrunekitError("no data to read: a training file was given but training data was not asked for")
        if names is None and not is_regression:
            names = infer_labels(raw.get("train") or raw["dev"], label_col, Path(train_file or dev_file))
        label2id = None if is_regression else {n: i for i, n in enumerate(names)}
        if spec is not None and spec.tsv_labels and not is_regression:
            label2id.update({t: i for i, t in enumerate(spec.tsv_labels)})  # '0'/'1' as GLUE writes them
        path_of = {"train": Path(train_file) if train_file else None, "dev": Path(dev_file) if dev_file else None}
        split = {k: to_examples(path_of[k], rows, texts, label_col, label2id) for k, rows in raw.items()}
        name = spec.name if spec else task
        dev_sets = {"dev": split["dev"]} if "dev" in split else {}
        train = split.get("train")
    elif spec is None:
        raise PrunekitError(f"unknown task {task!r} (GLUE tasks: {', '.join(GLUE)}; or give --train-file/--dev-file "
                            "for custom data)")
    else:
        glue_dir = glue_dir or os.environ.get("GLUE_DIR")
        loaded = read_glue_dir(spec, Path(glue_dir), with_train) if glue_dir else read_glue_hub(spec, with_train)
        name, names, is_regression = spec.name, (list(spec.labels) if spec.labels else None), spec.labels is None
        train, dev_sets = loaded.get("train"), {k: v for k, v in loaded.items() if k != "train"}

    if train is not None and max_train_samples is not None:
        train = tuple(col[:max_train_samples] if col is not None else None for col in train)
    encoded = lambda split: encode(tokenizer, *split, max_length)
    return Task(name=name, num_labels=1 if is_regression else len(names), is_regression=is_regression,
                labels=names, train=encoded(train) if train is not None else [],
                dev_sets={k: encoded(v) for k, v in dev_sets.items()})


def custom_layout(spec, text_columns, label_column, labels):
    """Text columns, label column, label names and regression flag for custom files."""
    if text_columns:
        texts = tuple(text_columns)
    elif spec is not None and spec.header:
        texts = spec.text
    else:
        raise PrunekitError("custom data needs --text-columns (one or two column names)")
    if not 1 <= len(texts) <= 2:
        raise PrunekitError(f"--text-columns takes one or two columns, got {len(texts)}")
    label_col = label_column or (spec.label if spec is not None and spec.header else "label")
    is_regression = spec is not None and spec.labels is None
    names = list(labels) if labels else (list(spec.labels) if spec is not None and spec.labels else None)
    return texts, label_col, names, is_regression


def chosen_labels(spec: GlueSpec | None, labels, label_list) -> list | None:
    """The label names given to load_task: a trained model's (`labels`) or the user's (`label_list`);
    when both are given, or a GLUE task has its own, they must agree."""
    if not label_list:
        return labels
    label_list = [str(n).strip() for n in label_list]
    shown = ",".join(label_list)
    if len(set(label_list)) != len(label_list) or "" in label_list:
        raise PrunekitError(f"--label-list {shown} must name distinct, non-empty labels")
    if labels and list(labels) != label_list:
        raise PrunekitError(f"--label-list {shown} differs from the labels the model was trained with "
                            f"({', '.join(labels)})")
    if spec is not None and (spec.labels is None or list(spec.labels) != label_list):
        has = "is a regression task" if spec.labels is None else f"has the labels {', '.join(spec.labels)}"
        raise PrunekitError(f"--label-list {shown} does not fit task {spec.name}: it {has}")
    return label_list


# A label column whose values are mostly unique, or too many, is text (a wrong --label-column), not labels:
MAX_LABELS = 1000        # far above real label sets (GLUE: 2-3; intent sets such as CLINC150: 150)
FEW_LABELS = 20          # up to this many distinct values are a label set however few the rows


def infer_labels(rows, label_column, path) -> list[str]:
    """The label set of a custom training file: its distinct values, numeric order when all are ints.
    Values that look like text (MAX_LABELS, FEW_LABELS) are refused: pass --label-list to insist."""
    values = set()
    for line, row in rows:
        if row.get(label_column) is None:
            if label_column in rows[0][1]:
                raise PrunekitError(f"{path} line {line}: no label")
            raise PrunekitError(f"{path}: no column {label_column!r} (columns: {', '.join(map(str, rows[0][1]))})")
        values.add(str(row[label_column]).strip())
    if len(values) < 2:
        raise PrunekitError(f"{path}: the label column {label_column!r} has {len(values)} distinct value(s); "
                            "classification needs at least 2")
    if len(values) > MAX_LABELS or (len(values) > FEW_LABELS and len(values) > len(rows) / 2):
        shown = ", ".join(repr(v if len(v) <= 30 else v[:27] + "...") for v in sorted(values)[:3])
        raise PrunekitError(f"{path}: the label column {label_column!r} has {len(values)} distinct values in "
                            f"{len(rows)} rows ({shown}, ...): that looks like text, not labels; name the label "
                            "column with --label-column, or give the labels with --label-list to use these")
    is_int = all(v.lstrip("-").isdigit() for v in values)
    return sorted(values, key=int) if is_int else sorted(values)


def read_glue_dir(spec: GlueSpec, glue_dir: Path, with_train: bool = True) -> dict:
    """{'train': (a, b, labels), <dev set name>: (a, b, labels), ...} from GLUE_DIR/<TASK>/*.tsv."""
    if not glue_dir.is_dir():
        raise PrunekitError(f"GLUE directory not found: {glue_dir}")
    folder = glue_dir / spec.folder
    if not folder.is_dir():
        raise PrunekitError(f"{folder} not found: expected the GLUE layout <GLUE_DIR>/{spec.folder}/train.tsv")
    label2id = None if spec.labels is None else {v: i for i, v in enumerate(spec.tsv_labels or spec.labels)}
    out = {}
    splits = ((("train", "train.tsv"),) if with_train else ()) + spec.dev_files
    for split, file in splits:
        path = folder / file
        out[split] = to_examples(path, read_tsv(path, spec.header), spec.text, spec.label, label2id)
    return out


def read_glue_hub(spec: GlueSpec, with_train: bool = True) -> dict:
    """The same through HF datasets (`glue`, config), for users who have the hub and no GLUE_DIR."""
    why = None if hub.offline() else hub.unreachable()  # offline, datasets answers from its cache at once
    if why:
        raise PrunekitError(f"no GLUE_DIR set and HF datasets cannot fetch glue/{spec.name} ({why}); set GLUE_DIR "
                            "to a glue_data directory (or HF_HUB_OFFLINE=1 to use datasets' cache)")
    try:
        import datasets
        ds = datasets.load_dataset("glue", spec.name)
    except Exception as e:  # offline, no cache, no datasets: all end the same way for the user
        raise PrunekitError(f"no GLUE_DIR set and HF datasets could not load glue/{spec.name} "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                            "set GLUE_DIR to a glue_data directory") from e
    out = {}
    splits = ((("train", "train"),) if with_train else ()) + spec.hf_dev_splits
    for split, hf_split in splits:
        if hf_split not in ds:
            raise PrunekitError(f"HF glue/{spec.name} has no split {hf_split!r} (has: {', '.join(ds)})")
        out[split] = hub_examples(spec, ds[hf_split], f"glue/{spec.name}[{hf_split}]")
    return out


def hub_examples(spec: GlueSpec, split, where: str) -> tuple:
    """An HF split -> (a, b, labels), mapping ClassLabel ids to ours by label name."""
    for col in (*spec.hf_text, "label"):
        if col not in split.column_names:
            raise PrunekitError(f"{where}: no column {col!r} (columns: {', '.join(split.column_names)})")
    labels = list(split["label"])  # a Column in datasets 5: make it a list
    if spec.labels is None:
        labels = [float(y) for y in labels]
    else:
        feature = split.features["label"]
        names = getattr(feature, "names", None) or list(spec.labels)
        ours = {n: i for i, n in enumerate(spec.labels)}
        if set(names) != set(ours):
            raise PrunekitError(f"{where}: label names {names} differ from {list(spec.labels)}")
        to_ours = [ours[n] for n in names]
        for row, y in enumerate(labels):
            if not 0 <= y < len(names):
                raise PrunekitError(f"{where} row {row}: label {y} is not in the label set {names} "
                                    "(a test split without labels?)")
        labels = [to_ours[y] for y in labels]
    texts = [list(split[c]) for c in spec.hf_text]
    return texts[0], (texts[1] if len(texts) > 1 else None), labels


# ---------------------------------------------------------------------------------------------
# Batching


def lengths(examples) -> list[int]:
    """Token count of each example (what the batch and the MAC model pay for)."""
    return [len(e["input_ids"]) for e in examples]


def collate(examples, pad_id: int = 0) -> dict:
    """Encoded examples -> padded tensors, padded to the longest example in this batch only."""
    S = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, S), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros(B, S, dtype=torch.long)
    attention_mask = torch.zeros(B, S, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"])
        token_type_ids[i, :n] = torch.tensor(e["token_type_ids"])
        attention_mask[i, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    if "label" in examples[0]:
        is_float = isinstance(examples[0]["label"], float)
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.float if is_float else torch.long)
    return batch


def batch_indices(examples, batch_size: int, shuffle: bool = False, seed: int = 0,
                  group_by_length: bool = False, megabatch: int = 50) -> list[list[int]]:
    """Which examples go in which batch, in order.

    group_by_length: shuffle, cut into mega-batches of `megabatch` batches, sort each by length and
    cut it into batches, then shuffle the batch order. Batches hold examples of similar length, so
    dynamic padding pads little, while the data order stays random at the scale of an epoch
    (HF's LengthGroupedSampler does the same, without the final shuffle).
    """
    n = len(examples)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    if group_by_length:
        lens = lengths(examples)
        size = batch_size * megabatch
        order = [i for start in range(0, n, size)
                 for i in sorted(order[start:start + size], key=lambda i: -lens[i])]
    plan = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if group_by_length and shuffle:
        plan = [plan[i] for i in torch.randperm(len(plan), generator=g).tolist()]
    return plan


def batches(examples, batch_size: int, shuffle: bool = False, seed: int = 0, group_by_length: bool = False):
    """Collated batches (a generator), see batch_indices for the order."""
    for idx in batch_indices(examples, batch_size, shuffle, seed, group_by_length):
        yield collate([examples[i] for i in idx])
