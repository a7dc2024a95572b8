"""Writing results so that nothing is ever left half-written."""
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import PrunekitError


@contextmanager
def output_dir(path, overwrite: bool = False):
    """Yield a fresh temp dir beside `path`; when the block succeeds it becomes `path`.

    An existing `path` is refused unless overwrite; on failure the temp dir is removed and `path`
    is untouched.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise PrunekitError(f"{final} already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
