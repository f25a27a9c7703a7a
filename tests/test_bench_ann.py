"""benchmarks/bench_ann.py at a tiny size: the index is written, the approximate index built once and reused, and
recall measured against exact search (an IVF probing every list is exact: recall 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests import REPO


def test_bench_ann_tiny(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_ann.py"), "--n", "3000", "--dim", "16", "--queries", "20",
         "--depth", "10", "--index", "IVF8,Flat:nprobe=8", "--index", "IVF8,Flat:nprobe=1", "--folder",
         str(tmp_path / "idx"), "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recall@10" in proc.stdout and "exact (Flat)" in proc.stdout
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [row["index"] for row in rows] == ["exact (Flat)", "IVF8,Flat", "IVF8,Flat"]
    exact, every_list, one_list = rows
    assert exact["recall"] == every_list["recall"] == 1.0 and 0 < one_list["recall"] < 1
    assert every_list["build_s"] is not None and one_list["build_s"] is None  # built once, then reused
    assert (tmp_path / "idx" / "ann.IVF8_Flat.faiss").exists()
