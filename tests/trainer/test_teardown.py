"""Leaving the process group after DDP training releases DDP's Reducer before the group leaves the registry.

A two-process train_dr once never exited: with the model saved and both ranks done, rank 0 sat in
``~ProcessGroupGloo`` (py-spy), reached from freeing DDP's Reducer when ``main`` returned, the Reducer being the
group's last owner once ``destroy_process_group`` had dropped the registry's reference. That destructor joins
gloo's worker threads with the GIL held, and one of them was waiting for the GIL to free a finished
collective's tensors (PyTorch issue 56297: blocking destructors bound without releasing the GIL). The group's
own Python object releases the GIL when it destroys the group; the Reducer's binding does not. So
``teardown_distributed`` drops the Reducer (and ``dist.Logger``, which holds it) while the group is still
registered. The race is rare (once in several full-suite runs), so this test checks the order, not the hang.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from openmatch.distributed import gather_with_grad, teardown_distributed
from tests import free_port


def _worker(rank: int, world_size: int, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(rank)
    model = DistributedDataParallel(torch.nn.Linear(4, 2))
    for _ in range(2):  # steps with gradient all-reduces, then an all-gather whose tensors are dropped
        model(torch.randn(3, 4)).sum().backward()
    gathered = gather_with_grad(torch.randn(2, 4))
    assert gathered.shape == (2 * world_size, 4)
    del gathered
    assert model.reducer is not None and model.logger is not None
    destroy, seen = dist.destroy_process_group, []

    def destroy_after_the_reducer(*args, **kwargs):
        # When the group leaves the registry, no Reducer may be left to become its last owner.
        seen.append((model.reducer, model.logger, model.process_group))
        destroy(*args, **kwargs)

    dist.destroy_process_group = destroy_after_the_reducer  # a forked child's own module: nothing to restore
    teardown_distributed(model)
    assert seen == [(None, None, None)] and not dist.is_initialized()


def test_teardown_releases_the_ddp_reducer_before_leaving_the_group():
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, free_port()), nprocs=2, join=True, start_method=method)
