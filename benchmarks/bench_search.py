"""Search overhead: retrieve's search phase (shard by shard, mmap, exact merge, id lookup) vs faiss directly.

    python benchmarks/bench_search.py --n 200000 --dim 384 --queries 2000 --depth 100 --shards 4

Both sides start from the same index folder on disk: the reference loads every shard into one
``IndexFlatIP`` and calls ``search`` once; ours is ``openmatch.api.search``. Each side runs in its own
process (peak RSS column). Results are checked to be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def phase(name: str, folder: str, depth: int) -> dict:
    import numpy as np

    queries = np.load(os.path.join(folder, "queries.npy"))
    qids = [str(i) for i in range(len(queries))]
    import faiss  # noqa: F401  (imports are not part of the timing)

    from openmatch import api

    start = time.perf_counter()
    if name == "ours":
        results = api.search(folder, queries, qids, depth=depth)
    else:
        manifest = json.load(open(os.path.join(folder, "manifest.json")))
        index = faiss.IndexFlatIP(manifest["model"]["dim"])
        ids = []
        for shard in manifest["shards"]:
            index.add(np.load(os.path.join(folder, shard["embeddings"])))
            ids += open(os.path.join(folder, shard["ids"])).read().split("\n")[:-1]
        scores, idx = index.search(queries, depth)
        results = {q: [(ids[i], float(s)) for s, i in zip(scores[r], idx[r]) if i >= 0] for r, q in enumerate(qids)}
    seconds = time.perf_counter() - start
    first = [pid for pid, _ in results["0"]]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "first": first, "hits": sum(len(v) for v in results.values()), "rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(phase(args.phase, args.folder, args.depth)))
        return
    import numpy as np

    from openmatch.retriever.index import write_index

    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="bench_search_")
    passages = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    write_index(folder, [f"p{i}" for i in range(args.n)], passages, shard_size=-(-args.n // args.shards))
    np.save(os.path.join(folder, "queries.npy"), rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    del passages
    rows = {}
    for name in ("faiss", "ours"):
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phase", name, "--folder", folder],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        rows[name] = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert rows["faiss"]["first"] == rows["ours"]["first"] and rows["faiss"]["hits"] == rows["ours"]["hits"]
    print(f"\nsearch benchmark: {args.n} x {args.dim} passages in {args.shards} shards, {args.queries} queries, depth {args.depth}, CPU ({os.cpu_count()} cores)")
    print(f"{'':22}{'seconds':>10}{'peak RSS MB':>14}")
    for name, r in rows.items():
        label = "faiss IndexFlatIP" if name == "faiss" else "openmatch search"
        print(f"{label:22}{r['seconds']:10.2f}{r['rss_mb']:14.0f}")
    print(f"overhead: {100 * (rows['ours']['seconds'] / rows['faiss']['seconds'] - 1):+.1f}% (identical results)")


if __name__ == "__main__":
    main()
