"""The Masks container: CoFi-style structural masks, any subset, real-valued.

  z_mha    (L,)    attention sublayer gate per layer
  z_head   (L, H)  per-head scale
  z_ffn    (L,)    FFN sublayer gate per layer
  z_int    (L, F)  per-FFN-unit scale
  z_hidden (d,)    per-hidden-dim scale, shared by all layers

Kwon et al.'s head and neuron masks are z_head and z_int. Masks apply to a model whose layers all
have the same head count and FFN width (a dense model); surgery turns them into a compact model.
"""
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import PrunekitError
from .io import atomic_file

NAMES = ("z_mha", "z_head", "z_ffn", "z_int", "z_hidden")


@dataclass
class Masks:
    z_mha: torch.Tensor | None = None
    z_head: torch.Tensor | None = None
    z_ffn: torch.Tensor | None = None
    z_int: torch.Tensor | None = None
    z_hidden: torch.Tensor | None = None

    def items(self):
        """(name, tensor) for the masks that are set."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    @classmethod
    def ones(cls, config, names=NAMES, requires_grad=False) -> "Masks":
        """All-ones masks of the given names for a dense model (the starting point for Fisher/CoFi)."""
        shapes = expected_shapes(config)
        return cls(**{n: torch.ones(shapes[n], requires_grad=requires_grad) for n in names})

    def to(self, *args, **kwargs) -> "Masks":
        return Masks(**{n: t.to(*args, **kwargs) for n, t in self.items()})

    def detach(self) -> "Masks":
        return Masks(**{n: t.detach().clone() for n, t in self.items()})

    def check_forward(self, config) -> None:
        """Shape check done on every masked forward (static: no look at the values)."""
        shapes = expected_shapes(config)
        for name, t in self.items():
            if tuple(t.shape) != shapes[name]:
                raise PrunekitError(f"mask {name} has shape {tuple(t.shape)}, the model needs {shapes[name]}")

    def validate(self, config) -> "Masks":
        """Full check before surgery or after loading: shapes, finite values, some hidden dim kept."""
        self.check_forward(config)
        for name, t in self.items():
            if not torch.isfinite(t).all():
                raise PrunekitError(f"mask {name} contains NaN or infinite values")
        if self.z_hidden is not None and not (self.z_hidden != 0).any():
            raise PrunekitError("mask z_hidden is all zero: at least one hidden dim must be kept")
        return self

    def save(self, path) -> None:
        """Write as safetensors, atomically (temp file, then rename)."""
        with atomic_file(path) as tmp:
            save_file({n: t.detach().contiguous().cpu() for n, t in self.items()}, str(tmp),
                      metadata={"format": "prunekit-masks"})

    @classmethod
    def load(cls, path, config=None) -> "Masks":
        if Path(path).is_dir():
            raise PrunekitError(f"{path} is a directory; --masks names a .safetensors file")
        try:
            tensors = load_file(str(path))
        except FileNotFoundError as e:
            raise PrunekitError(f"mask file not found: {path}") from e
        except (SafetensorError, OSError) as e:
            raise PrunekitError(f"cannot read masks from {path}: {e}") from e
        unknown = set(tensors) - set(NAMES)
        if unknown:
            raise PrunekitError(f"{path}: unknown mask names {sorted(unknown)}; expected some of {list(NAMES)}")
        if not tensors:
            raise PrunekitError(f"{path} holds no masks (expected some of {', '.join(NAMES)})")
        masks = cls(**{n: t.float() for n, t in tensors.items()})
        return masks.validate(config) if config is not None else masks


def expected_shapes(config) -> dict:
    """The shape each mask must have for this config; z_head/z_int need uniform layers."""
    L, d = config.num_layers, config.hidden_size
    shapes = {"z_mha": (L,), "z_ffn": (L,), "z_hidden": (d,)}
    heads, widths = set(config.num_heads), set(config.ffn_dim)
    shapes["z_head"] = (L, config.num_heads[0]) if len(heads) == 1 else ("uniform heads per layer",)
    shapes["z_int"] = (L, config.ffn_dim[0]) if len(widths) == 1 else ("uniform FFN width per layer",)
    return shapes
