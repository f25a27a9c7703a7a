"""Machinery shared by ``scripts/msmarco/build_train.py`` and ``scripts/msmarco/build_hn.py``.

Both scripts turn MS MARCO-style files into OpenMatch's training JSONL: one line per query,
``{"query": ids, "positives": [ids, ...], "negatives": [ids, ...]}`` with token ids WITHOUT special
tokens (the training loader adds them and truncates to ``--q_max_len``/``--p_max_len``). They differ only
in where negative candidates come from:

- build_train: ``train.negatives.tsv`` (``qid<TAB>neg1,neg2,...``), every candidate;
- build_hn (and build_train ``--negatives_from bm25``, from the BM25 run it writes): a TREC run, each query's
  hits screened by :class:`openmatch.negatives.CandidateFilter` (ranks ``--first_rank`` to ``--depth``, judged
  positives, the score margins), the ``screen`` of :func:`build`.

Then, per query: positives are every passage judged relevant (relevance >= 1), looked up BY ID in the
collection; negatives are the candidates minus positives, duplicates and ids missing from the collection,
of which ``--n_sample`` are drawn with a random generator seeded from ``(seed, qid)`` alone. Output is
therefore byte-identical for the same seed whatever ``--num_workers`` (OpenMatch seeds from the clock and
looks passages up by row number; we do neither).

Shards are named ``split00.jsonl``, ``split01.jsonl``, ... (build_hn: ``split00.hn.jsonl``, ...), each
written under a temporary name and renamed when complete. Both scripts may write into the same folder
(the recipe does), so merge with ``cat DIR/split*[0-9].jsonl`` (build_train) and ``cat DIR/split*.hn.jsonl``
(build_hn): the recipe's ``cat DIR/*.jsonl`` would also pick up ``*.hn.jsonl`` shards and earlier merged
files such as ``train.jsonl`` when run a second time.

Speed: the main process plans every query (cheap) and assembles lines; ``--num_workers`` processes only
tokenise, each distinct passage once per run (:class:`TokenCache`; queries share many negatives).

Memory: queries and qrels are read into memory (MS MARCO's: ~0.3 GB); the collection is not: one pass keeps
each passage's byte offset (:class:`CollectionTexts`), and the texts a chunk of queries needs are read from
the file then (a ``.gz`` collection from a decompressed temporary copy). Runs are streamed.

Skippable problems (a negative missing from the collection, a query without judgments, ...) are counted
and reported once at the end with a few examples; malformed files stop the run with ``path:line: what``.

Empty texts: a query or passage whose filled template has no token (an empty or blank field under
``<text>``, or characters the tokenizer drops, such as a zero-width space) would be written as ``[]``,
which the training loader rejects. They are skipped here and counted: an empty query skips its query, an
empty positive is left out (the query is dropped when no positive is left), an empty negative candidate is
skipped. A blank text is known before tokenising, so it never enters the negative draw; a text that only
tokenises to nothing (rare) is found after the draw and dropped, leaving that query one negative fewer.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing
import operator
import os
import random
import re
import tempfile
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from .dataset.qrels import iter_run_lines, load_qrels, relevant_ids
from .dataset.readers import RecordStore, iter_id_records, temporary_file_full
from .dataset.records import DataFormatError, check_id, check_ids, find_duplicate, iter_lines, no_records, split_tsv
from .dataset.template import Template
from .cli import add_log_level_argument
from .errors import OpenMatchError, OpenMatchWarning
from .utils import atomic_output

logger = logging.getLogger("openmatch.preprocessing")

QUERY_COLUMNS = "id,text"
COLLECTION_COLUMNS = "id,title,text"
NEGATIVES_COLUMNS = ("qid", "pids")


class PreprocessingError(OpenMatchError, RuntimeError):
    """A problem that stops the run (reported as one ``error:`` line, exit code 2)."""


# --------------------------------------------------------------------------------------------- config


@dataclass
class BuildConfig:
    """Everything that decides the output bytes (plus ``num_workers``, which must not)."""

    tokenizer_name: str
    qrels: str
    queries: str
    collection: str
    save_to: str
    doc_template: str = "Title: <title> Text: <text>"
    query_template: str = "<text>"
    truncate: int = 128
    q_max_len: int = 32
    n_sample: int = 30
    shard_size: int = 45000
    seed: int = 42
    num_workers: int = 1
    shard_suffix: str = ".jsonl"
    chunk_size: int = 256  # queries per unit of work sent to a worker

    def __post_init__(self):
        for name in ("truncate", "q_max_len", "n_sample", "shard_size", "num_workers", "chunk_size"):
            if getattr(self, name) < 1:
                raise PreprocessingError(f"--{name} must be at least 1, got {getattr(self, name)}")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by build_train and build_hn (the recipe's, plus reproducibility and speed knobs)."""
    parser.add_argument("--tokenizer_name", required=True, help="Hugging Face tokenizer name or folder")
    parser.add_argument("--qrels", required=True, help="qrels (qid 0 pid rel, 2-column or BEIR layout)")
    parser.add_argument("--queries", required=True, help="queries TSV: qid<TAB>text (or JSONL with _id/text)")
    parser.add_argument("--collection", required=True, help="corpus TSV: pid<TAB>title<TAB>text (or JSONL)")
    parser.add_argument("--save_to", required=True, help="output folder for the split*.jsonl shards")
    parser.add_argument("--doc_template", default="Title: <title> Text: <text>", help="passage template")
    parser.add_argument("--query_template", default="<text>", help="query template")
    parser.add_argument("--truncate", type=int, default=128, help="max passage tokens (no special tokens)")
    parser.add_argument("--q_max_len", type=int, default=32, help="max query tokens (no special tokens)")
    parser.add_argument("--n_sample", type=int, default=30, help="negatives sampled per query")
    parser.add_argument("--shard_size", type=int, default=45000, help="lines per output shard")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (output depends on it only)")
    parser.add_argument("--num_workers", type=int, default=1, help="tokenising processes (output unchanged)")
    add_log_level_argument(parser)


def config_from_args(args: argparse.Namespace, shard_suffix: str) -> BuildConfig:
    return BuildConfig(
        tokenizer_name=args.tokenizer_name,
        qrels=args.qrels,
        queries=args.queries,
        collection=args.collection,
        save_to=args.save_to,
        doc_template=args.doc_template,
        query_template=args.query_template,
        truncate=args.truncate,
        q_max_len=args.q_max_len,
        n_sample=args.n_sample,
        shard_size=args.shard_size,
        seed=args.seed,
        num_workers=args.num_workers,
        shard_suffix=shard_suffix,
    )


# ------------------------------------------------------------------------------------------- readers


def load_texts(path, column_names: str, template: Template, flag: str = "the template") -> dict[str, str]:
    """``{id: filled template}`` of a query file (or any small record file), looked up by id (never by row number).

    Only the filled text is kept (MS MARCO's 502,939 training queries take ~100 MB); a collection is read by offset
    instead (:class:`CollectionTexts`). A template field missing from the first record is a typo in ``flag`` (an
    error); see :class:`~openmatch.dataset.template.Template` for fields missing later, null or not text.
    """
    texts: dict[str, str] = {}
    for line_no, rid, record in iter_id_records(path, column_names):
        if not texts:
            template.require_fields(record, os.fspath(path), line_no, flag)
        if rid in texts:
            raise find_duplicate(path, column_names, rid)
        texts[rid] = template.fill(record, os.fspath(path), line_no)
    if not texts:
        raise no_records(path)
    return texts


class CollectionTexts:
    """The filled template of each passage of a collection, by id, read from the file when a chunk needs it.

    The whole collection as a dict of filled texts would not fit in memory on full MS MARCO (8.8M passages,
    5.7 GiB of Python strings); a :class:`~openmatch.dataset.readers.RecordStore` keeps each passage's offset
    instead. Its pass reports bad lines, repeated ids, an empty file and a template field missing from the
    first record as :func:`load_texts` does, and fills every passage's template once, which is how a blank
    text (known before tokenising) is known without keeping the texts.
    """

    def __init__(self, path, column_names: str, template: Template, flag: str = "the template"):
        self.template = template
        path = os.fspath(path)
        first = True

        def blank(line_no: int, rid: str, record: dict) -> bool:
            nonlocal first
            if first:
                template.require_fields(record, path, line_no, flag)
                first = False
            return not template.fill(record, path, line_no)

        self.store = RecordStore(path, column_names, inspect=blank)

    def __len__(self) -> int:
        return len(self.store)

    def locate(self, pids: Iterable[str]) -> tuple[dict[str, int], set[str]]:
        """``({pid: row}, blank)`` of the given pids that are in the collection: the row of each whose filled
        template has a character besides white space, and the set of the others."""
        pids = list(pids)
        rows = self.store.rows(pids)
        found = rows >= 0
        blank = np.zeros(len(pids), dtype=bool)
        blank[found] = self.store.marked[rows[found]]
        keep = found & ~blank
        return ({pid: row for pid, row, kept in zip(pids, rows.tolist(), keep.tolist()) if kept},
                {pid for pid, is_blank in zip(pids, blank.tolist()) if is_blank})

    def texts(self, rows: list[int], pids: list[str]) -> list[str]:
        """The filled templates of the passages at ``rows``, which must be those of ``pids``."""
        # The pass has filled every record already, so a field missing or null has been reported there.
        return [self.template.fill(record) for record in self.store.read(rows, pids)]

    def close(self) -> None:
        self.store.close()


def iter_negatives_file(path) -> Iterator[tuple[int, str, list[str]]]:
    """Yield ``(line_no, qid, [pid, ...])`` from ``qid<TAB>neg1,neg2,...`` (the recipe's awk output).

    Ids follow the rule of every record file (non-empty, no white space); an empty second column is a
    query without candidates.
    """
    for line_no, line in iter_lines(path):
        try:
            fields = split_tsv(line, NEGATIVES_COLUMNS, path, line_no)
        except DataFormatError as err:
            if "\t" not in line and line.startswith(","):
                hint = (
                    " (a first line starting with ',' is what the recipe's awk writes when the first query id"
                    " is 0: awk's unset `last` compares equal to 0; use scripts/msmarco/prepare_marco.sh)"
                )
                raise DataFormatError(path, line_no, err.message + hint) from None
            raise
        pids = fields["pids"].split(",") if fields["pids"] else []
        yield line_no, check_id(fields["qid"], path, line_no), check_ids(pids, path, line_no)


def iter_ranked_hits(path) -> Iterator[tuple[int, str, list[tuple[str, float]]]]:
    """Yield ``(first_line_no, qid, [(pid, score), ...])`` of a TREC run: every hit of each query, in rank
    order (the rank column; equal ranks keep their line order).

    Streams the run (a train run on MS MARCO has tens of millions of lines), so each query's hits must be
    contiguous, as every retriever writes them; a query seen again after another is an error, and so is a
    passage listed twice for one query. A rank column that orders some query's hits otherwise than their
    scores do is reported in one warning at the end (the ranks are followed).
    """
    done: set[str] = set()
    current, start, hits, lines = None, 0, [], {}
    contradicted = []  # (qid, line of a hit ranked below a better-scored one)
    for line_no, qid, pid, rank, score in iter_run_lines(path):
        if qid != current:
            if current is not None:
                yield start, current, _ranked(hits, lines, contradicted, current)
                done.add(current)
            if qid in done:
                raise DataFormatError(
                    path, line_no, f"hits of query {qid!r} are not contiguous; sort the run by query first (sort -s -k1,1)"
                )
            current, start, hits, lines = qid, line_no, [], {}
        if pid in lines:
            raise DataFormatError(path, line_no, f"passage {pid!r} appears twice for query {qid!r} (first on line {lines[pid]})")
        lines[pid] = line_no
        hits.append((rank, len(hits), pid, score))
    if current is not None:
        yield start, current, _ranked(hits, lines, contradicted, current)
    if contradicted:
        qid, line = contradicted[0]
        warnings.warn(
            f"{path}: the rank column contradicts the scores in {len(contradicted)} queries (e.g. query {qid!r}, "
            f"line {line}: ranked below a hit that scores lower); the hits are taken in rank order",
            OpenMatchWarning,
        )


def _ranked(hits: list[tuple[int, int, str, float]], lines: dict, contradicted: list, qid: str) -> list[tuple[str, float]]:
    ranked = sorted(hits)
    scores = [score for _, _, _, score in ranked]
    if not all(map(operator.ge, scores, itertools.islice(scores, 1, None))):  # C-level: runs have millions of hits
        worse = next(i for i in range(1, len(scores)) if scores[i] > scores[i - 1])
        contradicted.append((qid, lines[ranked[worse][2]]))
    return [(pid, score) for _, _, pid, score in ranked]


def iter_run_groups(path, depth: int) -> Iterator[tuple[int, str, list[str]]]:
    """Yield ``(first_line_no, qid, [pid, ...])`` of a TREC run, the top ``depth`` hits by rank
    (:func:`iter_ranked_hits` without the scores)."""
    if depth < 1:
        raise PreprocessingError(f"--depth must be at least 1, got {depth}")
    for start, qid, hits in iter_ranked_hits(path):
        yield start, qid, [pid for pid, _ in hits[:depth]]


# ------------------------------------------------------------------------------------------- stats


_WARNINGS = {
    "no_judgments": "queries in {source} without any relevant judgment were skipped",
    "query_missing": "judged queries missing from {queries} were skipped",
    "empty_query": "queries were skipped because their text is empty (no token after template and tokeniser)",
    "positive_missing": "positives missing from {collection} were left out",
    "empty_positive": "empty positives (no token after template and tokeniser) were left out",
    "no_positive_left": "queries were dropped because no positive was left (missing from {collection} or empty)",
    "negative_missing": "negative candidates missing from {collection} were skipped",
    "empty_negative": "empty negative candidates (no token after template and tokeniser) were skipped",
    "few_candidates": "queries had fewer than {n_sample} negative candidates; all of them were taken",
    "no_negatives": "queries were dropped because no negative candidate was left",
    "duplicate_query": "repeated query blocks in {source} were skipped (the first one was used)",
    "not_in_source": "judged queries do not appear in {source} and have no example",
}


@dataclass
class Stats:
    """Counters of skipped or degraded items, with a few examples of each, merged across workers."""

    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    max_examples: int = 5

    def add(self, key: str, example: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n
        shown = self.examples.setdefault(key, [])
        if len(shown) < self.max_examples and example not in shown:
            shown.append(example)

    def merge(self, other: "Stats") -> None:
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
            shown = self.examples.setdefault(key, [])
            for example in other.examples.get(key, []):
                if len(shown) < self.max_examples and example not in shown:
                    shown.append(example)

    def report(self, names: dict) -> list[str]:
        lines = []
        for key, template in _WARNINGS.items():
            if self.counts.get(key):
                lines.append(
                    f"{self.counts[key]} {template.format(**names)} (e.g. {', '.join(self.examples.get(key, []))})"
                )
        return lines


# ---------------------------------------------------------------------------------------- examples


def sample_negatives(qid: str, candidates: list[str], seed: int, n_sample: int) -> list[str]:
    """Draw ``min(n_sample, len(candidates))`` candidates, reproducibly from ``(seed, qid)`` alone.

    ``random.Random`` seeded with a string hashes it with SHA-512, so the stream is the same in every
    process and interpreter run (unlike ``hash()``), which is what makes worker count irrelevant.
    """
    rng = random.Random(f"{seed}:{qid}")
    return rng.sample(candidates, min(n_sample, len(candidates)))


def ids_json(ids: Iterable[int]) -> str:
    """Compact JSON of a list of ints, built directly (identical to ``json.dumps(..., separators=(',', ':'))``)."""
    return "[" + ",".join(map(str, ids)) + "]"


class TokenCache:
    """The token ids (as their JSON text) of every passage tokenised in this run, by collection row, so that no
    passage is tokenised twice.

    Tokenising is most of build_train's time, and a passage recurs among the queries' draws: on SciFact-MARCO
    809 queries name ~25k passage slots but fewer than 5k distinct passages; on full MS MARCO 400k queries
    draw ~12M slots from 8.8M passages, about half of them seen before. A cache in memory could not hold
    those (an LRU of 500,000 passages, ~0.4 GB, hit 6% of the slots there), so the texts go to an unnamed
    temporary file in ``TMPDIR`` (~0.5 KB a passage with a 128-token limit: ~3 GB at that size, removed when
    the run ends) and only each row's offset and length stay in memory (12 bytes a passage of the collection);
    the operating system's page cache keeps the recent ones at hand.
    """

    def __init__(self, rows: int):
        self._offsets = np.full(rows, -1, dtype=np.int64)
        self._lengths = np.zeros(rows, dtype=np.uint32)
        self._file = tempfile.TemporaryFile(prefix="openmatch-tokens-")
        self._end = 0

    def __contains__(self, row: int) -> bool:
        return self._offsets[row] >= 0

    def add(self, rows: list[int], texts: list[str]) -> None:
        """Keep ``texts``, the token JSON of the passages at ``rows``."""
        data = [text.encode("ascii") for text in texts]
        lengths = np.fromiter(map(len, data), np.int64, len(data))
        try:
            self._file.write(b"".join(data))
            self._file.flush()  # read back with os.pread, past Python's buffer
        except OSError as err:
            raise temporary_file_full(err, "the token ids of the passages tokenised so far") from None
        self._offsets[rows] = self._end + np.cumsum(lengths) - lengths
        self._lengths[rows] = lengths
        self._end += int(lengths.sum())

    def get(self, row: int) -> str:
        """The token JSON of the passage at ``row``."""
        return os.pread(self._file.fileno(), int(self._lengths[row]), int(self._offsets[row])).decode("ascii")

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # a full temporary folder, already reported: the file is dropped anyway
            pass


class ExampleBuilder:
    """Turns ``(line_no, qid, candidates)`` items into JSON lines.

    Sampling and assembly run in the main process; only tokenisation, the costly part, goes to the
    workers, and only for passages not tokenised yet in this run (:class:`TokenCache`), so each is tokenised
    once whatever ``--num_workers``.
    """

    def __init__(self, config: BuildConfig, queries: dict, collection: CollectionTexts, relevant: dict, tokenise: Callable):
        self.config = config
        self.queries = queries
        self.collection = collection
        self.relevant = relevant
        self.tokenise = tokenise  # (texts, max_len) -> [[ids], ...], order kept
        self.tokens = TokenCache(len(collection))
        self.tokenised_passages = 0

    def plan(self, qid: str, candidates: list[str], stats: "Stats", rows: dict, blank: set) -> Optional[tuple[str, list[str], list[str]]]:
        """``(qid, positives, sampled negatives)``, or None (counted in ``stats``) when the query is unusable;
        ``rows`` and ``blank`` are :meth:`CollectionTexts.locate` of (at least) the query's pids."""
        judged = self.relevant.get(qid)
        if not judged:
            stats.add("no_judgments", qid)
            return None
        if qid not in self.queries:
            stats.add("query_missing", qid)
            return None
        # Texts are filled and stripped, so "" is exactly a blank text: it has no token whatever the tokenizer,
        # and is left out here, before the negative draw, instead of being tokenised.
        if not self.queries[qid]:
            stats.add("empty_query", qid)
            return None
        positives = []
        for pid in judged:
            if pid in rows:
                positives.append(pid)
            elif pid in blank:
                stats.add("empty_positive", f"{qid}:{pid}")
            else:
                stats.add("positive_missing", f"{qid}:{pid}")
        if not positives:
            stats.add("no_positive_left", qid)
            return None
        excluded, pool = set(judged), []
        for pid in candidates:
            if pid in excluded:
                continue
            excluded.add(pid)
            if pid in rows:
                pool.append(pid)
            elif pid in blank:
                stats.add("empty_negative", pid)
            else:
                stats.add("negative_missing", pid)
        if not pool:
            stats.add("no_negatives", qid)
            return None
        return qid, positives, sample_negatives(qid, pool, self.config.seed, self.config.n_sample)

    def build_chunk(self, chunk: list[tuple[int, str, list[str]]]) -> tuple[list[str], "Stats", int]:
        """JSON lines for the usable items of ``chunk``, the counted problems, and the passage slots written."""
        cfg, stats = self.config, Stats()
        # One look-up of every pid of the chunk in the collection's index (vectorised), not one per pid.
        rows, blank = self.collection.locate({pid for _, qid, cands in chunk for pid in (*self.relevant.get(qid, ()), *cands)})
        plans = [plan for _, qid, cands in chunk if (plan := self.plan(qid, cands, stats, rows, blank)) is not None]
        query_ids = self.tokenise([self.queries[qid] for qid, _, _ in plans], cfg.q_max_len)
        tokens = self._passage_tokens({pid: None for _, pos, neg in plans for pid in (*pos, *neg)}, rows)
        lines, slots = [], 0
        for (qid, positives, negatives), q_ids in zip(plans, query_ids):
            # Non-blank texts can still tokenise to nothing (e.g. only a zero-width space): never write "[]".
            if not q_ids:
                stats.add("empty_query", qid)
                continue
            positives = self._drop_empty(positives, tokens, stats, "empty_positive", lambda pid: f"{qid}:{pid}")
            if not positives:
                stats.add("no_positive_left", qid)
                continue
            # The draw took every candidate exactly when there were fewer than n_sample (counted for written
            # queries only).
            few = len(negatives) < cfg.n_sample
            negatives = self._drop_empty(negatives, tokens, stats, "empty_negative", str)
            if not negatives:
                stats.add("no_negatives", qid)
                continue
            if few:
                stats.add("few_candidates", f"{qid} ({len(negatives)})")
            slots += len(positives) + len(negatives)
            lines.append(
                '{"query":' + ids_json(q_ids)
                + ',"positives":[' + ",".join(tokens[pid] for pid in positives)
                + '],"negatives":[' + ",".join(tokens[pid] for pid in negatives) + "]}\n"
            )
        return lines, stats, slots

    def _drop_empty(self, pids: list[str], tokens: dict, stats: "Stats", key: str, example: Callable[[str], str]) -> list[str]:
        kept = []
        for pid in pids:
            if tokens[pid] == "[]":
                stats.add(key, example(pid))
            else:
                kept.append(pid)
        return kept

    def _passage_tokens(self, needed: dict, rows: dict) -> dict[str, str]:
        """``{pid: token JSON}`` of the ``needed`` pids, tokenising those not tokenised before in this run."""
        tokens, missing = {}, []
        for pid in needed:
            if rows[pid] in self.tokens:
                tokens[pid] = self.tokens.get(rows[pid])
            else:
                missing.append(pid)
        missing_rows = [rows[pid] for pid in missing]
        ids = self.tokenise(self.collection.texts(missing_rows, missing), self.config.truncate)
        texts = list(map(ids_json, ids))
        self.tokens.add(missing_rows, texts)
        self.tokenised_passages += len(missing)
        tokens.update(zip(missing, texts))
        return tokens

    def close(self) -> None:
        self.tokens.close()


def load_tokenizer(name: str):
    """A (fast, when available) tokenizer; failures become one clear error line."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # transformers raises OSError, ValueError, ... for a bad name or folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PreprocessingError(f"cannot load tokenizer {name!r}: {first}") from None


def tokenise_texts(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids without special tokens, truncated to ``max_len`` (the loader adds specials later)."""
    if not texts:
        return []
    return tokenizer(
        texts, add_special_tokens=False, truncation=True, max_length=max_len,
        return_attention_mask=False, return_token_type_ids=False,
    )["input_ids"]


_TOKENIZER = None  # per worker process


def _init_worker(name: str) -> None:
    global _TOKENIZER
    # Several processes on few cores: the Rust tokenizer's own threads would only oversubscribe them.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _TOKENIZER = load_tokenizer(name)


def _work(job: tuple[list[str], int]):
    try:
        return tokenise_texts(_TOKENIZER, *job), None
    except Exception as err:  # sent back as text: not every exception type survives pickling
        return None, f"{type(err).__name__}: {err}"


class ParallelTokeniser:
    """``(texts, max_len) -> ids`` split over a process pool in contiguous slices (order kept)."""

    def __init__(self, pool, num_workers: int, min_slice: int = 64):
        self.pool, self.num_workers, self.min_slice = pool, num_workers, min_slice

    def __call__(self, texts: list[str], max_len: int) -> list[list[int]]:
        if not texts:
            return []
        size = max(self.min_slice, -(-len(texts) // self.num_workers))
        jobs = [(texts[i : i + size], max_len) for i in range(0, len(texts), size)]
        out = []
        for ids, error in self.pool.map(_work, jobs, chunksize=1):
            if error is not None:
                raise PreprocessingError(f"tokeniser worker failed: {error}")
            out.extend(ids)
        return out


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ------------------------------------------------------------------------------------------ output


class ShardWriter:
    """Writes lines into ``split00<suffix>``, ``split01<suffix>``, ..., each atomically."""

    def __init__(self, folder, suffix: str, shard_size: int):
        self.folder, self.suffix, self.shard_size = Path(folder), suffix, shard_size
        self.shards, self.lines, self._in_shard = 0, 0, 0
        self._stack: Optional[ExitStack] = None
        self._handle = None

    def name(self, index: int) -> Path:
        return self.folder / f"split{index:02d}{self.suffix}"

    def write(self, line: str) -> None:
        if self._handle is None:
            self._stack = ExitStack()
            self._handle = self._stack.enter_context(atomic_output(self.name(self.shards)))
            self.shards += 1
        self._handle.write(line)
        self.lines += 1
        self._in_shard += 1
        if self._in_shard == self.shard_size:
            self.close()

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._handle, self._in_shard = self._stack, None, None, 0
            stack.close()

    def abort(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._handle = self._stack, None, None
            stack.__exit__(PreprocessingError, PreprocessingError("aborted"), None)  # removes the temp file

    def remove_stale(self) -> list[str]:
        """Delete shards of this kind left by an earlier, longer run, so ``cat split*`` stays correct."""
        pattern = re.compile(r"split(\d+)" + re.escape(self.suffix) + "$")
        removed = []
        for path in sorted(self.folder.iterdir()):
            match = pattern.fullmatch(path.name)
            if match and int(match.group(1)) >= self.shards:
                path.unlink()
                removed.append(path.name)
        return removed


# -------------------------------------------------------------------------------------------- build


@dataclass
class BuildResult:
    """What a build produced; ``stats`` holds the counted warnings."""

    lines: int
    shards: list[str]
    stats: Stats
    tokenised_passages: int
    passage_slots: int


def build(
    config: BuildConfig,
    make_items: Callable[[], Iterator[tuple[int, str, list]]],
    source_name: str,
    total: Optional[int] = None,
    screen: Optional[Callable[[list, dict, dict], list]] = None,
) -> BuildResult:
    """Read queries, collection and qrels, then write shards for every item of ``make_items()``.

    ``screen(chunk, queries, relevant)``, when given, turns each chunk of items into ``(line_no, qid,
    [pid, ...])`` items before they are planned (build_hn's hard-negative filters,
    :class:`openmatch.negatives.CandidateFilter`); ``queries`` holds the filled query texts and ``relevant``
    each query's judged positives.
    """
    doc_template, query_template = Template(config.doc_template), Template(config.query_template)
    tokenizer_check = load_tokenizer(config.tokenizer_name)  # fail before minutes of loading
    logger.info("reading qrels %s", config.qrels)
    relevant = relevant_ids(load_qrels(config.qrels))
    logger.info("reading queries %s", config.queries)
    queries = load_texts(config.queries, QUERY_COLUMNS, query_template, "--query_template")
    logger.info("reading collection %s", config.collection)
    collection = CollectionTexts(config.collection, COLLECTION_COLUMNS, doc_template, "--doc_template")
    logger.info("%d queries, %d passages, %d judged queries", len(queries), len(collection), len(relevant))

    stats, source_stats, seen = Stats(), Stats(), set()

    def items():
        for line_no, qid, candidates in make_items():
            if qid in seen:
                source_stats.add("duplicate_query", f"{qid} (line {line_no})")
                continue
            seen.add(qid)
            yield line_no, qid, candidates

    writer = ShardWriter(config.save_to, config.shard_suffix, config.shard_size)
    slots = 0
    pool = progress = builder = None
    try:
        Path(config.save_to).mkdir(parents=True, exist_ok=True)
        progress = tqdm(total=total, unit="query", desc=f"building {config.shard_suffix}", dynamic_ncols=True)
        if config.num_workers == 1:
            tokenise = partial(tokenise_texts, tokenizer_check)
        else:
            methods = multiprocessing.get_all_start_methods()
            # Fork: a worker starts in milliseconds instead of re-importing transformers. It is safe because
            # this process has not run the tokenizer (whose Rust thread pool does not survive a fork).
            # Workers only receive texts, so spawn (where fork is missing) works the same, only slower.
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            pool = ctx.Pool(config.num_workers, initializer=_init_worker, initargs=(config.tokenizer_name,))
            tokenise = ParallelTokeniser(pool, config.num_workers)
        builder = ExampleBuilder(config, queries, collection, relevant, tokenise)
        # Larger units with more workers, so that each tokeniser call splits into worthwhile slices.
        for chunk in _chunks(items(), config.chunk_size * config.num_workers):
            if screen is not None:
                chunk = screen(chunk, queries, relevant)
            lines, chunk_stats, chunk_slots = builder.build_chunk(chunk)
            for line in lines:
                writer.write(line)
            del lines  # written: not held while the next chunk is built
            stats.merge(chunk_stats)
            slots += chunk_slots
            progress.update(len(chunk))
            progress.set_postfix(lines=writer.lines, refresh=False)
        tokenised = builder.tokenised_passages
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if progress is not None:
            progress.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if builder is not None:
            builder.close()
        collection.close()

    stats.merge(source_stats)
    judged_unseen = [qid for qid in relevant if qid not in seen]
    for qid in judged_unseen:
        stats.add("not_in_source", qid)
    if writer.lines == 0:
        for message in stats.report(_names(config, source_name)):
            logger.warning(message)
        raise PreprocessingError(f"no training example was produced from {source_name}; see the warnings above")
    removed = writer.remove_stale()
    if removed:
        logger.warning("removed %d stale shard(s) from an earlier run: %s", len(removed), ", ".join(removed))
    for message in stats.report(_names(config, source_name)):
        logger.warning(message)
    shards = [writer.name(i).name for i in range(writer.shards)]
    merge_glob = "split*[0-9].jsonl" if config.shard_suffix == ".jsonl" else f"split*{config.shard_suffix}"
    counts = stats.counts
    logger.info(
        "wrote %d lines in %d shard(s) to %s (%d passage slots, %d passages tokenised; empty texts skipped: "
        "%d queries, %d positives, %d negatives); merge with: cat %s > <file>",
        writer.lines, writer.shards, config.save_to, slots, tokenised, counts.get("empty_query", 0),
        counts.get("empty_positive", 0), counts.get("empty_negative", 0), os.path.join(config.save_to, merge_glob),
    )
    return BuildResult(writer.lines, shards, stats, tokenised, slots)


def _names(config: BuildConfig, source_name: str) -> dict:
    return {
        "source": source_name,
        "queries": config.queries,
        "collection": config.collection,
        "n_sample": config.n_sample,
    }
