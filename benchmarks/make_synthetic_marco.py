"""A synthetic MS MARCO passage collection in the RocketQA layout, at a scale factor of the real sizes.

    python benchmarks/make_synthetic_marco.py --output_dir work_dir/synth-marco --f 0.01 [--seed 0] [--negatives 200]

Writes what ``scripts/msmarco/run_recipe.sh`` expects, in the official files' layouts (docs/formats.md):

- ``para.txt`` (``pid<TAB>text``) and ``para.title.txt`` (``pid<TAB>title``, ``-`` when missing): round(8,841,823 × f)
  passages, ids 0..N-1 in order as in the official collection; ~56 words each (normal(56, 22) clipped to
  8..200, the lengths ``benchmarks/gpu_suite.py`` uses), titles of 1..8 words, 1 in 9 missing;
- ``train.query.txt`` / ``dev.query.txt`` (``qid<TAB>text``): round(502,939 × f) and round(6,980 × f) queries of
  about 6 words, 70% of them taken from their first positive passage (so a model has something to find);
  ids unique across both files, scattered over [1, 4 × queries], never 0;
- ``qrels.train.tsv`` / ``qrels.dev.tsv`` (``qid<TAB>0<TAB>pid<TAB>1``): 1.06 positives per query on average, as
  the official qrels (532,761 judgments for 502,939 train queries; 7,437 for the 6,980 dev queries);
- ``qidpidtriples.train.full.2.tsv`` (``qid<TAB>pos_pid<TAB>neg_pid``, CRLF line ends like the official file):
  for 79.7% of the train queries (the official file names 400,782 of the 502,939: the recipe's
  ``head -n 400282`` + 500 validation lines), ``--negatives`` uniformly drawn negatives per positive, a query's
  lines contiguous (the recipe's awk needs it);
- ``synthetic.json``: the parameters, counts, bytes per file, the vocabulary's SHA-256 and the generation speed.

Words are drawn from a real vocabulary at its real frequencies: the white-space separated tokens of the SciFact
corpus (``--vocab_from``, read at run time, never copied into the repository), punctuation and capitals kept,
so a tokenizer sees realistic text. The output depends only on ``--f``, ``--seed``, ``--negatives`` and the
vocabulary file: the passages are made in fixed blocks, each from its own generator seeded with (seed, block).

Memory is bounded whatever ``f``: one block of passages (and its queries and triples) is built with numpy and
written before the next one; only per-block query counts (a few KB) are kept. There is no relevance signal
beyond the shared words; the collection measures scale, not retrieval quality.

``--run FILE`` instead writes a TREC run for the train queries of an existing folder (``--depth`` distinct
random passages per query, scores sorted descending), the shape of the recipe's train-query run that
``build_hn`` reads, without retrieving.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from openmatch.cli import ArgumentParser, folder_to_write  # noqa: E402  (after the path insert above)
from openmatch.utils import atomic_output  # noqa: E402

FULL_PASSAGES = 8_841_823
FULL_TRAIN_QUERIES = 502_939
FULL_DEV_QUERIES = 6_980
TRIPLES_SHARE = 400_782 / FULL_TRAIN_QUERIES
EXTRA_POSITIVES = 0.06  # Poisson mean of positives beyond the first (official: 1.059 train, 1.065 dev)
QUERY_WORDS_FROM_POSITIVE = 0.7
BLOCK = 8192  # passages per generator block; part of the output's identity, never a flag
FILES = ("para.txt", "para.title.txt", "train.query.txt", "dev.query.txt", "qrels.train.tsv", "qrels.dev.tsv",
         "qidpidtriples.train.full.2.tsv")
MANIFEST = "synthetic.json"


def default_vocab_file() -> Path:
    """SciFact's corpus in the shared data folder beside the repository (or under ``$OPENMATCH_SHARED_DATA``)."""
    data = Path(os.environ.get("OPENMATCH_SHARED_DATA", REPO.parent / "shared" / "data"))
    return data / "scifact" / "corpus.jsonl.gz"


# ------------------------------------------------------------------------------------------ byte assembly
# Text is built as uint8 arrays: a line is a list of segments (slices of source buffers) gathered with one
# fancy-indexing operation, so no Python loop runs per passage, per word or per triple line.


def gather(src: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``src[starts[k] : starts[k] + lengths[k]]`` for every k, in order."""
    keep = lengths > 0
    starts, lengths = starts[keep].astype(np.int64), lengths[keep].astype(np.int64)
    if not len(lengths):
        return src[:0]
    # The source index grows by 1 inside a segment and jumps at each segment's first byte: a cumulative sum
    # of steps (faster than repeating each segment's offset over its bytes).
    out_starts = np.cumsum(lengths) - lengths
    steps = np.ones(int(lengths.sum()), dtype=np.int64)
    steps[0] = starts[0]
    steps[out_starts[1:]] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    return src[np.cumsum(steps, out=steps)]


class Segments:
    """``n`` byte strings as slices of one buffer: ``buf[starts[k] : starts[k] + lengths[k]]``."""

    def __init__(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        self.buf, self.starts, self.lengths = buf, starts.astype(np.int64), lengths.astype(np.int64)

    @classmethod
    def constant(cls, text: bytes, n: int) -> "Segments":
        buf = np.frombuffer(text, dtype=np.uint8)
        return cls(buf, np.zeros(n, dtype=np.int64), np.full(n, len(text), dtype=np.int64))

    @classmethod
    def ints(cls, values: np.ndarray, width: int = 0) -> "Segments":
        """Decimal digits of non-negative ints (zero-padded to ``width`` when given)."""
        values = np.asarray(values, dtype=np.int64)
        n = len(values)
        top = int(values.max()) if n else 0
        cols = max(len(str(top)), width, 1)
        digits = np.empty((n, cols), dtype=np.uint8)
        rest = values.copy()
        for col in range(cols - 1, -1, -1):
            digits[:, col] = rest % 10 + ord("0")
            rest //= 10
        needed = np.ones(n, dtype=np.int64)
        for power in range(1, cols):
            needed += values >= 10**power
        lengths = np.maximum(needed, width)
        starts = np.arange(n, dtype=np.int64) * cols + (cols - lengths)
        return cls(digits.reshape(-1), starts, lengths)

    @classmethod
    def joined_words(cls, vocab: "Vocabulary", tokens: np.ndarray, counts: np.ndarray) -> "Segments":
        """Row k: the next ``counts[k]`` words of ``tokens`` joined by single spaces."""
        text = gather(vocab.buf, vocab.starts[tokens], vocab.lengths[tokens] + 1)  # each word and its space
        row_bytes = row_lengths(vocab, tokens, counts)
        starts = np.cumsum(row_bytes) - row_bytes
        return cls(text, starts, np.maximum(row_bytes - 1, 0))  # the last word's space left out


def row_lengths(vocab: "Vocabulary", tokens: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Bytes of each row of words, a space after every word included."""
    per_word = vocab.lengths[tokens] + 1
    ends = np.cumsum(counts)
    sums = np.concatenate(([0], np.cumsum(per_word)))
    return sums[ends] - sums[ends - counts]


def lines(*columns: Segments) -> bytes:
    """The rows of ``columns`` concatenated column after column, row after row."""
    bufs = [c.buf for c in columns]
    offsets = np.cumsum([0] + [len(b) for b in bufs[:-1]])
    src = np.concatenate(bufs)
    starts = np.stack([c.starts + off for c, off in zip(columns, offsets)], axis=1).reshape(-1)
    lengths = np.stack([c.lengths for c in columns], axis=1).reshape(-1)
    return gather(src, starts, lengths).tobytes()


def tsv(*columns: Segments, end: bytes = b"\n") -> bytes:
    """Tab-separated rows ending in ``end``."""
    n = len(columns[0].starts)
    tab = Segments.constant(b"\t", n)
    parts = []
    for column in columns:
        parts += [column, tab]
    parts[-1] = Segments.constant(end, n)
    return lines(*parts)


# ------------------------------------------------------------------------------------------- vocabulary


class Vocabulary:
    """Words (UTF-8 bytes) with their frequencies; ``sample`` draws token ids by frequency."""

    def __init__(self, counts: Counter):
        words = sorted(counts, key=lambda w: (-counts[w], w))  # a fixed order: determinism
        encoded = [w.encode("utf-8") for w in words]
        self.words = words
        self.lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        self.buf = np.frombuffer(b" ".join(encoded) + b" ", dtype=np.uint8)
        self.starts = np.cumsum(self.lengths + 1) - (self.lengths + 1)
        freq = np.array([counts[w] for w in words], dtype=np.int64)
        # One entry per occurrence: a uniform draw from it is a draw at the exact corpus frequencies.
        self.occurrences = np.repeat(np.arange(len(words), dtype=np.int32), freq)
        self.sha256 = hashlib.sha256(b"\n".join(encoded) + b"\0" + ",".join(map(str, freq)).encode()).hexdigest()

    @classmethod
    def from_corpus(cls, path: Path) -> "Vocabulary":
        """White-space separated tokens of a BEIR ``corpus.jsonl(.gz)``'s titles and texts, with their counts."""
        opener = gzip.open if str(path).endswith(".gz") else open
        counts: Counter = Counter()
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                counts.update(record.get("title", "").split())
                counts.update(record.get("text", "").split())
        if not counts:
            raise SystemExit(f"error: {path}: no words found")
        return cls(counts)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.occurrences[rng.integers(0, len(self.occurrences), size=n)]


# ------------------------------------------------------------------------------------------------ sizes


class Plan:
    """Sizes at scale ``f`` and, per block, how many train and dev queries have their first positive there."""

    def __init__(self, f: float, seed: int, negatives: int):
        if not f > 0:
            raise SystemExit(f"error: --f must be positive, got {f}")
        if negatives < 1:
            raise SystemExit(f"error: --negatives must be at least 1, got {negatives}")
        self.f, self.seed, self.negatives = f, seed, negatives
        self.passages = max(1, round(FULL_PASSAGES * f))
        self.train_queries = max(1, round(FULL_TRAIN_QUERIES * f))
        self.dev_queries = max(1, round(FULL_DEV_QUERIES * f))
        self.blocks = math.ceil(self.passages / BLOCK)
        sizes = np.full(self.blocks, BLOCK, dtype=np.float64)
        sizes[-1] = self.passages - BLOCK * (self.blocks - 1)
        rng = np.random.default_rng([seed, 0xC0FFEE])
        self.train_per_block = rng.multinomial(self.train_queries, sizes / sizes.sum())
        self.dev_per_block = rng.multinomial(self.dev_queries, sizes / sizes.sum())
        self.train_before = np.cumsum(self.train_per_block) - self.train_per_block
        self.dev_before = np.cumsum(self.dev_per_block) - self.dev_per_block
        total = self.train_queries + self.dev_queries
        self.qid_bits = max(4, math.ceil(math.log2(4 * total)))

    def qids(self, serial: np.ndarray) -> np.ndarray:
        """Unique ids for query serial numbers (train first, then dev), scattered by a bijection on qid_bits bits."""
        bits, mask = self.qid_bits, (1 << self.qid_bits) - 1
        x = (serial.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(self.seed * 7919 + 12345)) & np.uint64(mask)
        x ^= x >> np.uint64((bits + 1) // 2)
        x = (x * np.uint64(0x85EBCA6B)) & np.uint64(mask)
        x ^= x >> np.uint64(bits // 3 + 1)
        return x.astype(np.int64) + 1  # never 0: the recipe's awk mishandles a first query id of 0


# ----------------------------------------------------------------------------------------------- blocks


def query_texts(rng, vocab: Vocabulary, tokens: np.ndarray, word_starts: np.ndarray, word_counts: np.ndarray,
                positives: np.ndarray) -> Segments:
    """Queries of ~6 words, each word from the positive passage (70%) or from the vocabulary (30%)."""
    n = len(positives)
    counts = np.clip(rng.poisson(5.0, size=n) + 1, 2, 20)
    total = int(counts.sum())
    owner = np.repeat(np.arange(n), counts)
    positions = word_starts[positives][owner] + (rng.random(total) * word_counts[positives][owner]).astype(np.int64)
    words = np.where(rng.random(total) < QUERY_WORDS_FROM_POSITIVE, tokens[positions], vocab.sample(rng, total))
    return Segments.joined_words(vocab, words, counts)


def extra_positives(rng, plan: Plan, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, pid)`` of the positives beyond each query's first: distinct from it and from each other."""
    extra = rng.poisson(EXTRA_POSITIVES, size=len(first))
    owner = np.repeat(np.arange(len(first)), extra)
    if plan.passages == 1:
        return owner[:0], owner[:0]
    # k-th extra positive of a query: first + k-th distinct non-zero offset, so no pid repeats within the query.
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(extra) - extra, extra)
    span = max(1, (plan.passages - 1) // max(1, int(extra.max(initial=1))))
    offset = 1 + rank * span + rng.integers(0, span, size=len(owner))
    keep = offset < plan.passages
    owner, offset = owner[keep], offset[keep]
    return owner, (first[owner] + offset) % plan.passages


def qrels_rows(qids: np.ndarray, first: np.ndarray, owner: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(qid, pid)`` of every judgment, a query's first positive then its extra ones."""
    q = np.concatenate((np.arange(len(first)), owner))
    p = np.concatenate((first, extra))
    order = np.argsort(q, kind="stable")
    return qids[q[order]], p[order]


def make_block(plan: Plan, vocab: Vocabulary, b: int) -> dict[str, bytes]:
    """The bytes every file gets from block ``b``."""
    rng = np.random.default_rng([plan.seed, b])
    start = b * BLOCK
    n = min(BLOCK, plan.passages - start)
    pids = np.arange(start, start + n)
    word_counts = np.clip(np.rint(rng.normal(56, 22, size=n)), 8, 200).astype(np.int64)
    tokens = vocab.sample(rng, int(word_counts.sum()))
    word_starts = np.cumsum(word_counts) - word_counts
    title_counts = rng.integers(0, 9, size=n)
    titles = Segments.joined_words(vocab, vocab.sample(rng, int(title_counts.sum())), title_counts)
    missing = title_counts == 0
    dash = np.frombuffer(b"-", dtype=np.uint8)
    titles.starts[missing] = len(titles.buf)
    titles.lengths[missing] = 1
    titles.buf = np.concatenate((titles.buf, dash))
    out = {
        "para.txt": tsv(Segments.ints(pids), Segments.joined_words(vocab, tokens, word_counts)),
        "para.title.txt": tsv(Segments.ints(pids), titles),
    }
    for split, count, before, serial_base in (
        ("train", plan.train_per_block[b], plan.train_before[b], 0),
        ("dev", plan.dev_per_block[b], plan.dev_before[b], plan.train_queries),
    ):
        first_local = rng.integers(0, n, size=count)
        qids = plan.qids(serial_base + before + np.arange(count))
        first = start + first_local
        text = query_texts(rng, vocab, tokens, word_starts, word_counts, first_local)
        owner, extra = extra_positives(rng, plan, first)
        q, p = qrels_rows(qids, first, owner, extra)
        out[f"{split}.query.txt"] = tsv(Segments.ints(qids), text) if count else b""
        out[f"qrels.{split}.tsv"] = (
            tsv(Segments.ints(q), Segments.constant(b"0", len(q)), Segments.ints(p), Segments.constant(b"1", len(q)))
            if len(q) else b""
        )
        if split == "train":
            out["qidpidtriples.train.full.2.tsv"] = triples(rng, plan, qids, first, owner, extra)
    return out


def triples(rng, plan: Plan, qids, first, owner, extra) -> bytes:
    """``qid<TAB>pos<TAB>neg<CR><LF>`` lines for the train queries in the file, a query's lines together."""
    in_file = rng.random(len(qids)) < TRIPLES_SHARE
    q_index = np.concatenate((np.arange(len(first)), owner))
    positive = np.concatenate((first, extra))
    order = np.argsort(q_index, kind="stable")
    q_index, positive = q_index[order], positive[order]
    keep = in_file[q_index]
    q_index, positive = q_index[keep], positive[keep]
    if not len(q_index):
        return b""
    k = plan.negatives
    q_rep, pos_rep = np.repeat(qids[q_index], k), np.repeat(positive, k)
    neg = rng.integers(0, plan.passages, size=len(pos_rep))
    if plan.passages > 1:
        neg = np.where(neg == pos_rep, (neg + 1) % plan.passages, neg)
    return tsv(Segments.ints(q_rep), Segments.ints(pos_rep), Segments.ints(neg), end=b"\r\n")


def generate(output_dir: Path, f: float, seed: int = 0, negatives: int = 200, vocab_from: Path | None = None,
             progress: bool = True) -> dict:
    """Write the collection into ``output_dir`` (each file atomically) and return its manifest."""
    vocab_path = Path(vocab_from or default_vocab_file())
    if not vocab_path.is_file():
        raise SystemExit(f"error: {vocab_path}: vocabulary corpus not found (pass --vocab_from a BEIR corpus.jsonl.gz)")
    began = time.perf_counter()
    vocab = Vocabulary.from_corpus(vocab_path)
    plan = Plan(f, seed, negatives)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MANIFEST).unlink(missing_ok=True)  # a partial folder never looks complete
    written = dict.fromkeys(FILES, 0)
    lines_out = dict.fromkeys(FILES, 0)
    start = time.perf_counter()
    with ExitStack() as stack:
        handles = {name: stack.enter_context(atomic_output(output_dir / name, "wb")) for name in FILES}
        for b in range(plan.blocks):
            for name, data in make_block(plan, vocab, b).items():
                handles[name].write(data)
                written[name] += len(data)
                lines_out[name] += data.count(b"\n")
            if progress and (b % 64 == 63 or b == plan.blocks - 1):
                mb = sum(written.values()) / 1e6
                print(f"\rblock {b + 1}/{plan.blocks}: {mb:,.0f} MB, {mb / (time.perf_counter() - start):,.0f} MB/s",
                      end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    seconds = time.perf_counter() - start
    total = sum(written.values())
    manifest = {
        "f": f, "seed": seed, "negatives": negatives, "block": BLOCK,
        "vocabulary": {"path": str(vocab_path), "words": len(vocab.words), "sha256": vocab.sha256},
        "passages": plan.passages, "train_queries": plan.train_queries, "dev_queries": plan.dev_queries,
        "lines": lines_out, "bytes": written, "total_bytes": total,
        "seconds": round(seconds, 3), "seconds_with_vocabulary": round(time.perf_counter() - began, 3),
        "mb_per_s": round(total / 1e6 / seconds, 1) if seconds > 0 else None,
    }
    with atomic_output(output_dir / MANIFEST) as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    return manifest


# -------------------------------------------------------------------------------------------------- run


def write_run(marco_dir: Path, path: Path, depth: int = 200, seed: int = 0, run_id: str = "synthetic",
              chunk: int = 4096, max_queries: int | None = None) -> int:
    """A TREC run (``qid Q0 pid rank score run_id``) of ``depth`` distinct random passages for every train query
    (the first ``max_queries`` when given).

    Streams ``train.query.txt`` in chunks; returns the number of queries written.
    """
    manifest = json.loads((marco_dir / MANIFEST).read_text())
    n = manifest["passages"]
    depth = min(depth, n)
    rng = np.random.default_rng([seed, 0x5EED])
    written = 0
    with open(marco_dir / "train.query.txt", "rb") as queries, atomic_output(path, "wb") as out:
        while max_queries is None or written < max_queries:
            take = chunk if max_queries is None else min(chunk, max_queries - written)
            qids = [line.split(b"\t", 1)[0] for _, line in zip(range(take), queries)]
            if not qids:
                break
            q = np.array([int(x) for x in qids], dtype=np.int64)
            # Distinct pids per query: an arithmetic progression mod n whose step is coprime with n.
            first = rng.integers(0, n, size=len(q))
            step = rng.integers(1, max(n, 2), size=len(q))
            while True:
                bad = np.gcd(step, n) != 1
                if not bad.any():
                    break
                step[bad] = rng.integers(1, max(n, 2), size=int(bad.sum()))
            pids = (first[:, None] + step[:, None] * np.arange(depth)[None, :]) % max(n, 1)
            scores = -np.sort(-rng.integers(0, 1_000_000, size=(len(q), depth)), axis=1)
            rows = len(q) * depth
            data = lines(
                Segments.ints(np.repeat(q, depth)), Segments.constant(b" Q0 ", rows), Segments.ints(pids.reshape(-1)),
                Segments.constant(b" ", rows), Segments.ints(np.tile(np.arange(1, depth + 1), len(q))),
                Segments.constant(b" ", rows), Segments.ints(scores.reshape(-1) // 10_000),
                Segments.constant(b".", rows), Segments.ints(scores.reshape(-1) % 10_000, width=4),
                Segments.constant(f" {run_id}\n".encode(), rows),
            )
            out.write(data)
            written += len(q)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, type=folder_to_write, help="the collection folder (written, or read by --run)")
    parser.add_argument("--f", type=float, default=0.001, help="scale factor of the official sizes (1 = full size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negatives", type=int, default=200, help="triples per positive (official: ~800 on average)")
    parser.add_argument("--vocab_from", default=None, help="BEIR corpus.jsonl(.gz) whose words are used "
                        "(default: SciFact in the shared data folder)")
    parser.add_argument("--run", default=None, help="write a TREC run of the train queries of --output_dir to this "
                        "file instead of generating a collection")
    parser.add_argument("--depth", type=int, default=200, help="hits per query of --run")
    parser.add_argument("--run_queries", type=int, default=None, help="--run: the first N train queries only")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    if args.run:
        start = time.perf_counter()
        queries = write_run(output_dir, Path(args.run), args.depth, args.seed, max_queries=args.run_queries)
        print(f"wrote {args.run}: {queries} queries x {args.depth} hits in {time.perf_counter() - start:.1f}s")
        return 0
    manifest = generate(output_dir, args.f, args.seed, args.negatives, args.vocab_from)
    print(f"wrote {output_dir}: {manifest['passages']:,} passages, {manifest['train_queries']:,} train and "
          f"{manifest['dev_queries']:,} dev queries, {manifest['lines']['qidpidtriples.train.full.2.tsv']:,} triples; "
          f"{manifest['total_bytes'] / 1e6:,.1f} MB in {manifest['seconds']:.1f}s ({manifest['mb_per_s']} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
