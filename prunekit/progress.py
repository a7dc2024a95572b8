"""What a run shows on the terminal besides its result: progress bars (tqdm: how often they redraw,
closing the ones an error left open so that the error gets a line of its own) and warnings.
"""
import sys

from tqdm.auto import tqdm

from . import distributed


def bar_interval() -> float:
    """Seconds between progress-bar updates: live on a terminal, sparse in a log file (nohup)."""
    return 1 if sys.stderr.isatty() else 30


def close_bars() -> None:
    """Close every live bar (tqdm keeps them in tqdm._instances): a bar left mid-line by an exception
    would otherwise share its line with the error message printed after it."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    sys.stderr.flush()


class Warnings(list):
    """A run's warnings in the order they came: each printed on stderr as it comes (rank 0 under
    torchrun; above any progress bar, never on its line) and kept for report.json."""

    def __init__(self, echo: bool = True):
        super().__init__()
        self.echo = echo

    def warn(self, message: str) -> None:
        self.append(message)
        if self.echo and distributed.is_main():
            tqdm.write(f"warning: {message}", file=sys.stderr)
