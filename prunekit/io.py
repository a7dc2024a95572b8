"""Writing results so that nothing is ever left half-written: one helper per kind of write.

  atomic_file(path)      a temp file beside `path`, renamed over it when the block succeeds
  write_json / write_text   whole files through atomic_file
  output_dir(path)       a whole directory built beside `path`, swapped in when the block succeeds
  staged_into(dir)       files built in a temp dir, then moved into an existing directory one by one
                         (save_pretrained into a run directory that holds other files)
Temp names are `.<name>.tmp-<pid>-...` (and `.<name>.old-<pid>` while a directory is swapped), so a
killed writer's leftovers are recognisable: every helper removes those of dead processes first.
"""
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


def clean_leftovers(final: Path) -> list[Path]:
    """Remove the temp files and directories that killed writers of `final` left beside it. A writer
    killed in the middle of a directory swap (the old one moved aside, the new one not yet in place)
    is finished instead: its new directory was complete, since the old one is only moved once it is."""
    removed = []
    if not final.parent.is_dir():
        return removed
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


def check_output_path(path, *inputs) -> Path:
    """An output path that can be written and replaced safely: it names something (not '.', '/' or the
    working directory), no parent of it is a file, and it is neither an input nor a folder holding one
    (replacing it would delete what is being read)."""
    final = Path(path)
    resolved = final.resolve()
    if final.name in ("", ".", "..") or resolved == Path.cwd() or resolved == Path(resolved.anchor):
        raise PrunekitError(f"--output {path} must name a new or replaceable file or directory, not '.', '/' or "
                            "the working directory")
    for parent in resolved.parents:
        if parent.exists() and not parent.is_dir():
            raise PrunekitError(f"--output {path}: {parent} is a file, not a directory")
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if source == resolved or resolved in source.parents:
            raise PrunekitError(f"--output {path} would replace the input {given}: write somewhere else")
    return final


REPLACEABLE = ("config.json", "model.safetensors", "model.onnx", "report.json", "export_report.json",
               "train_args.json", "INCOMPLETE", "last", "prune")  # what marks a directory prunekit wrote


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

    An existing `path` is refused unless overwrite; on failure the temp dir is removed and `path`
    is untouched.
    """
    final = check_output_path(path)
    if final.exists() and not overwrite:
        raise PrunekitError(f"{final} already exists; pass --overwrite to replace it")
    if final.is_dir() and any(final.iterdir()) and not any((final / m).exists() for m in REPLACEABLE):
        raise PrunekitError(f"refusing to replace {final}: it does not look like a prunekit output (none of "
                            f"{', '.join(REPLACEABLE[:5])}, ...)")
    if final.exists() and not final.is_dir():
        raise PrunekitError(f"--output {final} is a file; it names a directory")
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
