"""Writing the run of a large query set: the search's hits as Python objects all at once, or a query at a time.

The recipe's hard-negative step retrieves every train query: MS MARCO's 502,939 at depth 200 are 100M hits.
The search itself keeps them as two arrays (12 bytes a hit); what costs memory is turning them into
``(pid, score)`` tuples. This compares, side by side on the same hits and index:

- **all at once** (the naive reference, what ``search_index`` did before it returned a lazy mapping): every
  hit's id looked up, every row made a list of tuples, the whole dict built, then written;
- **per_query** (``SearchResults``, what ``retrieve`` does now): the run written from the mapping, which
  turns one query's hits into objects when it is read, with the index's id table.

Each runs in a fresh process, measured by its peak RSS (``VmHWM``) and wall time; both runs must be identical
(compared by SHA-256). The index holds only ids (8,841,823 passages of dimension 1: searching is not measured
here, see bench_large_index.py) and the hits are random distinct rows per query with sorted random scores,
from ``--seed``.

    python benchmarks/bench_run_memory.py --work_dir /work/run-memory --queries 502939 --depth 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from openmatch.cli import ArgumentParser, folder_to_write  # noqa: E402  (after the path insert above)

MODES = ("all_at_once", "per_query")


def hits(n_queries: int, depth: int, n_passages: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Distinct within a query (a run lists a passage once per query): one random start per query plus
    # offsets drawn without replacement.
    offsets = rng.choice(n_passages, size=min(depth, n_passages), replace=False)
    rows = (rng.integers(0, n_passages, size=(n_queries, 1), dtype=np.int64) + offsets[None, :]) % n_passages
    scores = -np.sort(-rng.random((n_queries, depth), dtype=np.float32), axis=1)
    return [str(1_000_000 + i) for i in range(n_queries)], scores, rows


def write_run(mode: str, index_dir: str, run: str, n_queries: int, depth: int, seed: int) -> dict:
    """One mode in this process; returns its seconds and peak RSS."""
    from openmatch.dataset.qrels import write_trec_run
    from openmatch.retriever.index import EmbeddingIndex
    from openmatch.retriever.search import SearchResults

    index = EmbeddingIndex(index_dir)
    qids, scores, rows = hits(n_queries, depth, index.total, seed)
    started = time.perf_counter()
    if mode == "all_at_once":
        names = index.id_table()[rows].astype(str).tolist()
        results = {q: list(zip(n, s)) for q, n, s in zip(qids, names, scores.tolist())}
        del names
        lines = write_trec_run(run, results.items())
    else:
        lines = write_trec_run(run, SearchResults(index, qids, scores, rows).items())
    seconds = time.perf_counter() - started
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    return {"mode": mode, "seconds": round(seconds, 1), "peak_rss_mb": round(peak), "lines": lines}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default="work_dir/run-memory", type=folder_to_write)
    parser.add_argument("--passages", type=int, default=8_841_823)
    parser.add_argument("--queries", type=int, default=502_939)
    parser.add_argument("--depth", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma separated: {','.join(MODES)}")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(args.work_dir).resolve()
    index_dir = work / f"ids-{args.passages}"
    if args._child:
        print(json.dumps(write_run(args._child, str(index_dir), str(work / f"run.{args._child}.trec"), args.queries,
                                   args.depth, args.seed)))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    if not (index_dir / "manifest.json").is_file():
        from openmatch.retriever.builder import write_index

        write_index(str(index_dir), [str(i) for i in range(args.passages)], np.zeros((args.passages, 1), np.float32))
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        argv = [sys.executable, __file__, "--work_dir", str(work), "--passages", str(args.passages), "--queries",
                str(args.queries), "--depth", str(args.depth), "--seed", str(args.seed), "--_child", mode]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        row = json.loads(out.stdout.strip().splitlines()[-1])
        digest = hashlib.sha256()
        with open(work / f"run.{mode}.trec", "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
        row["sha256"] = digest.hexdigest()
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.queries:,} queries x depth {args.depth} = {args.queries * args.depth:,} hits over {args.passages:,} passages")
    print(f"{'mode':12} {'time s':>8} {'peak RSS MB':>12} {'lines':>13}")
    for row in rows:
        print(f"{row['mode']:12} {row['seconds']:8.1f} {row['peak_rss_mb']:12,} {row['lines']:13,}")
    same = len({row["sha256"] for row in rows}) == 1
    print("runs identical" if same else "RUNS DIFFER")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "identical": same, "args": vars(args)}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
