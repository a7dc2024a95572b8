"""Tokenizer files beside a model: loading them, and one error for when a verb needs them and they
are missing. Kept apart from model.py and checkpoints.py so that both can use it."""
from pathlib import Path

from .errors import PrunekitError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def load_tokenizer(path):
    """The tokenizer saved in a model directory, or None when it holds no tokenizer files."""
    path = Path(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


def require_tokenizer(tokenizer, model_name, why: str = ""):
    """The tokenizer, or a PrunekitError saying the model directory has none."""
    if tokenizer is None:
        raise PrunekitError(f"{model_name} has no tokenizer files ({' / '.join(TOKENIZER_FILES[:3])})"
                            + (f": {why}" if why else ""))
    return tokenizer
