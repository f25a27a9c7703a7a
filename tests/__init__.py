"""The test suite mirrors the package: ``tests/<subpackage>/test_<module>.py`` tests ``openmatch/<subpackage>/<module>.py``;
top-level files test the top-level modules (arguments, errors, cli, preprocessing) and whole commands end to end
(recipe, SciFact, regression scores, docs, benchmarks). ``tests`` is a package so that ``tests.tiny_models`` imports
from the repository root, as pytest (and a subprocess given ``PYTHONPATH=<repo>``) sees it."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The real data beside the repository (``../shared/data``), or ``$OPENMATCH_SHARED_DATA``."""
    return Path(os.environ.get("OPENMATCH_SHARED_DATA", REPO.parent / "shared" / "data"))
