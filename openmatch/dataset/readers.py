"""Streaming readers for the record files of the field: TSV, JSONL and gzip of either.

TSV is split on tabs only (no quote handling, no type inference), so ids such as ``007`` and texts holding
quotes survive untouched. Every problem is reported as ``DataFormatError("path:line: what")``.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import IO, Iterator, Optional, Sequence

from ..errors import InputError, MissingInputError, UsageError

ID_KEYS = ("_id", "id", "text_id", "sample_id")


class DataFormatError(InputError):
    """Bad input, reported as ``path:line: message`` so it can be found and fixed."""

    def __init__(self, path: str | os.PathLike, line: Optional[int], message: str):
        self.path, self.line = str(path), line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a file for reading bytes, decompressing ``.gz`` transparently."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingInputError(f"{path}: no such file")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with the line ending (LF or CRLF) removed; strict UTF-8."""
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataFormatError(path, line_no, f"invalid UTF-8 at byte {err.start}") from None
            yield line_no, text.rstrip("\r\n")


def is_jsonl(path: str | os.PathLike) -> bool:
    name = os.fspath(path)
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith((".jsonl", ".json"))


def parse_column_names(column_names: Optional[str | Sequence[str]]) -> Optional[list[str]]:
    if column_names is None:
        return None
    names = column_names.split(",") if isinstance(column_names, str) else list(column_names)
    names = [name.strip() for name in names]
    if not names or any(not name for name in names):
        raise UsageError(f"column names must be non-empty and comma-separated, got {column_names!r}")
    return names


def iter_tsv(path, column_names: Optional[str | Sequence[str]] = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)``. Without ``column_names`` the first line is the header."""
    names = parse_column_names(column_names)
    for line_no, line in iter_lines(path):
        if not line:
            continue
        fields = line.split("\t")
        if names is None:
            names = parse_column_names(fields)
            continue
        if len(fields) != len(names):
            raise DataFormatError(
                path, line_no, f"expected {len(names)} tab-separated columns ({','.join(names)}), found {len(fields)}"
            )
        yield line_no, dict(zip(names, fields))


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-empty JSON object line."""
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, line_no, f"invalid JSON: {err.msg}") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, line_no, "expected a JSON object")
        yield line_no, record


def iter_records(path, column_names: Optional[str | Sequence[str]] = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a TSV or JSONL file (optionally gzip), chosen by extension."""
    if is_jsonl(path):
        return iter_jsonl(path)
    return iter_tsv(path, column_names)


def find_id_key(record: dict, path=None, line: Optional[int] = None) -> str:
    """The id field of a record: the first of ``_id``, ``id``, ``text_id``, ``sample_id`` present."""
    for key in ID_KEYS:
        if key in record:
            return key
    raise DataFormatError(path or "<record>", line, f"no id field (one of {', '.join(ID_KEYS)}) in {sorted(record)}")


def record_id(record: dict, id_key: str, path=None, line: Optional[int] = None) -> str:
    value = record.get(id_key)
    if value is None or value == "":
        raise DataFormatError(path or "<record>", line, f"empty {id_key!r}")
    return str(value)


def iter_id_records(path, column_names=None) -> Iterator[tuple[int, str, dict]]:
    """Yield ``(line_number, id, record)``; the id key is detected on the first record."""
    id_key = None
    for line_no, record in iter_records(path, column_names):
        if id_key is None:
            id_key = find_id_key(record, path, line_no)
        yield line_no, record_id(record, id_key, path, line_no), record


def load_id_records(path, column_names=None, *, allow_duplicates: bool = False) -> dict[str, dict]:
    """Read a whole collection or query file into ``{id: record}``; a repeated id is an error."""
    records: dict[str, dict] = {}
    first_seen: dict[str, int] = {}
    for line_no, rid, record in iter_id_records(path, column_names):
        if rid in records and not allow_duplicates:
            raise DataFormatError(path, line_no, f"id {rid!r} repeated (first seen on line {first_seen[rid]})")
        records[rid] = record
        first_seen.setdefault(rid, line_no)
    return records


def count_lines(path) -> int:
    """Number of lines, read in large blocks (for progress bars and sharding plans)."""
    count, last = 0, b"\n"
    with open_binary(path) as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")
