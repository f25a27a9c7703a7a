"""Relevance judgments (qrels) and TREC runs: reading and writing.

Qrels layouts accepted (whitespace: tab or spaces):
- official TREC/MS MARCO: ``qid 0 pid rel`` (4 columns),
- two columns: ``qid pid`` (relevance 1),
- BEIR: a ``query-id corpus-id score`` header, then 3 columns.
Judgments of relevance 0 are kept: metrics treat relevance > 0 as relevant, but a query judged only 0 is
still a query of the evaluation (it scores 0, as in trec_eval). A (query, passage) pair judged twice with
the same relevance is read once; judged twice with different relevances it is an error naming both lines.

Lines are decoded as every record file is (:mod:`openmatch.dataset.records`: strict UTF-8, CRLF or LF, blank
lines skipped, errors as ``path:line: what``). White space separates the columns of qrels and runs, so their
ids hold none, as the id rule of every other file requires: an id with white space in it shows up as a
wrong column count.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from collections import defaultdict
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import UsageError
from ..utils import atomic_output
from .records import DataFormatError, decode_line, is_blank, iter_lines, no_records, open_binary

logger = logging.getLogger(__name__)

Qrels = dict  # dict[str, dict[str, int]]
Run = dict  # dict[str, dict[str, float]]


def _parse_relevance(value: str, path, line_no: int) -> int:
    try:
        return int(value)
    except ValueError:
        try:
            as_float = float(value)
        except ValueError:
            as_float = math.nan
        if as_float.is_integer():
            return int(as_float)
        raise DataFormatError(path, line_no, f"relevance must be an integer, got {value!r}") from None


def load_qrels(path: str | os.PathLike) -> Qrels:
    """Read qrels into ``{qid: {pid: relevance}}``; the layout is detected from the first data line."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    width = None
    for line_no, line in iter_lines(path):
        fields = line.split()
        if width is None and line_no == 1 and fields and fields[0].lower() in ("query-id", "query_id", "qid", "query"):
            continue  # BEIR header
        if width is None:
            width = len(fields)
            if width not in (2, 3, 4):
                raise DataFormatError(
                    path, line_no, f"qrels need 2 (qid pid), 3 (BEIR) or 4 (qid 0 pid rel) columns, found {width}"
                )
        elif len(fields) != width:
            raise DataFormatError(path, line_no, f"expected {width} columns like the first line, found {len(fields)}")
        if width == 4:
            qid, pid, rel = fields[0], fields[2], _parse_relevance(fields[3], path, line_no)
        elif width == 3:
            qid, pid, rel = fields[0], fields[1], _parse_relevance(fields[2], path, line_no)
        else:
            qid, pid, rel = fields[0], fields[1], 1
        judged = qrels[qid]
        if judged.get(pid, rel) != rel:
            raise _conflicting_judgment(path, line_no, qid, pid, rel, judged[pid], 2 if width == 4 else 1)
        judged[pid] = rel
    if not qrels:
        raise no_records(path)
    return dict(qrels)


def _conflicting_judgment(path, line_no: int, qid: str, pid: str, rel: int, earlier: int, pid_column: int) -> DataFormatError:
    """The error for a pair judged ``rel`` on ``line_no`` after ``earlier``; rescans the file for the line of
    the earlier judgment (on the error path only: the reader keeps no line numbers)."""
    first = None
    for other_line, line in iter_lines(path):
        fields = line.split()
        if other_line >= line_no or fields[0] == qid and fields[pid_column] == pid:
            first = other_line if other_line < line_no else None
            break
    where = f" on line {first}" if first is not None else " earlier"
    return DataFormatError(
        path, line_no, f"query {qid!r} passage {pid!r} judged {rel} here but {earlier}{where}; keep one of the two lines"
    )


def relevant_ids(qrels: Qrels, min_relevance: int = 1) -> dict[str, list[str]]:
    """``{qid: [pid, ...]}`` of passages judged at least ``min_relevance``, in file order; queries without any are left out."""
    out = {}
    for qid, judged in qrels.items():
        pids = [pid for pid, rel in judged.items() if rel >= min_relevance]
        if pids:
            out[qid] = pids
    return out


# Parsing a block holds ~25 bytes of Python objects per byte of it (the decoded lines, six strings a line, the
# columns): 256 KiB blocks peak at ~7 MB, the 16 MiB ones used before at 0.5 GB, and they parse no faster.
_RUN_BLOCK_BYTES = 1 << 18


def _parse_run_line(path, line_no: int, line: str):
    fields = line.split()
    if len(fields) != 6:
        raise DataFormatError(path, line_no, f"a TREC run line has 6 columns (qid Q0 pid rank score run), found {len(fields)}")
    qid, _, pid, rank, score, _ = fields
    try:
        rank_value, score_value = int(rank), float(score)
    except ValueError:
        raise DataFormatError(path, line_no, f"rank must be an integer and score a number: {rank!r} {score!r}") from None
    if math.isnan(score_value):
        raise DataFormatError(path, line_no, "score is NaN, which has no rank")
    return qid, pid, rank_value, score_value


def _iter_run_blocks(path) -> Iterator[tuple[Sequence[int], list, list, list, list]]:
    """Yield ``(line_numbers, qids, pids, ranks, scores)`` per block of ~256 KiB of lines.

    A run of MS MARCO dev is 7 million lines; parsing line by line in Python costs a minute, so each block
    is split and converted with C-level ``map``/``zip``. Any irregularity in a block (blank line, wrong
    column count, bad number, bad UTF-8) sends that block through the line-by-line parser, which skips
    blank lines and reports the exact ``file:line`` of the first bad one.
    """
    first_line = 1
    with open_binary(path) as handle:
        while True:
            chunk = handle.read(_RUN_BLOCK_BYTES)
            if not chunk:
                return
            if not chunk.endswith(b"\n"):
                chunk += handle.readline()
            num_lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
            try:
                lines = chunk.decode("utf-8").split("\n")
                if lines[-1] == "":
                    lines.pop()
                # Millions of small lists would trigger the cyclic GC over and over (3x slower); they hold
                # only strings, so no cycle can form.
                gc_was_enabled = gc.isenabled()
                gc.disable()
                try:
                    rows = [line.split() for line in lines]
                    if any(len(row) != 6 for row in rows):
                        raise ValueError
                    qids, _, pids, ranks, scores, _ = zip(*rows)
                    del rows
                    ranks, scores = list(map(int, ranks)), list(map(float, scores))
                finally:
                    if gc_was_enabled:
                        gc.enable()
                if any(map(math.isnan, scores)):
                    raise ValueError
                # No blank line in this block (it would have sent it to the slow path): line i is first_line + i.
                block = range(first_line, first_line + len(ranks)), list(qids), list(pids), ranks, scores
                del lines, qids, pids, ranks, scores  # this frame keeps nothing of a block while it is used
            except (ValueError, UnicodeDecodeError):
                block = _parse_block_slowly(path, first_line, chunk)
            yield block
            del block
            first_line += num_lines


def _parse_block_slowly(path, first_line: int, chunk: bytes):
    lines, qids, pids, ranks, scores = [], [], [], [], []
    for offset, raw in enumerate(chunk.split(b"\n")):
        line_no = first_line + offset
        if is_blank(raw):
            continue
        qid, pid, rank, score = _parse_run_line(path, line_no, decode_line(raw, path, line_no))
        lines.append(line_no), qids.append(qid), pids.append(pid), ranks.append(rank), scores.append(score)
    return lines, qids, pids, ranks, scores


def iter_run(path: str | os.PathLike) -> Iterator[tuple[str, str, int, float]]:
    """Yield ``(qid, pid, rank, score)`` from a TREC run (``qid Q0 pid rank score run_id``); a line that is
    not 6 columns, a non-integer rank, or a score that is not a number (or NaN) is a ``DataFormatError``."""
    for _, qids, pids, ranks, scores in _iter_run_blocks(path):
        yield from zip(qids, pids, ranks, scores)
        del qids, pids, ranks, scores  # not kept alive while the next block is parsed


def iter_run_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, str, int, float]]:
    """:func:`iter_run` with each hit's line number first: ``(line_no, qid, pid, rank, score)``."""
    for lines, qids, pids, ranks, scores in _iter_run_blocks(path):
        yield from zip(lines, qids, pids, ranks, scores)
        del lines, qids, pids, ranks, scores  # not kept alive while the next block is parsed


def find_repeated_hit(path: str | os.PathLike, qid: str, pid: str) -> DataFormatError:
    """The error for passage ``pid`` listed twice for query ``qid`` in a run, naming both lines (a rescan, on
    the error path only)."""
    first = None
    for line_no, q, p, _, _ in iter_run_lines(path):
        if q == qid and p == pid:
            if first is not None:
                return DataFormatError(path, line_no, f"passage {pid!r} appears twice for query {qid!r} (first on line {first})")
            first = line_no
    return DataFormatError(path, None, f"passage {pid!r} appears twice for query {qid!r}")


def load_run(path: str | os.PathLike) -> Run:
    """Read a TREC run into ``{qid: {pid: score}}``; a pid repeated within one query is an error."""
    run: dict[str, dict[str, float]] = {}
    for _, qids, pids, _ranks, scores in _iter_run_blocks(path):
        # Runs list each query's hits contiguously: build each stretch's dict in one C-level call.
        start = 0
        while start < len(qids):
            qid = qids[start]
            end = start + 1
            while end < len(qids) and qids[end] == qid:
                end += 1
            stretch = dict(zip(pids[start:end], scores[start:end]))
            hits = run.setdefault(qid, {})
            if len(stretch) != end - start or not hits.keys().isdisjoint(stretch):
                seen = set(hits)
                duplicate = next(pid for pid in pids[start:end] if pid in seen or seen.add(pid))
                raise find_repeated_hit(path, qid, duplicate)
            hits.update(stretch)
            start = end
    return run


def load_ranked_run(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{qid: [pid, ...]}`` best first, ordered by rank as written (ties keep file order)."""
    ranked: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for position, (qid, pid, rank, _score) in enumerate(iter_run(path)):
        ranked[qid].append((rank, position, pid))
    return {qid: [pid for _, _, pid in sorted(hits)] for qid, hits in ranked.items()}


def format_run_lines(qid: str, hits: Sequence[tuple[str, float]], run_id: str) -> Iterator[str]:
    """TREC run lines of one query's hits (best first); scores as the float32 values, in 9 significant digits."""
    # Scores are float32 (faiss; trec_eval reads them into C floats), and 9 significant digits are what any
    # float32 needs to read back exactly: with fewer (OpenMatch's 6 decimals), neighbours that differ
    # beyond the 6th decimal collapse into ties and evaluation re-orders them.
    scores = np.asarray([score for _, score in hits], dtype=np.float32).tolist()
    for rank, ((pid, _), score) in enumerate(zip(hits, scores), start=1):
        yield f"{qid} Q0 {pid} {rank} {score:.9g} {run_id}\n"


def write_trec_run(path: str | os.PathLike, results: Iterable[tuple[str, Sequence[tuple[str, float]]]], run_id: str = "OpenMatch") -> int:
    """Write ``(qid, [(pid, score), ...])`` (best first) as a TREC run, atomically; returns the line count."""
    if any(ch.isspace() for ch in run_id):
        raise UsageError(f"run id must not contain white space: {run_id!r}")
    lines = 0
    with atomic_output(path) as handle:
        for qid, hits in results:
            for line in format_run_lines(qid, hits, run_id):
                handle.write(line)
                lines += 1
    return lines
