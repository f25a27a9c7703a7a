"""Search overhead: retrieve's search phase (shard by shard, mmap, exact merge, id lookup) vs faiss directly.

    python benchmarks/bench_search.py --n 200000 --dim 384 --queries 2000 --depth 100 --shards 4 [--repeat 3]

Both sides start from the same index folder on disk: the reference loads every shard into one
``IndexFlatIP``, calls ``search`` once and builds the same ``{qid: [(pid, score)]}`` lists (ids read
with one ``split``, rows turned into Python lists with ``tolist``); ours is ``openmatch.api.search``.
Each side runs in its own process (peak RSS column), ``--repeat`` times alternately; the table shows
medians, with "search" = up to faiss's score/index arrays and "total" = up to the result lists. Results
(every id and score of every query) are checked to be identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from openmatch.cli import ArgumentParser  # noqa: E402  (one error line, as the commands)


def phase(name: str, folder: str, depth: int) -> dict:
    import numpy as np

    queries = np.load(os.path.join(folder, "queries.npy"))
    qids = [str(i) for i in range(len(queries))]
    import faiss  # noqa: F401  (imports are not part of the timing)

    from openmatch import api

    marks = {}
    start = time.perf_counter()
    if name == "ours":
        from openmatch.retriever import search as search_module

        inner = search_module.search_embeddings

        def timed(*args, **kwargs):
            out = inner(*args, **kwargs)
            marks["search"] = time.perf_counter()
            return out

        search_module.search_embeddings = timed  # search_index looks it up at call time
        results = api.search(folder, queries, qids, depth=depth)
    else:
        manifest = json.load(open(os.path.join(folder, "manifest.json")))
        index = faiss.IndexFlatIP(manifest["model"]["dim"])
        ids = []
        for shard in manifest["shards"]:
            index.add(np.load(os.path.join(folder, shard["embeddings"])))
            ids += open(os.path.join(folder, shard["ids"])).read().split("\n")[:-1]
        scores, idx = index.search(queries, depth)
        marks["search"] = time.perf_counter()
        names = np.asarray(ids, dtype=object)[idx].tolist()
        results = {q: [(n, s) for n, s, i in zip(names[r], scores[r].tolist(), idx[r].tolist()) if i >= 0]
                   for r, q in enumerate(qids)}
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(json.dumps(results).encode()).hexdigest()
    with open(os.path.join(folder, f"results.{name}.json"), "w") as handle:
        json.dump(results, handle)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "search_seconds": marks["search"] - start, "digest": digest,
            "hits": sum(len(v) for v in results.values()), "rss_mb": rss}


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating; medians reported")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(phase(args.phase, args.folder, args.depth)))
        return
    import numpy as np

    from openmatch.retriever.builder import write_index

    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="bench_search_")
    try:
        passages = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        write_index(folder, [f"p{i}" for i in range(args.n)], passages, shard_size=-(-args.n // args.shards))
        np.save(os.path.join(folder, "queries.npy"), rng.standard_normal((args.queries, args.dim), dtype=np.float32))
        del passages
        runs: dict[str, list[dict]] = {"faiss": [], "ours": []}
        for _ in range(args.repeat):
            for name in runs:
                proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phase", name, "--folder", folder],
                                      capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(proc.stderr[-3000:])
                runs[name].append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
        saved = {name: json.load(open(os.path.join(folder, f"results.{name}.json"))) for name in runs}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for name, rs in runs.items():
        assert len({r["digest"] for r in rs}) == 1, f"{name}: repeated runs differ"
    same_ids = all([p for p, _ in saved["faiss"][q]] == [p for p, _ in saved["ours"][q]] for q in saved["faiss"])
    score_diff = max(abs(a[1] - b[1]) for q in saved["faiss"] for a, b in zip(saved["faiss"][q], saved["ours"][q]))
    assert same_ids, "the two sides ranked different passages"
    rows = {name: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "search_seconds", "rss_mb")}
            for name, rs in runs.items()}
    print(f"\nsearch benchmark: {args.n} x {args.dim} passages in {args.shards} shards, {args.queries} queries, "
          f"depth {args.depth}, CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"median of {args.repeat}")
    print(f"{'':22}{'search s':>10}{'total s':>10}{'best total':>11}{'peak RSS MB':>14}   all runs (total s)")
    for name, r in rows.items():
        label = "faiss IndexFlatIP" if name == "faiss" else "openmatch search"
        every = " ".join(f"{x['seconds']:.2f}" for x in runs[name])
        best = min(x["seconds"] for x in runs[name])
        print(f"{label:22}{r['search_seconds']:10.2f}{r['seconds']:10.2f}{best:11.2f}{r['rss_mb']:14.0f}   {every}")
    best = {name: min(x["seconds"] for x in rs) for name, rs in runs.items()}
    print(f"overhead: {100 * (rows['ours']['seconds'] / rows['faiss']['seconds'] - 1):+.1f}% total (median), "
          f"{100 * (best['ours'] / best['faiss'] - 1):+.1f}% (best), "
          f"{100 * (rows['ours']['search_seconds'] / rows['faiss']['search_seconds'] - 1):+.1f}% search "
          f"(identical rankings; largest score difference {score_diff:.1e}, "
          f"{'bit-identical' if runs['faiss'][0]['digest'] == runs['ours'][0]['digest'] else 'float rounding of the blocked matrix product'})")


if __name__ == "__main__":
    main()
