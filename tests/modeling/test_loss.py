"""ContrastiveLoss against a hand-written loop; the false-negative mask (a query's other positives are not its
negatives) against the loss without those columns, from a training file's batch and across two gloo processes;
gather_with_grad and the other distributed helpers with two gloo processes."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.multiprocessing as mp

from openmatch.distributed import dist_context, gather_with_grad, init_distributed, teardown_distributed
from openmatch.modeling import ContrastiveLoss
from openmatch.modeling.loss import batch_false_negative_mask, false_negative_mask
from tests import free_port


def naive_loss(q: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over queries of -log softmax at the query's own positive, written out term by term."""
    n = p.size(0) // q.size(0)
    total = 0.0
    for i in range(q.size(0)):
        scores = [sum(q[i, d] * p[j, d] for d in range(q.size(1))) / temperature for j in range(p.size(0))]
        m = max(s.item() for s in scores)
        log_z = m + torch.log(sum(torch.exp(s - m) for s in scores))
        total = total + (log_z - scores[i * n])
    return total / q.size(0)


@pytest.mark.parametrize("temperature", [1.0, 0.05])
@pytest.mark.parametrize("n", [1, 3])
def test_loss_matches_naive_loop(temperature, n):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(4, 5, generator=g, dtype=torch.float64)
    p = torch.randn(4 * n, 5, generator=g, dtype=torch.float64)
    got = ContrastiveLoss(temperature)(q, p)
    want = naive_loss(q, p, temperature)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)


def test_loss_gradients_match_naive():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    gq, gp = torch.autograd.grad(ContrastiveLoss(0.5)(q, p), (q, p))
    nq, np_ = torch.autograd.grad(naive_loss(q, p, 0.5), (q, p))
    torch.testing.assert_close(gq, nq)
    torch.testing.assert_close(gp, np_)
    assert torch.autograd.gradcheck(lambda a, b: ContrastiveLoss(0.5)(a, b), (q, p))


def test_loss_known_value():
    # Orthogonal unit vectors: the positive scores 1, the others 0 -> loss = log(P - 1 + e) - 1.
    p = torch.eye(4)
    q = p[[0, 2]]  # query 0's positive is row 0, query 1's is row 2 (n = 2)
    assert ContrastiveLoss()(q, p).item() == pytest.approx(math.log(3 + math.e) - 1, rel=1e-6)


def test_half_precision_reps_give_float32_loss():
    q, p = torch.randn(2, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    loss = ContrastiveLoss()(q, p)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ContrastiveLoss()(q.float(), p.float()).item(), rel=1e-6)


def test_loss_ignores_autocast():
    g = torch.Generator().manual_seed(3)
    q, p = torch.randn(4, 16, generator=g), torch.randn(8, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ContrastiveLoss(0.05)(q, p)
    assert loss.dtype == torch.float32
    assert loss.item() == ContrastiveLoss(0.05)(q, p).item()


def test_bad_shapes_are_clear_errors():
    loss = ContrastiveLoss()
    with pytest.raises(ValueError, match="multiple of the number of queries"):
        loss(torch.randn(3, 4), torch.randn(7, 4))
    with pytest.raises(ValueError, match="query dim 4 != passage dim 5"):
        loss(torch.randn(2, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="2-D"):
        loss(torch.randn(4), torch.randn(4, 4))
    with pytest.raises(ValueError, match="multiple"):
        loss(torch.randn(0, 4), torch.randn(0, 4))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss(0.0)


# ---------------------------------------------------------------- in-batch false negatives

# Three queries, two passages each (positive first). Keys name the passages: query 0's positive A comes back
# as query 2's negative (row 5); query 1's positive B is repeated as its own negative (row 3); N1, query 0's
# negative, is also one of query 2's positives; X, a positive of query 1, is not in the batch.
A, N1, B, C, X = 11, 12, 13, 14, 15
PASSAGE_KEYS = torch.tensor([A, N1, B, B, C, A])
POSITIVE_KEYS = torch.tensor([[A, A], [B, X], [C, N1]])  # query 0 has one positive: its row is padded with it
MASKED = {0: [5], 1: [3], 2: [1]}  # query -> columns that are its positives but not its target


def loss_without_columns(q, p, temperature, removed):
    """Mean over queries of -log softmax at the positive, each query's softmax over the columns it keeps."""
    n = p.size(0) // q.size(0)
    total = 0.0
    for i in range(q.size(0)):
        keep = [j for j in range(p.size(0)) if j not in removed.get(i, [])]
        scores = q[i] @ p[keep].T / temperature
        total = total + torch.logsumexp(scores, 0) - scores[keep.index(i * n)]
    return total / q.size(0)


def test_false_negative_mask_marks_each_querys_positives():
    mask = false_negative_mask(PASSAGE_KEYS, POSITIVE_KEYS)
    want = torch.zeros(3, 6, dtype=torch.bool)
    for i, columns in MASKED.items():
        want[i, columns + [2 * i]] = True  # the target column too: the loss keeps that one
    assert torch.equal(mask, want)


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_masked_loss_and_gradients_equal_the_loss_without_those_columns(temperature):
    g = torch.Generator().manual_seed(4)
    # Unit vectors, as the recipe's normalised reps: at temperature 0.05 no single column swamps the softmax.
    q = F.normalize(torch.randn(3, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    p = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    p = torch.cat([p[:3], p[2:3], p[4:5], p[0:1]]).detach().requires_grad_(True)  # rows 3 and 5 repeat 2 and 0
    loss_fn = ContrastiveLoss(temperature)
    masked = loss_fn(q, p, false_negative_mask(PASSAGE_KEYS, POSITIVE_KEYS))
    want = loss_without_columns(q, p, temperature, MASKED)
    assert masked.item() == pytest.approx(want.item(), rel=1e-12)
    assert abs(masked.item() - loss_fn(q, p).item()) > 1e-3  # the masked columns mattered
    gq, gp = torch.autograd.grad(masked, (q, p))
    wq, wp = torch.autograd.grad(want, (q, p))
    torch.testing.assert_close(gq, wq)
    torch.testing.assert_close(gp, wp)
    # An all-False mask is no mask.
    assert loss_fn(q, p, torch.zeros(3, 6, dtype=torch.bool)).item() == loss_fn(q, p).item()


def test_the_target_column_is_never_masked():
    g = torch.Generator().manual_seed(5)
    q, p = torch.randn(2, 4, generator=g), torch.randn(4, 4, generator=g)
    everything = torch.ones(2, 4, dtype=torch.bool)
    # Only the target survives each softmax: -log 1 = 0, not NaN.
    assert ContrastiveLoss()(q, p, everything).item() == 0.0


def test_bad_masks_are_clear_errors():
    q, p = torch.randn(2, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match="bool"):
        ContrastiveLoss()(q, p, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        ContrastiveLoss()(q, p, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="positive_keys"):
        false_negative_mask(torch.zeros(4, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_a_training_files_batch_carries_the_keys_of_shared_and_repeated_positives(tmp_path, tiny_bert):
    """From a JSONL to the mask: two queries with the same positive, a query whose negatives repeat another
    query's positive, a query with two positives."""
    import json

    from transformers import AutoTokenizer

    from openmatch.dataset.train_dataset import TrainCollator, TrainDataset

    P, Q, R, S, T = [10, 11], [20, 21], [30, 31], [40, 41], [50, 51]
    records = [
        {"query": [1], "positives": [P], "negatives": [R]},
        {"query": [2], "positives": [P], "negatives": [S]},       # shares its positive with query 0
        {"query": [3], "positives": [Q, T], "negatives": [P]},    # P is a negative here, T another positive
        {"query": [4], "positives": [R], "negatives": [T]},       # R is query 0's negative; T query 2's positive
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    dataset = TrainDataset([str(path)], AutoTokenizer.from_pretrained(tiny_bert), train_n_passages=2,
                           positive_passage_no_shuffle=True, show_progress=False)
    batch = TrainCollator(pad_id=0)([dataset[i] for i in range(4)])
    assert batch["passage_keys"].shape == (8,) and batch["positive_keys"].shape == (4, 2)
    mask = false_negative_mask(batch["passage_keys"], batch["positive_keys"])
    rows = {i: torch.nonzero(mask[i]).flatten().tolist() for i in range(4)}
    # Passage rows: 0 P, 1 R | 2 P, 3 S | 4 Q, 5 P | 6 R, 7 T.
    assert rows == {0: [0, 2, 5], 1: [0, 2, 5], 2: [4, 7], 3: [1, 6]}


def test_gather_is_identity_without_distributed():
    t = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(t) is t


def test_distributed_helpers_live_in_one_module(monkeypatch):
    """openmatch.modeling re-exports the helpers of openmatch.distributed, not copies of them; the index builder
    agrees on success across ranks with the same helper."""
    import openmatch.modeling
    import openmatch.retriever.builder
    from openmatch.distributed import all_ok

    assert openmatch.modeling.gather_with_grad is gather_with_grad
    assert openmatch.retriever.builder.all_ok is all_ok
    assert all_ok(True) and not all_ok(False)  # no process group: this process's own answer
    # A single-process launch (or none) forms no process group, and the rank comes from the environment.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    init_distributed()
    assert not dist.is_initialized() and dist_context() == (1, 1)
    teardown_distributed()  # nothing to leave: no error


# ---------------------------------------------------------------- two gloo processes

def _global_batch(rows: list[int], n: int, dim: int = 6):
    g = torch.Generator().manual_seed(7)
    q = torch.randn(sum(rows), dim, generator=g, dtype=torch.float64)
    p = torch.randn(sum(rows) * n, dim, generator=g, dtype=torch.float64)
    return q, p


def _worker(rank: int, world_size: int, port: int, n: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        assert dist_context() == (rank, world_size)
        for rows in ([2, 2], [2, 3]):  # even, and a short batch on rank 0
            _check_gather(rank, rows, n)
    finally:
        teardown_distributed()
    assert not dist.is_initialized()


def _check_gather(rank: int, rows: list[int], n: int):
    q_all, p_all = _global_batch(rows, n)
    start = sum(rows[:rank])
    q_local = q_all[start : start + rows[rank]].clone().requires_grad_(True)
    p_local = p_all[start * n : (start + rows[rank]) * n].clone().requires_grad_(True)

    q_gathered, p_gathered = gather_with_grad(q_local), gather_with_grad(p_local)
    torch.testing.assert_close(q_gathered.detach(), q_all, rtol=0, atol=0)
    torch.testing.assert_close(p_gathered.detach(), p_all, rtol=0, atol=0)

    # Other ranks' rows are constants: no gradient path from them to the local tensor.
    other = torch.ones(q_gathered.size(0), dtype=torch.bool)
    other[start : start + rows[rank]] = False
    (g_other,) = torch.autograd.grad(q_gathered[other].sum(), q_local, allow_unused=True, retain_graph=True)
    assert g_other is None or torch.count_nonzero(g_other) == 0

    loss = ContrastiveLoss(0.5)(q_gathered, p_gathered)
    gq, gp = torch.autograd.grad(loss, (q_local, p_local))

    # Single process, whole global batch: the local slices of its gradient must match.
    q_ref, p_ref = q_all.clone().requires_grad_(True), p_all.clone().requires_grad_(True)
    ref_loss = ContrastiveLoss(0.5)(q_ref, p_ref)
    rq, rp = torch.autograd.grad(ref_loss, (q_ref, p_ref))
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    torch.testing.assert_close(gq, rq[start : start + rows[rank]])
    torch.testing.assert_close(gp, rp[start * n : (start + rows[rank]) * n])
    # Summing every rank's local gradient (what DDP does, up to its 1/world_size) gives the full gradient.
    full = torch.zeros_like(rq)
    full[start : start + rows[rank]] = gq
    dist.all_reduce(full)
    torch.testing.assert_close(full, rq)

    # The false-negative mask across ranks: each rank's queries against every rank's passages, rows gathered,
    # although ranks hold different numbers of positives per query; it equals one process's mask and loss.
    keys_all = torch.arange(p_all.size(0)) % 5  # repeated passages, some of them positives of other queries
    positives_all = [[int(keys_all[i * n]), int(keys_all[(i * n + 1) % len(keys_all)])] for i in range(sum(rows))]
    width = 1 + rank  # rank 1 pads its rows wider: the gather must not depend on it
    local_positives = torch.tensor([row[:1] + [row[1]] * width for row in positives_all[start : start + rows[rank]]])
    mask = batch_false_negative_mask(keys_all[start * n : (start + rows[rank]) * n], local_positives, across_ranks=True)
    want_mask = false_negative_mask(keys_all, torch.tensor(positives_all))
    assert torch.equal(mask, want_mask) and mask.sum() > want_mask.size(0)
    loss = ContrastiveLoss(0.5)(gather_with_grad(q_local), gather_with_grad(p_local), mask)
    gq, gp = torch.autograd.grad(loss, (q_local, p_local))
    q_ref, p_ref = q_all.clone().requires_grad_(True), p_all.clone().requires_grad_(True)
    ref_loss = ContrastiveLoss(0.5)(q_ref, p_ref, want_mask)
    rq, rp = torch.autograd.grad(ref_loss, (q_ref, p_ref))
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    torch.testing.assert_close(gq, rq[start : start + rows[rank]])
    torch.testing.assert_close(gp, rp[start * n : (start + rows[rank]) * n])


def test_gather_with_grad_two_processes():
    # fork (as DataLoader workers do on Linux) avoids re-importing torch in each child; the children only
    # touch tiny tensors, so no OpenMP pool state is inherited mid-use.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, free_port(), 3), nprocs=2, join=True, start_method=method)
