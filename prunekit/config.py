"""The encoder config: one class for the dense teacher and every compact form of it.

A compact model is just a config whose per-layer lists are smaller:
  num_heads[l] = 0  -> layer l has no attention sublayer (it is an identity)
  ffn_dim[l]   = 0  -> layer l has no FFN sublayer (it is an identity)
  hidden_size       -> width of the residual stream; may shrink independently of heads * head_dim
                       (Q/K/V map hidden_size -> num_heads[l] * head_dim, O maps back)
  pooler_size       -> width of the pooler output, which the classifier reads; it stays at the
                       teacher's width when the hidden size shrinks
It subclasses transformers' PretrainedConfig so that Auto classes and save_pretrained work.

BERT's relatives differ only outside the layers, so a few switches describe them (checkpoints.py sets
them from the HF config; each was checked against transformers' own modelling code, tests/
test_architectures.py):
  arch                      bert, roberta, distilbert or electra: where the weights came from
  positions_from_padding    RoBERTa: position ids count real tokens from pad_token_id + 1, padding
                            keeps pad_token_id
  type_vocab_size = 0       DistilBERT: no token-type embedding
  embedding_size            ELECTRA: embeddings this wide, then a projection to hidden_size (None: hidden_size)
  position_embedding_type   absolute (learned) or sinusoidal (DistilBERT's option: a fixed table)
  pooler_activation         tanh (BERT, RoBERTa's head), gelu (ELECTRA's head), relu (DistilBERT's pre_classifier)
  pooler_input_dropout      RoBERTa and ELECTRA heads drop out the first token before their dense layer
"""
import math
from numbers import Integral, Real

from transformers import PretrainedConfig

from .errors import PrunekitError

ARCHS = ("bert", "roberta", "distilbert", "electra")   # where the weights may come from


def whole(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def finite(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def one_of(*choices):
    return (lambda v: isinstance(v, str) and v in choices), "one of " + ", ".join(choices)


def or_null(rule):
    return (lambda v: v is None or rule[0](v)), rule[1] + " or null"


POSITIVE = (lambda v: whole(v) and v > 0), "a positive whole number"
PROBABILITY = (lambda v: finite(v) and 0 <= v < 1), "a probability in [0, 1)"
FLAG = (lambda v: isinstance(v, bool)), "true or false"
# field -> (test, what it must be), checked in this order after the per-layer lists
FIELD_RULES = {
    "hidden_size": POSITIVE, "head_dim": POSITIVE, "vocab_size": POSITIVE, "max_position_embeddings": POSITIVE,
    "pooler_size": POSITIVE, "embedding_size": or_null(POSITIVE),
    "type_vocab_size": ((lambda v: whole(v) and v >= 0), "a whole number >= 0"),
    "layer_norm_eps": ((lambda v: finite(v) and v > 0), "a positive number"),
    "hidden_dropout_prob": PROBABILITY, "attention_probs_dropout_prob": PROBABILITY,
    "classifier_dropout": or_null(PROBABILITY),
    "initializer_range": ((lambda v: finite(v) and v >= 0), "a number >= 0"),
    "arch": one_of(*ARCHS), "pooler_activation": one_of("tanh", "gelu", "relu"),
    "position_embedding_type": one_of("absolute", "sinusoidal"),
    "positions_from_padding": FLAG, "pooler_input_dropout": FLAG,
}


class PrunekitBertConfig(PretrainedConfig):
    model_type = "prunekit-bert"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        head_dim: int = 32,
        num_heads: list[int] | None = None,
        ffn_dim: list[int] | None = None,
        pooler_size: int | None = None,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        classifier_dropout: float | None = None,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        arch: str = "bert",
        positions_from_padding: bool = False,
        embedding_size: int | None = None,
        position_embedding_type: str = "absolute",
        pooler_activation: str = "tanh",
        pooler_input_dropout: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        as_list = lambda v, default: default if v is None else (list(v) if isinstance(v, (list, tuple)) else v)
        self.num_heads = as_list(num_heads, [12] * 6)
        self.ffn_dim = as_list(ffn_dim, [1536] * 6)
        self.pooler_size = pooler_size if pooler_size is not None else hidden_size
        given = dict(max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
                     layer_norm_eps=layer_norm_eps, hidden_dropout_prob=hidden_dropout_prob,
                     attention_probs_dropout_prob=attention_probs_dropout_prob, classifier_dropout=classifier_dropout,
                     initializer_range=initializer_range, arch=arch, positions_from_padding=positions_from_padding,
                     embedding_size=embedding_size, position_embedding_type=position_embedding_type,
                     pooler_activation=pooler_activation, pooler_input_dropout=pooler_input_dropout)
        for name, value in given.items():  # kept as given: the config.json of a model says it all
            setattr(self, name, value)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.check()

    def check(self) -> None:
        """Refuse a config the model cannot be built from, or would be built from wrongly, naming the
        first field at fault (a PrunekitError, one line): a hand-edited config.json meets this before
        any weight is read."""
        heads, ffn = self.num_heads, self.ffn_dim
        if not (isinstance(heads, list) and isinstance(ffn, list) and heads and len(heads) == len(ffn)):
            raise PrunekitError(f"num_heads and ffn_dim must be lists of one entry per layer, of the same length "
                                f"(got {heads!r} and {ffn!r})")
        if not all(whole(n) and n >= 0 for n in heads + ffn):
            raise PrunekitError("head counts and FFN widths must be whole numbers >= 0")
        layers = getattr(self, "num_hidden_layers", None)  # not prunekit's, but a config.json may carry it
        if layers is not None and layers != len(heads):
            raise PrunekitError(f"num_hidden_layers is {layers!r} but num_heads and ffn_dim list {len(heads)} layers")
        for key, (test, what) in FIELD_RULES.items():
            if not test(getattr(self, key)):
                raise PrunekitError(f"{key} must be {what}, got {getattr(self, key)!r}")
        pad = self.pad_token_id
        if not ((pad is None and not self.positions_from_padding) or (whole(pad) and 0 <= pad < self.vocab_size)):
            raise PrunekitError(f"pad_token_id must be a token id below vocab_size {self.vocab_size}, got {pad!r}")
        if self.longest_sequence < 2:
            raise PrunekitError(f"max_position_embeddings {self.max_position_embeddings} leaves no room for a sequence")
        if self.num_labels < 1:
            raise PrunekitError("a classifier needs at least one label (num_labels / id2label)")

    @property
    def num_layers(self) -> int:
        return len(self.num_heads)

    @property
    def longest_sequence(self) -> int:
        """The longest sequence the position table covers (RoBERTa's count from pad_token_id + 1)."""
        return self.max_position_embeddings - (self.pad_token_id + 1 if self.positions_from_padding else 0)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def is_uniform(self) -> bool:
        """True when every layer has the same head count and FFN width (a dense, mask-able model)."""
        return len(set(self.num_heads)) == 1 and len(set(self.ffn_dim)) == 1

    def structure(self) -> list[dict]:
        """Per-layer structure as plain data, for reports."""
        return [{"layer": l, "heads": h, "ffn": f, "mha": h > 0, "ffn_present": f > 0}
                for l, (h, f) in enumerate(zip(self.num_heads, self.ffn_dim))]
