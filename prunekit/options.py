"""Settings declared once. A field of a settings dataclass (TrainArgs, PostTrainConfig, CoFiConfig,
Deployment) carries its default, its range and its command-line flag and help; the reason for the
default is the comment beside it:

    lr: float = option(2e-5, "learning rate of the weights while pruning", range=RATE)  # the paper's

The CLI's options are generated from those fields (add_options), parsed values are range-checked as
they are parsed (number: a usage error, exit 2, before any work), and a dataclass built in Python is
checked against the same ranges (check_options: a PrunekitError naming the flag). A field made with
plain dataclasses.field is a setting without a flag.
"""
import argparse
import math
import types
from dataclasses import MISSING, dataclass, field, fields

from .errors import PrunekitError


@dataclass(frozen=True)
class Range:
    """Finite numbers within [low, high] (either end open, or absent)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return math.isfinite(value) and low_ok and high_ok

    def __str__(self) -> str:
        ends = [f"{'>' if self.low_open else '>='} {self.low:g}" if self.low is not None else "",
                f"{'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else ""]
        ends = " and ".join(e for e in ends if e)
        return f"must be finite{', ' + ends if ends else ''}"


COUNT = Range(1, 10**7)                  # sizes and counts: positive, and not absurd (1e20 examples)
THREADS = Range(1, 1024)
EPOCHS = Range(0, 10**4)
RATE = Range(1e-10, 10)                  # learning rates: 1e-300 trains nothing, 1e3 diverges at once
FRACTION = Range(0, 1, low_open=True, high_open=True)
UNIT = Range(0, 1)
NON_NEGATIVE = Range(0)
SEED = Range(0, 2**32 - 1)


def option(default, help: str, *, flag: str | None = None, range: Range | None = None, choices=None,
           default_text: str | None = None, parse=None):
    """A dataclass field that is also a command-line option.

    flag: the option's name (default --field-name; a bool's flag flips its default: --no-eval), False for
    a setting that is range-checked but not on the command line;
    parse: text -> value for structured values (raises ValueError on bad text; its docstring says what
    it takes); default_text: how the help states a default worked out later (None in the field)."""
    meta = {"help": help, "flag": flag, "range": range, "choices": choices, "default_text": default_text,
            "parse": parse}
    return field(default=default, metadata={"option": meta})


def option_fields(cls, cli: bool = True) -> dict:
    """name -> dataclass Field of the fields declared with option() (cli: only those with a flag)."""
    return {f.name: f for f in fields(cls) if "option" in f.metadata
            and not (cli and f.metadata["option"]["flag"] is False)}


def flag_of(f) -> str:
    flag = f.metadata["option"]["flag"]
    return f.name if flag is False else flag or "--" + f.name.replace("_", "-")


def value_type(f):
    """int, float, str, bool or tuple: the field's type with `| None` taken off."""
    kinds = [t for t in getattr(f.type, "__args__", (f.type,)) if t is not type(None)]
    kind = kinds[0] if isinstance(f.type, types.UnionType) else f.type
    return kind if kind in (int, float, str, bool, tuple) else str


def number(kind, allowed: Range):
    """An argparse type: an int or float within `allowed`, else a usage error (exit 2)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{text} is out of range ({allowed})")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def structured(parse):
    """An argparse type from a parse function that raises ValueError on bad text."""
    def convert(text):
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {parse.__doc__}")
    convert.__name__ = parse.__doc__
    return convert


def shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_option(parser, f, *, given_only: bool = False, defaults: dict | None = None, help: str | None = None) -> None:
    """One generated option. given_only: parsed with default None, so that a value the user did not
    give is told apart (the settings class then supplies its own default); defaults: the defaults of
    several settings classes sharing this option, for its help ({"cofi": 42, ...}); help: theirs."""
    meta, kind = f.metadata["option"], value_type(f)
    default = None if f.default is MISSING else f.default
    kw = {"dest": f.name, "help": help or meta["help"]}
    if kind is bool:
        kw.update(action="store_const", const=not default, default=None if given_only else default)
    else:
        kw["default"] = None if given_only else default
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        elif meta["parse"]:
            kw["type"] = structured(meta["parse"])
        elif meta["range"] and kind in (int, float):
            kw["type"] = number(kind, meta["range"])
        elif kind in (int, float):
            kw["type"] = kind
        text = meta["default_text"] or (None if default is None else shown(default))
        if defaults and len({shown(v) for v in defaults.values()}) > 1:
            text = ", ".join(f"{shown(v)} ({k})" for k, v in defaults.items())
        if text:
            kw["help"] += f" (default {text})"
    parser.add_argument(flag_of(f), **kw)


def add_options(parser, cls, *, skip=(), given_only: bool = False) -> None:
    for name, f in option_fields(cls).items():
        if name not in skip:
            add_option(parser, f, given_only=given_only)


def given(args, cls) -> dict:
    """The options of `cls` a user gave (parsed with given_only)."""
    return {name: getattr(args, name) for name in option_fields(cls) if getattr(args, name, None) is not None}


def check_options(settings):
    """Every option field of a settings dataclass within its range and choices; returns it."""
    for name, f in option_fields(type(settings), cli=False).items():
        meta, value = f.metadata["option"], getattr(settings, name)
        if value is None or isinstance(value, bool):
            continue
        if meta["choices"] and value not in meta["choices"]:
            raise PrunekitError(f"{flag_of(f)} takes {', '.join(map(str, meta['choices']))}, not {value!r}")
        if meta["range"] and not (isinstance(value, (int, float)) and value in meta["range"]):
            raise PrunekitError(f"{flag_of(f)}: {value} is out of range ({meta['range']})")
    return settings


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("prunekit compress: error: ...") and exit code 2,
    like every other error of the CLI; `--help` still prints the full usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
