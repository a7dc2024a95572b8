"""A run's hold on its output directory: the lock that keeps a second run out, the INCOMPLETE mark
of a run under way, and the settings a resume must match.

  claim_output(path, ...)          prunekit.io.check_output's rule again, under a lock held for the whole
                                   run: a second run into the same output gets a one-line error
  record_settings(dir, settings)   what defines a run, written when it starts; a resume with settings
                                   that would change the run is refused
  started(dir, settings, ...)      after every check: an old run replaced, the directory marked INCOMPLETE
                                   (a run that works inside its output directory, finetune and CoFi, is
                                   not a model until it ends), the settings recorded
"""
import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from . import distributed
from .errors import PrunekitError
from .io import INCOMPLETE, RUN_ARGS, check_output, write_json


@contextmanager
def lock(final: Path, path):
    """An exclusive flock on .NAME.lock beside the output, held while the block runs (the OS drops it
    if the process dies) and the file removed at the end."""
    final.parent.mkdir(parents=True, exist_ok=True)
    lock_file = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PrunekitError(f"--output {path} is being written by another prunekit run (it holds "
                                f"{lock_file.name}); wait for it to end or write somewhere else") from None
        try:
            if os.stat(lock_file).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the run that held it removed the file in the meantime: lock the new one
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def claim_output(path, inputs=(), overwrite: bool = False, resume: bool = False, kind: str = "dir"):
    """Hold the output for this run (rank 0 under torchrun): locked, then checked again, since another
    run may have written it since the first check."""
    if not distributed.is_main():
        yield Path(path)
        return
    final = check_output(path, inputs, overwrite, resume, kind)
    with lock(final, path):
        yield check_output(path, inputs, overwrite, resume, kind)


def record_settings(directory: Path, settings: dict, resume: bool) -> None:
    """A fresh run records what defines it; a resumed one must match (else it would silently mix two
    runs: another task, other data, another length...)."""
    path = Path(directory) / RUN_ARGS
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back: tuples as lists, paths as str
    if resume and path.is_file():
        before = json.loads(path.read_text())
        changed = [f"{k}: {before.get(k)!r} then, {v!r} now" for k, v in settings.items() if before.get(k) != v]
        if changed:
            raise PrunekitError(f"cannot resume {directory} with different settings ({'; '.join(changed)})")
    elif distributed.is_main():
        Path(directory).mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


def data_inputs(data: dict) -> list:
    """The paths a run reads its data from (load_task's glue_dir, by default $GLUE_DIR, and files)."""
    return [data.get("glue_dir") or os.environ.get("GLUE_DIR"), data.get("train_file"), data.get("dev_file")]


@contextmanager
def started(out: Path, settings: dict, resume: bool):
    """A claimed run directory while the work goes on. A fresh run: an old run replaced (only now, after
    every check), the directory marked INCOMPLETE first (a run killed from here on can be resumed), the
    settings recorded; if it fails before it has written anything to resume from, nothing is left. A
    resumed run: its settings compared with those it started with before anything is touched."""
    if resume:
        record_settings(out, settings, resume=True)
    elif distributed.is_main():
        if out.exists():
            shutil.rmtree(out)
        mark_incomplete(out)
    distributed.barrier()
    try:
        if not resume:
            record_settings(out, settings, resume=False)
        yield out
    except BaseException:
        if not resume and distributed.is_main() and {p.name for p in out.iterdir()} <= {INCOMPLETE, RUN_ARGS}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def mark_incomplete(directory: Path) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / INCOMPLETE).write_text("an interrupted run: continue it with --resume\n")
