"""Distributed build_index on CPU (gloo): the same id -> vector map as one process, each passage once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from openmatch import api
from tests.retriever.test_encode import N_DOCS, corpus, read_index  # noqa: F401  (fixture reuse)

from tests import REPO as ROOT, free_port

REPO = str(ROOT)


def launch(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", *launcher, "-m", "openmatch.driver.build_index", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("launcher,workers", [("torch.distributed.run", 2), ("torch.distributed.launch", 0)],
                         ids=["torchrun-2x2", "launch-2x0"])
def test_two_processes_equal_one(tiny_bert, corpus, tmp_path, launcher, workers):  # noqa: F811
    launcher = [launcher, "--nproc_per_node=2", f"--master_port={free_port()}"]
    flags = ["--model_name_or_path", str(tiny_bert), "--corpus_path", str(corpus), "--doc_template", "<title> <text>",
             "--doc_column_names", "id,title,text", "--p_max_len", "48", "--per_device_eval_batch_size", "8",
             "--max_inmem_docs", "40", "--pooling", "mean", "--dataloader_num_workers", str(workers)]
    proc = launch(launcher, ["--output_dir", str(tmp_path / "dist"), *flags])
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert manifest["layout"] == {"world_size": 2, "shard_size": 20}
    assert {s["rank"] for s in manifest["shards"]} == {0, 1}
    dist = read_index(tmp_path / "dist")  # raises on a passage encoded twice

    model, tok = api.load_model(tiny_bert, pooling="mean")
    api.build_index(model, tok, corpus, tmp_path / "single", max_len=48, batch_size=8, template="<title> <text>",
                    column_names="id,title,text", max_inmem_docs=40, progress=False)
    single = read_index(tmp_path / "single")
    assert sorted(dist) == sorted(single) == [f"d{i:03d}" for i in range(N_DOCS)]
    for rid in single:
        np.testing.assert_allclose(dist[rid], single[rid], atol=1e-5, rtol=0)
    if "torch.distributed.launch" in launcher:
        return
    # A rerun with the same world size finds everything complete and changes nothing.
    before = (tmp_path / "dist" / "embeddings.rank1.shard0.npy").stat().st_mtime_ns
    proc = launch(launcher, ["--output_dir", str(tmp_path / "dist"), *flags])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dist" / "embeddings.rank1.shard0.npy").stat().st_mtime_ns == before
    # A damaged shard of rank 1 is encoded again by rank 1 alone; rank 0's shards and the others stay as they were.
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dist").glob("*.npy") if p.name != "embeddings.rank1.shard1.npy"}
    with open(tmp_path / "dist" / "embeddings.rank1.shard1.npy", "r+b") as handle:
        handle.seek(-8, os.SEEK_END)
        handle.write(b"\x00\x00\x80\x7f\x00\x00\x80\x7f")
    proc = launch(launcher, ["--output_dir", str(tmp_path / "dist"), *flags])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: shard 1 of rank 1 is damaged" in proc.stderr and "of rank 0 is damaged" not in proc.stderr
    assert {name: (tmp_path / "dist" / name).stat().st_mtime_ns for name in kept} == kept
    repaired = read_index(tmp_path / "dist")
    assert sorted(repaired) == sorted(dist)
    for rid in dist:
        np.testing.assert_allclose(repaired[rid], dist[rid], atol=1e-6, rtol=0)


def test_a_rank_killed_midway_then_a_rerun_gives_the_uninterrupted_index(tiny_bert, corpus, tmp_path):  # noqa: F811
    """SIGKILL one rank of a two-process build after its first shard; the rerun completes the same index, file for
    file. Batches of one passage make each embedding's bytes independent of its batch mates (which differ when a
    rerun skips the finished shards), so the files can be compared byte for byte."""
    flags = ["--model_name_or_path", str(tiny_bert), "--corpus_path", str(corpus), "--doc_template", "<title> <text>",
             "--doc_column_names", "id,title,text", "--p_max_len", "48", "--per_device_eval_batch_size", "1",
             "--max_inmem_docs", "40", "--pooling", "mean"]
    launcher = ["torch.distributed.run", "--nproc_per_node=2"]
    clean = launch([*launcher, f"--master_port={free_port()}"], ["--output_dir", str(tmp_path / "clean"), *flags])
    assert clean.returncode == 0, clean.stderr[-3000:]

    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               KILL_RANK="1", KILL_SHARD="1")
    killed = subprocess.run([sys.executable, "-m", *launcher, f"--master_port={free_port()}",
                             os.path.join(REPO, "tests", "retriever", "build_killed.py"), "--output_dir", str(out), *flags],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    left = set(os.listdir(out))
    assert "manifest.json" not in left  # an unfinished build, which search refuses
    assert {"shard.rank1.shard0.json", "embeddings.rank1.shard1.npy", "ids.rank1.shard1.txt"} <= left
    assert "shard.rank1.shard1.json" not in left  # written but not complete
    finished = (out / "embeddings.rank1.shard0.npy").stat().st_mtime_ns

    rerun = launch([*launcher, f"--master_port={free_port()}"], ["--output_dir", str(out), *flags])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / "embeddings.rank1.shard0.npy").stat().st_mtime_ns == finished  # kept, not encoded again
    names = sorted(p.name for p in (tmp_path / "clean").iterdir() if p.suffix in (".npy", ".txt") or p.name.startswith("shard."))
    assert len(names) == 3 * 2 * 3  # 2 ranks × 3 shards × (embeddings, ids, record)
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".npy", ".txt") or p.name.startswith("shard.")) == names
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    resumed, uninterrupted = (json.loads((folder / "manifest.json").read_text()) for folder in (out, tmp_path / "clean"))
    for key in ("total", "shards", "layout", "model", "corpus", "encoding"):
        assert resumed[key] == uninterrupted[key], key
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
