"""Small shared helpers: atomic file output, logging set-up, argument snapshots."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import IO, Iterator

from .errors import UsageError

logger = logging.getLogger("openmatch")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# ``--log_level`` values, as in transformers' TrainingArguments; "passive" (its default) leaves ours at INFO.
LOG_LEVELS = {
    "passive": None,
    "debug": logging.DEBUG,
    "detail": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def setup_logging(rank: int | None = None, level: str | int | None = None) -> None:
    """One logging set-up for every command: openmatch's messages at ``level`` (INFO by default), every other
    library's (faiss, transformers, torch, urllib3, ...) at WARNING unless ``level`` is debug.

    ``level`` is a ``--log_level`` value (a key of ``LOG_LEVELS``) or a ``logging`` level. Non-zero ranks show
    warnings only; ``rank=None`` takes it from the launcher's ``RANK``. Calling it again only changes levels.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    ours = LOG_LEVELS[level.lower()] if isinstance(level, str) else level
    ours = logging.INFO if ours is None else ours
    if rank not in (-1, 0):
        ours = max(ours, logging.WARNING)
    # Levels on the loggers, not on the handler: INFO records of third-party loggers (faiss's loader logs
    # its attempts to import AVX builds at import time) are then dropped whenever they are imported.
    others = logging.DEBUG if ours <= logging.DEBUG else max(ours, logging.WARNING)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(others)
    logger.setLevel(ours)
    if ours <= logging.DEBUG:
        # transformers logs through its own handler (it does not propagate), at WARNING unless told otherwise.
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(ours)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path`` and rename it over ``path`` only on success.

    A crash or an exception leaves no half-written file under the final name: readers either see the
    previous complete file or the new complete one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        # A component of the folder is a file: name the path the user gave, as a file error the CLI prints.
        raise NotADirectoryError(errno.ENOTDIR, "a part of its folder is a file, not a folder", str(path)) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable_folder(folder: str | os.PathLike, flag: str, given: str | os.PathLike | None = None) -> None:
    """Refuse, before any work, an output folder that cannot be created or written: its nearest existing
    ancestor (the folder itself when it exists) must be a folder in which a file can be created and removed.

    Nothing is left behind: the probe file is removed and a missing folder is not created. The one-line
    :class:`~openmatch.errors.UsageError` names ``flag`` and its value ``given`` (by default ``folder``: a
    file's flag gives the file, whose folder is checked).
    """
    folder = os.path.abspath(os.fspath(folder))
    shown = f"{flag} {os.fspath(given) if given is not None else folder}"
    probe = folder
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{shown}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".openmatch-write-test.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UsageError(f"{shown}: cannot write in {probe} ({err.strerror or err})") from None


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_output(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def dataclasses_to_dict(*objects) -> dict:
    """Resolved configuration of several argument dataclasses, keyed by class name, JSON-serialisable."""
    resolved = {}
    for obj in objects:
        if obj is None:
            continue
        data = obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj) if is_dataclass(obj) else dict(obj)
        resolved[type(obj).__name__] = json.loads(json.dumps(data, default=str))
    return resolved
