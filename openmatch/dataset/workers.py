"""User errors out of DataLoader worker processes, as the one-line errors they are.

A loader worker that raises sends the main process only the exception's class and its formatted traceback;
the main process re-raises ``cls(text)``, or a ``RuntimeError(text)`` when the class cannot be built from a
string (``DataFormatError`` cannot). Either way the user gets a page of "Caught DataFormatError in DataLoader
worker process 0" with the ``path:line`` buried in it, and the command takes it for a bug.

:func:`user_errors_leave_workers` wraps the code that runs in a worker (a dataset's ``__iter__`` or
``__getitem__``). It turns an :class:`~openmatch.errors.OpenMatchError` into a :class:`WorkerUserError`, whose
text holds the original error (class and arguments) as JSON; when torch builds ``WorkerUserError(text)`` in
the main process, the class builds the original error instead, which then propagates as if it had been
raised there. This works for every DataLoader (ours and the Trainer's) without touching its main-process
side, whatever the start method and ``pin_memory``.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import re
from typing import Iterator

from ..errors import OpenMatchError

_MARK = "openmatch-user-error:"
# Anchored at the start of the text that ends the formatted traceback ("<module>.WorkerUserError: <text>"):
# the error's message, which may quote a data file, comes after the payload and cannot forge one.
_PAYLOAD = re.compile(r"\.WorkerUserError: " + re.escape(_MARK) + r"([A-Za-z0-9+/=]+) ")


def _encode(err: OpenMatchError) -> str:
    cls = type(err)
    reduced = err.__reduce__()
    args = list(reduced[1]) if len(reduced) > 1 else [str(err)]
    try:
        spec = json.dumps({"module": cls.__module__, "name": cls.__qualname__, "args": args})
    except (TypeError, ValueError):  # arguments JSON cannot hold: keep the message, which is what is shown
        spec = json.dumps({"module": "openmatch.errors", "name": "OpenMatchError", "args": [str(err)]})
    return base64.b64encode(spec.encode("utf-8")).decode("ascii")


def _decode(payload: str):
    """The error described by ``payload``, or None when it does not name an openmatch user error."""
    try:
        spec = json.loads(base64.b64decode(payload, validate=True).decode("utf-8"))
        if not str(spec["module"]).startswith("openmatch."):
            return None
        cls = importlib.import_module(spec["module"])
        for part in str(spec["name"]).split("."):
            cls = getattr(cls, part)
        if not (isinstance(cls, type) and issubclass(cls, OpenMatchError)):
            return None
        return cls(*spec["args"])
    except Exception:  # a damaged payload: torch's own wrapping of the text is the fallback
        return None


class WorkerUserError(Exception):
    """An :class:`~openmatch.errors.OpenMatchError` on its way out of a loader worker (see the module docstring);
    built from torch's re-raise text, it becomes the original error again."""

    def __new__(cls, *args):
        if len(args) == 1 and isinstance(args[0], str):
            match = _PAYLOAD.search(args[0])
            original = _decode(match.group(1)) if match else None
            if original is not None:
                return original  # not an instance of cls, so Python does not call __init__ on it
        return super().__new__(cls, *args)

    @classmethod
    def carrying(cls, err: OpenMatchError) -> "WorkerUserError":
        """The exception a worker raises in place of ``err``; its text is the payload, then ``err``'s message."""
        carrier = Exception.__new__(cls)
        Exception.__init__(carrier, f"{_MARK}{_encode(err)} {err}")
        return carrier


def in_loader_worker() -> bool:
    """Whether this code runs in a DataLoader worker process."""
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


@contextlib.contextmanager
def user_errors_leave_workers() -> Iterator[None]:
    """Around code that may run in a loader worker: a user error raised there reaches the main process as
    itself (in the main process nothing changes)."""
    try:
        yield
    except OpenMatchError as err:
        if not in_loader_worker():
            raise
        raise WorkerUserError.carrying(err) from None
