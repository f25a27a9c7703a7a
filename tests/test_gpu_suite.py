"""benchmarks/gpu_suite.sh at its tiny size: every stage runs through the real code paths and the table's
comparisons hold (same first loss for both training steps, torch search = faiss search on float32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests import REPO


def test_gpu_suite_tiny(tmp_path):
    out = tmp_path / "suite.json"
    env = dict(os.environ, PYTHON=sys.executable, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--tiny", "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [row["stage"] for row in rows] == ["encode"] * 3 + ["train", "search"]
    assert all(row["ours"] > 0 for row in rows)
    encode = rows[:3]
    assert [row["what"] for row in encode] == ["T5-tiny decoder first token", "T5-tiny encoder-only mean", "BERT-tiny first"]
    assert all(row["passages"] == result["sizes"]["passages"] for row in encode)  # the whole corpus, each model
    assert encode[0]["reference"] > 0 and encode[1]["reference"] is None is encode[2]["reference"]
    train = rows[3]
    assert train["reference"] > 0 and train["first_loss_gap"] < 1e-4  # same math, different padding
    search = rows[4]
    # float32 on CPU: exact torch top-k equals faiss's, ids and their order (random scores have no ties).
    assert search["same_ids"] == 1.0 and search["same_order"] == 1.0
    # The printed table names the device and holds one line per row.
    assert "openmatch GPU suite on " + result["device"] in proc.stdout
    assert sum(line.startswith(("encode ", "train ", "search ")) for line in proc.stdout.splitlines()) == 5
