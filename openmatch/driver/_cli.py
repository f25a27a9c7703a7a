"""Shared command-line plumbing for the drivers: bad input ends with one ``error: ...`` line, not a traceback.

Usage::

    @main_wrapper
    def main(argv=None) -> int | None: ...

    if __name__ == "__main__":
        sys.exit(main())

``DataFormatError`` (``path:line: what``), ``ValueError``, ``FileNotFoundError`` and ``FileExistsError`` are
user-facing errors: they print ``error: <message>`` on stderr and exit with status 2. Set
``OPENMATCH_TRACEBACK=1`` to let them propagate with their traceback when debugging.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Optional, Sequence

from ..dataset.readers import DataFormatError

EXIT_USAGE = 2
USER_ERRORS = (DataFormatError, ValueError, FileNotFoundError, FileExistsError)


def main_wrapper(main: Callable[[Optional[Sequence[str]]], Optional[int]]) -> Callable[..., int]:
    """Wrap a driver's ``main(argv)`` so user errors exit 2 (``SystemExit``) with an ``error: ...`` line on
    stderr; otherwise return ``main``'s status (0 for ``None``), for ``sys.exit(main())``."""

    @functools.wraps(main)
    def wrapped(argv: Optional[Sequence[str]] = None) -> int:
        try:
            status = main(argv)
        except USER_ERRORS as err:
            if os.environ.get("OPENMATCH_TRACEBACK"):
                raise
            message = str(err) or type(err).__name__
            if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
                message = f"{err.filename}: {message}"
            print(f"error: {message}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        return int(status or 0)

    return wrapped
