"""The one record parser: how every reader decodes a line, splits it, finds its id and words a problem.

Corpus and query files (TSV or JSONL, optionally gzip: ``build_index``, ``retrieve``, ``build_train``,
``build_hn``, the API), training JSONL, qrels, TREC runs and negatives files are all read through the
functions here, so a line means the same, and a bad line is reported in the same words, whichever command
reads it. Every problem is a ``DataFormatError("path:line: what")``:

- a file is opened in one place (:func:`open_binary`): ``.gz`` is decompressed, a UTF-8 byte-order mark at its
  start is dropped (it would otherwise become part of the first id), and a gzip stream that is cut short or
  damaged is ``truncated or corrupt gzip (...)`` at the line where its data ends;
- a line ends at ``\\n`` (a ``\\r`` before it is dropped, so CRLF files read like LF ones); it must be UTF-8
  (``invalid UTF-8 at byte N``); a blank line (ASCII white space only) holds no record and is skipped;
- a JSONL line is one JSON object (``invalid JSON: ...``, ``expected a JSON object``);
- a TSV line is split on tabs only (no quoting, no type inference, so ``007`` stays ``007``), into columns
  named by the caller or by the file's first line (``expected 3 tab-separated columns (id,title,text),
  found 2``). A first line that repeats the caller's column names is a header: it is skipped with a warning.
  When the names come from the first line, an error in the first records says that the line was read as
  the header and that a file without one needs its column names (``--doc_column_names``/``--query_column_names``);
- a record's id is its first field among ``_id``, ``id``, ``text_id``, ``sample_id``; an id is a non-empty
  string without white space (``empty id``, ``id 'a b' contains white space, which a TREC run cannot
  hold``). The same rule holds for the ids of negatives files; in qrels and runs, white space separates
  the columns, so their ids cannot hold any;
- an id seen twice in a collection: ``id 'x' repeated (first seen on line N)``;
- a file without a single record: ``no records: the file is empty``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import warnings
import zlib
from typing import IO, Iterable, Iterator, Optional, Sequence

from ..errors import InputError, MissingInputError, OpenMatchWarning, UsageError

ID_KEYS = ("_id", "id", "text_id", "sample_id")

# The characters str.isspace() and str.split() treat as white space (what separates a TREC run's columns).
_WHITE_SPACE = re.compile(r"\s")


class DataFormatError(InputError):
    """Bad input, reported as ``path:line: message`` so it can be found and fixed."""

    def __init__(self, path: str | os.PathLike, line: Optional[int], message: str):
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        # Pickled with its three fields (the default would call the class with the formatted text alone), so
        # that it can cross from a DataLoader worker to the main process (openmatch.dataset.workers).
        return type(self), (self.path, self.line, self.message)


# -- files and lines ---------------------------------------------------------------------------------------


_BOM = b"\xef\xbb\xbf"
# What gzip raises for a stream cut short (EOFError), a file that is not gzip or fails its CRC (BadGzipFile)
# and damaged deflate data (zlib.error).
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class _GzipSource(io.RawIOBase):
    """The decompressed bytes of a ``.gz`` file, in which a truncated or damaged stream is a ``DataFormatError``
    naming the file and the line its data ends in (gzip's own ``EOFError`` names neither)."""

    def __init__(self, path: str):
        self.path = path
        self._gzip = gzip.open(path, "rb")
        self._newlines = 0  # in the bytes handed out so far: the data ends in line _newlines + 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            # read1, one step of decompression: readinto would fill the buffer in several and drop the data
            # it holds when a later step fails, which would hide where the data ends.
            data = self._gzip.read1(len(buffer))
        except _GZIP_ERRORS as err:
            raise DataFormatError(self.path, self._newlines + 1, f"truncated or corrupt gzip ({err})") from None
        buffer[: len(data)] = data
        self._newlines += data.count(b"\n")
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._gzip.close()
        super().close()


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a file for reading bytes: ``.gz`` decompressed (a damaged stream reported as such), a UTF-8
    byte-order mark at the start skipped. Every reader of user files opens them here."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingInputError(f"{path}: no such file")
    raw = _GzipSource(path) if path.endswith(".gz") else io.FileIO(path, "r")
    handle = io.BufferedReader(raw, buffer_size=1 << 20)
    try:
        # Editors on Windows and pandas' utf-8-sig start files with a BOM; kept, it would join the first id.
        if handle.peek(len(_BOM))[: len(_BOM)] == _BOM:
            handle.read(len(_BOM))
    except BaseException:
        handle.close()
        raise
    return handle


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


# What a header calls the id column, besides the id keys (MS MARCO's, BEIR's and TREC's names).
_HEADER_ID_NAMES = (*ID_KEYS, "qid", "pid", "docid", "doc_id", "query_id", "query-id", "corpus-id", "passage_id")


# -- the parser --------------------------------------------------------------------------------------------


class RecordParser:
    """Turns one raw line of a TSV or JSONL record file into a record, or ``(id, record)``.

    The format follows the extension unless ``jsonl`` says otherwise. A TSV without ``column_names`` takes
    its column names from its first non-blank line (:attr:`needs_header`, :meth:`set_header`); a TSV with them
    skips a first line that repeats them (:meth:`is_header`). The id key is detected on the first record parsed
    and then required of every record. ``names_flag`` is the flag that names the columns
    (``--doc_column_names``), for the hints of errors and warnings.
    """

    def __init__(self, path: str | os.PathLike, column_names: Optional[str | Sequence[str]] = None, jsonl: Optional[bool] = None,
                 names_flag: Optional[str] = None):
        self.path = os.fspath(path)
        self.jsonl = is_jsonl(self.path) if jsonl is None else jsonl
        self.names = parse_column_names(column_names) if not self.jsonl else None
        self.names_flag = names_flag
        self.id_key: Optional[str] = None
        self.header_line: Optional[int] = None  # the line the column names were read from

    @property
    def needs_header(self) -> bool:
        return not self.jsonl and self.names is None

    def set_header(self, raw: bytes, line_no: int) -> None:
        self.names = parse_column_names(decode_line(raw, self.path, line_no).split("\t"))
        self.header_line = line_no

    def is_header(self, raw: bytes, line_no: int) -> bool:
        """Whether the first line of a TSV whose columns were named by the caller is a header naming them
        again (``id<TAB>title<TAB>text``, any letter case); the id column may be headed by any usual id name."""
        if self.jsonl or self.names is None:
            return False
        fields = [field.strip().lower() for field in decode_line(raw, self.path, line_no).split("\t")]
        names = [name.lower() for name in self.names]
        return len(fields) == len(names) and all(
            field == name or (field in _HEADER_ID_NAMES and name in ID_KEYS) for field, name in zip(fields, names)
        )

    def header_hint(self) -> str:
        """What to add to an error when the column names were read from a first line that was no header (it
        names no id column, so it cannot be one)."""
        if self.header_line is None or any(name in ID_KEYS for name in self.names):
            return ""
        flag = self.names_flag or "--doc_column_names / --query_column_names"
        return (
            f" (line {self.header_line} was read as the header, naming the columns {','.join(self.names)}, because no "
            f"column names were given; a file without a header line needs {flag}, e.g. id,title,text)"
        )

    def record(self, raw: bytes, line_no: int) -> dict:
        """The record of a raw data line (JSON object, or TSV columns by name)."""
        line = decode_line(raw, self.path, line_no)
        if self.jsonl:
            return decode_json_object(line, self.path, line_no)
        try:
            return split_tsv(line, self.names, self.path, line_no)
        except DataFormatError as err:
            if self.header_line is None:
                raise
            raise DataFormatError(err.path, err.line, err.message + self.header_hint()) from None

    def parse(self, raw: bytes, line_no: int) -> tuple[str, dict]:
        """``(id, record)`` of a raw data line."""
        record = self.record(raw, line_no)
        if self.id_key is None:
            try:
                self.id_key = find_id_key(record, self.path, line_no)
            except DataFormatError as err:
                raise DataFormatError(err.path, err.line, err.message + self.header_hint()) from None
        return record_id(record, self.id_key, self.path, line_no), record

    def header_warning(self, raw: bytes, line_no: int) -> str:
        fields = decode_line(raw, self.path, line_no).split("\t")
        given = f"{self.names_flag} {','.join(self.names)}" if self.names_flag else ",".join(self.names)
        return f"{self.path}:{line_no}: skipped a header line ({', '.join(fields)}); the columns are named by {given}"


def iter_raw_data_lines(path: str | os.PathLike, parser: RecordParser, report_header: bool = True) -> Iterator[tuple[int, bytes]]:
    """``(line_number, raw_line)`` of every non-blank data line (after the TSV header, if the file has one).

    Nothing is decoded but the first line, so a caller can deal lines out before paying for their parsing. A
    header that repeats the caller's column names is skipped with a warning (``report_header``; a loader
    worker reads the file after its main process has warned); Python shows the same warning once per process,
    so the several passes of one command over a file warn once.
    """
    with open_binary(path) as handle:
        yield from _data_lines(enumerate(handle, start=1), parser, report_header)


def iter_located_data_lines(path: str | os.PathLike, parser: RecordParser, copy_to: Optional[IO[bytes]] = None
                            ) -> Iterator[tuple[int, int, bytes]]:
    """:func:`iter_raw_data_lines` with each line's byte offset: ``(line_number, offset, raw_line)``.

    ``raw_line`` (its line end included) is found again with ``os.pread(fd, len(raw_line), offset)`` on the file
    itself, whose byte-order mark, if any, counts in the offsets. A ``.gz`` file cannot be read at an offset:
    give ``copy_to``, a binary file that receives every decompressed byte, and the offsets are into that copy.
    """
    if copy_to is None and os.fspath(path).endswith(".gz"):
        raise ValueError(f"{os.fspath(path)}: a gzip file cannot be read at an offset; give copy_to")
    with open_binary(path) as handle:
        start = 0 if copy_to is not None else handle.tell()  # past a skipped byte-order mark
        where = [start]

        def numbered():
            # The header logic below consumes this generator one line at a time and yields a line before
            # asking for the next, so where[0] is the offset of the line it yields.
            offset = start
            for line_no, raw in enumerate(handle, start=1):
                where[0] = offset
                offset += len(raw)
                if copy_to is not None:
                    copy_to.write(raw)
                yield line_no, raw

        for line_no, raw in _data_lines(numbered(), parser, True):
            yield line_no, where[0], raw


def _data_lines(lines: Iterator[tuple[int, bytes]], parser: RecordParser, report_header: bool) -> Iterator[tuple[int, bytes]]:
    for line_no, raw in lines:
        if is_blank(raw):
            continue
        if parser.needs_header or parser.header_line is not None:  # (a parser read before keeps its header)
            parser.set_header(raw, line_no)
        elif parser.is_header(raw, line_no):
            if report_header:
                warnings.warn(parser.header_warning(raw, line_no), OpenMatchWarning)
        else:
            yield line_no, raw
        break
    for line_no, raw in lines:
        if not is_blank(raw):
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
    if parser.header_line is not None:
        raise DataFormatError(path, None, "no records: the file holds a single line, read as its header" + parser.header_hint())
    raise no_records(path)


def find_duplicate(path: str | os.PathLike, column_names, rid: str) -> DataFormatError:
    """The error for id ``rid`` found twice in a record file, naming the lines of its first two occurrences.

    Readers keep only the ids they have seen, not their lines: this rescans the file, on the error path only.
    """
    parser = RecordParser(path, column_names)
    first = None
    for line_no, raw in iter_raw_data_lines(path, parser, report_header=False):
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
