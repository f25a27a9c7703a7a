"""False-negative control in hard-negative mining: which retrieved passages may serve as a query's negatives.

A passage ranked 3rd for a query is often relevant but unjudged; training against it as a negative teaches the
model to push an answer away. ``build_hn`` (and ``build_train --negatives_from bm25``, which mines a BM25 run
the same way) screens each query's hits, in rank order, with these rules; a hit is counted under the FIRST
rule that removes it, so the counts add up to the hits removed:

1. **rank window** (``--first_rank F``, ``--depth D``): only ranks ``F..D`` are candidates; ``--first_rank 4``
   skips the top 3, where unjudged positives are most likely. Ranks are positions in the run ordered by its
   rank column (equal ranks in line order), counted from 1.
2. **judged positives**: every passage judged relevant for the query (relevance >= 1) is removed.
3. **relative margin** (``--relative_margin M``): a candidate scoring above ``s+ - M * |s+|`` is removed
   (``s+ * (1 - M)`` for a positive score ``s+``, as in NV-Retriever's "TopK-PercPos"; ``M = 0.05`` keeps
   negatives scoring at most 95% of the positive's score).
4. **absolute margin** (``--absolute_margin M``): a candidate scoring above ``s+ - M`` is removed.

``s+`` is the query's LOWEST positive score: with several positives, a candidate scoring like the weakest
one is as suspect as one scoring like the strongest, so the minimum removes the most (the conservative
choice). A positive's score is its score in the run when the run lists it (anywhere, also below
``--depth``); otherwise, with ``--index_dir``, it is computed as the run's retriever would: the query encoded
by the index's model, times the positive's embedding read from the index (:class:`IndexScorer`). A positive
with neither is left out of the minimum, and a query none of whose positives has a score keeps its
candidates unscreened by the margins (counted, with a warning). Margins compare scores of one retriever, so
the first scores computed are checked against the run's own scores of the same passages, and a run from
another model is refused.

Queries without judgments or text are passed on unscreened (the builder skips and counts them). Memory holds
one chunk of queries at a time; with ``--index_dir`` also the index position of every judged positive (one
entry per qrels line). The counters are written as JSON (:meth:`FilterStats.to_json`) beside the output.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .errors import InputError, OpenMatchWarning, UsageError
from .utils import write_json_atomic

logger = logging.getLogger("openmatch.negatives")

# Why a hit is not a candidate, in the order the rules are applied (the keys of the stats' "removed").
RULES = ("above_first_rank", "below_depth", "judged_positive", "relative_margin", "absolute_margin")
# Positive scores read from the run that are compared with computed ones before any is trusted.
CONSISTENCY_CHECKS = 32


@dataclass
class MiningOptions:
    """The screening rules of the module docstring: the rank window and the margins (``None``: off)."""

    depth: int = 200
    first_rank: int = 1
    relative_margin: Optional[float] = None
    absolute_margin: Optional[float] = None

    def __post_init__(self):
        if self.depth < 1:
            raise UsageError(f"--depth must be at least 1, got {self.depth}")
        if not 1 <= self.first_rank <= self.depth:
            raise UsageError(f"--first_rank must be between 1 and --depth ({self.depth}), got {self.first_rank}")
        if self.relative_margin is not None and not (math.isfinite(self.relative_margin) and 0 <= self.relative_margin <= 1):
            raise UsageError(f"--relative_margin must be in [0, 1], got {self.relative_margin}")
        if self.absolute_margin is not None and not (math.isfinite(self.absolute_margin) and self.absolute_margin >= 0):
            raise UsageError(f"--absolute_margin must be a non-negative number, got {self.absolute_margin}")

    @property
    def uses_scores(self) -> bool:
        """True when a margin is on, so that positive scores are needed."""
        return self.relative_margin is not None or self.absolute_margin is not None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MiningOptions":
        return cls(depth=args.depth, first_rank=args.first_rank, relative_margin=args.relative_margin,
                   absolute_margin=args.absolute_margin)

    def threshold(self, positive: float) -> float:
        """The highest score a candidate may have when the query's lowest positive score is ``positive``."""
        limit = math.inf
        if self.relative_margin is not None:
            limit = min(limit, positive - self.relative_margin * abs(positive))
        if self.absolute_margin is not None:
            limit = min(limit, positive - self.absolute_margin)
        return limit


def add_mining_arguments(parser: argparse.ArgumentParser, what: str = "hits per query considered (by rank)") -> None:
    """The flags of :class:`MiningOptions` (build_hn's, and build_train's with ``--negatives_from bm25``)."""
    parser.add_argument("--depth", type=int, default=200, help=f"{what}: the last rank taken as a candidate")
    parser.add_argument("--first_rank", type=int, default=1,
                        help="the first rank taken as a candidate (4 skips the top 3, where unjudged positives are likeliest)")
    parser.add_argument("--relative_margin", type=float, default=None,
                        help="drop candidates scoring above s+ - M*|s+| (s+ * (1 - M) for a positive score), s+ the "
                        "query's lowest positive score; off by default")
    parser.add_argument("--absolute_margin", type=float, default=None,
                        help="drop candidates scoring above s+ - M, s+ the query's lowest positive score; off by default")


@dataclass
class FilterStats:
    """What the rules removed over a whole run (the module docstring's counting), written as JSON."""

    queries: int = 0
    hits: int = 0
    removed: dict = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    kept: int = 0
    queries_without_candidates: int = 0
    positive_scores: dict = field(default_factory=lambda: {"from_run": 0, "computed": 0, "missing": 0})
    queries_without_positive_score: int = 0
    examples_without_positive_score: list = field(default_factory=list)

    def to_json(self, options: MiningOptions, source: str, index_dir: Optional[str] = None) -> dict:
        """The diagnostics file's content (its keys are documented in docs/formats.md)."""
        data = asdict(self)
        data["examples_without_positive_score"] = data["examples_without_positive_score"][:5]
        return {"source": os.fspath(source), "settings": {**asdict(options), "index_dir": index_dir}, **data}

    def summary(self, options: MiningOptions, source: str) -> str:
        """One line for the log: every rule and what it removed."""
        removed = self.removed
        margins = []
        if options.relative_margin is not None:
            margins.append(f"{removed['relative_margin']} by --relative_margin {options.relative_margin:g}")
        if options.absolute_margin is not None:
            margins.append(f"{removed['absolute_margin']} by --absolute_margin {options.absolute_margin:g}")
        return (
            f"negatives from {source}, ranks {options.first_rank}-{options.depth}: {self.hits} hits of {self.queries} "
            f"judged queries; removed {removed['above_first_rank']} above --first_rank, {removed['below_depth']} "
            f"below --depth, {removed['judged_positive']} judged positives"
            + "".join(f", {part}" for part in margins)
            + f"; {self.kept} candidates kept ({self.queries_without_candidates} queries with none left)"
        )


class IndexScorer:
    """Scores of (query, positive) pairs as the run's dense retriever gives them: the query encoded by
    ``encode_queries`` (the index's model: ``api.load_index_model``), times the positive's embedding read
    from the index (``EmbeddingIndex``), so a score equals what ``retrieve`` would have written.

    The index position of every judged positive is found once, in one pass over the id files, on first use.
    """

    def __init__(self, index, encode_queries: Callable[[list[str]], np.ndarray]):
        self.index = index
        self.encode_queries = encode_queries
        self._positions: Optional[dict[str, tuple[int, int]]] = None
        self._arrays: dict[int, np.ndarray] = {}

    def _locate(self, wanted: set[str]) -> dict[str, tuple[int, int]]:
        positions: dict[str, tuple[int, int]] = {}
        for number, shard in enumerate(self.index.shards):
            with open(os.path.join(self.index.index_dir, shard["ids"]), encoding="utf-8") as handle:
                for row, line in enumerate(handle):
                    pid = line.rstrip("\n")
                    if pid in wanted:
                        positions[pid] = (number, row)
        return positions

    def prepare(self, relevant: Mapping[str, Iterable[str]]) -> None:
        """Find the judged positives of ``relevant`` (``{qid: [pid, ...]}``) in the index."""
        if self._positions is None:
            wanted = {pid for pids in relevant.values() for pid in pids}
            self._positions = self._locate(wanted)
            logger.info("%d of %d judged positives found in the index %s", len(self._positions), len(wanted),
                        self.index.index_dir)

    def vectors(self, pids: Sequence[str]) -> np.ndarray:
        """The index's float32 embeddings of ``pids`` (each must be a located positive)."""
        out = np.empty((len(pids), self.index.dim), dtype=np.float32)
        for i, pid in enumerate(pids):
            number, row = self._positions[pid]
            if number not in self._arrays:
                self._arrays[number] = self.index.embeddings(self.index.shards[number])
            out[i] = self._arrays[number][row]
        return out

    def score(self, requests: Sequence[tuple[str, str, Sequence[str]]]) -> dict[tuple[str, str], float]:
        """``{(qid, pid): score}`` for ``(qid, query text, [pid, ...])`` requests; a pid not in the index has none."""
        if self._positions is None:
            raise RuntimeError("IndexScorer.prepare must be called first")
        requests = [(qid, text, [p for p in pids if p in self._positions]) for qid, text, pids in requests]
        requests = [r for r in requests if r[2]]
        if not requests:
            return {}
        q_reps = self.encode_queries([text for _, text, _ in requests])
        out = {}
        for (qid, _, pids), q_rep in zip(requests, q_reps):
            scores = self.vectors(pids) @ np.asarray(q_rep, dtype=np.float32)
            out.update({(qid, pid): float(score) for pid, score in zip(pids, scores.tolist())})
        return out


class CandidateFilter:
    """The rules of the module docstring over chunks of ``(line_no, qid, [(pid, score), ...])`` items, hits in
    rank order; a ``preprocessing.build`` screen (``filter(chunk, queries, relevant)``) that returns
    ``(line_no, qid, [pid, ...])`` items, the candidates in rank order. ``stats`` accumulates over calls."""

    def __init__(self, options: MiningOptions, scorer: Optional[IndexScorer] = None, source: str = "the run",
                 checks: int = CONSISTENCY_CHECKS):
        self.options = options
        self.scorer = scorer if options.uses_scores else None
        self.source = source
        self.stats = FilterStats()
        self._checks_left = checks if self.scorer is not None else 0

    def __call__(self, chunk: list, queries: Mapping[str, str], relevant: Mapping[str, Sequence[str]]) -> list:
        options, stats = self.options, self.stats
        judged_items = [(qid, hits, set(relevant[qid])) for _, qid, hits in chunk if relevant.get(qid) and queries.get(qid)]
        positive = self._positive_scores(judged_items, queries, relevant) if options.uses_scores else {}
        out = []
        for line_no, qid, hits in chunk:
            judged = set(relevant.get(qid) or ())
            if not judged or not queries.get(qid):
                out.append((line_no, qid, [pid for pid, _ in hits[options.first_rank - 1 : options.depth]]))
                continue
            limit = options.threshold(positive[qid]) if positive.get(qid) is not None else math.inf
            candidates = []
            for rank, (pid, score) in enumerate(hits, start=1):
                rule = (
                    "above_first_rank" if rank < options.first_rank
                    else "below_depth" if rank > options.depth
                    else "judged_positive" if pid in judged
                    else self._margin_rule(score, positive.get(qid)) if score > limit
                    else None
                )
                if rule is None:
                    candidates.append(pid)
                else:
                    stats.removed[rule] += 1
            stats.queries += 1
            stats.hits += len(hits)
            stats.kept += len(candidates)
            stats.queries_without_candidates += not candidates
            out.append((line_no, qid, candidates))
        return out

    def _margin_rule(self, score: float, positive: float) -> str:
        relative = self.options.relative_margin
        if relative is not None and score > positive - relative * abs(positive):
            return "relative_margin"
        return "absolute_margin"

    def _positive_scores(self, items, queries, relevant) -> dict[str, Optional[float]]:
        """Each judged query's lowest positive score (None when no positive has one), counting the sources."""
        stats = self.stats
        known: dict[str, dict[str, float]] = {}
        requests, checks = [], []
        for qid, hits, judged in items:
            in_run = {pid: score for pid, score in hits if pid in judged}
            known[qid] = in_run
            missing = [pid for pid in relevant[qid] if pid not in in_run]
            if self.scorer is not None and missing:
                requests.append((qid, queries[qid], missing))
            if self._checks_left > 0 and in_run:
                take = list(in_run)[: self._checks_left]
                checks.append((qid, queries[qid], take))
                self._checks_left -= len(take)
        if self.scorer is not None and (requests or checks):
            self.scorer.prepare(relevant)
            computed = self.scorer.score(requests + checks)
            self._check_consistency(checks, known, computed)
        else:
            computed = {}
        out: dict[str, Optional[float]] = {}
        for qid, _, judged in items:
            scores = []
            for pid in relevant[qid]:
                if pid in known[qid]:
                    scores.append(known[qid][pid])
                    stats.positive_scores["from_run"] += 1
                elif (qid, pid) in computed:
                    scores.append(computed[(qid, pid)])
                    stats.positive_scores["computed"] += 1
                else:
                    stats.positive_scores["missing"] += 1
            out[qid] = min(scores) if scores else None
            if not scores:
                stats.queries_without_positive_score += 1
                if len(stats.examples_without_positive_score) < 5:
                    stats.examples_without_positive_score.append(qid)
        return out

    def _check_consistency(self, checks, known, computed) -> None:
        for qid, _, pids in checks:
            for pid in pids:
                if (qid, pid) not in computed:
                    continue
                ours, theirs = computed[(qid, pid)], known[qid][pid]
                if abs(ours - theirs) > 1e-2 * max(1.0, abs(theirs)):
                    raise InputError(
                        f"{self.source}: query {qid!r} scores passage {pid!r} {theirs:.6g} in the run but {ours:.6g} "
                        f"with --index_dir's model; the margins compare one retriever's scores, so give the index the "
                        f"run was retrieved from (and the same query template and --q_max_len as retrieve)"
                    )

    def report(self) -> None:
        """Log the summary line, and warn when the margins could not be applied to some queries."""
        logger.info("%s", self.stats.summary(self.options, os.fspath(self.source)))
        stats = self.stats
        if self.options.uses_scores and stats.queries_without_positive_score:
            hint = "" if self.scorer is not None else "; --index_dir computes them from the run's index"
            warnings.warn(
                f"{stats.queries_without_positive_score} queries have no score for any positive in {self.source} "
                f"(e.g. {', '.join(stats.examples_without_positive_score)}), so the margins were not applied to them"
                f"{hint}", OpenMatchWarning, stacklevel=2,
            )

    def write_stats(self, path: str | os.PathLike, index_dir: Optional[str] = None) -> None:
        """Write the counters as JSON (atomically)."""
        write_json_atomic(path, self.stats.to_json(self.options, self.source, index_dir))


def mine(hits: Mapping[str, Sequence[tuple[str, float]]], relevant: Mapping[str, Sequence[str]],
         options: MiningOptions, queries: Optional[Mapping[str, str]] = None,
         scorer: Optional[IndexScorer] = None) -> tuple[dict[str, list[str]], FilterStats]:
    """``({qid: [negative pid, ...]}, stats)`` of in-memory hits ``{qid: [(pid, score), ...]}`` (best first):
    the rules of the module docstring for every judged query of ``hits`` (``queries`` holds query texts,
    needed only with a ``scorer``)."""
    if scorer is not None and queries is None:
        raise UsageError("computing positive scores needs the query texts (queries=)")
    # Without a scorer a query's text is never read, only its presence: the query id stands in for it.
    texts = dict(queries) if queries is not None else {qid: qid for qid in hits}
    screen = CandidateFilter(options, scorer)
    out = {}
    for _, qid, candidates in screen([(0, qid, list(ranked)) for qid, ranked in hits.items()], texts, relevant):
        if relevant.get(qid) and texts.get(qid):
            out[qid] = candidates
    return out, screen.stats


def build_from_run(config, run: str | os.PathLike, screen: CandidateFilter, stats_path: str | os.PathLike,
                   index_dir: Optional[str] = None, total: Optional[int] = None):
    """``preprocessing.build`` of training lines from a run's hits screened by ``screen``; the rules' summary is
    logged (also when nothing could be written: what they removed is the likely reason) and their counters are
    written to ``stats_path``. Returns the build's result."""
    from .preprocessing import build, iter_ranked_hits

    try:
        result = build(config, lambda: iter_ranked_hits(run), os.fspath(run), total=total, screen=screen)
    finally:
        if screen.stats.queries:
            screen.report()
    screen.write_stats(stats_path, index_dir)
    return result


def write_bm25_run(path: str | os.PathLike, index, queries: Mapping[str, str], depth: int,
                   chunk_size: int = 1024, run_id: str = "BM25") -> int:
    """Search ``index`` (a ``retriever.bm25.BM25Index``) for every query of ``{qid: text}`` and write the
    ``depth`` best hits of each as a TREC run (atomically), a chunk of queries at a time so that memory holds
    one chunk's hits; returns the line count."""
    from .dataset.qrels import write_trec_run

    def results() -> Iterator[tuple[str, list]]:
        qids = list(queries)
        for start in range(0, len(qids), chunk_size):
            part = qids[start : start + chunk_size]
            found = index.search([queries[q] for q in part], part, depth)
            yield from ((qid, found[qid]) for qid in part)

    return write_trec_run(path, results(), run_id=run_id)
