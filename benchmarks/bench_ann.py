"""Saved approximate indexes against exact search on a synthetic index of a million passages or more.

    nice -n 10 python benchmarks/bench_ann.py --n 1000000 --dim 384 --queries 1000 --depth 100 \
        --index IVF4096,Flat:nprobe=32 --index IVF4096,Flat:nprobe=64 --index IVF4096,PQ48:nprobe=64 \
        --index HNSW32:ef_search=128

The corpus is random float32 vectors with cluster structure (``--clusters`` centres of uneven sizes, each
passage its centre plus as much noise, normalised like a dense retriever's embeddings), written with the project's
index writer (``openmatch.retriever.write_index``) in ``--shards`` shards, so it is a real index folder.
Queries are passages of the corpus plus noise. Every measurement runs in a fresh process (peak RSS is that
process's), through ``openmatch.api.search`` as ``retrieve`` runs it:

- ``exact``: the default exact search (``Flat``); its rows are the truth for recall.
- per ``--index SPEC[:nprobe=N][:ef_search=N]``: a first search trains, fills and saves the approximate index
  in the folder (``build s`` and the build's peak RSS), a second one loads the saved index and searches
  (``load s``, ``search s``, queries per second, peak RSS) — the cost every later ``retrieve`` pays — and
  recall@depth is measured against the exact rows of every query. The same factory string with another
  ``nprobe`` reuses the saved index (no second build).

Prints one table (ours: the saved approximate index; exact: the exact search) and, with ``--json``, writes
the numbers. Build and search times depend on the cores free: the table prints the machine's core count and
``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from openmatch.cli import ArgumentParser  # noqa: E402  (one error line, as the commands)


def parse_spec(text: str) -> dict:
    """``"IVF4096,Flat:nprobe=32"`` -> ``{"faiss_index": "IVF4096,Flat", "nprobe": 32}``."""
    factory, *settings = text.split(":")
    out = {"faiss_index": factory}
    for setting in settings:
        name, value = setting.split("=")
        if name not in ("nprobe", "ef_search"):
            raise SystemExit(f"--index {text}: unknown setting {name} (nprobe, ef_search)")
        out[name] = int(value)
    return out


def make_index(folder: str, n: int, dim: int, clusters: int, shards: int, queries: int, seed: int) -> None:
    """Write the synthetic index folder and ``queries.npy`` (generated a chunk at a time)."""
    import numpy as np

    from openmatch.retriever.builder import write_index

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    # Uneven cluster sizes (a few large topics, many small ones), as real collections have.
    weights = rng.pareto(1.5, clusters) + 1
    assign = rng.choice(clusters, size=n, p=weights / weights.sum())
    passages = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1 << 17):
        stop = min(start + (1 << 17), n)
        # As far from its centre as the centre is from the origin: neighbours lie in several clusters.
        chunk = centres[assign[start:stop]] + rng.standard_normal((stop - start, dim), dtype=np.float32)
        passages[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    write_index(folder, [f"p{i}" for i in range(n)], passages, shard_size=-(-n // shards))
    picked = rng.choice(n, size=queries, replace=False)
    q = passages[picked] + 0.05 * rng.standard_normal((queries, dim), dtype=np.float32)
    np.save(os.path.join(folder, "queries.npy"), (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))


def peak_rss_mb() -> float:
    """This process's peak resident set in MB. Linux's ``VmHWM`` belongs to the process's own memory map;
    ``ru_maxrss`` would also count the parent's peak at the time it forked this process."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(folder: str, depth: int, options: dict) -> dict:
    """One search in this process: seconds to load (or build) the approximate index and to search, peak RSS."""
    import numpy as np

    import faiss  # noqa: F401  (imports are not part of the timing)

    from openmatch import api
    from openmatch.retriever import search as search_module

    queries = np.load(os.path.join(folder, "queries.npy"))
    qids = [str(i) for i in range(len(queries))]
    marks = {"open": 0.0}
    real_open = search_module.open_ann_index

    def timed_open(*args, **kwargs):
        started = time.perf_counter()
        out = real_open(*args, **kwargs)
        marks["open"] += time.perf_counter() - started
        return out

    search_module.open_ann_index = timed_open  # _search_approximate looks it up at call time
    started = time.perf_counter()
    results = api.search(folder, queries, qids, depth=depth, **options)
    seconds = time.perf_counter() - started
    rows = {pid: int(pid[1:]) for hits in results.values() for pid, _ in hits}
    found = np.full((len(queries), depth), -1, dtype=np.int64)
    for r, hits in enumerate(results.values()):
        found[r, : len(hits)] = [rows[pid] for pid, _ in hits]
    np.save(os.path.join(folder, f"rows.{os.getpid()}.npy"), found)
    return {
        "seconds": seconds,
        "open_seconds": marks["open"],
        "rss_mb": peak_rss_mb(),
        "rows": f"rows.{os.getpid()}.npy",
    }


def run_phase(args, folder: str, options: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", json.dumps(options), "--folder", folder, "--depth", str(args.depth)],
        capture_output=True, text=True,
    )
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def recall(found, truth) -> float:
    import numpy as np

    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, (t >= 0).sum())
                          for f, t in zip(found, truth)]))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, help="cluster centres (default: one per 100 passages)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", action="append", dest="specs", metavar="SPEC",
                        help="factory string with optional :nprobe=N / :ef_search=N (repeatable)")
    parser.add_argument("--folder", help="where to write the index (default: a temporary folder, removed after)")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.phase:
        print("RESULT " + json.dumps(phase(args.folder, args.depth, json.loads(args.phase))))
        return
    import numpy as np

    from openmatch.retriever.ann import ann_names
    from openmatch.retriever.index import EmbeddingIndex

    specs = [parse_spec(s) for s in (args.specs or ["IVF4096,Flat:nprobe=32", "IVF4096,Flat:nprobe=64",
                                                     "IVF4096,PQ48:nprobe=64", "HNSW32:ef_search=128"])]
    args.clusters = args.clusters or max(1, args.n // 100)
    folder = args.folder or tempfile.mkdtemp(prefix="bench_ann_")
    rows = []
    try:
        started = time.perf_counter()
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            make_index(folder, args.n, args.dim, args.clusters, args.shards, args.queries, args.seed)
            print(f"wrote the index in {time.perf_counter() - started:.0f} s", flush=True)
        EmbeddingIndex(folder)  # the first open hashes the shards (once); not part of any search's time
        exact = run_phase(args, folder, {})
        truth = np.load(os.path.join(folder, exact["rows"]))
        rows.append({"index": "exact (Flat)", "settings": "", "build_s": None, "build_rss_mb": None, "file_mb": None,
                     "load_s": 0.0, "search_s": exact["seconds"], "rss_mb": exact["rss_mb"], "recall": 1.0})
        print(f"exact: {exact['seconds']:.1f} s", flush=True)
        built = set()
        for spec in specs:
            settings = " ".join(f"{k} {v}" for k, v in spec.items() if k != "faiss_index")
            build = None
            if spec["faiss_index"] not in built:
                build = run_phase(args, folder, spec)
                built.add(spec["faiss_index"])
            again = run_phase(args, folder, spec)
            found = np.load(os.path.join(folder, again["rows"]))
            record = json.load(open(os.path.join(folder, ann_names(spec["faiss_index"], 0, args.n, args.n)[1])))
            rows.append({
                "index": spec["faiss_index"], "settings": settings,
                "build_s": record["build_seconds"] if build else None,
                "build_rss_mb": build["rss_mb"] if build else None,
                "file_mb": record["file"]["bytes"] / 1e6,
                "load_s": again["open_seconds"], "search_s": again["seconds"] - again["open_seconds"],
                "rss_mb": again["rss_mb"], "recall": recall(found, truth),
            })
            print(f"{spec['faiss_index']} {settings}: {rows[-1]}", flush=True)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nANN benchmark: {args.n:,} x {args.dim} float32 passages ({args.clusters} clusters, {args.shards} shards), "
          f"{args.queries} queries, recall@{args.depth} against exact search; CPU ({os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    header = (f"{'index':18}{'settings':16}{'build s':>9}{'build RSS MB':>13}{'file MB':>9}{'load s':>8}"
              f"{'search s':>10}{'queries/s':>11}{'RSS MB':>8}{f'recall@{args.depth}':>12}")
    print(header)
    for row in rows:
        def cell(value, width, fmt):
            return f"{'-':>{width}}" if value is None else f"{value:{width}{fmt}}"

        print(f"{row['index']:18}{row['settings']:16}{cell(row['build_s'], 9, '.1f')}{cell(row['build_rss_mb'], 13, '.0f')}"
              f"{cell(row['file_mb'], 9, '.0f')}{row['load_s']:8.1f}{row['search_s']:10.2f}"
              f"{args.queries / row['search_s']:11.0f}{row['rss_mb']:8.0f}{row['recall']:12.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"n": args.n, "dim": args.dim, "queries": args.queries, "depth": args.depth, "rows": rows,
                       "cores": os.cpu_count()}, handle, indent=2)


if __name__ == "__main__":
    main()
