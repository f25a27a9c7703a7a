"""The test suite mirrors the package: ``tests/<subpackage>/test_<module>.py`` tests ``openmatch/<subpackage>/<module>.py``;
top-level files test the top-level modules (arguments, errors, cli, preprocessing) and whole commands end to end
(recipe, SciFact, regression scores, docs, benchmarks). ``tests`` is a package so that ``tests.tiny_models`` imports
from the repository root, as pytest (and a subprocess given ``PYTHONPATH=<repo>``) sees it."""

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The real data beside the repository (``../shared/data``), or ``$OPENMATCH_SHARED_DATA``."""
    return Path(os.environ.get("OPENMATCH_SHARED_DATA", REPO.parent / "shared" / "data"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a distributed test's master port."""
    # A fixed port collides with another test run (or another distributed test) on the same machine.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
