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
from transformers import PretrainedConfig


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
        self.num_heads = list(num_heads) if num_heads is not None else [12] * 6
        self.ffn_dim = list(ffn_dim) if ffn_dim is not None else [1536] * 6
        if len(self.num_heads) != len(self.ffn_dim):
            raise ValueError(f"num_heads has {len(self.num_heads)} layers but ffn_dim has {len(self.ffn_dim)}")
        if any(h < 0 for h in self.num_heads) or any(f < 0 for f in self.ffn_dim) or hidden_size < 1:
            raise ValueError("head counts and FFN widths must be >= 0 and hidden_size >= 1")
        self.pooler_size = pooler_size if pooler_size is not None else hidden_size
        given = dict(max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
                     layer_norm_eps=layer_norm_eps, hidden_dropout_prob=hidden_dropout_prob,
                     attention_probs_dropout_prob=attention_probs_dropout_prob, classifier_dropout=classifier_dropout,
                     initializer_range=initializer_range, arch=arch, positions_from_padding=positions_from_padding,
                     embedding_size=embedding_size, position_embedding_type=position_embedding_type,
                     pooler_activation=pooler_activation, pooler_input_dropout=pooler_input_dropout)
        for name, value in given.items():  # kept as given: the config.json of a model says it all
            setattr(self, name, value)
        if pooler_activation not in ("tanh", "gelu", "relu") or position_embedding_type not in ("absolute", "sinusoidal"):
            raise ValueError(f"unknown pooler_activation {pooler_activation!r} or position_embedding_type "
                             f"{position_embedding_type!r}")
        super().__init__(pad_token_id=pad_token_id, **kwargs)

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
