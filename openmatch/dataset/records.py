"""The one record parser: how every reader decodes a line, splits it, finds its id and words a problem.

Corpus and query files (TSV or JSONL, optionally gzip: ``build_index``, ``retrieve``, ``build_train``,
``build_hn``, the API), training JSONL, qrels, TREC runs and negatives files are all read through the
functions here, so a line means the same, and a bad line is reported in the same words, whichever command
reads it. Every problem is a ``DataFormatError("path:line: what")``:

- a line ends at ``\\n`` (a ``\\r`` before it is dropped, so CRLF files read like LF ones); it must be UTF-8
  (``invalid UTF-8 at byte N``); a blank line (ASCII white space only) holds no record and is skipped;
- a JSONL line is one JSON object (``invalid JSON: ...``, ``expected a JSON object``);
- a TSV line is split on tabs only (no quoting, no type inference, so ``007`` stays ``007``), into columns
  named by the caller or by the file's first line (``expected 3 tab-separated columns (id,title,text),
  found 2``);
- a record's id is its first field among ``_id``, ``id``, ``text_id``, ``sample_id``; an id is a non-empty
  string without white space (``empty id``, ``id 'a b' contains white space, which a TREC run cannot
  hold``). The same rule holds for the ids of negatives files; in qrels and runs, white space separates
  the columns, so their ids cannot hold any;
- an id seen twice in a collection: ``id 'x' repeated (first seen on line N)``;
- a file without a single record: ``no records: the file is empty``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from typing import IO, Iterable, Iterator, Optional, Sequence

from ..errors import InputError, MissingInputError, UsageError

ID_KEYS = ("_id", "id", "text_id", "sample_id")

# The characters str.isspace() and str.split() treat as white space (what separates a TREC run's columns).
_WHITE_SPACE = re.compile(r"\s")


class DataFormatError(InputError):
    """Bad input, reported as ``path:line: message`` so it can be found and fixed."""

    def __init__(self, path: str | os.PathLike, line: Optional[int], message: str):
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


# -- files and lines ---------------------------------------------------------------------------------------


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a file for reading bytes, decompressing ``.gz`` transparently."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingInputError(f"{path}: no such file")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


def is_jsonl(path: str | os.PathLike) -> bool:
    """Whether a record file is JSONL (``.jsonl``/``.json``, optionally ``.gz``) rather than TSV."""
    name = os.fspath(path)
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith((".jsonl", ".json"))


def is_blank(raw: bytes) -> bool:
    """Whether a raw line holds no record (ASCII white space only; decided without decoding it)."""
    return not raw.strip()


def decode_line(raw: bytes, path, line_no: int) -> str:
    """A raw line as text without its ending (LF or CRLF); strict UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, line_no, f"invalid UTF-8 at byte {err.start}") from None
    return text.rstrip("\r\n")


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of every non-blank line, decoded by :func:`decode_line`."""
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not is_blank(raw):
                yield line_no, decode_line(raw, path, line_no)


def count_lines(path) -> int:
    """Number of lines, read in large blocks (for progress bars and sharding plans)."""
    count, last = 0, b"\n"
    with open_binary(path) as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


# -- JSON and TSV ------------------------------------------------------------------------------------------


def decode_json_object(line: str, path, line_no: int) -> dict:
    """The JSON object of one JSONL line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, line_no, f"invalid JSON: {err.msg}") from None
    if not isinstance(record, dict):
        raise DataFormatError(path, line_no, "expected a JSON object")
    return record


def parse_column_names(column_names: Optional[str | Sequence[str]]) -> Optional[list[str]]:
    """``"id,title,text"`` (or a sequence of names) as a list; None stays None (the file has a header)."""
    if column_names is None:
        return None
    names = column_names.split(",") if isinstance(column_names, str) else list(column_names)
    names = [name.strip() for name in names]
    if not names or any(not name for name in names):
        raise UsageError(f"column names must be non-empty and comma-separated, got {column_names!r}")
    return names


def split_tsv(line: str, names: Sequence[str], path, line_no: int) -> dict[str, str]:
    """``{name: field}`` of a tab-separated line, which must have exactly one field per name."""
    fields = line.split("\t")
    if len(fields) != len(names):
        raise DataFormatError(
            path, line_no, f"expected {len(names)} tab-separated columns ({','.join(names)}), found {len(fields)}"
        )
    return dict(zip(names, fields))


# -- ids ---------------------------------------------------------------------------------------------------


def find_id_key(record: dict, path=None, line: Optional[int] = None) -> str:
    """The id field of a record: the first of ``_id``, ``id``, ``text_id``, ``sample_id`` present."""
    for key in ID_KEYS:
        if key in record:
            return key
    raise DataFormatError(path or "<record>", line, f"no id field (one of {', '.join(ID_KEYS)}) in {sorted(record)}")


def check_id(value, path=None, line: Optional[int] = None) -> str:
    """``value`` as an id string: refused when empty or holding white space (a TREC run could not hold it).

    JSON numbers are accepted and become strings (``12`` -> ``"12"``).
    """
    if value is None or value == "":
        raise DataFormatError(path or "<record>", line, "empty id")
    rid = str(value)
    if _WHITE_SPACE.search(rid):
        raise DataFormatError(path or "<record>", line, f"id {rid!r} contains white space, which a TREC run cannot hold")
    return rid


def check_ids(values: list[str], path, line: int) -> list[str]:
    """:func:`check_id` of every string of ``values`` (one line's ids), checked in bulk while all are valid."""
    # A negatives line lists hundreds of ids: two C-level scans instead of a call per id.
    if "" in values or _WHITE_SPACE.search("".join(values)):
        for value in values:
            check_id(value, path, line)
    return values


def record_id(record: dict, id_key: str, path=None, line: Optional[int] = None) -> str:
    """The id of ``record`` under ``id_key``, held to :func:`check_id`'s rule."""
    return check_id(record.get(id_key), path, line)


# -- the parser --------------------------------------------------------------------------------------------


class RecordParser:
    """Turns one raw line of a TSV or JSONL record file into a record, or ``(id, record)``.

    The format follows the extension unless ``jsonl`` says otherwise. A TSV without ``column_names`` takes
    its column names from its first non-blank line (:attr:`needs_header`, :meth:`set_header`). The id key is
    detected on the first record parsed and then required of every record.
    """

    def __init__(self, path: str | os.PathLike, column_names: Optional[str | Sequence[str]] = None, jsonl: Optional[bool] = None):
        self.path = os.fspath(path)
        self.jsonl = is_jsonl(self.path) if jsonl is None else jsonl
        self.names = parse_column_names(column_names) if not self.jsonl else None
        self.id_key: Optional[str] = None

    @property
    def needs_header(self) -> bool:
        return not self.jsonl and self.names is None

    def set_header(self, raw: bytes, line_no: int) -> None:
        self.names = parse_column_names(decode_line(raw, self.path, line_no).split("\t"))

    def record(self, raw: bytes, line_no: int) -> dict:
        """The record of a raw data line (JSON object, or TSV columns by name)."""
        line = decode_line(raw, self.path, line_no)
        if self.jsonl:
            return decode_json_object(line, self.path, line_no)
        return split_tsv(line, self.names, self.path, line_no)

    def parse(self, raw: bytes, line_no: int) -> tuple[str, dict]:
        """``(id, record)`` of a raw data line."""
        record = self.record(raw, line_no)
        if self.id_key is None:
            self.id_key = find_id_key(record, self.path, line_no)
        return record_id(record, self.id_key, self.path, line_no), record


def iter_raw_data_lines(path: str | os.PathLike, parser: RecordParser) -> Iterator[tuple[int, bytes]]:
    """``(line_number, raw_line)`` of every non-blank data line (after the TSV header, if the file has one).

    Nothing is decoded but the header, so a caller can deal lines out before paying for their parsing.
    """
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if is_blank(raw):
                continue
            if parser.needs_header:
                parser.set_header(raw, line_no)
                continue
            yield line_no, raw


# -- whole-file checks -------------------------------------------------------------------------------------


def no_records(path) -> DataFormatError:
    """The error for a file (or list of files) without a single record."""
    return DataFormatError(path, None, "no records: the file is empty")


def check_not_empty(path: str | os.PathLike, column_names=None) -> None:
    """Refuse a record file without a data line, before any work is spent on it."""
    parser = RecordParser(path, column_names)
    for _ in iter_raw_data_lines(path, parser):
        return
    raise no_records(path)


def find_duplicate(path: str | os.PathLike, column_names, rid: str) -> DataFormatError:
    """The error for id ``rid`` found twice in a record file, naming the lines of its first two occurrences.

    Readers keep only the ids they have seen, not their lines: this rescans the file, on the error path only.
    """
    parser = RecordParser(path, column_names)
    first = None
    for line_no, raw in iter_raw_data_lines(path, parser):
        if parser.parse(raw, line_no)[0] == rid:
            if first is not None:
                return DataFormatError(path, line_no, f"id {rid!r} repeated (first seen on line {first})")
            first = line_no
    return DataFormatError(path, None, f"id {rid!r} repeated")


def check_unique(ids: Iterable[str], path: str | os.PathLike, column_names=None) -> None:
    """Refuse a repeated id among ``ids``, the ids read from ``path`` (see :func:`find_duplicate`)."""
    seen: set[str] = set()
    for rid in ids:
        if rid in seen:
            raise find_duplicate(path, column_names, rid)
        seen.add(rid)
