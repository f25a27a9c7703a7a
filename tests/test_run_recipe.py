"""The README's main command, ``scripts/msmarco/run_recipe.sh``, on a clone without the data folder: it runs the
whole recipe on the generated sample, says so in one line, and ends with every row of the table (BM25,
zero-shot, stage 1, stage 2, hybrid) and the significance tests. A tiny model keeps it to about a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests import REPO

ROWS = ("bm25", "zero-shot", "stage-1", "stage-2", "hybrid")


def test_without_the_data_folder_the_recipe_runs_on_the_sample(tiny_bert, tmp_path):
    work = tmp_path / "work"
    env = dict(
        os.environ, OPENMATCH_SHARED_DATA=str(tmp_path / "no-data-here"), PLM_DIR=str(tiny_bert),
        PYTHON=sys.executable, EPOCHS="1", BATCH="8", P_MAX_LEN="64", TRAIN_P_MAX_LEN="32",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(["bash", str(REPO / "scripts" / "msmarco" / "run_recipe.sh"), "", str(work)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no-data-here/scifact-marco not found" in notes[0] and "sample" in notes[0], notes
    assert (work / "sample-marco" / "para.txt").is_file()
    measured = json.loads((work / "results" / "dev.metrics.json").read_text())["runs"]
    assert set(measured) == set(ROWS)
    for row in ROWS:
        assert set(measured[row]["metrics"]) == {"mrr@10", "ndcg@10", "recall@100"}
        assert measured[row]["num_judged_missing_from_run"] == 0
    table = proc.stdout[proc.stdout.index("significance vs baseline 'zero-shot'"):]
    assert all(f"\n{row} " in table for row in ("bm25", "stage-1", "stage-2", "hybrid"))
    assert "significance vs baseline 'bm25'" in proc.stdout
