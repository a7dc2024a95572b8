"""The prunekit BERT encoder: one definition for the dense teacher, the masked model and every
compact model.

- Dense and masked: every layer has the same head count and FFN width; `forward(..., masks=)` applies
  CoFi-style masks (z_mha, z_head, z_ffn, z_int, z_hidden; any subset, real-valued), with the
  semantics of CoFi's training forward (Xia et al. 2022, section 3.1, and its code):
    * z_head scales each head's context vector, z_mha the attention output projection,
      z_int the post-GELU FFN activations, z_ffn the FFN down projection;
    * z_hidden scales the embeddings and each sublayer's output before and after its LayerNorm, and
      LayerNorm statistics run over the kept hidden dims only;
    * a sublayer whose mask is entirely zero is an identity (no bias leak, no LayerNorm).
- Compact: the config's per-layer lists say how many heads / FFN units each layer keeps (0 = that
  sublayer is absent) and how wide the residual stream is. surgery.prune() builds this form.

Checked against transformers' BertModel on all-MiniLM-L6-v2 (tests/test_hf_parity.py) and, for the
compact form, against the masked model (tests/test_surgery.py).
Without masks the forward has no Python branch on tensor values, so it traces and exports; branches
depend only on the config (a layer with no heads simply has no attention code) or on which masks were
passed. (With masks, which only training and pruning pass, the masked LayerNorm looks up the kept
hidden dims.)

Kernels (model.set_kernels): "torch" (the default) is the eager reference above, the one export and
every exactness test use; "sdpa" computes attention with PyTorch's scaled_dot_product_attention
(no S x S tensor kept for backward), the head gate on its output; "triton" runs
the fused Triton kernels of prunekit.kernels for attention (online softmax, gate inside, no
attention-probability dropout) and for the FFN (bias, GELU and both gates in GEMM epilogues);
"auto" is triton on a CUDA GPU the kernels run on (sm_80 or newer) and torch elsewhere (on CPU the
speed comes from bf16 autocast, not from SDPA: bench/results/train_speed_paths.md). All compute the
same function within float rounding.
"""
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from .config import PrunekitBertConfig
from .errors import PrunekitError
from .io import staged_into
from .tokenizer import load_tokenizer
from .weights import check_before_load, check_finite


@dataclass
class LayerMasks:
    """The masks that act inside one layer; None means 'not masked'."""
    mha: torch.Tensor | None = None     # scalar
    head: torch.Tensor | None = None    # (H,)
    ffn: torch.Tensor | None = None     # scalar
    unit: torch.Tensor | None = None    # (F,) per FFN unit
    hidden: torch.Tensor | None = None  # (d,) values
    keep: torch.Tensor | None = None    # (d,) 1.0 where hidden != 0, else 0.0


KERNELS = ("torch", "sdpa", "triton", "auto")


def triton_unusable(device, head_dim: int) -> str | None:
    """Why the Triton kernels cannot train this model on this device (None when they can): no triton,
    not a CUDA device (the interpreter aside: tests), a head dim they do not tile, a GPU older than
    sm_80 or a Triton too old for it (prunekit.kernels.tuning)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "--kernels triton needs the triton package"
    from prunekit.kernels.tuning import INTERPRETING, unsupported_gpu  # imports triton
    cuda = torch.device(device).type == "cuda"
    if not (cuda or INTERPRETING):
        return "--kernels triton runs on CUDA GPUs; use torch (or auto) on the CPU"
    from prunekit.kernels.attention import HEAD_DIMS  # imports triton
    if head_dim not in HEAD_DIMS:
        return (f"--kernels triton tiles head dims {', '.join(map(str, HEAD_DIMS))}; this model's is {head_dim}: "
                "use --kernels torch")
    problem = unsupported_gpu(torch.cuda.get_device_capability(device)) if cuda else None
    return None if problem is None else f"--kernels triton: {problem}; use --kernels torch"


def resolve_kernels(kernels: str, device, head_dim: int = 64) -> str:
    """'auto' -> 'triton' on a CUDA GPU the kernels run on, else the eager 'torch' path (SDPA is not the
    CPU's fast path: bench/results/train_speed_paths.md); a 'triton' that cannot run here is an error now
    rather than at the first step."""
    if kernels not in KERNELS:
        raise PrunekitError(f"kernels must be one of {', '.join(KERNELS)}, not {kernels!r}")
    if kernels == "auto":
        cuda = torch.device(device).type == "cuda"
        return "triton" if cuda and triton_unusable(device, head_dim) is None else "torch"
    if kernels == "triton" and (problem := triton_unusable(device, head_dim)):
        raise PrunekitError(problem)
    return kernels


def masked_layer_norm(x: torch.Tensor, norm: nn.LayerNorm, keep: torch.Tensor | None) -> torch.Tensor:
    """LayerNorm with mean and variance over the kept hidden dims only (keep: (d,) of 0/1).

    This is what makes a hidden-masked model equal the compact model whose LayerNorm runs over the
    smaller width. Values at pruned dims are 0 here (and the caller's * z_hidden zeroes them anyway).
    """
    if keep is None:
        return norm(x)
    # Masks only ever come in training and pruning (never in an exported graph), so the kept dims may
    # be looked up: LayerNorm runs fused over those columns alone, and the dropped ones are left 0.
    idx = torch.nonzero(keep, as_tuple=True)[0]
    if len(idx) == x.shape[-1]:
        return norm(x)
    y = x.new_zeros(x.shape)
    y[..., idx] = F.layer_norm(x[..., idx], (len(idx),), norm.weight[idx], norm.bias[idx], norm.eps)
    return y


class Residual(nn.Module):
    """Dropout, residual add and LayerNorm after a sublayer, with the hidden mask on both sides."""

    def __init__(self, config: PrunekitBertConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, out, x, m: LayerMasks | None, alive: torch.Tensor | None):
        out = self.dropout(out)
        if m is not None and m.hidden is not None:
            out = out * m.hidden                                   # before the LayerNorm
        y = masked_layer_norm(out + x, self.norm, None if m is None else m.keep)
        if m is not None and m.hidden is not None:
            y = y * m.hidden                                       # and after it
        if alive is not None:
            y = torch.where(alive, y, x)  # a fully masked sublayer passes its input through untouched
        return y


def sublayer_alive(layer_gate, units) -> torch.Tensor | None:
    """Whether a masked sublayer contributes at all: its gate is non-zero and some unit is kept."""
    alive = None
    if layer_gate is not None:
        alive = layer_gate != 0
    if units is not None:
        any_unit = (units != 0).any()
        alive = any_unit if alive is None else alive & any_unit
    return alive


class Embeddings(nn.Module):
    """Word + position (+ token type) embeddings, LayerNorm, dropout; with ELECTRA's embedding_size a
    projection to the hidden size follows, and z_hidden then applies to its output only."""

    def __init__(self, config: PrunekitBertConfig):
        super().__init__()
        d = config.hidden_size
        E = config.embedding_size or d
        self.positions_from_padding, self.pad = config.positions_from_padding, config.pad_token_id
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, E)
        if config.position_embedding_type == "sinusoidal":
            self.position.weight.requires_grad_(False)  # a fixed table (loaded with the weights)
        self.token_type = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # ELECTRA's projection stays even when surgery keeps exactly E hidden dims
        self.project = nn.Linear(E, d) if config.embedding_size is not None else None

    def position_ids(self, input_ids):
        if self.positions_from_padding:  # RoBERTa: pad, pad + 1, ... over real tokens; padding keeps pad
            real = (input_ids != self.pad).long()
            return torch.cumsum(real, dim=1) * real + self.pad                           # (B, S)
        return torch.arange(input_ids.shape[1], device=input_ids.device)                # (S,)

    def forward(self, input_ids, token_type_ids, m: LayerMasks | None = None):
        x = self.word(input_ids) + self.position(self.position_ids(input_ids))           # (B, S, E)
        if self.token_type is not None:
            x = x + self.token_type(token_type_ids)
        hidden = None if m is None else m.hidden
        if self.project is not None:                                                      # ELECTRA
            x = self.project(self.dropout(self.norm(x)))                                  # (B, S, E) -> (B, S, d)
            return x if hidden is None else x * hidden
        if hidden is not None:
            x = x * hidden
        x = self.dropout(masked_layer_norm(x, self.norm, None if m is None else m.keep))
        if hidden is not None:
            x = x * hidden
        return x


class Attention(nn.Module):
    """Multi-head self-attention with this layer's own head count (0 = the sublayer is absent).

    Head count and head size are Python ints used literally in every reshape, so an exported
    graph carries them as constants (ONNX Runtime reads per-layer heads from there).
    """

    def __init__(self, config: PrunekitBertConfig, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, config.head_dim
        self.kernels = "torch"
        if num_heads == 0:
            return
        d, inner = config.hidden_size, num_heads * config.head_dim
        self.query = nn.Linear(d, inner)
        self.key = nn.Linear(d, inner)
        self.value = nn.Linear(d, inner)
        self.output = nn.Linear(inner, d)
        self.attn_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.residual = Residual(config)

    def split_heads(self, t):
        B, S, _ = t.shape
        return t.view(B, S, self.num_heads, self.head_dim).permute(0, 2, 1, 3)  # (B, H, S, dh)

    def heads(self, x, attn_bias, z_head=None):
        """Per-head context vectors, each scaled by its head mask: (B, H, S, dh)."""
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        if self.kernels == "triton":
            from prunekit.kernels.attention import masked_attention
            key_mask = (attn_bias[:, 0, 0, :] == 0).to(q.dtype)                    # (B, S) 1 = token
            gate = z_head.to(q.dtype) if z_head is not None else None
            return masked_attention(q, k, v, key_mask, gate)
        if self.kernels == "sdpa":
            p = self.attn_dropout.p if self.training else 0.0
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype), dropout_p=p)
            return ctx if z_head is None else ctx * z_head.view(1, self.num_heads, 1, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, S, dh) x (B, H, dh, S) -> (B, H, S, S)
        probs = self.attn_dropout(torch.softmax(scores + attn_bias, dim=-1))
        ctx = probs @ v                                            # (B, H, S, S) x (B, H, S, dh) -> (B, H, S, dh)
        if z_head is not None:
            ctx = ctx * z_head.view(1, self.num_heads, 1, 1)
        return ctx

    def project(self, ctx, z_mha=None):
        """Concatenate heads and apply the output projection (and the layer gate): (B, S, d)."""
        B, H, S, dh = ctx.shape
        out = self.output(ctx.permute(0, 2, 1, 3).reshape(B, S, self.num_heads * self.head_dim))  # (B, S, H*dh) -> (B, S, d)
        if z_mha is not None:
            out = out * z_mha
        return out

    def forward(self, x, attn_bias, m: LayerMasks | None = None):
        if self.num_heads == 0:
            return x
        out = self.project(self.heads(x, attn_bias, None if m is None else m.head), None if m is None else m.mha)
        alive = None if m is None else sublayer_alive(m.mha, m.head)
        return self.residual(out, x, m, alive)


class FeedForward(nn.Module):
    """GELU FFN with this layer's own width (0 = the sublayer is absent)."""

    def __init__(self, config: PrunekitBertConfig, width: int):
        super().__init__()
        self.width = width
        self.kernels = "torch"
        if width == 0:
            return
        self.up = nn.Linear(config.hidden_size, width)
        self.down = nn.Linear(width, config.hidden_size)
        self.residual = Residual(config)

    def activations(self, x, z_int=None):
        """Post-GELU activations, each scaled by its unit mask: (B, S, F)."""
        h = F.gelu(self.up(x))
        if z_int is not None:
            h = h * z_int
        return h

    def forward(self, x, m: LayerMasks | None = None):
        if self.width == 0:
            return x
        if self.kernels == "triton":  # bias, GELU, z_int and z_ffn fused into the two GEMMs
            from prunekit.kernels.ffn import masked_ffn
            out = masked_ffn(x, self.up.weight, self.up.bias, self.down.weight, self.down.bias,
                             None if m is None else m.unit, None if m is None else m.ffn)
        else:
            out = self.down(self.activations(x, None if m is None else m.unit))  # (B, S, F) -> (B, S, d)
            if m is not None and m.ffn is not None:
                out = out * m.ffn
        alive = None if m is None else sublayer_alive(m.ffn, m.unit)
        return self.residual(out, x, m, alive)


class Layer(nn.Module):
    def __init__(self, config: PrunekitBertConfig, num_heads: int, ffn_dim: int):
        super().__init__()
        self.attention = Attention(config, num_heads)
        self.ffn = FeedForward(config, ffn_dim)

    def forward(self, x, attn_bias, m: LayerMasks | None = None):
        return self.ffn(self.attention(x, attn_bias, m), m)


def layer_masks(masks, l: int, keep) -> LayerMasks | None:
    """Slice a Masks object (any subset of z_mha, z_head, z_ffn, z_int, z_hidden) for layer l."""
    if masks is None:
        return None
    pick = lambda t: None if t is None else t[l]
    return LayerMasks(mha=pick(masks.z_mha), head=pick(masks.z_head), ffn=pick(masks.z_ffn),
                      unit=pick(masks.z_int), hidden=masks.z_hidden, keep=keep)


def attention_bias(attention_mask, dtype):
    """(B, S) 1/0 padding mask -> (B, 1, 1, S) additive bias: 0 for tokens, dtype-min for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class Encoder(nn.Module):
    """Embeddings, the layers and the pooler: the BERT body (what HF calls BertModel)."""

    def __init__(self, config: PrunekitBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, h, f) for h, f in zip(config.num_heads, config.ffn_dim))
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.pooler_dropout = nn.Dropout(p) if config.pooler_input_dropout else nn.Identity()
        self.pooler = nn.Linear(config.hidden_size, config.pooler_size)
        self.pooler_activation = {"tanh": torch.tanh, "gelu": F.gelu, "relu": F.relu}[config.pooler_activation]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masks=None, output_hidden_states=False):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if masks is not None:
            masks.check_forward(self.config)
        keep = None
        if masks is not None and masks.z_hidden is not None:
            keep = (masks.z_hidden != 0).to(masks.z_hidden.dtype)
        x = self.embeddings(input_ids, token_type_ids, None if masks is None else LayerMasks(hidden=masks.z_hidden, keep=keep))
        bias = attention_bias(attention_mask, x.dtype)
        states = [x]
        for l, layer in enumerate(self.layers):
            x = layer(x, bias, layer_masks(masks, l, keep))
            states.append(x)
        pooled = self.pooler_activation(self.pooler(self.pooler_dropout(x[:, 0])))  # the first ([CLS]) token
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled,
                                          hidden_states=tuple(states) if output_hidden_states else None)


class PrunekitBertForSequenceClassification(PreTrainedModel):
    """Encoder + classifier (num_labels = 1 is regression, as in HF). HF-style inputs and outputs."""
    config_class = PrunekitBertConfig
    base_model_prefix = "bert"

    def __init__(self, config: PrunekitBertConfig):
        super().__init__(config)
        self.bert = Encoder(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.pooler_size, config.num_labels)
        self.tokenizer = None  # set by the loaders; save_pretrained writes its files beside the weights
        self.post_init()

    # keywords HF's pipelines and Trainer pass that change nothing here; any other keyword is an error
    IGNORED_KWARGS = frozenset({"return_dict", "output_attentions", "use_cache", "num_items_in_batch"})

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, masks=None,
                output_hidden_states=False, **kwargs):
        unknown = set(kwargs) - self.IGNORED_KWARGS
        if unknown:  # a misspelt keyword (masks=, attention_mask=) must not vanish silently
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword arguments {sorted(unknown)}")
        out = self.bert(input_ids, attention_mask, token_type_ids, masks, output_hidden_states)
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)

    def set_kernels(self, kernels: str = "auto"):
        """Which implementation the attention and FFN sublayers run (module docstring); returns self."""
        mode = resolve_kernels(kernels, next(self.parameters()).device, self.config.head_dim)
        for module in self.modules():
            if isinstance(module, (Attention, FeedForward)):
                module.kernels = mode if (mode != "sdpa" or isinstance(module, Attention)) else "torch"
        return self

    @property
    def kernels(self) -> str:
        return next((m.kernels for m in self.modules() if isinstance(m, Attention)), "torch")

    def save_pretrained(self, save_directory, **kwargs):
        """config.json (model_type prunekit-bert, per-layer lists), model.safetensors and the tokenizer
        files. Everything is written to a temp dir first and moved in file by file: no half-written file."""
        with staged_into(save_directory) as tmp:
            super().save_pretrained(str(tmp), **kwargs)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Rebuild a (compact) model from its own config; the dense model is never needed. Weights are
        read from safetensors only and nothing is ever unpickled: an index (or config.json's
        transformers_weights) naming a pickle is refused before transformers reads anything, as are
        weights that do not fit the config (missing, unexpected, misshapen: weights.check_fit), and
        after loading every weight must be finite. Each problem is a one-line PrunekitError."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("prunekit models load from safetensors only (use_safetensors=False is refused)")
        kwargs["use_safetensors"] = True
        check_before_load(cls, pretrained_model_name_or_path, kwargs)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if kwargs.get("output_loading_info") else loaded  # (model, loading info) then
        check_finite(pretrained_model_name_or_path, model.state_dict())
        if os.path.isdir(pretrained_model_name_or_path):
            model.tokenizer = load_tokenizer(pretrained_model_name_or_path)
        return loaded
