"""The GLUE data of the bench scripts: --glue-dir, defaulting to $GLUE_DIR (the glue_data layout:
SST-2/, MRPC/, RTE/, ...). No script names a machine path; without the data a script stops with one
line that says what to set."""
import os
import sys
from pathlib import Path


def add_glue_dir_option(parser):
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR") or None,
                        help="the glue_data folder with SST-2/, MRPC/, RTE/, ... (default: $GLUE_DIR)")


def require_glue_dir(glue_dir, tasks, script: str) -> str:
    """glue_dir (from --glue-dir or $GLUE_DIR) when it holds every task's folder; else exit 2 with one line."""
    from prunekit.data import GLUE, canonical_task
    if not glue_dir:
        fail(script, "no GLUE data: set GLUE_DIR or pass --glue-dir (the glue_data folder, e.g. ../shared/data/glue)")
    folders = [GLUE[canonical_task(t)].folder if canonical_task(t) else t for t in tasks]
    missing = [f for f in folders if not (Path(glue_dir) / f).is_dir()]
    if missing:
        fail(script, f"GLUE directory {glue_dir} has no {', '.join(missing)} folder "
                     f"(set GLUE_DIR or --glue-dir to the glue_data folder)")
    return str(glue_dir)


def fail(script: str, message: str):
    print(f"{script}: error: {message}", file=sys.stderr)
    sys.exit(2)
