"""Shared test helpers and fixtures.

Models: tiny_config / tiny_model / random_batch (a 3-layer model and inputs for it), the `minilm`
fixtures (the packaged all-MiniLM-L6-v2: slow to load, tests using them are marked slow), `tok` (its
tokenizer) and `tiny_model_dir` (a tiny model saved with that tokenizer).
Data: sentence / write_sentiment_glue (small separable SST-2 / STS-B files), synthetic_task (a Task
of random token ids), labelled_batches; real GLUE data only through real_glue / needs_glue, which
read $GLUE_DIR and nothing else.
"""
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in the interpreter on CPU

import prunekit  # noqa: E402
from prunekit.config import PrunekitBertConfig  # noqa: E402
from prunekit.model import PrunekitBertForSequenceClassification  # noqa: E402


# ---------------------------------------------------------------------------------------------
# real GLUE data: $GLUE_DIR only (the glue_data layout: SST-2/, MRPC/, RTE/, ...)

def real_glue(*folders: str) -> Path | None:
    """$GLUE_DIR as a Path when it is set and holds every named task folder ('SST-2', 'RTE', ...);
    None otherwise."""
    root = os.environ.get("GLUE_DIR")
    if not root or not all((Path(root) / f).is_dir() for f in folders):
        return None
    return Path(root)


def needs_glue(*folders: str):
    """skipif marker for a test that reads real GLUE files, with a reason that says what to set."""
    root = os.environ.get("GLUE_DIR")
    if not root:
        why = "GLUE_DIR is unset"
    else:
        missing = [f for f in folders if not (Path(root) / f).is_dir()]
        why = f"GLUE_DIR={root} has no {', '.join(missing)} folder" if missing else ""
    return pytest.mark.skipif(real_glue(*folders) is None,
                              reason=f"needs real GLUE data ({', '.join(folders)}): set GLUE_DIR "
                                     f"(e.g. ../shared/data/glue); absent here: {why}")


# ---------------------------------------------------------------------------------------------
# tiny models

def tiny_config(**overrides) -> PrunekitBertConfig:
    kw = dict(vocab_size=50, hidden_size=16, head_dim=4, num_heads=[4, 4, 4], ffn_dim=[12, 12, 12],
              max_position_embeddings=32, num_labels=3)
    kw.update(overrides)
    return PrunekitBertConfig(**kw)


def tiny_model(seed=0, **overrides) -> PrunekitBertForSequenceClassification:
    torch.manual_seed(seed)
    model = PrunekitBertForSequenceClassification(tiny_config(**overrides)).eval()
    # random LayerNorm affine params and biases so that no fold can hide behind ones and zeros
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm.weight" in name else 0.0))
    return model


def small_model(tok, num_labels=2, seed=0) -> PrunekitBertForSequenceClassification:
    """A tiny model over the real MiniLM vocabulary, carrying that tokenizer (saved with the model)."""
    model = tiny_model(seed, vocab_size=tok.vocab_size, max_position_embeddings=64, num_labels=num_labels)
    model.tokenizer = tok
    return model


def random_batch(vocab=50, batch=3, seq=9, seed=1, pad=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad:
        mask[1, seq - 3:] = 0
        mask[2, seq // 2:] = 0
    types = torch.zeros(batch, seq, dtype=torch.long)
    types[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def labelled_batches(n=3, seed=0):
    """n random batches of 4 for tiny_model (3 labels), with labels."""
    out = []
    for i in range(n):
        b = random_batch(batch=4, seq=9, seed=seed + i)
        b["labels"] = torch.tensor([0, 1, 2, 1])
        out.append(b)
    return out


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The CLI's --threads sets torch's process-wide thread count; give every test the count it started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and lose a lot when another job holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm():
    return prunekit.load_model("minilm", num_labels=2)


@pytest.fixture(scope="session")
def minilm_batch(minilm):
    texts = ["a gripping, beautifully shot film .", "it 's a dull , lifeless mess that never ends and goes on",
             "fine."]
    enc = minilm.tokenizer(texts, padding=True, return_tensors="pt")
    return dict(enc)


@pytest.fixture(scope="session")
def tok():
    """The packaged MiniLM's tokenizer (without loading its weights)."""
    from prunekit.checkpoints import load_tokenizer, resolve
    return load_tokenizer(resolve("minilm"))


@pytest.fixture(scope="module")
def tiny_model_dir(tok, tmp_path_factory):
    """A tiny prunekit model (not fine-tuned) with the real MiniLM tokenizer, saved as a model directory."""
    d = tmp_path_factory.mktemp("tiny-model")
    small_model(tok).save_pretrained(d)
    return d


# ---------------------------------------------------------------------------------------------
# synthetic data

POS, NEG = "good great fine nice lovely superb".split(), "bad awful poor sad dull ugly".split()
FILLER = "the film was a story it and".split()


def sentence(rng, label, max_filler=6):
    """A few filler words and one word that gives the sentiment away: a task a tiny model can learn."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, max_filler))]
    words.insert(rng.randint(0, len(words)), rng.choice(POS if label else NEG))
    return " ".join(words)


def write_sentiment_glue(d: Path, n_train: int, n_dev: int, max_filler: int, stsb: bool = False) -> Path:
    """SST-2 train/dev files of `sentence`s in GLUE's format (labels alternate 0, 1), and with stsb
    12 STS-B train and dev pairs with scores 0 to 4.5; one seeded RNG for all of it."""
    rng = random.Random(0)
    (d / "SST-2").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = "".join(f"{sentence(rng, i % 2, max_filler)} \t{i % 2}\n" for i in range(n))
        (d / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    if stsb:
        (d / "STS-B").mkdir()
        head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        for split in ("train", "dev"):
            rows = "".join(f"{i}\tg\tf\ty\to\ts\ts\t{sentence(rng, i % 2, max_filler)}\t"
                           f"{sentence(rng, i % 3 == 0, max_filler)}\t{i % 6 * 0.9:.1f}\n" for i in range(12))
            (d / "STS-B" / f"{split}.tsv").write_text(head + rows)
    return d


@pytest.fixture(scope="module")
def sst2_glue_dir(tmp_path_factory):
    """A glue_data folder with a small SST-2 (96 train, 40 dev sentences of 3 to 10 words)."""
    return write_sentiment_glue(tmp_path_factory.mktemp("glue"), 96, 40, max_filler=9)


@pytest.fixture(scope="module")
def sst2_stsb_glue_dir(tmp_path_factory):
    """A glue_data folder with a small SST-2 (64 train, 32 dev sentences of 3 to 7 words) and STS-B (12 + 12)."""
    return write_sentiment_glue(tmp_path_factory.mktemp("glue"), 64, 32, max_filler=6, stsb=True)


def synthetic_task(model, n_train=96, n_dev=24, seed=0):
    """A Task of random token ids (3 to 11 tokens) for `model`, labels cycling over its classes."""
    from prunekit.data import Task
    g = torch.Generator().manual_seed(seed)

    def example(i):
        n = int(torch.randint(3, 12, (1,), generator=g))
        ids = torch.randint(1, model.config.vocab_size, (n,), generator=g).tolist()
        return {"input_ids": ids, "token_type_ids": [0] * n, "label": i % model.config.num_labels}
    return Task(name="toy", num_labels=model.config.num_labels, is_regression=False, labels=["a", "b", "c"],
                train=[example(i) for i in range(n_train)], dev_sets={"dev": [example(i) for i in range(n_dev)]})
