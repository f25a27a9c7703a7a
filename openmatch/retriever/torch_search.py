"""Exact inner-product top-k with torch: one matmul and one ``topk`` per block of passages, on any device.

The GPU alternative to faiss for exact search (no faiss-gpu needed): passages stream in blocks (float16 or
float32, e.g. mmap'd shards), each block is multiplied with all queries on the device with float32 results,
and the block's top-k is merged into the running top-k there, so the host sees only ``queries × k`` results.
Equal scores are ordered by global row descending, whatever the block boundaries: the total order of
:func:`openmatch.retriever.search.merge_topk` (how one ``IndexFlatIP`` lists equal scores). ``topk`` is asked for
the extra candidates when a tie reaches the k-th place, and every merge sorts by (score, row).
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch


def _matmul_f32(queries: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """``queries @ block.T`` as float32; half-precision blocks are multiplied in their own precision on GPU
    (tensor cores) with float32 output where ``torch.mm`` offers ``out_dtype``, so scores keep ~7 digits."""
    if block.dtype == torch.float32:
        return queries.float() @ block.T
    queries = queries.to(block.dtype)
    if _mm_has_out_dtype(block.device):
        return torch.mm(queries, block.T, out_dtype=torch.float32)
    return (queries @ block.T).float()


_OUT_DTYPE: dict[str, bool] = {}


def _mm_has_out_dtype(device: torch.device) -> bool:
    """Whether ``torch.mm`` takes ``out_dtype=torch.float32`` for half inputs on ``device`` (checked once)."""
    if device.type not in _OUT_DTYPE:
        try:
            a = torch.zeros(2, 2, dtype=torch.float16, device=device)
            _OUT_DTYPE[device.type] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError):
            _OUT_DTYPE[device.type] = False
    return _OUT_DTYPE[device.type]


def _sorted_by_score_then_row(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's best ``k`` of ``(scores, rows)`` ordered by score descending, then row descending."""
    # Two stable sorts: by row, then by score; the second keeps the row order among equal scores.
    order = torch.argsort(rows, dim=1, descending=True, stable=True)
    scores, rows = scores.gather(1, order), rows.gather(1, order)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), rows.gather(1, order)


def _block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` columns of each row plus every column tied with the k-th (so ties resolve by row later); the
    extra slots of rows with fewer ties hold ``-inf`` / column -1."""
    k = min(k, scores.shape[1])
    values, cols = torch.topk(scores, k, dim=1)
    kth = values[:, -1:]
    # A tie at the k-th place may hide equal scores of lower rows that topk dropped: take them all.
    ties_beyond = (scores == kth).sum(dim=1) - (values == kth).sum(dim=1)
    extra = int(ties_beyond.max()) if ties_beyond.numel() else 0
    if extra > 0:
        values, cols = torch.topk(scores, min(k + extra, scores.shape[1]), dim=1)
        # Keep exactly the columns >= the k-th value; their order is fixed by the caller's sort.
        below = values < kth
        values = values.masked_fill(below, -torch.inf)
        cols = cols.masked_fill(below, -1)
    return values, cols


def exact_topk(
    blocks: Iterable[tuple[int, np.ndarray | torch.Tensor]],
    queries: np.ndarray | torch.Tensor,
    k: int,
    device: str | torch.device = "cpu",
    dtype: Optional[torch.dtype] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ``(scores float32 [nq, k], global rows int64 [nq, k])`` of ``queries`` over ``blocks``.

    ``blocks`` yields ``(global_offset, [rows, dim] array)``, e.g. :meth:`EmbeddingIndex.iter_blocks`.
    ``dtype`` is the precision the passages are multiplied in (default: the block's own, float16 stays
    float16); scores are float32. Fewer than ``k`` passages leave ``-inf`` / ``-1`` slots at the end.
    """
    device = torch.device(device)
    q = torch.as_tensor(np.ascontiguousarray(queries) if isinstance(queries, np.ndarray) else queries).to(device)
    nq = q.shape[0]
    best_scores = torch.full((nq, k), -torch.inf, device=device)
    best_rows = torch.full((nq, k), -1, dtype=torch.int64, device=device)
    for offset, block in blocks:
        b = torch.as_tensor(block) if isinstance(block, np.ndarray) else block
        b = b.to(device, non_blocking=True)
        if dtype is not None:
            b = b.to(dtype)
        if device.type == "cpu" and b.dtype != torch.float32:  # CPU half matmul is slow and not always there
            b = b.float()
        values, cols = _block_topk(_matmul_f32(q, b), k)
        rows = torch.where(cols >= 0, cols + int(offset), -1)
        # Empty slots (-inf, -1) sort last: below every score, and below every row among equal ones.
        best_scores, best_rows = _sorted_by_score_then_row(
            torch.cat([best_scores, values], dim=1), torch.cat([best_rows, rows], dim=1), k
        )
    return best_scores.cpu().numpy(), best_rows.cpu().numpy()
