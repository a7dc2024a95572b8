"""A model directory's files as data: config.json, which files hold the weights, what their headers say,
and whether the weights are the ones the config implies. Safetensors only: prunekit never unpickles.

  the weights       model.safetensors, or the shards a model.safetensors.index.json names (HF's layout);
                    an index naming anything but .safetensors files beside it, or a config.json whose
                    "transformers_weights" points elsewhere, is refused before transformers sees the
                    directory (transformers would torch.load a .bin shard an index names)
  their shapes      read from the safetensors headers, no tensor data: `prunekit info` and the check
                    before every load cost milliseconds
  the check         every tensor the config implies is there, nothing else is, every shape is right
                    (check_fit); after loading, every value is finite (check_finite)
"""
import copy
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from . import hub
from .errors import PrunekitError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SHOWN = 3  # names quoted in an error: enough to see the pattern, short enough for one line


def names(keys) -> str:
    """The first few of `keys`, for a one-line error."""
    keys = list(keys)
    return ", ".join(keys[:SHOWN]) + (f", ... ({len(keys)} in all)" if len(keys) > SHOWN else "")


def read_config(path: Path) -> dict:
    """config.json of a model directory as a dict."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise PrunekitError(f"{path} has no config.json: not a model directory")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))  # as transformers reads it
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrunekitError(f"{cfg_file} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise PrunekitError(f"{cfg_file} is not a JSON object (it holds a {type(config).__name__})")
    return config


def index_shards(index: Path, local: bool = True) -> list[str]:
    """The shard files a model.safetensors.index.json names: plain .safetensors names beside it (and,
    when `local`, present), or a PrunekitError."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise PrunekitError(f"{index} is not a JSON object with a weight_map") from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise PrunekitError(f"{index} has no weight_map naming the weight files")
    shards = sorted({str(f) for f in weight_map.values()})
    for shard in shards:
        if not shard.endswith(".safetensors") or Path(shard).name != shard or shard.startswith("."):
            raise PrunekitError(f"{index} names {shard!r}: an index may name only .safetensors files beside it "
                                "(prunekit never unpickles)")
        if local and not (index.parent / shard).is_file():
            raise PrunekitError(f"{index} names {shard}, which is not there")
    return shards


def check_declared_weights(where, declared) -> None:
    """transformers loads whatever file config.json's "transformers_weights" names (a pickled
    adapter_model.bin too): prunekit accepts only its own names there."""
    if declared is not None and declared not in (WEIGHTS_NAME, INDEX_NAME):
        raise PrunekitError(f"{where}/config.json: transformers_weights names {declared!r}; prunekit reads "
                            f"{WEIGHTS_NAME} or {INDEX_NAME} only (it never unpickles)")


def weight_files(path: Path) -> list[Path]:
    """The files that hold a model directory's weights: model.safetensors, or the shards its index
    names. The index is checked even beside model.safetensors, and a directory with only pickles is refused."""
    check_declared_weights(path, read_config(path).get("transformers_weights"))
    index = path / INDEX_NAME
    shards = index_shards(index) if index.is_file() else None
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    if shards:
        return [path / s for s in shards]
    pickles = any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir())
    raise PrunekitError(f"{path} has no {WEIGHTS_NAME}"
                        + (" (it has pickle weights, which prunekit never loads)" if pickles else ""))


def unreadable(f: Path, e: Exception) -> PrunekitError:
    lines = str(e).strip().splitlines()
    return PrunekitError(f"{f} is not a readable safetensors file ({lines[0] if lines else type(e).__name__})")


def header_shapes(files) -> dict:
    """name -> shape of every tensor in the files, from their headers alone (nothing is read)."""
    shapes = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                shapes.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
        except (SafetensorError, OSError, ValueError) as e:
            raise unreadable(f, e) from e
    return shapes


def read_weights(path: Path) -> dict:
    """Every tensor of a model directory's weight files (see weight_files)."""
    weights = {}
    for f in weight_files(path):
        try:
            weights.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise unreadable(f, e) from e
    return weights


def expected_shapes(model_class, config) -> dict:
    """name -> shape of every tensor a model of this config has (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = model_class(copy.deepcopy(config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_fit(where, expected: dict, found: dict) -> None:
    """The weights `found` (name -> shape) are exactly those `expected`: none missing, none unexpected,
    none of another shape; else one line naming the first few."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k])} for {list(expected[k])}" for k in expected
             if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = [f"{what} {names(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                            ("shape", wrong)) if keys]
    if problems:
        raise PrunekitError(f"{where}: its weights do not fit its config.json ({'; '.join(problems)})")


def finite(t: torch.Tensor) -> bool:
    """No NaN or inf in `t`. A NaN or inf makes the sum non-finite, so the sum screens (30x faster than
    isfinite over MiniLM's weights); a non-finite sum, which an overflow could also give, is confirmed
    element by element."""
    return not t.is_floating_point() or bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_finite(where, tensors: dict) -> None:
    """No weight holds NaN or inf (a damaged file, a diverged run): one line naming the first few."""
    bad = [k for k, t in tensors.items() if not finite(t)]
    if bad:
        raise PrunekitError(f"{where}: weights hold NaN or inf ({names(bad)})")


def checked_config(path: Path, config_class, cfg: dict | None = None):
    """A prunekit directory's config.json as its config class, checked (PrunekitBertConfig.check); errors
    name the file."""
    try:
        return config_class.from_dict(read_config(path) if cfg is None else cfg)
    except PrunekitError as e:
        raise PrunekitError(f"{path}/config.json: {e}") from None


def check_before_load(model_class, name_or_path, kwargs: dict) -> None:
    """What from_pretrained checks before transformers reads a weight (kwargs: from_pretrained's)."""
    if Path(name_or_path).is_dir():
        check_directory(model_class, Path(name_or_path) / kwargs.get("subfolder", ""), kwargs.get("config"))
    else:
        check_hub_files(str(name_or_path), kwargs)


def check_directory(model_class, path: Path, config=None) -> None:
    """A model directory's weight files (weight_files) and their headers against its config (check_fit;
    `config` when one is passed to from_pretrained)."""
    if not isinstance(config, model_class.config_class):
        config = checked_config(path, model_class.config_class)
    check_fit(path, expected_shapes(model_class, config), header_shapes(weight_files(path)))


def check_hub_files(repo: str, kwargs: dict) -> None:
    """The config.json and index transformers would follow for a hub id: from the hub, or from the cache
    where the hub cannot be reached (transformers falls back on it). The weights are checked once loaded."""
    from transformers.utils import cached_file
    where = {k: kwargs[k] for k in ("cache_dir", "force_download", "proxies", "token", "revision",
                                    "local_files_only", "subfolder") if k in kwargs}
    if hub.offline() or hub.unreachable():  # the cache, at once, instead of transformers' retries
        where["local_files_only"] = True
    found = {name: cached_file(repo, name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, **where)
             for name in ("config.json", INDEX_NAME)}
    if found["config.json"]:
        check_declared_weights(repo, read_config(Path(found["config.json"]).parent).get("transformers_weights"))
    if found[INDEX_NAME]:
        index_shards(Path(found[INDEX_NAME]), local=False)
