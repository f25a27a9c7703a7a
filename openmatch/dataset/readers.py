"""Streaming readers for the record files of the field: TSV, JSONL and gzip of either.

Each reader is a loop over :mod:`openmatch.dataset.records`, which decodes and checks every line (tabs
only, no quote handling, no type inference, so ids such as ``007`` and texts holding quotes survive
untouched; ids non-empty and without white space). Every problem is reported as
``DataFormatError("path:line: what")``, worded as in :mod:`~openmatch.dataset.records`.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import InputError, ResourceError
from .records import (  # noqa: F401  (the readers' public names: callers import them from here)
    ID_KEYS,
    DataFormatError,
    RecordParser,
    count_lines,
    find_duplicate,
    find_id_key,
    is_jsonl,
    iter_lines,
    iter_located_data_lines,
    iter_raw_data_lines,
    no_records,
    open_binary,
    parse_column_names,
    record_id,
)

logger = logging.getLogger(__name__)


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


def temporary_file_full(err: OSError, what: str) -> OSError:
    """``err``, an error writing an unnamed temporary file of ``what``, as the user's problem when the temporary
    folder is full (the operating system's ``ENOSPC`` names no file); any other error unchanged."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(
            f"no space left in the temporary folder {tempfile.gettempdir()} for {what}; free some space there or set "
            "TMPDIR to a folder with more room"
        )
    return err


# -- records looked up by id, read on demand ----------------------------------------------------------------


def _hash_id(rid: str) -> int:
    """The 64-bit key of a non-integer id: Python's string hash (SipHash, salted per process, which is all a store
    that lives in one process needs). Tests replace it to force collisions."""
    return hash(rid)


def _int_keys(ids: list[str]) -> Optional[np.ndarray]:
    """``ids`` as int64 when every one is an integer written the one way ``str(int)`` writes it (``7``, ``-3``;
    not ``007``, ``+7``, ``1_000`` or non-ASCII digits, which are other ids than ``7`` and ``1000``), else None."""
    try:
        values = list(map(int, ids))
    except ValueError:
        return None
    if list(map(str, values)) != ids:
        return None
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return None


def _int_key(rid: str) -> Optional[int]:
    keys = _int_keys([rid])
    return None if keys is None else int(keys[0])


class RecordStore:
    """The records of a TSV or JSONL file (optionally gzip), looked up by id and read from the file when asked.

    For a collection too large for a dict of its records or texts (MS MARCO's 8.8M passages are 5.7 GiB as
    Python strings), one pass parses every line, so a bad line, a repeated id and an empty file are reported as
    :func:`load_id_records` reports them (the first problem in file order), and keeps per record only its byte
    offset and length (12 bytes) and its id as a 64-bit key: the id itself when every id is an integer (MS
    MARCO's), else a hash of it (8 bytes more for the sort order). Records are then read with ``os.pread`` when
    asked for, so the operating system's page cache, not the process, holds the file; each line read is parsed
    again and its id compared with the one asked for, which catches a file changed meanwhile and a hash shared
    by an id of the file and one that is not in it. Ids of the file that share a hash are told apart at the
    pass. A ``.gz`` file cannot be read at an offset: it is decompressed, during the pass, into an unnamed
    temporary file in the temporary folder (``TMPDIR``), removed when the store is closed, which is read
    instead.

    ``inspect(line_no, id, record)``, when given, is called for every record of the pass (to check it or to
    note something); :attr:`marked` holds the truth of its results by row. Rows number the records in file
    order from 0.
    """

    _BLOCK = 1 << 16  # records gathered in Python lists before they are packed into numpy arrays

    def __init__(self, path, column_names=None, *, inspect: Optional[Callable[[int, str, dict], object]] = None):
        self.path = os.fspath(path)
        self.column_names = column_names
        self._parser = RecordParser(self.path, column_names)
        self._file = None
        self._integer_ids = True
        self._collided: set[int] = set()  # keys that several ids of the file share ...
        self._exact: dict[str, int] = {}  # ... and those ids' rows
        copy = None
        if self.path.endswith(".gz"):
            copy = tempfile.TemporaryFile(prefix="openmatch-records-")
            logger.info("decompressing %s into a temporary file (in %s) to read its records by offset", self.path,
                        tempfile.gettempdir())
        try:
            self._index(copy, inspect)
        except OSError as err:
            self._close_all(copy)
            raise temporary_file_full(err, f"the decompressed copy of {self.path}") from None
        except BaseException:
            self._close_all(copy)
            raise

    def _close_all(self, copy) -> None:
        self.close()
        if copy is not None:
            try:
                copy.close()
            except OSError:  # what is left in its buffer cannot be written either: the file is dropped anyway
                pass

    # -- the pass

    def _index(self, copy, inspect) -> None:
        self._inspected = inspect is not None
        blocks: dict[str, list] = {"keys": [], "offsets": [], "lengths": [], "marked": []}
        ids, offsets, lengths, marked = [], [], [], []

        def pack():
            if not ids:
                return
            keys = _int_keys(ids) if self._integer_ids else None
            if keys is None and self._integer_ids:
                # The first id that is not an integer: the earlier blocks' keys become the hashes of their ids,
                # which are the keys' decimal spellings.
                self._integer_ids = False
                blocks["keys"] = [np.fromiter(map(_hash_id, map(str, block.tolist())), np.int64, len(block))
                                  for block in blocks["keys"]]
            if keys is None:
                keys = np.fromiter(map(_hash_id, ids), np.int64, len(ids))
            blocks["keys"].append(keys)
            blocks["offsets"].append(np.array(offsets, dtype=np.int64))
            blocks["lengths"].append(np.array(lengths, dtype=np.uint32))
            blocks["marked"].append(np.array(marked, dtype=bool))
            for values in (ids, offsets, lengths, marked):
                values.clear()

        try:
            for line_no, offset, raw in iter_located_data_lines(self.path, self._parser, copy_to=copy):
                rid, record = self._parser.parse(raw, line_no)
                # The id is noted before the record is inspected: a repeated id is the problem of its line even
                # when the inspection would refuse the record too, as for a reader that checks ids first.
                ids.append(rid)
                offsets.append(offset)
                lengths.append(len(raw))
                if inspect is not None:
                    marked.append(bool(inspect(line_no, rid, record)))
                if len(ids) == self._BLOCK:
                    pack()
        except DataFormatError:
            # A repeated id before the bad line is the first problem of the file, as a reader that keeps every
            # id it has seen would have found.
            pack()
            if copy is not None:
                copy.flush()
            self._arrange(blocks, copy, check_only=True)
            raise
        pack()
        if copy is not None:
            copy.flush()
        self._arrange(blocks, copy)

    def _arrange(self, blocks: dict, copy, check_only: bool = False) -> None:
        def joined(name, dtype):
            # Each list of blocks is dropped as soon as it is joined: at most one array is held twice.
            parts = blocks.pop(name)
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        keys = joined("keys", np.int64)
        self._offsets = joined("offsets", np.int64)
        self._lengths = joined("lengths", np.uint32)
        self.marked = joined("marked", bool) if self._inspected else np.zeros(len(keys), bool)
        if not len(keys):
            if check_only:
                return
            raise no_records(self.path)
        self._file = copy if copy is not None else open(self.path, "rb")
        if len(keys) > 1 and np.all(keys[1:] > keys[:-1]):
            self._order = None  # already in order (MS MARCO's corpus.tsv, sorted by pid): rows are positions
            self._keys = keys
        else:
            self._order = np.argsort(keys, kind="stable")
            self._keys = keys[self._order]
            del keys
        same = np.flatnonzero(self._keys[1:] == self._keys[:-1]) + 1  # positions whose key equals the previous one
        if not same.size:
            return
        repeated = []  # (row, id) of each later occurrence of an id
        for key in np.unique(self._keys[same]).tolist():
            lo, hi = np.searchsorted(self._keys, key, "left"), np.searchsorted(self._keys, key, "right")
            rows = np.arange(lo, hi) if self._order is None else self._order[lo:hi]
            first: dict[str, int] = {}
            for row in sorted(rows.tolist()):
                rid = str(key) if self._integer_ids else self._read_id(row)
                if rid in first:
                    repeated.append((row, rid))
                else:
                    first[rid] = row
            if len(first) > 1:
                self._collided.add(key)
                self._exact.update(first)
        if repeated:
            raise find_duplicate(self.path, self.column_names, min(repeated)[1])

    # -- lookups

    def __len__(self) -> int:
        return len(self._offsets)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """The row of each id (its record's place in the file, from 0), -1 for an id that is not in the file."""
        ids = list(ids)
        if not ids:
            return np.zeros(0, np.int64)
        valid = None
        if self._integer_ids:
            keys = _int_keys(ids)
            if keys is None:  # some ids are not integers, so none of the file's
                parsed = [_int_key(rid) for rid in ids]
                valid = np.array([key is not None for key in parsed])
                keys = np.array([0 if key is None else key for key in parsed], dtype=np.int64)
        else:
            keys = np.fromiter(map(_hash_id, ids), np.int64, len(ids))
        positions = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[positions] == keys
        if valid is not None:
            found &= valid
        rows = np.where(found, positions if self._order is None else self._order[positions], -1)
        if self._collided:
            for i, (rid, key) in enumerate(zip(ids, keys.tolist())):
                if key in self._collided:
                    rows[i] = self._exact.get(rid, -1)
        return rows

    def __iter__(self) -> Iterator[str]:
        """The ids, in file order (each line read again)."""
        for row in range(len(self)):
            yield self._read_id(row)

    def __contains__(self, rid: str) -> bool:
        return self.rows([rid])[0] >= 0

    def read(self, rows: Sequence[int], ids: Sequence[str]) -> list[dict]:
        """The records at ``rows`` (from :meth:`rows`), which must hold ``ids``."""
        out = []
        for row, rid in zip(rows, ids):
            found, record = self._parse(int(row))
            if found != rid:
                raise InputError(
                    f"{self.path}: the record read for id {rid!r} has id {found!r}: the file changed while it was "
                    "being read (or two ids share a 64-bit hash)"
                )
            out.append(record)
        return out

    def get(self, rid: str) -> Optional[dict]:
        """The record of ``rid``, or None."""
        row = int(self.rows([rid])[0])
        return None if row < 0 else self.read([row], [rid])[0]

    def _raw(self, row: int) -> bytes:
        length, offset = int(self._lengths[row]), int(self._offsets[row])
        raw = os.pread(self._file.fileno(), length, offset)
        if len(raw) != length:
            raise InputError(f"{self.path}: the file changed while it was being read (it is shorter)")
        return raw

    def _parse(self, row: int) -> tuple[str, dict]:
        try:
            return self._parser.parse(self._raw(row), None)
        except DataFormatError:
            raise InputError(f"{self.path}: the file changed while it was being read") from None

    def _read_id(self, row: int) -> str:
        return self._parse(row)[0]

    def close(self) -> None:
        """Close the file (and remove a ``.gz`` file's decompressed copy)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
