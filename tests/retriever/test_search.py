"""Search: shard-by-shard exact merge == one IndexFlatIP, no -1 leaks, depth > corpus, mismatches; MiniLM end to end."""

from __future__ import annotations

import gzip
import json
import logging

import faiss
import numpy as np
import pytest

from openmatch import api
from openmatch.dataset.qrels import load_qrels, load_run
from openmatch.retriever.builder import write_index
from openmatch.retriever.faiss_loader import has_gpu_support
from openmatch.retriever import search as search_mod
from openmatch.retriever.index import EmbeddingIndex
from openmatch.retriever.search import SearchOptions, adjust_nlist, merge_topk, search_embeddings


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    passages = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((37, 16)).astype(np.float32)
    return [f"p{i}" for i in range(len(passages))], passages, queries


def one_big_index(passages, queries, k):
    flat = faiss.IndexFlatIP(passages.shape[1])
    flat.add(passages)
    return flat.search(queries, k)


@pytest.mark.parametrize("shard_size,block_rows", [(1000, 1 << 18), (300, 1 << 18), (300, 64)])
def test_sharded_exact_search_equals_one_index(data, tmp_path, shard_size, block_rows):
    ids, passages, queries = data
    write_index(str(tmp_path / "idx"), ids, passages, shard_size=shard_size)
    index = EmbeddingIndex(tmp_path / "idx")
    scores, idx = search_embeddings(index, queries, SearchOptions(depth=20, block_rows=block_rows))
    ref_scores, ref_idx = one_big_index(passages, queries, 20)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    # And against plain numpy.
    full = queries @ passages.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1, kind="stable")[:, :20])


def test_float16_shards_and_api_search(data, tmp_path):
    ids, passages, queries = data
    write_index(str(tmp_path / "idx"), ids, passages, shard_size=333, dtype="float16")
    results = api.search(tmp_path / "idx", queries, [f"q{i}" for i in range(len(queries))], depth=5)
    half = passages.astype(np.float16).astype(np.float32)
    ref_scores, ref_idx = one_big_index(half, queries, 5)
    for row, (qid, hits) in enumerate(results.items()):
        assert qid == f"q{row}"
        assert [pid for pid, _ in hits] == [f"p{i}" for i in ref_idx[row]]


def test_merge_topk_ties_and_missing():
    a_scores, a_idx = np.array([[3.0, 1.0, -np.inf]]), np.array([[0, 1, -1]])
    b_scores, b_idx = np.array([[3.0, 2.0]]), np.array([[5, -1]])
    scores, idx = merge_topk(a_scores, a_idx, b_scores, b_idx, 3)
    assert idx.tolist() == [[5, 0, 1]] and scores.tolist() == [[3.0, 3.0, 1.0]]  # equal scores: later row first


def search_order(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented order over a full score matrix: score descending, then corpus row descending."""
    rows = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((-rows, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def all_scores(queries, passages):
    """faiss's own scores of every pair (below its BLAS threshold each pair is scored alone)."""
    scores, idx = faiss.knn(queries, passages, len(passages), metric=faiss.METRIC_INNER_PRODUCT)
    full = np.empty_like(scores)
    np.put_along_axis(full, idx, scores, axis=1)
    return full


def check_order(full, flat, queries, scores, idx, k) -> tuple[int, int]:
    """Check a search result against the order over ``full`` and against one IndexFlatIP ``flat``.

    Where no group of equal scores straddles the k-th place, one IndexFlatIP's list is fully determined and
    must be ours, order of the tied hits included. Where one does, IndexFlatIP's choice of members depends
    on k and its code path; ours keeps the latest rows, as the order over ``full`` says. Returns the number
    of rows with such a cut group and the number of equal neighbours in the determined lists.
    """
    ref_scores, ref_idx = search_order(full, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(scores, ref_scores)
    flat_scores, flat_idx = flat.search(queries, k)
    kth = -np.sort(-full, axis=1)
    settled = kth[:, k - 1] > kth[:, k]
    np.testing.assert_array_equal(idx[settled], flat_idx[settled])
    np.testing.assert_array_equal(scores[settled], flat_scores[settled])
    return int((~settled).sum()), int((scores[settled][:, 1:] == scores[settled][:, :-1]).sum())


def test_equal_scores_ordered_alike_whatever_the_blocks_and_shards(tmp_path):
    """Duplicated passages straddling block (1024, 2048) and shard boundaries: one order, the one IndexFlatIP lists."""
    rng = np.random.default_rng(3)
    passages = rng.standard_normal((2600, 8)).astype(np.float32)
    base = rng.standard_normal((12, 8)).astype(np.float32)
    for g, centre in enumerate([1024, 2048, 700, 1400, 2100, 1100]):  # block and shard boundaries
        passages[centre - 3 - g : centre + 4 + g] = base[g]  # a run of copies across the boundary
    scattered = rng.choice(2600, 600, replace=False)  # and copies anywhere
    passages[scattered] = base[rng.integers(0, len(base), len(scattered))]
    queries = (base[rng.integers(0, len(base), 40)] + 0.3 * rng.standard_normal((40, 8))).astype(np.float32)
    full = all_scores(queries, passages)
    flat = faiss.IndexFlatIP(8)
    flat.add(passages)
    results = {}
    for shard_size, block_rows in [(2600, 1 << 18), (700, 1024), (1100, 2048), (1300, 1000)]:
        folder = tmp_path / f"{shard_size}-{block_rows}"
        write_index(str(folder), [f"p{i}" for i in range(2600)], passages, shard_size=shard_size)
        index = EmbeddingIndex(folder)
        for k in (1, 5, 60, 100, 150):
            scores, idx = search_embeddings(index, queries, SearchOptions(depth=k, block_rows=block_rows))
            results.setdefault(k, []).append((scores, idx))
    # Per layout, over every k: rows with a group cut at the k-th place, and equal neighbours in settled lists.
    counts = [[0, 0] for _ in results[1]]
    for k, runs in results.items():
        for layout, (scores, idx) in enumerate(runs):
            cut, ties = check_order(full, flat, queries, scores, idx, k)
            counts[layout][0] += cut
            counts[layout][1] += ties
    assert len(counts) == 4 and all(cut and ties for cut, ties in counts)  # both cases occur in every layout


def test_scores_do_not_depend_on_shard_boundaries_on_the_blas_path(tmp_path, monkeypatch):
    """Over faiss's BLAS threshold scores round per tile of queries and of 1024 rows; the search keeps them."""
    # faiss's switches, lowered so that a small test takes its BLAS path (queries × dim ≥ threshold) with
    # several query tiles, each too small for BLAS alone (64 × 16 < 4096) when rescored.
    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 4096)
    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_query_bs", 64)
    rng = np.random.default_rng(4)
    passages = rng.standard_normal((2500, 16)).astype(np.float32)
    passages[1000:1150] = passages[0]  # a group of equal scores longer than the depth, across both boundaries
    queries = rng.standard_normal((300, 16)).astype(np.float32)
    queries[200:] = passages[0] + 0.1 * queries[200:]  # these rank the group first
    write_index(str(tmp_path / "idx"), [f"p{i}" for i in range(2500)], passages, shard_size=1100)
    rescored = []
    real = search_mod._same_scores
    monkeypatch.setattr(search_mod, "_same_scores", lambda *a: rescored.append(len(a[2])) or real(*a))
    scores, idx = search_embeddings(EmbeddingIndex(tmp_path / "idx"), queries, SearchOptions(depth=100))
    flat = faiss.IndexFlatIP(16)
    flat.add(passages)
    # all_scores and flat see all queries at once, as the search does.
    cut, _ = check_order(all_scores(queries, passages), flat, queries, scores, idx, 100)
    # Where the group is cut by the 100th place, its last members were found by rescoring the blocks' tiles.
    # (Copies in different row tiles need not score alike: faiss rounds them differently.)
    assert cut >= 100 and rescored


def test_one_query_scores_do_not_depend_on_blocks(tmp_path):
    """Fewer queries than faiss threads: faiss would score a large block with another kernel than a small one."""
    rng = np.random.default_rng(5)
    passages = rng.standard_normal((20000, 8)).astype(np.float32)
    passages[9000:12000] = passages[0]  # equal scores across blocks too
    query = rng.standard_normal((1, 8)).astype(np.float32)
    runs = []
    for shard_size, block_rows in [(20000, 1 << 18), (20000, 4096), (7000, 1 << 18)]:
        folder = tmp_path / f"{shard_size}-{block_rows}"
        write_index(str(folder), [f"p{i}" for i in range(20000)], passages, shard_size=shard_size)
        index = EmbeddingIndex(folder)
        runs.append(search_embeddings(index, query, SearchOptions(depth=50, block_rows=block_rows)))
    for scores, idx in runs[1:]:
        np.testing.assert_array_equal(scores, runs[0][0])
        np.testing.assert_array_equal(idx, runs[0][1])
    ref_scores, ref_idx = search_order(all_scores(np.repeat(query, max(64, faiss.omp_get_max_threads()), axis=0), passages)[:1], 50)
    np.testing.assert_array_equal(runs[0][1], ref_idx)
    np.testing.assert_array_equal(runs[0][0], ref_scores)


def test_depth_beyond_corpus_and_no_missing_hits(tmp_path, caplog):
    rng = np.random.default_rng(1)
    passages = rng.standard_normal((50, 8)).astype(np.float32)
    write_index(str(tmp_path / "idx"), [f"p{i}" for i in range(50)], passages, shard_size=20)
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        results = api.search(tmp_path / "idx", queries, ["a", "b", "c", "d"], depth=100)
    assert "exceeds the corpus size 50" in caplog.text
    for hits in results.values():
        assert sorted(pid for pid, _ in hits) == sorted(f"p{i}" for i in range(50))
    # IVF probing one of 16 lists (~50 passages each) finds fewer than k=100 passages: faiss pads with -1,
    # which must never become a passage.
    write_index(str(tmp_path / "ivf"), [f"p{i}" for i in range(800)], rng.standard_normal((800, 8)).astype(np.float32), shard_size=300)
    results = api.search(tmp_path / "ivf", queries, ["a", "b", "c", "d"], depth=100, faiss_index="IVF16,Flat", nprobe=1)
    assert any(len(hits) < 100 for hits in results.values())
    for hits in results.values():
        pids = [pid for pid, _ in hits]
        assert len(pids) == len(set(pids)) and all(pid.startswith("p") for pid in pids)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_approximate_indexes(data, tmp_path, caplog):
    ids, passages, queries = data
    write_index(str(tmp_path / "idx"), ids, passages, shard_size=400)
    _, ref_idx = one_big_index(passages, queries, 10)
    with caplog.at_level(logging.WARNING):
        assert adjust_nlist("IVF4096,Flat", 1000) == "IVF25,Flat"
    assert "IVF4096,Flat" in caplog.text
    # Probing every list of an IVF-Flat index is exact.
    results = api.search(tmp_path / "idx", queries, [str(i) for i in range(len(queries))], depth=10, faiss_index="IVF4096,Flat", nprobe=4096)
    assert [[pid for pid, _ in hits] for hits in results.values()] == [[f"p{i}" for i in row] for row in ref_idx]
    results = api.search(tmp_path / "idx", queries, [str(i) for i in range(len(queries))], depth=10, faiss_index="HNSW16")
    recall = np.mean([len({pid for pid, _ in hits} & {f"p{i}" for i in row}) / 10 for hits, row in zip(results.values(), ref_idx)])
    assert recall > 0.8
    with pytest.raises(ValueError, match="faiss_index 'PQ5'"):
        api.search(tmp_path / "idx", queries, [str(i) for i in range(len(queries))], depth=10, faiss_index="PQ5")


def test_dimension_mismatch_and_missing_index(data, tmp_path):
    ids, passages, queries = data
    write_index(str(tmp_path / "idx"), ids, passages)
    with pytest.raises(ValueError, match="dimension 8 but the index .* has 16"):
        api.search(tmp_path / "idx", queries[:, :8], [str(i) for i in range(len(queries))])
    with pytest.raises(FileNotFoundError, match="no index manifest"):
        api.search(tmp_path / "nothing", queries, [str(i) for i in range(len(queries))])


def test_use_gpu_without_gpu_faiss(data, tmp_path):
    if has_gpu_support(faiss):
        pytest.skip("faiss has GPU support here")
    ids, passages, queries = data
    write_index(str(tmp_path / "idx"), ids, passages)
    with pytest.raises(RuntimeError, match="--use_gpu"):
        api.search(tmp_path / "idx", queries, [str(i) for i in range(len(queries))], use_gpu=True)


# --- end to end with MiniLM on a SciFact subset, BEIR JSONL and MS MARCO TSV layouts -------------------------


@pytest.fixture(scope="module")
def scifact_subset(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("scifact")
    with gzip.open(shared_data / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        docs = [json.loads(line) for _, line in zip(range(300), handle)]
    doc_ids = {d["_id"] for d in docs}
    qrels = load_qrels(shared_data / "scifact" / "qrels" / "test.tsv")
    qids = [q for q, judged in qrels.items() if set(judged) <= doc_ids]
    assert len(qids) >= 5
    queries = {}
    with open(shared_data / "scifact" / "queries.jsonl", encoding="utf-8") as handle:
        for line in handle:
            q = json.loads(line)
            if q["_id"] in qids:
                queries[q["_id"]] = q["text"]
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (out / "qrels.tsv").write_text("".join(f"{q}\t0\t{p}\t{r}\n" for q in qids for p, r in qrels[q].items()))
    # The TSV layout: the recipe's corpus.tsv (id, title, text) joined from para.txt and para.title.txt.
    marco = shared_data / "scifact-marco"
    titles = dict(line.rstrip("\n").split("\t", 1) for line in open(marco / "para.title.txt", encoding="utf-8"))
    with open(marco / "para.txt", encoding="utf-8") as src, open(out / "corpus.tsv", "w", encoding="utf-8") as dst:
        for line in src:
            pid, text = line.rstrip("\n").split("\t", 1)
            if pid in doc_ids:
                dst.write(f"{pid}\t{titles[pid]}\t{text}\n")
    with open(marco / "dev.query.txt", encoding="utf-8") as src, open(out / "queries.tsv", "w", encoding="utf-8") as dst:
        dst.writelines(line for line in src if line.split("\t", 1)[0] in queries)
    return out


def test_minilm_end_to_end_jsonl_and_tsv_agree(minilm_path, scifact_subset, tmp_path):
    from openmatch.driver import build_index, retrieve

    d = scifact_subset
    common = ["--model_name_or_path", str(minilm_path), "--pooling", "mean", "--normalize",
              "--per_device_eval_batch_size", "64", "--q_max_len", "64", "--p_max_len", "128"]
    runs = {}
    for layout, corpus, queries, extra_d, extra_q in [
        ("jsonl", d / "corpus.jsonl", d / "queries.jsonl", [], []),
        ("tsv", d / "corpus.tsv", d / "queries.tsv", ["--doc_column_names", "id,title,text"], ["--query_column_names", "id,text"]),
    ]:
        emb = tmp_path / f"emb_{layout}"
        assert build_index.main(["--output_dir", str(emb), "--corpus_path", str(corpus), "--doc_template", "<title> <text>",
                                 "--dataloader_num_workers", "1" if layout == "tsv" else "0", *common, *extra_d]) == 0
        run = tmp_path / layout / "run.trec"
        assert retrieve.main(["--output_dir", str(emb), "--query_path", str(queries), "--query_template", "<text>",
                              "--trec_save_path", str(run), "--retrieve_depth", "100", *common, *extra_q]) == 0
        runs[layout] = load_run(run)
    assert runs["jsonl"].keys() == runs["tsv"].keys()
    for qid in runs["jsonl"]:
        assert list(runs["jsonl"][qid]) == list(runs["tsv"][qid])
        np.testing.assert_allclose(list(runs["jsonl"][qid].values()), list(runs["tsv"][qid].values()), atol=2e-6)
    metrics = api.evaluate_run(d / "qrels.tsv", tmp_path / "jsonl" / "run.trec", ["mrr@10", "recall@100"])
    assert metrics["recall@100"] > 0.8 and metrics["mrr@10"] > 0.5  # MiniLM on SciFact: nDCG@10 about 0.65

    # A query encoder that is not the index's model is refused.
    with pytest.raises(SystemExit):
        retrieve.main(["--output_dir", str(tmp_path / "emb_tsv"), "--query_path", str(d / "queries.jsonl"),
                       "--trec_save_path", str(tmp_path / "x.trec"), *[a for a in common if a != "--normalize"]])
    assert not (tmp_path / "x.trec").exists()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_shares_merged_equal_one_search_on_the_blas_path(tmp_path, monkeypatch, world_size):
    """What each rank of a distributed search does, in one process: its rows (cut at faiss's row tiles), then the
    merge of the ranks' lists; scores and order are the whole search's, bit for bit, with uneven shards."""
    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 4096)  # BLAS path for a small test
    rng = np.random.default_rng(6)
    passages = rng.standard_normal((3500, 16)).astype(np.float32)
    passages[1000:1100] = passages[3]  # equal scores across a rank boundary
    queries = rng.standard_normal((300, 16)).astype(np.float32)
    write_index(str(tmp_path / "idx"), [f"p{i}" for i in range(3500)], passages, shard_size=1300)
    index = EmbeddingIndex(tmp_path / "idx")
    options = SearchOptions(depth=30)
    whole_scores, whole_idx = search_embeddings(index, queries, options)
    scores = np.full((300, 30), -np.inf, dtype=np.float32)
    idx = np.full((300, 30), -1, dtype=np.int64)
    for rank in range(world_size):
        first, last = search_mod.rank_rows(index.total, rank, world_size, 1024)
        part_scores, part_idx = search_mod._search_rows(index, queries, 30, "Flat", options, first, last)
        assert ((part_idx == -1) | ((part_idx >= first) & (part_idx < last))).all()
        scores, idx = merge_topk(scores, idx, part_scores, part_idx, 30)
    np.testing.assert_array_equal(idx, whole_idx)
    np.testing.assert_array_equal(scores, whole_scores)


def test_results_become_objects_when_read(data, tmp_path, monkeypatch):
    """search_index's mapping holds the arrays and converts a query's hits when it is read, in any order, from
    the id table read once; each read is a new list; missing hits (-1) are left out; it compares equal to the
    plain dict."""
    ids, passages, queries = data
    write_index(str(tmp_path / "idx"), ids, passages, shard_size=300)
    index = EmbeddingIndex(tmp_path / "idx")
    qids = [f"q{i}" for i in range(len(queries))]
    depth = 5
    scores, rows = search_embeddings(index, queries, SearchOptions(depth=depth))
    expected = {q: [(ids[r], s) for r, s in zip(rows[i].tolist(), scores[i].tolist())] for i, q in enumerate(qids)}

    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: reads.append(str(path)) or real_open(path, *a, **k))
    results = api.search(tmp_path / "idx", queries, qids, depth=depth)
    id_reads = lambda: [r for r in reads if "/ids.rank" in r]  # noqa: E731
    assert id_reads() == [] and len(results) == len(qids) and list(results) == qids
    for qid in [*reversed(qids), *qids[::3]]:  # any order
        assert results[qid] == expected[qid]
    assert list(results.items()) == list(expected.items())
    assert sorted(id_reads()) == sorted(str(tmp_path / "idx" / f"ids.rank0.shard{k}.txt") for k in range(4))  # once
    assert results == expected and dict(results) == expected and "q3" in results and "nope" not in results
    results["q1"].append(("p9", 0.0))  # a read is the caller's list: the mapping does not change
    assert results["q1"] == expected["q1"]
    with pytest.raises(KeyError):
        results["nope"]

    # An approximate search may find fewer than depth hits: the -1 slots are left out, wherever they are.
    rows[2, 3:] = -1
    rows[5, 1] = -1
    partial = search_mod.SearchResults(index, qids, scores, rows)
    assert partial["q2"] == expected["q2"][:3]
    assert partial["q5"] == [expected["q5"][0], *expected["q5"][2:]]
    with pytest.raises(ValueError, match="unique"):
        api.search(tmp_path / "idx", queries[:2], ["q0", "q0"], depth=depth)


def test_id_table_keeps_ascii_and_other_ids(tmp_path):
    """ASCII ids are kept as bytes, others as unicode, in one table of the rows' ids in order."""
    ids = ["p0", "p1", "é2", "p3", "ü4", "long-id-" + "x" * 40]
    write_index(str(tmp_path / "idx"), ids, np.eye(6, dtype=np.float32), shard_size=2)  # shard 0 ASCII only
    table = EmbeddingIndex(tmp_path / "idx").id_table()
    assert table.astype(str).tolist() == ids
    results = search_mod.SearchResults(EmbeddingIndex(tmp_path / "idx"), ["q"], np.array([[3.0, 2.0, 1.0]], np.float32),
                                       np.array([[5, 2, 0]]))
    assert results["q"] == [(ids[5], 3.0), ("é2", 2.0), ("p0", 1.0)]
