"""Two CPU processes (gloo): cross-device negatives equal one process on the global batch; both launchers work.

Each launch trains ONE step of plain SGD (no warm-up, no clipping, no weight decay), so the change of every
weight is ``-lr * gradient``: comparing the saved models compares the gradients. Dropout is off so that the
two set-ups compute the same function.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_trainer import arg_list, no_dropout, write_synthetic_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.5
SGD_ONE_STEP = ["--max_steps", "1", "--optim", "sgd", "--learning_rate", str(LR), "--lr_scheduler_type", "constant",
                "--warmup_ratio", "0", "--max_grad_norm", "0", "--weight_decay", "0", "--save_strategy", "no",
                "--train_n_passages", "3"]


def run(cmd, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    env.pop("TENSORBOARD_LOGGING_DIR", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def setup(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    model = no_dropout(tiny_bert, tmp)
    train = write_synthetic_task(tiny_bert, tmp / "train.jsonl", 32, 0)
    # Reference: one process, global batch 8 (= 2 ranks × 4).
    out = tmp / "single"
    run([sys.executable, "-m", "openmatch.driver.train_dr",
         *arg_list(out, model, train, *SGD_ONE_STEP, "--per_device_train_batch_size", "8")])
    return tmp, model, train, load_file(str(out / "model.safetensors")), load_file(str(model / "model.safetensors"))


def assert_same_update(got, want, initial):
    moved = 0
    for name, value in want.items():
        delta_want, delta_got = (value - initial[name]) / LR, (got[name] - initial[name]) / LR
        torch.testing.assert_close(delta_got, delta_want, rtol=1e-3, atol=1e-5, msg=name)
        moved += bool(delta_want.abs().max() > 0)
    assert moved > 10  # the gradients are not vacuously zero


def test_torchrun_negatives_x_device_equals_single_process(setup):
    tmp, model, train, want, initial = setup
    out = tmp / "torchrun"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
         "-m", "openmatch.driver.train_dr",
         *arg_list(out, model, train, *SGD_ONE_STEP, "--per_device_train_batch_size", "4", "--negatives_x_device")])
    assert_same_update(load_file(str(out / "model.safetensors")), want, initial)


def test_distributed_launch_with_grad_cache_equals_single_process(setup):
    """The recipe's launcher (``--local-rank=N`` passed to the script), GradCache under DDP (no_sync)."""
    tmp, model, train, want, initial = setup
    out = tmp / "launch"
    proc = run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--master_port=29533",
                "-m", "openmatch.driver.train_dr",
                *arg_list(out, model, train, *SGD_ONE_STEP, "--per_device_train_batch_size", "4",
                          "--negatives_x_device", "--grad_cache", "--gc_q_chunk_size", "3", "--gc_p_chunk_size", "5")])
    assert "process 0 of 2" in proc.stderr
    assert_same_update(load_file(str(out / "model.safetensors")), want, initial)
