#!/usr/bin/env python
"""The recipe's ``build_hn.py``: build OpenMatch hard-negative training JSONL from a TREC run.

The command is :mod:`openmatch.driver.build_hn` (also installed as ``openmatch-build-hn``); this file keeps the
recipe's ``python scripts/msmarco/build_hn.py ...`` working. openmatch must be installed: ``pip install -e .``.
"""

from __future__ import annotations

import sys

try:
    from openmatch.driver.build_hn import build_parser, main, parse_args  # noqa: F401  (docs and tests use them)
except ModuleNotFoundError as err:
    if err.name != "openmatch":
        raise
    sys.exit("error: openmatch is not installed; run pip install -e . in the repository first")

if __name__ == "__main__":
    sys.exit(main())
