"""Writing results so that nothing is ever left half-written, and the one rule of what may be written.

  check_output(path, inputs, ...)  may this run write `path`? It must name something replaceable ('.',
                         '/' and the working directory are not), no parent of it may be a file, it never
                         equals or contains an input (a model directory counts with the files a load
                         reads), and an existing output is replaced only with overwrite, a directory only
                         when it looks like one prunekit wrote (MARKERS). Every verb asks it before any work.
  atomic_file(path)      a temp file beside `path`, renamed over it when the block succeeds
  write_json / write_text   whole files through atomic_file
  output_dir(path)       a whole directory built beside `path`, swapped in when the block succeeds
  staged_into(dir)       files built in a temp dir, then moved into a directory one by one (save_pretrained
                         into a directory that holds other files)
Temp names are `.<name>.tmp-<pid>-...` (and `.<name>.old-<pid>` while a directory is swapped), so a
killed writer's leftovers are recognisable: every helper removes those of dead processes first (and a
lock file `.<name>.lock` that no live run holds).
"""
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import PrunekitError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_if_unheld(lock_file: Path) -> bool:
    """Remove a run's lock file (prunekit.rundir.lock) that no live run holds: a killed run leaves it.
    It is removed while this process holds it, so no other run can be holding the file it removes."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        lock_file.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def clean_leftovers(final: Path) -> list[Path]:
    """Remove the temp files and directories that killed writers of `final` left beside it, and the
    lock file of a killed run. A writer killed in the middle of a directory swap (the old one moved
    aside, the new one not yet in place) is finished instead: its new directory was complete, since
    the old one is only moved once it is."""
    removed = []
    if not final.parent.is_dir():
        return removed
    if remove_if_unheld(final.parent / f".{final.name}.lock"):
        removed.append(final.parent / f".{final.name}.lock")
    if not final.exists():
        for old in final.parent.glob(f".{final.name}.old-*"):
            pid = old.name[len(f".{final.name}.old-"):]
            new = sorted(final.parent.glob(f".{final.name}.tmp-{pid}-*"))
            if pid.isdigit() and not _alive(int(pid)) and len(new) == 1 and new[0].is_dir():
                os.replace(new[0], final)
                break
    for kind in ("tmp", "old"):
        for p in final.parent.glob(f".{final.name}.{kind}-*"):
            pid = p.name[len(f".{final.name}.{kind}-"):].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


INCOMPLETE = "INCOMPLETE"    # in a run directory while the run is under way: it is not a finished model
RUN_ARGS = "run_args.json"   # in a run directory: the settings a resume must match
# what marks a directory prunekit wrote (and may replace): model, export, report, run files
MARKERS = ("config.json", "model.safetensors", "model.onnx", "report.json", "export_report.json", "metrics.json",
           "train_args.json", RUN_ARGS, INCOMPLETE, "last", "prune", "finetune")
# the files loading a model directory reads (weights, config, tokenizer): an output may sit beside them
# (eval.json in the model's directory) but never replace one
MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "model.onnx", "model.onnx.data",
               "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json", "*.model")


def protected(source: Path) -> list[Path]:
    """The paths under an input that an output must not replace: a model directory's model files, every
    path inside any other directory."""
    if not source.is_dir():
        return []
    if (source / "config.json").is_file():
        return [p for pattern in MODEL_FILES for p in source.glob(pattern)]
    return list(source.rglob("*"))


def check_inputs(final: Path, path, inputs) -> None:
    resolved = final.resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = Path(given).resolve()
        hit = source == resolved or resolved in source.parents or resolved in map(Path.resolve, protected(source))
        if hit:
            raise PrunekitError(f"--output {path} would replace the input {given}: write somewhere else")


def check_output(path, inputs=(), overwrite: bool = False, resume: bool = False, kind: str = "dir") -> Path:
    """The output `path` (a "dir" or a "file"), if this run may write it; else a PrunekitError."""
    final = Path(path)
    resolved = final.resolve()
    if final.name in ("", ".", "..") or resolved == Path.cwd() or resolved == Path(resolved.anchor):
        raise PrunekitError(f"--output {path} must name a new or replaceable file or directory, not '.', '/' or "
                            "the working directory")
    for parent in resolved.parents:
        if parent.exists() and not parent.is_dir():
            raise PrunekitError(f"--output {path}: {parent} is a file, not a directory")
    if resume and overwrite:
        raise PrunekitError("--resume and --overwrite contradict each other")
    check_inputs(final, path, inputs)
    clean_leftovers(final)  # a writer killed in the middle of swapping this output in is finished first
    if kind == "file":
        check_file(final, path, overwrite)
    else:
        check_dir(final, path, overwrite, resume)
    return final


def check_file(final: Path, path, overwrite: bool) -> None:
    if final.is_dir():
        raise PrunekitError(f"--output {path} is a directory; it names the JSON file to write")
    if final.exists() and not overwrite:
        raise PrunekitError(f"--output {path} already exists; pass --overwrite to replace it")


def check_dir(final: Path, path, overwrite: bool, resume: bool) -> None:
    if final.exists() and not final.is_dir():
        raise PrunekitError(f"--output {path} is a file; it names a directory")
    if resume:
        if not final.is_dir():
            raise PrunekitError(f"nothing to resume in {path}: it does not exist")
        if not (final / INCOMPLETE).is_file():
            what = "a finished run" if (final / "config.json").is_file() else "no interrupted run"
            raise PrunekitError(f"nothing to resume in {path}: it holds {what} (no {INCOMPLETE} mark)")
        return
    if not final.is_dir() or not any(final.iterdir()):
        return
    if not overwrite:
        hint = ", or --resume to continue it" if (final / INCOMPLETE).is_file() else ""
        raise PrunekitError(f"--output {path} already exists; pass --overwrite to replace it{hint}")
    if not any((final / m).exists() for m in MARKERS):
        raise PrunekitError(f"refusing to replace {path}: it does not look like a prunekit output (none of "
                            f"{', '.join(MARKERS[:5])}, ...)")


def _temp_dir_beside(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))


@contextmanager
def atomic_file(path):
    """Yield a temp path beside `path`; when the block succeeds it is renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    """JSON through a temp file and a rename, so a reader never sees half a file."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


@contextmanager
def output_dir(path, overwrite: bool = False):
    """Yield a fresh temp dir beside `path`; when the block succeeds it becomes `path`.

    `path` must pass check_output (an existing one is replaced only with overwrite); on failure the
    temp dir is removed and `path` is untouched.
    """
    final = check_output(path, overwrite=overwrite)
    tmp = _temp_dir_beside(final)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # a temp dir is private (0700); the output gets the usual mode
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def staged_into(directory):
    """Yield a temp dir; when the block succeeds its files are moved into `directory` (created if
    needed), each by one rename, replacing files of the same name and leaving the others."""
    final = Path(directory)
    tmp = _temp_dir_beside(final)
    try:
        yield tmp
        final.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, final / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
