"""The one exception type for bad user input. The CLI prints its message on one line and exits 2."""


class PrunekitError(Exception):
    """A problem with what the user gave us (a path, a file, a mask, a budget), stated in one line."""

