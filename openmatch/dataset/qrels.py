"""Relevance judgments (qrels) and TREC runs: reading and writing.

Qrels layouts accepted (whitespace: tab or spaces):
- official TREC/MS MARCO: ``qid 0 pid rel`` (4 columns),
- two columns: ``qid pid`` (relevance 1),
- BEIR: a ``query-id corpus-id score`` header, then 3 columns.
Judgments of relevance 0 are kept (they matter to nDCG's ideal ranking only through their absence, and to
"judged" counts); metrics treat relevance > 0 as relevant.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from typing import Iterable, Iterator, Sequence

from ..utils import atomic_output
from .readers import DataFormatError, iter_lines

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
        if not fields:
            continue
        if width is None and line_no == 1 and fields[0].lower() in ("query-id", "query_id", "qid", "query"):
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
        qrels[qid][pid] = rel
    if not qrels:
        raise DataFormatError(path, None, "no judgments found")
    return dict(qrels)


def relevant_ids(qrels: Qrels, min_relevance: int = 1) -> dict[str, list[str]]:
    """``{qid: [pid, ...]}`` of passages judged at least ``min_relevance``, in file order; queries without any are left out."""
    out = {}
    for qid, judged in qrels.items():
        pids = [pid for pid, rel in judged.items() if rel >= min_relevance]
        if pids:
            out[qid] = pids
    return out


def iter_run(path: str | os.PathLike) -> Iterator[tuple[str, str, int, float]]:
    """Yield ``(qid, pid, rank, score)`` from a TREC run (``qid Q0 pid rank score run_id``)."""
    for line_no, line in iter_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DataFormatError(path, line_no, f"a TREC run line has 6 columns (qid Q0 pid rank score run), found {len(fields)}")
        qid, _, pid, rank, score, _ = fields
        try:
            yield qid, pid, int(rank), float(score)
        except ValueError:
            raise DataFormatError(path, line_no, f"rank must be an integer and score a number: {rank!r} {score!r}") from None


def load_run(path: str | os.PathLike) -> Run:
    """Read a TREC run into ``{qid: {pid: score}}``; a pid repeated within one query is an error."""
    run: dict[str, dict[str, float]] = defaultdict(dict)
    for qid, pid, _rank, score in iter_run(path):
        if pid in run[qid]:
            raise DataFormatError(path, None, f"passage {pid!r} appears twice for query {qid!r}")
        run[qid][pid] = score
    return dict(run)


def load_ranked_run(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{qid: [pid, ...]}`` best first, ordered by rank as written (ties keep file order)."""
    ranked: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for position, (qid, pid, rank, _score) in enumerate(iter_run(path)):
        ranked[qid].append((rank, position, pid))
    return {qid: [pid for _, _, pid in sorted(hits)] for qid, hits in ranked.items()}


def format_run_lines(qid: str, hits: Sequence[tuple[str, float]], run_id: str) -> Iterator[str]:
    for rank, (pid, score) in enumerate(hits, start=1):
        yield f"{qid} Q0 {pid} {rank} {score:.6f} {run_id}\n"


def write_trec_run(path: str | os.PathLike, results: Iterable[tuple[str, Sequence[tuple[str, float]]]], run_id: str = "OpenMatch") -> int:
    """Write ``(qid, [(pid, score), ...])`` (best first) as a TREC run, atomically; returns the line count."""
    if any(ch.isspace() for ch in run_id):
        raise ValueError(f"run id must not contain white space: {run_id!r}")
    lines = 0
    with atomic_output(path) as handle:
        for qid, hits in results:
            for line in format_run_lines(qid, hits, run_id):
                handle.write(line)
                lines += 1
    return lines
