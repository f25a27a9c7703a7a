"""Qrels and TREC run readers/writer: layouts, errors naming file:line, round trip, atomic output."""

from __future__ import annotations

import pytest

from openmatch.dataset import qrels as qrels_module
from openmatch.dataset.qrels import iter_run, load_qrels, load_ranked_run, load_run, relevant_ids, write_trec_run
from openmatch.dataset.readers import DataFormatError
from openmatch.errors import OpenMatchWarning

EXPECTED = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}


@pytest.mark.parametrize(
    "text",
    [
        "q1\t0\td1\t1\nq1\t0\td2\t0\nq2\t0\td3\t2\n",  # 4 columns, tabs
        "q1 0 d1 1\r\nq1 0 d2 0\r\nq2 0 d3 2\r\n",  # 4 columns, spaces, CRLF
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2.0\n",  # BEIR with header
    ],
)
def test_qrels_layouts(tmp_path, text):
    path = tmp_path / "qrels"
    path.write_text(text)
    assert load_qrels(path) == EXPECTED
    assert relevant_ids(load_qrels(path)) == {"q1": ["d1"], "q2": ["d3"]}


def test_two_column_qrels(tmp_path):
    path = tmp_path / "qrels"
    path.write_text("q1 d1\nq1 d2\n\nq2 d3\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}}


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("q1 0 d1 1\nq1 0 d2 high\n", 2, "relevance must be an integer"),
        ("q1 0 d1 1\nq1 0 d2 0.5\n", 2, "relevance must be an integer"),
        ("q1 0 d1 1\nq1 d2 1\n", 2, "expected 4 columns"),
        ("q1 0 d1 1 x y\n", 1, "qrels need 2"),
    ],
)
def test_qrels_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "qrels"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message) as info:
        load_qrels(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_real_qrels(shared_data):
    beir = load_qrels(shared_data / "scifact" / "qrels" / "test.tsv")
    marco = load_qrels(shared_data / "scifact-marco" / "qrels.dev.tsv")
    assert beir == marco and len(beir) == 300


def test_run_round_trip_and_atomicity(tmp_path):
    results = [("q1", [("d1", 2.5), ("d2", 1.25)]), ("q2", [("d3", -0.5)])]
    path = tmp_path / "sub" / "run.trec"
    assert write_trec_run(path, results, run_id="test") == 3
    assert path.read_text().splitlines()[0] == "q1 Q0 d1 1 2.5 test"
    assert load_run(path) == {"q1": {"d1": 2.5, "d2": 1.25}, "q2": {"d3": -0.5}}
    assert load_ranked_run(path) == {"q1": ["d1", "d2"], "q2": ["d3"]}
    assert list(iter_run(path))[1] == ("q1", "d2", 2, 1.25)

    def failing():
        yield "q9", [("d9", 1.0)]
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_trec_run(path, failing())
    assert load_run(path)["q1"] == {"d1": 2.5, "d2": 1.25}  # previous complete file kept
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.trec"]  # no temp file left
    with pytest.raises(ValueError, match="white space"):
        write_trec_run(tmp_path / "x.trec", results, run_id="a b")


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("q1 Q0 d1 1 2.0 r\nq1 Q0 d2 2 1.0\n", 2, "6 columns"),
        ("q1 Q0 d1 1 2.0 r\nq1 Q0 d2 two 1.0 r\n", 2, "rank must be an integer"),
        ("q1 Q0 d1 1 2.0 r\n\nq1 Q0 d2 2 nan r\n", 3, "NaN"),
        ("q1 Q0 d1 1 2.0 r\nq1 Q0 d2 2 \xff 1.0 r\n", 2, None),
    ],
)
def test_run_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "run.trec"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataFormatError) as info:
        load_run(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    if message:
        assert message in str(info.value)


def test_run_blocks_keep_line_numbers_and_queries(tmp_path, monkeypatch):
    # Tiny blocks: queries straddle block boundaries, and an error deep in the file keeps its true line.
    monkeypatch.setattr(qrels_module, "_RUN_BLOCK_BYTES", 64)
    lines = [f"q{i // 7} Q0 d{i} {i % 7 + 1} {100 - i}.5 r\n" for i in range(100)]
    path = tmp_path / "run.trec"
    path.write_text("".join(lines) + "\n")
    run = load_run(path)
    assert len(run) == 15 and sum(map(len, run.values())) == 100 and run["q3"]["d21"] == 79.5
    assert [hit[:2] for hit in iter_run(path)] == [(f"q{i // 7}", f"d{i}") for i in range(100)]
    path.write_text("".join(lines[:80]) + "q11 Q0 d80 4 bad r\n" + "".join(lines[81:]))
    with pytest.raises(DataFormatError, match=f"^{path}:81: "):
        load_run(path)
    path.write_text("".join(lines[:50]) + lines[45])
    with pytest.raises(DataFormatError, match=f"^{path}:51: passage 'd45' appears twice for query 'q6' \\(first on line 46\\)$"):
        load_run(path)
    # Blank lines (which send a block to the line-by-line parser) do not shift the line numbers.
    path.write_text("".join(lines[:30]) + "\n  \n" + "".join(lines[30:]))
    assert [hit[0] for hit in qrels_module.iter_run_lines(path)] == list(range(1, 31)) + list(range(33, 103))


def test_streaming_a_run_holds_one_small_block_whatever_its_size(tmp_path):
    """build_hn streams a train-query run of 100M lines: the reader's memory is one block of parsed lines (six
    strings a line), which must not grow with the run, and must stay small (16 MiB blocks held 0.5 GB)."""
    import tracemalloc

    peaks = []
    for queries in (200, 800):  # runs of about 1.2 and 4.8 MB
        path = tmp_path / f"run{queries}.trec"
        path.write_text("".join(f"{q} Q0 {q * 1000 + r} {r} {1000 - r}.25 bm25\n" for q in range(queries) for r in range(1, 151)))
        tracemalloc.start()
        try:
            assert sum(1 for _ in qrels_module.iter_run_lines(path)) == queries * 150
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0]


@pytest.mark.parametrize(
    "lines, relevance, conflict",
    [(["q1 0 d1 1", "q2 0 d1 1", "q1 0 d2 0"], 1, ("q1 0 d1 0", "4: query 'q1' passage 'd1' judged 0 here but 1 on line 1")),
     (["query-id\tcorpus-id\tscore", "q1\td1\t2", "q2\td1\t1"], 2,
      ("q1\td1\t1", "4: query 'q1' passage 'd1' judged 1 here but 2 on line 2")),
     (["q1 d1", "q2 d1"], 1, None)],  # two columns: every judgment is 1, so nothing can conflict
    ids=["4 columns", "BEIR", "2 columns"],
)
def test_a_pair_judged_twice_differently_names_both_lines(tmp_path, lines, relevance, conflict):
    path = tmp_path / "qrels"
    path.write_text("\n".join(lines + [lines[1] if lines[0].startswith("query-id") else lines[0]]) + "\n")
    assert load_qrels(path)["q1"]["d1"] == relevance  # the same judgment twice is read once
    if conflict is None:
        return
    path.write_text("\n".join(lines + [conflict[0]]) + "\n")
    with pytest.raises(DataFormatError) as info:
        load_qrels(path)
    assert str(info.value) == f"{path}:{conflict[1]}; keep one of the two lines"


def test_run_scores_round_trip_float32_and_keep_the_retrieved_order(tmp_path):
    import numpy as np

    from openmatch.evaluation import evaluate
    from openmatch.preprocessing import iter_run_groups

    # faiss scores are float32: neighbours that differ only beyond the 6th decimal, and magnitudes that
    # a fixed-point format cannot hold. Retrieved order a, b, c; pid descending (the tie rule) is c, b, a.
    close = np.array([0.123456789, 0.12345671, 0.1234563], dtype=np.float32)
    wide = np.array([3.4e38, 1.25e-7, -2.5e-12, -0.0], dtype=np.float32)
    results = [("q1", list(zip(["a", "b", "c"], close.tolist()))), ("q2", list(zip(["w", "x", "y", "z"], wide.tolist())))]
    path = tmp_path / "run.trec"
    write_trec_run(path, results)
    run = load_run(path)
    for qid, hits in results:
        read = np.array([run[qid][pid] for pid, _ in hits]).astype(np.float32)
        assert read.tolist() == [score for _, score in hits], qid  # every float32 score comes back exactly
    assert load_ranked_run(path) == {"q1": ["a", "b", "c"], "q2": ["w", "x", "y", "z"]}
    # -0.0 scores above -2.5e-12, which the list puts before it: build_hn follows the ranks and says so.
    with pytest.warns(OpenMatchWarning, match="contradicts the scores in 1 queries .*'q2', line 7"):
        assert [pids for _, _, pids in iter_run_groups(path, depth=10)] == [["a", "b", "c"], ["w", "x", "y", "z"]]
    # Evaluation orders by score: the order written is the order evaluated.
    qrels = {"q1": {"a": 1}, "q2": {"w": 1}}
    assert evaluate(qrels, run, ["mrr"], per_query=True)["mrr"] == {"q1": 1.0, "q2": 1.0}
    assert evaluate({"q1": {"b": 1}}, run, ["mrr"])["mrr"] == 0.5
    assert evaluate({"q1": {"c": 1}}, run, ["mrr"])["mrr"] == pytest.approx(1 / 3)


def test_every_float32_score_reads_back_exactly(tmp_path):
    """9 significant digits are what a float32 needs: with 8, about 1% of values read back as a neighbour
    (117.290405 comes back as 117.29041), which reorders close hits and moves ties."""
    import numpy as np

    rng = np.random.default_rng(0)
    # Any finite float32 (every exponent, subnormals, both signs) ...
    bits = rng.integers(0, 2**32, 60_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # ... and the scores retrievers produce: cosines, dot products of unnormalised vectors, negatives.
    typical = rng.standard_normal(40_000) * 10.0 ** rng.integers(-3, 4, 40_000)
    scores = np.concatenate([[117.290405], bits[np.isfinite(bits)], typical]).astype(np.float32)
    n_queries = len(scores) // 100
    scores = scores[: n_queries * 100]
    results = [(f"q{i}", [(f"d{j}", float(s)) for j, s in enumerate(scores[i * 100 : (i + 1) * 100])])
               for i in range(n_queries)]
    path = tmp_path / "run.trec"
    write_trec_run(path, results)

    def read_back(run) -> np.ndarray:
        return np.array([run[f"q{i}"][f"d{j}"] for i in range(n_queries) for j in range(100)]).astype(np.float32)

    np.testing.assert_array_equal(read_back(load_run(path)), scores)
    streamed = np.array([score for _, _, _, score in iter_run(path)]).astype(np.float32)
    np.testing.assert_array_equal(streamed, scores)
    assert path.read_text().splitlines()[0] == "q0 Q0 d0 1 117.290405 OpenMatch"
    # A blank line sends the block through the line-by-line parser, which must read the same numbers.
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5000]) + "\n" + "".join(lines[5000:]))
    np.testing.assert_array_equal(read_back(load_run(path)), scores)
