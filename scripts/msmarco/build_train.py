#!/usr/bin/env python
"""The recipe's ``build_train.py``: build OpenMatch training JSONL from MS MARCO-style files.

The command is :mod:`openmatch.driver.build_train` (also installed as ``openmatch-build-train``); this file keeps the
recipe's ``python scripts/msmarco/build_train.py ...`` working. openmatch must be installed: ``pip install -e .``.
"""

from __future__ import annotations

import sys

try:
    from openmatch.driver.build_train import build_parser, main, parse_args  # noqa: F401  (docs and tests use them)
except ModuleNotFoundError as err:
    if err.name != "openmatch":
        raise
    sys.exit("error: openmatch is not installed; run pip install -e . in the repository first")

if __name__ == "__main__":
    sys.exit(main())
