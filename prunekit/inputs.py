"""A user's data as the Task a compression method takes (prunekit.compress's train_data and eval_data).

  a GLUE task name        "sst2", "MRPC", ...: the CLI's way (load_task: $GLUE_DIR or glue_dir=, else
                          HF datasets), its dev sets included (eval_data stays None)
  data files              paths of .tsv / .csv / .jsonl files (the CLI's --train-file / --dev-file)
  tables                  an HF datasets.Dataset (or a DatasetDict: its train and validation splits) or a
                          pandas DataFrame, with named text (and text-pair) and label columns, tokenised
                          with the teacher's tokenizer under the CLI's length rules
  DataLoaders             torch DataLoaders yielding tokenised batches: dicts of input_ids, attention_mask
                          (token_type_ids optional) and labels

Labels in a table are class ids when they are integers (0 .. num_labels - 1, HF's ClassLabel
convention), else label names, mapped as the CLI maps a file's (the teacher's names, label_list, or
the sorted values seen). A missing column, a label outside the task's set, a row without text, empty
data: one-line PrunekitErrors worded as the CLI's, naming train_data or eval_data instead of a file.
"""
from numbers import Integral

import torch

from .data import GLUE, Task, canonical_task, chosen_labels, encode, infer_labels, to_examples
from .errors import PrunekitError
from .evaluation import resolve_max_length, trained_labels
from .teachers import teacher_task


def user_task(model, train_data, eval_data=None, *, task: str | None = None, text_column: str | None = None,
              text_pair_column: str | None = None, label_column: str | None = None, label_list=None,
              max_length: int | None = None, glue_dir=None, tokenizer=None, default_length=lambda name: 128,
              model_name: str = "the model") -> tuple[Task, dict]:
    """(the Task, how the run names its data): `model` the loaded teacher (its config and tokenizer;
    `tokenizer` replaces a missing one), default_length(task name) the method's tokens per example.
    The second value holds "data" (what the report and a resume record) and "max_length" (tokens per
    example)."""
    tokenizer = tokenizer or model.tokenizer
    if isinstance(train_data, str) or hasattr(train_data, "__fspath__"):
        return from_names(model, str(train_data), eval_data, task, text_column, text_pair_column, label_column,
                          label_list, max_length, glue_dir, tokenizer, default_length, model_name)
    if glue_dir is not None:
        raise PrunekitError("glue_dir= goes with a GLUE task name as train_data")
    train_data, eval_data = splits_of(train_data, eval_data)
    name = task or getattr(model.config, "finetuning_task", None) or "custom"
    spec = GLUE.get(canonical_task(name) or "")
    name = spec.name if spec else name
    loaders = [isinstance(d, torch.utils.data.DataLoader) for d in (train_data, eval_data)]
    if any(loaders):
        if max_length is not None:
            raise PrunekitError("max_length= is for text data: a DataLoader's examples are tokenised already")
        if text_column or text_pair_column or label_column or label_list:
            raise PrunekitError("text_column=, text_pair_column=, label_column= and label_list= are for tables; "
                                "a DataLoader yields input_ids, attention_mask and labels")
    if all(loaders):
        return from_loaders(model, train_data, eval_data, name, spec)
    if any(loaders):
        raise PrunekitError("train_data and eval_data must both be DataLoaders, or neither")
    return from_tables(model, train_data, eval_data, name, spec, text_column, text_pair_column, label_column,
                       label_list, max_length, tokenizer, default_length, model_name)


def from_names(model, train_data: str, eval_data, task, text_column, text_pair_column, label_column, label_list,
               max_length, glue_dir, tokenizer, default_length, model_name) -> tuple[Task, dict]:
    """A GLUE task name, or data files: what the CLI reads, read the CLI's way."""
    is_path = lambda x: isinstance(x, str) or hasattr(x, "__fspath__")  # noqa: E731
    is_file = eval_data is not None
    if is_file and not is_path(eval_data):
        raise PrunekitError("with a data file as train_data, eval_data is a data file too")
    if not is_file and canonical_task(train_data) is None:
        raise PrunekitError(f"train_data {train_data!r} is not a GLUE task ({', '.join(GLUE)}); a data file as "
                            "train_data needs eval_data, a data file too")
    columns = [c for c in (text_column, text_pair_column) if c] or None
    if is_file:
        name = task or "custom"
        data = dict(train_file=train_data, dev_file=str(eval_data), text_columns=columns, label_column=label_column,
                    label_list=label_list)
    else:
        if task is not None and canonical_task(task) != canonical_task(train_data):
            raise PrunekitError(f"task={task!r} differs from the GLUE task {train_data!r} given as train_data")
        if columns or label_column or label_list:
            raise PrunekitError("text_column=, text_pair_column=, label_column= and label_list= are for custom "
                                "data; a GLUE task has its own")
        name, data = train_data, {}
    data.update(glue_dir=None if glue_dir is None else str(glue_dir), max_length=max_length)
    need_tokenizer(tokenizer, model_name)
    with_tokenizer = TokenizerOf(model, tokenizer)
    task = teacher_task(with_tokenizer, model_name, name, data, default_length(name))
    return task, {"data": data, "max_length": data["max_length"]}


def need_tokenizer(tokenizer, model_name: str) -> None:
    """Text data needs the teacher's tokenizer (a model directory brings its own; an object may not)."""
    if tokenizer is None:
        raise PrunekitError(f"{model_name} carries no tokenizer and the data is text: give tokenizer= (the one it "
                            "was fine-tuned with)")


class TokenizerOf:
    """A model seen with another tokenizer (teacher_task reads model.tokenizer and model.config)."""

    def __init__(self, model, tokenizer):
        self.config, self.tokenizer = model.config, tokenizer


# ---------------------------------------------------------------------------------------------
# tables: HF datasets and pandas


def splits_of(train_data, eval_data) -> tuple:
    """A DatasetDict as train_data: its train split, and its validation split when eval_data is None."""
    if isinstance(train_data, dict) and hasattr(train_data, "column_names"):  # datasets.DatasetDict
        splits = ", ".join(train_data) or "none"
        if "train" not in train_data:
            raise PrunekitError(f"train_data has no 'train' split (splits: {splits})")
        if eval_data is None:
            if "validation" not in train_data:
                raise PrunekitError(f"train_data has no 'validation' split to score on (splits: {splits}): give "
                                    "eval_data")
            eval_data = train_data["validation"]
        train_data = train_data["train"]
    if eval_data is None:
        raise PrunekitError("give eval_data: the dev set the method scores its stages on (only a GLUE task name "
                            "or a DatasetDict with a validation split brings its own)")
    return train_data, eval_data


class Table:
    """A Dataset's or a DataFrame's columns, read by name (only those used are read)."""

    def __init__(self, data, where: str):
        self.where = where
        if hasattr(data, "column_names") and hasattr(data, "features"):   # datasets.Dataset
            self.names, self.read = list(data.column_names), lambda c: list(data[c])
            feature = data.features.get
        elif hasattr(data, "columns") and hasattr(data, "iloc"):          # pandas.DataFrame
            self.names, self.read = [str(c) for c in data.columns], lambda c: data[c].tolist()
            feature = lambda c: None  # noqa: E731
        else:
            raise PrunekitError(f"{where} is a {type(data).__name__}: give a GLUE task name, data files, an HF "
                                "datasets.Dataset, a pandas DataFrame or a DataLoader of tokenised batches")
        self.rows = len(data)
        if not self.rows:
            raise PrunekitError(f"{where} is empty")
        self.class_names = lambda c: getattr(feature(c), "names", None)  # an HF ClassLabel's

    def check(self, columns) -> None:
        for col in columns:
            if col not in self.names:
                raise PrunekitError(f"{self.where}: no column {col!r} (columns: {', '.join(self.names) or 'none'})")

    def rows_of(self, columns) -> list[tuple[int, dict]]:
        """(row number from 0, {column: value}) of every row: data.py's rows, so its checks apply."""
        values = {c: self.read(c) for c in columns}
        return [(i, {c: v[i] for c, v in values.items()}) for i in range(self.rows)]


def from_tables(model, train_data, eval_data, name: str, spec, text_column, text_pair_column, label_column,
                label_list, max_length, tokenizer, default_length, model_name) -> tuple[Task, dict]:
    if text_pair_column and not text_column:
        raise PrunekitError("text_pair_column= goes with text_column= (the first text of each pair)")
    texts = tuple(c for c in (text_column, text_pair_column) if c) or (spec.hf_text if spec else ())
    if not texts:
        raise PrunekitError("custom data needs text_column= (and text_pair_column= for sentence pairs)")
    label_col = label_column or "label"
    tables = {"train": Table(train_data, "train_data"), "dev": Table(eval_data, "eval_data")}
    for table in tables.values():
        table.check((*texts, label_col))
    rows = {k: t.rows_of((*texts, label_col)) for k, t in tables.items()}
    need_tokenizer(tokenizer, model_name)
    is_regression = spec is not None and spec.labels is None
    names, label2id = label_set(model.config, spec, rows["train"], label_col, label_list,
                                tables["train"].class_names(label_col), is_regression)
    max_length = resolve_max_length(model.config, max_length, default_length(name), model_name)
    encoded = {k: encode(tokenizer, *to_examples(tables[k].where, r, texts, label_col, label2id, unit="row"),
                         max_length) for k, r in rows.items()}
    task = Task(name=name, num_labels=1 if is_regression else len(names), is_regression=is_regression,
                labels=names, train=encoded["train"], dev_sets={"dev": encoded["dev"]})
    described = {k: f"{type(d).__name__} of {t.rows} rows" for k, d, t in
                 (("train_data", train_data, tables["train"]), ("eval_data", eval_data, tables["dev"]))}
    return task, {"data": {**described, "text_columns": list(texts), "label_column": label_col},
                  "max_length": max_length}


def label_set(config, spec, train_rows, label_col: str, label_list, class_names, is_regression: bool):
    """(label names in id order, label value as text -> id; None for regression). Integer labels are
    ids below the model's label count; other values are names, mapped as the CLI maps a file's."""
    if is_regression:
        return None, None
    values = [row[label_col] for _, row in train_rows]
    trained = trained_labels(config)
    if all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
        names = list(class_names or chosen_labels(spec, None, label_list) or (spec.labels if spec else None)
                     or trained or [str(i) for i in range(config.num_labels)])
        return names, {str(i): i for i in range(len(names))}
    names = chosen_labels(spec, trained, label_list) or (list(spec.labels) if spec else None)
    names = list(names or infer_labels(train_rows, label_col, "train_data"))
    label2id = {n: i for i, n in enumerate(names)}
    if spec is not None and spec.tsv_labels:
        label2id.update({t: i for i, t in enumerate(spec.tsv_labels)})  # '0'/'1' as GLUE writes them
    return names, label2id


# ---------------------------------------------------------------------------------------------
# DataLoaders of tokenised batches


def from_loaders(model, train_loader, eval_loader, name: str, spec) -> tuple[Task, dict]:
    is_regression = spec is not None and spec.labels is None
    labels = trained_labels(model.config) or (list(spec.labels) if spec and spec.labels else
                                              [str(i) for i in range(model.config.num_labels)])
    num_labels = 1 if is_regression else len(labels)
    split = {k: loader_examples(d, k, num_labels, is_regression, model.config.longest_sequence)
             for k, d in (("train_data", train_loader), ("eval_data", eval_loader))}
    task = Task(name=name, num_labels=num_labels, is_regression=is_regression, labels=None if is_regression else labels,
                train=split["train_data"], dev_sets={"dev": split["eval_data"]})
    longest = max(len(e["input_ids"]) for examples in split.values() for e in examples)
    described = {k: f"DataLoader of {len(v)} examples" for k, v in split.items()}
    return task, {"data": described, "max_length": longest}


def loader_examples(loader, where: str, num_labels: int, is_regression: bool, longest: int) -> list[dict]:
    """A DataLoader's batches as encoded examples: each row's real tokens (attention_mask 1), its
    token types (0 where none are given) and its label, checked."""
    examples = []
    for b, batch in enumerate(loader):
        if not isinstance(batch, dict):
            raise PrunekitError(f"{where} batch {b} is a {type(batch).__name__}, not a dict of input_ids, "
                                "attention_mask and labels")
        label_key = next((k for k in ("labels", "label") if k in batch), None)
        missing = [k for k in ("input_ids", "attention_mask") if k not in batch] + ([] if label_key else ["labels"])
        if missing:
            raise PrunekitError(f"{where} batch {b}: no {', '.join(missing)} (keys: {', '.join(map(str, batch))})")
        ids, mask = torch.as_tensor(batch["input_ids"]), torch.as_tensor(batch["attention_mask"])
        types = torch.as_tensor(batch["token_type_ids"]) if "token_type_ids" in batch else torch.zeros_like(ids)
        ys = torch.as_tensor(batch[label_key]).reshape(-1)
        if ids.dim() != 2 or mask.shape != ids.shape or types.shape != ids.shape or len(ys) != len(ids):
            raise PrunekitError(f"{where} batch {b}: input_ids {list(ids.shape)}, attention_mask {list(mask.shape)}, "
                                f"token_type_ids {list(types.shape)} and {len(ys)} labels do not fit one another")
        for i in range(len(ids)):
            real = mask[i] != 0
            n = int(real.sum())
            if n == 0:
                raise PrunekitError(f"{where} batch {b} row {i}: no tokens (attention_mask all 0)")
            if n > longest:
                raise PrunekitError(f"{where} batch {b} row {i}: {n} tokens, more than the model can take "
                                    f"({longest} positions)")
            examples.append({"input_ids": ids[i][real].tolist(), "token_type_ids": types[i][real].tolist(),
                             "label": label_value(ys[i], where, b, i, num_labels, is_regression)})
    if not examples:
        raise PrunekitError(f"{where} is empty")
    return examples


def label_value(y: torch.Tensor, where: str, b: int, i: int, num_labels: int, is_regression: bool):
    if is_regression:
        return float(y)
    if y.is_floating_point() and y != y.round():
        raise PrunekitError(f"{where} batch {b} row {i}: label {float(y):g} is not a class id")
    if not 0 <= int(y) < num_labels:
        raise PrunekitError(f"{where} batch {b} row {i}: label {int(y)} is outside the task's labels "
                            f"0..{num_labels - 1}")
    return int(y)
