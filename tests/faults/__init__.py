"""The fault matrix: bad input and faults run through the real commands, each case checking the exit status,
a one-line message naming the file or flag, no traceback, and the state of the output afterwards.

Every module ``tests/faults/test_<area>.py`` holds the cases of one area as a parametrised list; this file holds
the harness they share. A command is run in-process through :func:`openmatch.cli.run` (the code path of its
console script, without the interpreter start-up that would make a hundred cases slow); the few cases that need a
fresh process (loader workers, a signal) use :func:`run_subprocess`.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tests import REPO

# The command modules a case may name, as a user types them after ``python -m``.
COMMANDS = {
    "train_dr": "openmatch.driver.train_dr",
    "build_index": "openmatch.driver.build_index",
    "retrieve": "openmatch.driver.retrieve",
    "evaluate": "openmatch.driver.evaluate",
    "build_train": "openmatch.driver.build_train",
    "build_hn": "openmatch.driver.build_hn",
    "bm25": "openmatch.driver.bm25",
    "fuse": "openmatch.driver.fuse",
}


@dataclass
class Outcome:
    """What a command left: its exit status and what it printed."""

    status: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def warning_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("warning:")]


def run_command(command: str, argv: Sequence[object], capfd) -> Outcome:
    """Run ``python -m openmatch.driver.<command> argv`` in this process and capture what it printed."""
    from openmatch.cli import run

    main = importlib.import_module(COMMANDS[command]).main
    capfd.readouterr()  # drop what earlier set-up printed
    status = run(main, [str(arg) for arg in argv])
    out, err = capfd.readouterr()
    return Outcome(status, out, err)


def run_subprocess(command: str, argv: Sequence[object], cwd: Optional[os.PathLike] = None, timeout: int = 300,
                   env: Optional[dict] = None) -> Outcome:
    """Run ``python -m openmatch.driver.<command> argv`` in a fresh interpreter."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    environment.update(env or {})
    proc = subprocess.run([sys.executable, "-m", COMMANDS[command], *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=environment, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_user_error(outcome: Outcome, *needles: str) -> str:
    """The command failed as a user's mistake: exit status 2, exactly one ``error:`` line that contains every
    needle (a file name, a flag, a reason), and no traceback. Returns the line."""
    assert "Traceback (most recent call last)" not in outcome.stderr, outcome.stderr
    assert outcome.status == 2, f"exit status {outcome.status}, expected 2\n{outcome.stderr}"
    assert len(outcome.error_lines) == 1, outcome.stderr
    line = outcome.error_lines[0]
    assert "\n" not in line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    return line


def assert_warned(outcome: Outcome, *needles: str, status: int = 0) -> str:
    """The command went on (exit ``status``) after one ``warning:`` line containing every needle."""
    assert "Traceback (most recent call last)" not in outcome.stderr, outcome.stderr
    assert outcome.status == status, f"exit status {outcome.status}, expected {status}\n{outcome.stderr}"
    matching = [line for line in outcome.warning_lines if all(str(n) in line for n in needles)]
    assert len(matching) == 1, f"no single warning with {needles}:\n{outcome.stderr}"
    return matching[0]


def assert_succeeded(outcome: Outcome) -> None:
    assert outcome.status == 0, outcome.stderr
    assert not outcome.error_lines and "Traceback (most recent call last)" not in outcome.stderr, outcome.stderr


def files_under(folder: os.PathLike) -> set[str]:
    """The files under ``folder`` (relative, sorted), or the empty set when it does not exist: a case compares
    this before and after to show nothing half-written was left."""
    root = Path(folder)
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def write_lines(path: os.PathLike, lines: Iterable[str], encoding: str = "utf-8") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path
