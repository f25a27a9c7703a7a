"""benchmarks/make_synthetic_marco.py and benchmarks/bench_scale.py at tiny scale factors.

The generator: the official files' names and layouts (what prepare_marco.sh, build_train and the project's
readers accept), the sizes at f, words of the real vocabulary, determinism from the seed. The benchmark:
memory is summed over the whole process tree, and every recipe stage runs through the real commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import bench_scale  # noqa: E402  (benchmarks/ is on the path above)
import make_synthetic_marco as synth  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def vocab_file(shared_data) -> Path:
    return shared_data / "scifact" / "corpus.jsonl.gz"


@pytest.fixture(scope="module")
def collection(vocab_file, tmp_path_factory) -> tuple[Path, dict]:
    """f = 0.001: 8,842 passages, two generator blocks (so a block boundary is crossed)."""
    out = tmp_path_factory.mktemp("synthetic") / "marco"
    manifest = synth.generate(out, 0.001, seed=3, negatives=200, vocab_from=vocab_file, progress=False)
    return out, manifest


def rows(path: Path, end: bytes = b"\n") -> list[list[str]]:
    data = path.read_bytes()
    assert data.endswith(end)
    lines = data[: -len(end)].split(end)
    return [line.decode("utf-8").split("\t") for line in lines]


def test_files_layouts_and_sizes(collection, vocab_file):
    folder, manifest = collection
    assert sorted(p.name for p in folder.iterdir()) == sorted([*synth.FILES, synth.MANIFEST])
    n = round(8_841_823 * 0.001)
    assert (manifest["passages"], manifest["train_queries"], manifest["dev_queries"]) == (n, 503, 7)
    assert n > synth.BLOCK

    # Only the triples file has CRLF line ends, as the official files.
    for name in synth.FILES:
        assert (b"\r" in (folder / name).read_bytes()) == (name == "qidpidtriples.train.full.2.tsv"), name

    vocabulary = set(synth.Vocabulary.from_corpus(vocab_file).words)
    para = rows(folder / "para.txt")
    assert [int(pid) for pid, _ in para] == list(range(n))  # the official ids: 0..N-1 in order
    words = [text.split(" ") for _, text in para]
    assert all(set(w) <= vocabulary for w in words)
    assert 50 < sum(map(len, words)) / n < 62 and min(map(len, words)) >= 8 and max(map(len, words)) <= 200
    titles = rows(folder / "para.title.txt")
    assert [int(pid) for pid, _ in titles] == list(range(n))
    missing = sum(title == "-" for _, title in titles) / n
    assert 0.05 < missing < 0.2 and all(t == "-" or set(t.split(" ")) <= vocabulary for _, t in titles)

    queries = {split: dict(rows(folder / f"{split}.query.txt")) for split in ("train", "dev")}
    assert (len(queries["train"]), len(queries["dev"])) == (503, 7)
    assert not queries["train"].keys() & queries["dev"].keys()
    assert all(int(qid) > 0 for split in queries.values() for qid in split)  # awk mishandles a first qid of 0

    positives = {}
    for split in ("train", "dev"):
        judged = defaultdict(list)
        for qid, zero, pid, one in rows(folder / f"qrels.{split}.tsv"):
            assert (zero, one) == ("0", "1") and 0 <= int(pid) < n
            judged[qid].append(pid)
        assert judged.keys() == queries[split].keys()
        assert all(len(set(p)) == len(p) for p in judged.values())
        positives.update(judged)
    # Queries borrow most words from their first positive passage.
    shared = [w in set(para[int(positives[qid][0])][1].split(" ")) for qid, text in queries["train"].items()
              for w in text.split(" ")]
    assert sum(shared) / len(shared) > 0.6

    triples = rows(folder / "qidpidtriples.train.full.2.tsv", end=b"\r\n")
    assert len(triples) == manifest["lines"]["qidpidtriples.train.full.2.tsv"]
    order, negatives = [], defaultdict(list)
    for qid, pos, neg in triples:
        if not order or order[-1] != qid:
            assert qid not in negatives, f"lines of query {qid} are not contiguous"
            order.append(qid)
        assert pos in positives[qid] and neg != pos and 0 <= int(neg) < n
        negatives[qid].append(neg)
    assert set(order) <= queries["train"].keys()
    assert 0.7 < len(order) / 503 < 0.9  # the official file names 79.7% of the train queries
    assert min(len(v) for v in negatives.values()) >= 200


def test_same_seed_same_bytes_other_seed_other_bytes(collection, vocab_file, tmp_path):
    folder, _ = collection
    again = tmp_path / "again"
    synth.generate(again, 0.001, seed=3, negatives=200, vocab_from=vocab_file, progress=False)
    for name in synth.FILES:
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name
    other = tmp_path / "other"
    synth.generate(other, 0.001, seed=4, negatives=200, vocab_from=vocab_file, progress=False)
    for name in synth.FILES:
        assert (other / name).read_bytes() != (folder / name).read_bytes(), name


def test_recipe_prepare_reads_it(collection, tmp_path):
    folder, manifest = collection
    prepared = tmp_path / "prepared"
    proc = subprocess.run(["bash", str(REPO / "scripts/msmarco/prepare_marco.sh"), str(folder), str(prepared)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    corpus = rows(prepared / "corpus.tsv")
    assert len(corpus) == manifest["passages"] and all(len(r) == 3 for r in corpus)
    negatives = rows(prepared / "train.negatives.tsv")
    triples_queries = {r[0] for r in rows(folder / "qidpidtriples.train.full.2.tsv", end=b"\r\n")}
    assert {qid for qid, _ in negatives} == triples_queries and all(len(ids.split(",")) >= 200 for _, ids in negatives)


def test_run_for_build_hn(collection, tmp_path):
    from openmatch.dataset.qrels import iter_run
    from openmatch.preprocessing import iter_run_groups

    folder, manifest = collection
    run = tmp_path / "train.trec"
    assert synth.write_run(folder, run, depth=200, seed=1, chunk=100) == manifest["train_queries"]
    train_qids = [r[0] for r in rows(folder / "train.query.txt")]
    hits = defaultdict(list)
    for qid, pid, rank, score in iter_run(run):
        hits[qid].append((rank, pid, score))
    assert list(hits) == train_qids
    for found in hits.values():
        assert [rank for rank, _, _ in found] == list(range(1, 201))
        assert len({pid for _, pid, _ in found}) == 200 and all(0 <= int(pid) < manifest["passages"] for _, pid, _ in found)
        scores = [score for _, _, score in found]
        assert scores == sorted(scores, reverse=True)
    assert sum(1 for _ in iter_run_groups(run, 200)) == len(train_qids)
    head = tmp_path / "head.trec"
    assert synth.write_run(folder, head, depth=5, seed=1, chunk=4, max_queries=7) == 7
    assert [qid for qid, *_ in iter_run(head)] == [qid for qid in train_qids[:7] for _ in range(5)]


def test_peak_memory_is_summed_over_the_process_tree(tmp_path):
    # Two children hold 150 MB each at the same time: the tree's peak is their sum, the largest process one.
    # Measured from a small process: a child's ru_maxrss starts at the RSS of the process that spawned it.
    child = "import time; b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    parent = (f"import subprocess, sys; ps = [subprocess.Popen([sys.executable, '-c', {child!r}]) for _ in range(2)]; "
              "[p.wait() for p in ps]")
    measure = ("import dataclasses, json, sys; sys.path.insert(0, sys.argv[1]); import bench_scale; "
               "m = bench_scale.measure(sys.argv[3:], bench_scale.Path(sys.argv[2]), {}, interval=0.1); "
               "print(json.dumps(dataclasses.asdict(m)))")
    proc = subprocess.run([sys.executable, "-c", measure, str(REPO / "benchmarks"), str(tmp_path / "log"),
                           sys.executable, "-c", parent], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["returncode"] == 0 and result["processes"] == 3
    assert result["peak_rss_mb"] > 300 and result["peak_pss_mb"] > 300
    assert 150 < result["max_process_rss_mb"] < 250


def test_growth_fit_recovers_exponents():
    rows_ = [bench_scale.Row(stage="build_hn", f=f, seconds=30 * f, cpu_seconds=5 + 20 * f, items=1, unit="queries",
                             per_s=1, peak_rss_mb=200 + 1000 * f, peak_pss_mb=150 * f**0.5, max_process_rss_mb=0,
                             processes=1, samples=1, passages=1, command="", log="") for f in (0.01, 0.1, 1.0)]
    fits = bench_scale.fit(rows_)
    assert list(fits) == ["build_hn"]
    g = fits["build_hn"]
    assert g["time_exponent"] == pytest.approx(1.0) and g["pss_exponent"] == pytest.approx(0.5)
    assert (g["cpu_a"], g["cpu_per_f"]) == pytest.approx((5, 20), abs=0.1)
    assert (g["rss_a"], g["rss_per_f"]) == pytest.approx((200, 1000), abs=0.1)
    assert "build_hn" in bench_scale.format_table(rows_, fits).splitlines()[-1]


def test_every_stage_runs_through_the_real_commands(shared_data, minilm_path, tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/bench_scale.py"), "--f", "0.0001", "--work_dir", str(tmp_path / "w"),
         "--json", str(out), "--tokenizer", str(minilm_path), "--depth", "50"],
        capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    by_stage = {row["stage"]: row for row in result["rows"]}
    assert list(by_stage) == list(bench_scale.STAGES)
    assert all(row["seconds"] > 0 and row["peak_rss_mb"] > 0 and row["max_process_rss_mb"] > 0 for row in by_stage.values())
    assert all(row["cpu_seconds"] > 0 for stage, row in by_stage.items() if stage != "prepare")
    work = tmp_path / "w" / "f0.0001-seed0-neg200"
    manifest = json.loads((work / "marco" / synth.MANIFEST).read_text())
    assert by_stage["generate"]["items"] == round(manifest["total_bytes"] / 1e6, 1)
    assert by_stage["build_index"]["items"] == manifest["passages"] == 884
    assert by_stage["retrieve"]["items"] == by_stage["build_hn"]["items"] == manifest["train_queries"] == 50
    # What each stage wrote: the joined corpus, training lines, the index, a full-depth run, hard negatives.
    assert len((work / "prepared" / "corpus.tsv").read_text().splitlines()) == 884
    negatives = len((work / "prepared" / "train.negatives.tsv").read_text().splitlines())
    assert by_stage["build_train"]["items"] == negatives
    # build_train with MiniLM's tokenizer: every query of the triples has qrels and a text, and >= 200 candidates.
    examples = [json.loads(line) for line in (work / "processed" / "split00.jsonl").read_text().splitlines()]
    assert len(examples) == negatives and all(len(e["negatives"]) == 30 and e["positives"] and e["query"] for e in examples)
    assert len((work / "results" / "retrieved.trec").read_text().splitlines()) == 50 * 50
    assert len((work / "processed" / "split00.hn.jsonl").read_text().splitlines()) == 50
    assert by_stage["build_index"]["extra"]["shards"] >= 1
    table = [line.split()[0] for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in by_stage]
    assert table[-6:] == list(bench_scale.STAGES)


def test_large_index_benchmark_writes_a_searchable_index_of_its_model(minilm_path, tmp_path):
    """bench_large_index's directly written index is one `retrieve` accepts for its query encoder: the shards
    verify against the manifest, the model check passes, rows are unit vectors from the seed; and its run
    comparison counts overlaps and identical lists."""
    import numpy as np

    import bench_large_index as large
    from openmatch import api
    from openmatch.retriever.index import EmbeddingIndex, check_compatible

    model_path = tmp_path / "bert"
    large.build_model(model_path, minilm_path, dim=32, layers=1)
    large.write_synthetic_index(tmp_path / "idx", model_path, n=2500, shard_size=1000, dtype="float16", seed=5)
    index = EmbeddingIndex(tmp_path / "idx")  # checks every shard's sha256, shape and dtype
    assert (index.total, index.dim, len(index.shards)) == (2500, 32, 3)
    # The storage asked for (the benchmark's float16 rows must measure float16 shards), from the seed alone.
    assert index.manifest["encoding"]["dtype"] == "float16" and {s["dtype"] for s in index.shards} == {"float16"}
    assert np.load(tmp_path / "idx" / index.shards[0]["embeddings"]).dtype == np.float16
    large.write_synthetic_index(tmp_path / "same", model_path, n=2500, shard_size=1000, dtype="float16", seed=5)
    large.write_synthetic_index(tmp_path / "other", model_path, n=2500, shard_size=1000, dtype="float16", seed=6)
    digests = {name: [s["embeddings_sha256"] for s in EmbeddingIndex(tmp_path / name).shards] for name in ("idx", "same", "other")}
    assert digests["idx"] == digests["same"] and not set(digests["idx"]) & set(digests["other"])
    model, _ = api.load_model(str(model_path))
    check_compatible(model, index.manifest, str(tmp_path / "idx"))
    rows = np.concatenate([block.copy() for _, block in index.iter_blocks(1024)])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=2e-3)
    assert index.id_table()[[0, 1999, 2499]].astype(str).tolist() == ["0", "1999", "2499"]

    (tmp_path / "a.trec").write_text("q1 Q0 p1 1 2 r\nq1 Q0 p2 2 1 r\nq2 Q0 p3 1 2 r\nq2 Q0 p4 2 1 r\n")
    (tmp_path / "b.trec").write_text("q1 Q0 p1 1 2 r\nq1 Q0 p2 2 1 r\nq2 Q0 p3 1 2 r\nq2 Q0 p5 2 1 r\n")
    assert large.compare_runs(tmp_path / "a.trec", tmp_path / "b.trec") == {
        "queries": 2, "mean_overlap": 0.75, "min_overlap": 0.5, "identical_lists": 1}


def test_run_memory_benchmark_writes_the_same_run_both_ways(tmp_path):
    """bench_run_memory's two modes write one identical run of every hit, in a fresh process each."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_run_memory.py"), "--work_dir", str(tmp_path),
                          "--passages", "500", "--queries", "30", "--depth", "7", "--json", str(tmp_path / "r.json")],
                         env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["identical"] and [row["mode"] for row in report["rows"]] == ["all_at_once", "per_query"]
    assert all(row["lines"] == 30 * 7 and row["peak_rss_mb"] > 0 for row in report["rows"])
    lines = (tmp_path / "run.per_query.trec").read_text().splitlines()
    assert len(lines) == 210 and lines[0].split()[:2] == ["1000000", "Q0"] and lines[-1].split()[3] == "7"
    assert len({tuple(line.split()[:3:2]) for line in lines}) == 210  # a passage once per query


@pytest.mark.parametrize("script, flag", [
    ("make_synthetic_marco.py", "--output_dir"), ("bench_scale.py", "--work_dir"),
    ("bench_run_memory.py", "--work_dir"), ("bench_large_index.py", "--work_dir"), ("bench_large_index.py", "--tokenizer"),
])
def test_a_bad_folder_argument_is_an_error_line_before_any_work(script, flag, tmp_path):
    """A file where a benchmark's folder goes (or no tokenizer folder) is refused by argparse in one error line,
    not a traceback after minutes of generating."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    given = {"--tokenizer": str(tmp_path / "no_tokenizer")}.get(flag, str(a_file))
    extra = ["--work_dir", str(tmp_path / "work")] if flag == "--tokenizer" else []
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *extra, flag, given], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    reason = f"{given}: no such folder" if flag == "--tokenizer" else f"{given} is a file, not a folder"
    assert out.stderr.strip().splitlines() == [f"error: argument {flag}: {reason} (its flags: --help)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
