"""Small shared helpers: atomic file output, logging set-up, argument snapshots."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import IO, Iterator

# Re-exported: it lives in openmatch.distributed; older imports (openmatch.retriever.index) use this path.
from .distributed import dist_context  # noqa: F401

logger = logging.getLogger("openmatch")


def setup_logging(rank: int = 0) -> None:
    """One logging format for every driver; non-zero ranks only log warnings."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if rank in (-1, 0) else logging.WARNING,
    )


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path`` and rename it over ``path`` only on success.

    A crash or an exception leaves no half-written file under the final name: readers either see the
    previous complete file or the new complete one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
