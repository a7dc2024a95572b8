"""config.json of an exported directory, in the form stock tools read without prunekit.

A serving machine runs model.onnx with ONNX Runtime (or OpenVINO) and reads config.json with the
usual HF tooling: transformers' AutoConfig, Optimum's ORTModelForSequenceClassification, pipeline().
Those know bert, roberta, distilbert and electra, not prunekit-bert, so the export writes the base
architecture's own config (the mirror of checkpoints.config_from_hf):

    HF fields       model_type, architectures, labels (id2label / label2id), problem_type,
                    finetuning_task, vocabulary and position sizes, dropout, layer-norm epsilon
    nominal sizes   hidden_size, num_attention_heads, intermediate_size (DistilBERT: dim, n_heads,
                    hidden_dim) are the DENSE model's, the one this model was pruned from: a compact
                    model has per-layer head counts and FFN widths, which no stock config can say
    "prunekit"      {"note": ..., "config": the full prunekit config}: the real per-layer structure
                    (num_heads, ffn_dim, hidden_size, ...), which prunekit reads back (exported_config)

Where the dense sizes come from: the dense hidden width is the compact config's pooler_size (surgery
keeps the pooler at the teacher's width), its head count that width over head_dim; the dense FFN
width is not in a compact config, so it is read from the masks.safetensors that `prunekit compress`
writes beside the compact model (z_int is [layers, dense FFN width]); without one, the widest layer.

The PyTorch directory of a compact model keeps model_type prunekit-bert: its weights need prunekit's
encoder. Only the ONNX directory, whose graph carries the structure, is portable.
"""
from pathlib import Path

from prunekit.checkpoints import config_of, read_config
from prunekit.config import PrunekitBertConfig
from prunekit.errors import PrunekitError

PRUNEKIT_KEY = "prunekit"
CLASSIFIERS = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification",
               "distilbert": "DistilBertForSequenceClassification", "electra": "ElectraForSequenceClassification"}
NOTE = ("hidden_size, num_attention_heads and intermediate_size (DistilBERT: dim, n_heads, hidden_dim) above are the "
        "dense model's this one was pruned from (nominal sizes, for tools that read a stock config); model.onnx "
        "has the real per-layer structure, which is 'config' here: num_heads and ffn_dim per layer, hidden_size")


def dense_ffn_width(config: PrunekitBertConfig, source=None) -> int:
    """The dense model's FFN width: z_int's width in the masks.safetensors beside the source model
    (written by `prunekit compress`), else the widest layer of this one."""
    masks = Path(source) / "masks.safetensors" if source else None
    if masks is not None and masks.is_file():
        from safetensors import safe_open
        with safe_open(str(masks), "pt") as f:
            if "z_int" in f.keys():
                return int(f.get_slice("z_int").get_shape()[-1])
    return max(max(config.ffn_dim), 1)


def nominal_sizes(config: PrunekitBertConfig, source=None) -> dict:
    """hidden, heads, ffn of the dense model the (possibly compact) config was pruned from."""
    hidden = config.pooler_size
    return {"hidden": hidden, "heads": max(hidden // config.head_dim, 1), "ffn": dense_ffn_width(config, source)}


def label_fields(config: PrunekitBertConfig) -> dict:
    fields = {"id2label": {str(i): name for i, name in sorted(config.id2label.items())},
              "label2id": {name: i for i, name in sorted(config.id2label.items())}}
    for key in ("problem_type", "finetuning_task"):
        if getattr(config, key, None):
            fields[key] = getattr(config, key)
    return fields


def size_fields(config: PrunekitBertConfig, sizes: dict) -> dict:
    """The architecture's own names for its sizes and dropout (DistilBERT names them differently)."""
    if config.arch == "distilbert":
        return {"dim": sizes["hidden"], "n_layers": config.num_layers, "n_heads": sizes["heads"],
                "hidden_dim": sizes["ffn"], "activation": "gelu", "dropout": config.hidden_dropout_prob,
                "attention_dropout": config.attention_probs_dropout_prob,
                "sinusoidal_pos_embds": config.position_embedding_type == "sinusoidal",
                **({"seq_classif_dropout": config.classifier_dropout} if config.classifier_dropout is not None else {})}
    fields = {"hidden_size": sizes["hidden"], "num_hidden_layers": config.num_layers,
              "num_attention_heads": sizes["heads"], "intermediate_size": sizes["ffn"], "hidden_act": "gelu",
              "hidden_dropout_prob": config.hidden_dropout_prob,
              "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
              "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.layer_norm_eps,
              "position_embedding_type": "absolute", "classifier_dropout": config.classifier_dropout}
    if config.arch == "electra":
        fields["embedding_size"] = config.embedding_size or sizes["hidden"]
    return fields


def portable_config(config: PrunekitBertConfig, source=None) -> dict:
    """config.json for the ONNX directory: the base architecture's config with nominal dense sizes,
    the prunekit config kept whole under "prunekit"."""
    if config.arch not in CLASSIFIERS:
        raise PrunekitError(f"no stock config for architecture {config.arch!r} (known: {', '.join(CLASSIFIERS)})")
    return {"model_type": config.arch, "architectures": [CLASSIFIERS[config.arch]],
            "vocab_size": config.vocab_size, "max_position_embeddings": config.max_position_embeddings,
            "pad_token_id": config.pad_token_id, "initializer_range": config.initializer_range,
            **size_fields(config, nominal_sizes(config, source)), **label_fields(config),
            PRUNEKIT_KEY: {"note": NOTE, "config": config.to_dict()}}


def exported_config(model_dir) -> PrunekitBertConfig:
    """The real structure of an exported directory: its "prunekit" block; an export written before
    the portable config (model_type prunekit-bert) or an HF one (e.g. by Optimum) as it is."""
    model_dir = Path(model_dir)
    block = read_config(model_dir).get(PRUNEKIT_KEY)
    if block is None:
        return config_of(model_dir)
    if not (isinstance(block, dict) and isinstance(block.get("config"), dict)):
        raise PrunekitError(f"{model_dir}/config.json: its '{PRUNEKIT_KEY}' entry is not {{'config': {{...}}}}")
    try:
        return PrunekitBertConfig.from_dict(block["config"])
    except (TypeError, ValueError) as e:
        raise PrunekitError(f"{model_dir}/config.json: its '{PRUNEKIT_KEY}' config is unusable ({e})") from e
