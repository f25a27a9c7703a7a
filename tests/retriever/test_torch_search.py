"""torch exact top-k (the GPU search path) equals one faiss IndexFlatIP, ties included, whatever the blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmatch.retriever.search import merge_topk
from openmatch.retriever.torch_search import exact_topk


def corpus_with_ties(seed: int = 0):
    rng = np.random.default_rng(seed)
    # Integer-valued vectors: every score is exact in float32 whatever the summation order, so ties are real.
    passages = rng.integers(-3, 4, size=(3000, 16)).astype(np.float32)
    passages[1000:1012] = passages[998]  # a group of equal passages across the 1000-row block boundary
    passages[2040:2050] = passages[7]
    queries = rng.integers(-3, 4, size=(40, 16)).astype(np.float32)
    queries[3], queries[5] = passages[998], passages[7]
    return passages, queries


def reference(passages, queries, k):
    """All scores, then the total order: score descending, row descending (one IndexFlatIP's order for ties)."""
    scores = queries @ passages.T
    rows = np.broadcast_to(np.arange(len(passages)), scores.shape)
    empty = np.empty((len(queries), 0))
    return merge_topk(scores, rows, empty.astype(np.float32), empty.astype(np.int64), k)


@pytest.mark.parametrize("block_rows", [1000, 997, 7, 3000])
@pytest.mark.parametrize("k", [5, 11, 50])
def test_equals_the_total_order_whatever_the_blocks(block_rows, k):
    passages, queries = corpus_with_ties()
    blocks = [(start, passages[start : start + block_rows]) for start in range(0, len(passages), block_rows)]
    scores, rows = exact_topk(blocks, queries, k)
    ref_scores, ref_rows = reference(passages, queries, k)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(scores, ref_scores)


def test_matches_one_faiss_flat_index_on_real_valued_vectors():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    passages = rng.standard_normal((5000, 32)).astype(np.float32)
    queries = rng.standard_normal((30, 32)).astype(np.float32)
    index = faiss.IndexFlatIP(32)
    index.add(passages)
    ref_scores, ref_rows = index.search(queries, 20)
    blocks = [(start, passages[start : start + 1024]) for start in range(0, len(passages), 1024)]
    scores, rows = exact_topk(blocks, queries, 20)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_fewer_passages_than_k_leave_empty_slots():
    passages, queries = corpus_with_ties()
    scores, rows = exact_topk([(0, passages[:4])], queries[:2], 6)
    assert (rows[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
    assert sorted(rows[0, :4].tolist()) == [0, 1, 2, 3]


def test_float16_blocks_are_scored_from_their_float16_values():
    passages, queries = corpus_with_ties()
    half = passages.astype(np.float16)
    blocks = [(start, torch.from_numpy(half[start : start + 500])) for start in range(0, len(half), 500)]
    scores, rows = exact_topk(blocks, queries, 10)
    ref_scores, ref_rows = reference(half.astype(np.float32), queries, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(scores, ref_scores)
