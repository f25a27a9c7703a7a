"""The one command-line wrapper of the drivers and scripts: user errors are one line, bugs keep their traceback.

Usage::

    @main_wrapper
    def main(argv=None) -> int | None: ...

    if __name__ == "__main__":
        sys.exit(main())

User errors print ``error: <message>`` on stderr and exit with status 2: every :class:`~openmatch.errors.OpenMatchError`
(bad flags, unusable inputs, malformed files, a refused output folder, ...) and a file the operating system
could not open (``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError``, ``PermissionError`` that
name the file). Any other exception is a bug, in openmatch or below it: it propagates with its traceback
(exit status 1). ``OPENMATCH_TRACEBACK=1`` shows the traceback of user errors too. openmatch's own warnings
(:class:`~openmatch.errors.OpenMatchWarning`) print as one ``warning: <message>`` line while the command runs;
logging is set up by :func:`openmatch.utils.setup_logging`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import warnings
from typing import Callable, Iterator, Optional, Sequence

from .errors import OpenMatchError, OpenMatchWarning, UsageError
from .utils import setup_logging

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Raised by the operating system for a path the user gave; without a filename they come from code, not a path.
FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (one ``error:`` line) rather than a bug (a traceback)."""
    if isinstance(err, OpenMatchError):
        return True
    return isinstance(err, FILE_ERRORS) and getattr(err, "filename", None) is not None


def error_message(err: BaseException) -> str:
    """The one-line text of a user error: ``path: reason`` for the operating system's file errors."""
    if isinstance(err, OSError) and not isinstance(err, OpenMatchError) and err.filename is not None:
        message = f"{err.filename}: {err.strerror or err}"
    else:
        message = str(err) or type(err).__name__
    return " ".join(message.split("\n"))


LOG_LEVEL_CHOICES = ("debug", "info", "warning", "error", "critical", "passive")


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    """``--log_level`` for an argparse command, with the values and meaning it has in the HF-parsed drivers."""
    parser.add_argument(
        "--log_level", default="passive", choices=LOG_LEVEL_CHOICES,
        help="openmatch's messages from this level up (passive: info); debug also shows other libraries' messages",
    )


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for the argparse commands: its own errors (a required flag missing, a value of
    the wrong type, an unknown flag) are one ``error:`` line and exit status 2, as every other user error and
    as the dataclass commands (:func:`openmatch.arguments.parse_args`), not the usage block first."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {' '.join(message.split())} (its flags: --help)\n")


def folder_to_write(value: str) -> str:
    """argparse ``type=`` of a folder a command creates or reuses: refused at once if a file is in its place,
    or in the place of a folder above it (which creating it would need)."""
    if os.path.exists(value) and not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a file, not a folder")
    above = os.path.dirname(os.path.abspath(value))
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise argparse.ArgumentTypeError(f"{value}: {above} is a file, not a folder")
    return value


def existing_folder(value: str) -> str:
    """argparse ``type=`` of a folder a command reads (a tokenizer, a collection): it must be there."""
    if not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value}: no such folder")
    return value


def parse_args(dataclass_types: Sequence[type], argv: Optional[Sequence[str]] = None) -> tuple:
    """:func:`openmatch.arguments.parse_args` for a command: a ``ValueError`` while building the argument
    dataclasses (transformers' own ``TrainingArguments`` checks, a bad ``.json`` file) is the user's, so it
    becomes a :class:`~openmatch.errors.UsageError`."""
    from .arguments import parse_args as parse

    try:
        return parse(dataclass_types, argv)
    except ValueError as err:
        if isinstance(err, OpenMatchError):
            raise
        raise UsageError(str(err)) from err


def _open_bars() -> list:
    """The tqdm progress bars this process is drawing: a line printed now would land at the end of theirs."""
    tqdm = sys.modules.get("tqdm")
    bars = getattr(getattr(tqdm, "tqdm", None), "_instances", ())
    return [bar for bar in list(bars) if not getattr(bar, "disable", True)]


def _show_warning(previous, message, category, filename, lineno, file=None, line=None):
    if not issubclass(category, OpenMatchWarning):
        return previous(message, category, filename, lineno, file, line)
    # The source line Python would print says where the warning was raised, which is of no use to the user.
    text = " ".join(str(message).split("\n"))
    stream = file if file is not None else sys.stderr
    try:
        if _open_bars():  # cleared, the warning printed on its own line, then redrawn below it
            with sys.modules["tqdm"].tqdm.external_write_mode(file=stream, nolock=True):
                print(f"warning: {text}", file=stream)
        else:
            print(f"warning: {text}", file=stream)
    except OSError:  # stderr closed: a warning must not end the run
        pass


@contextlib.contextmanager
def command_output() -> Iterator[None]:
    """Logging and warnings as the commands show them, for the duration of one command.

    Levels, handlers and ``warnings.showwarning`` are put back afterwards, so that a command run from Python
    (a test, a notebook) leaves the caller's set-up as it was.
    """
    names = ("", "openmatch", "transformers")
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    previous = warnings.showwarning
    warnings.showwarning = functools.partial(_show_warning, previous)
    try:
        setup_logging()  # until the command knows its rank and --log_level
        yield
    finally:
        warnings.showwarning = previous
        root = logging.getLogger()
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def main_wrapper(main: Callable[[Optional[Sequence[str]]], Optional[int]]) -> Callable[..., int]:
    """Wrap a command's ``main(argv)``: user errors exit 2 (``SystemExit``) with an ``error: ...`` line on
    stderr, other exceptions propagate; otherwise return ``main``'s status (0 for ``None``), for
    ``sys.exit(main())``."""

    @functools.wraps(main)
    def wrapped(argv: Optional[Sequence[str]] = None) -> int:
        try:
            with command_output():
                status = main(argv)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as err:
            if not is_user_error(err) or os.environ.get("OPENMATCH_TRACEBACK"):
                raise
            # A bar left open by the failure keeps its last state on screen; the error goes on the next line.
            print(("\n" if _open_bars() else "") + f"error: {error_message(err)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        return int(status or 0)

    wrapped.is_command = True
    return wrapped


def run(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Run a command's ``main(argv)`` as its console script would, but return the exit status instead of
    exiting (argparse's usage errors included); bugs still raise."""
    command = main if getattr(main, "is_command", False) else main_wrapper(main)
    try:
        return command(argv)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else 0 if code is None else 1
