"""ContrastiveLoss against a hand-written loop; gather_with_grad and the other distributed helpers with two gloo
processes."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from openmatch.distributed import dist_context, gather_with_grad, init_distributed, teardown_distributed
from openmatch.modeling import ContrastiveLoss
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


def test_gather_with_grad_two_processes():
    # fork (as DataLoader workers do on Linux) avoids re-importing torch in each child; the children only
    # touch tiny tensors, so no OpenMP pool state is inherited mid-use.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, free_port(), 3), nprocs=2, join=True, start_method=method)
