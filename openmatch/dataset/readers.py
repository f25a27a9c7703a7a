"""Streaming readers for the record files of the field: TSV, JSONL and gzip of either.

Each reader is a loop over :mod:`openmatch.dataset.records`, which decodes and checks every line (tabs
only, no quote handling, no type inference, so ids such as ``007`` and texts holding quotes survive
untouched; ids non-empty and without white space). Every problem is reported as
``DataFormatError("path:line: what")``, worded as in :mod:`~openmatch.dataset.records`.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

from .records import (  # noqa: F401  (the readers' public names: callers import them from here)
    ID_KEYS,
    DataFormatError,
    RecordParser,
    count_lines,
    find_duplicate,
    find_id_key,
    is_jsonl,
    iter_lines,
    iter_raw_data_lines,
    no_records,
    open_binary,
    parse_column_names,
    record_id,
)


def _iter_records(path, parser: RecordParser) -> Iterator[tuple[int, dict]]:
    for line_no, raw in iter_raw_data_lines(path, parser):
        yield line_no, parser.record(raw, line_no)


def iter_tsv(path, column_names: Optional[str | Sequence[str]] = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)``. Without ``column_names`` the first line is the header."""
    return _iter_records(path, RecordParser(path, column_names, jsonl=False))


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank JSON object line."""
    return _iter_records(path, RecordParser(path, jsonl=True))


def iter_records(path, column_names: Optional[str | Sequence[str]] = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a TSV or JSONL file (optionally gzip), chosen by extension."""
    return _iter_records(path, RecordParser(path, column_names))


def iter_id_records(path, column_names=None) -> Iterator[tuple[int, str, dict]]:
    """Yield ``(line_number, id, record)``; the id key is detected on the first record."""
    parser = RecordParser(path, column_names)
    for line_no, raw in iter_raw_data_lines(path, parser):
        rid, record = parser.parse(raw, line_no)
        yield line_no, rid, record


def load_id_records(
    path, column_names=None, *, allow_duplicates: bool = False, value: Optional[Callable[[dict], object]] = None
) -> dict:
    """Read a whole collection or query file into ``{id: record}`` (or ``{id: value(record)}``, which keeps
    only what is needed of each record); a repeated id and a file without records are errors."""
    records: dict = {}
    for _, rid, record in iter_id_records(path, column_names):
        if rid in records and not allow_duplicates:
            raise find_duplicate(path, column_names, rid)
        records[rid] = record if value is None else value(record)
    if not records:
        raise no_records(path)
    return records
