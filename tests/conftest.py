import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in the interpreter on CPU

import prunekit  # noqa: E402
from prunekit.config import PrunekitBertConfig  # noqa: E402
from prunekit.model import PrunekitBertForSequenceClassification  # noqa: E402


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


@pytest.fixture(scope="session")
def minilm():
    return prunekit.load_model("minilm", num_labels=2)


@pytest.fixture(scope="session")
def minilm_batch(minilm):
    texts = ["a gripping, beautifully shot film .", "it 's a dull , lifeless mess that never ends and goes on",
             "fine."]
    enc = minilm.tokenizer(texts, padding=True, return_tensors="pt")
    return dict(enc)
