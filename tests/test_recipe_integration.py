"""The MS MARCO recipe of docs/msmarco-tutorial.md, run block by block as subprocesses (bash), verbatim.

The code blocks are taken from the tutorial itself and run with ``bash -e`` and the tutorial's shell
variables (``$PLM_DIR``, ``$COLLECTION_DIR``, ...) pointing into a temporary folder; only sizes and
steps are reduced, by explicit textual substitutions (the validation split of 500 lines, the number of
training steps). The collection is ``scripts/msmarco/make_sample.py --passages 120`` in ``$COLLECTION_DIR/marco``
and ``$PLM_DIR/t5-base-scaled`` is a tiny T5 (tests/tiny_models.py), so the T5 code path of the recipe
(decoder first-token representation) runs as written. The printed metrics must equal pytrec_eval's on the
same run and qrels. Then the recipe's distributed form, ``python -m torch.distributed.launch
--nproc_per_node=2 ...`` for train_dr and build_index on CPU (gloo): the two-process index must equal the
one-process one, and two processes with ``--negatives_x_device`` must train the same model as one process
on the same global batch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.test_docs import code_blocks
from tests.retriever.test_encode import read_index
from tests.trainer.test_trainer import no_dropout
from tests.tiny_models import build_tiny_t5

from tests import REPO, free_port
TUTORIAL = REPO / "docs" / "msmarco-tutorial.md"
VAL_LINES = 8  # the recipe's `tail -n 500` / `- 500`, for a 96-query collection


def tutorial_block(*needles: str) -> str:
    """The one bash block of the tutorial that contains every needle."""
    found = [body for lang, _, body in code_blocks(TUTORIAL) if lang == "bash" and all(n in body for n in needles)]
    assert len(found) == 1, f"{len(found)} tutorial blocks contain {needles}"
    return found[0]


def reduce_training(block: str, steps: int = 4) -> str:
    """The recipe's training command with few steps: save and evaluate every 2 steps."""
    assert "--save_steps 20000" in block and "--eval_steps 20000" in block and "--num_train_epochs 3" in block
    return (block.replace("--save_steps 20000", "--save_steps 2").replace("--eval_steps 20000", "--eval_steps 2")
            .replace("--num_train_epochs 3", f"--num_train_epochs 3 --max_steps {steps}"))


def reduce_split(block: str) -> str:
    assert block.count("500") == 2, block
    return block.replace("500", str(VAL_LINES))


class Recipe:
    """The tutorial's folders and a runner of its blocks."""

    def __init__(self, root: Path):
        self.root = root
        self.vars = {name: root / name.lower() for name in
                     ("PLM_DIR", "COLLECTION_DIR", "PROCESSED_DIR", "CHECKPOINT_DIR", "EMBEDDING_DIR", "RESULT_DIR", "LOG_DIR")}
        self.marco = self.vars["COLLECTION_DIR"] / "marco"
        self.processed = self.vars["PROCESSED_DIR"] / "msmarco" / "t5"
        self.ckpt = self.vars["CHECKPOINT_DIR"] / "msmarco"
        self.emb = self.vars["EMBEDDING_DIR"] / "msmarco"
        self.results = self.vars["RESULT_DIR"] / "marco"
        bindir = os.path.dirname(sys.executable)  # `python` in the blocks is this interpreter
        self.env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                        TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO), PATH=f"{bindir}:{os.environ['PATH']}",
                        **{k: str(v) for k, v in self.vars.items()})

    def bash(self, script: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{script}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
        return proc


def read_trec(path: Path) -> dict[str, list[tuple[str, int, float]]]:
    """A TREC run, checked line by line: 6 fields, Q0, ranks 1.. in order, scores not increasing."""
    runs: dict[str, list[tuple[str, int, float]]] = {}
    for line in path.read_text().splitlines():
        qid, q0, pid, rank, score, _ = line.split(" ") if " " in line else line.split("\t")
        assert q0 == "Q0"
        runs.setdefault(qid, []).append((pid, int(rank), float(score)))
    for hits in runs.values():
        assert [r for _, r, _ in hits] == list(range(1, len(hits) + 1))
        scores = [s for _, _, s in hits]
        assert scores == sorted(scores, reverse=True)
        assert len({p for p, _, _ in hits}) == len(hits)
    return runs


def first_column(path: Path) -> set[str]:
    return {line.split("\t")[0] for line in path.read_text().splitlines() if line}


def check_jsonl(path: Path, min_lines: int) -> int:
    lines = path.read_text().splitlines()
    assert len(lines) >= min_lines, path
    for line in lines:
        ex = json.loads(line)
        assert ex["query"] and ex["positives"] and ex["negatives"], line[:200]
        assert all(isinstance(t, int) for t in ex["query"])
    return len(lines)


def check_reloadable(checkpoint: Path, texts: list[str]) -> np.ndarray:
    from openmatch import api

    assert (checkpoint / "openmatch_config.json").exists()
    model, tok = api.load_model(checkpoint)
    emb = api.encode(model, tok, texts, max_len=32, side="query")
    assert emb.shape[0] == len(texts) and np.isfinite(emb).all()
    return emb


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """Runs the single-process recipe from data preparation to evaluation; the tests check its outputs."""
    r = Recipe(tmp_path_factory.mktemp("recipe"))
    r.bash(f"python scripts/msmarco/make_sample.py --output_dir {r.marco} --passages 120")
    texts = [line.split("\t", 1)[1] for name in ("para.txt", "para.title.txt", "train.query.txt")
             for line in (r.marco / name).read_text().splitlines()]
    build_tiny_t5(r.vars["PLM_DIR"] / "t5-base-scaled", extra_text=texts + ["Title: Text:"])

    # 2. join + awk in marco/ (verbatim), and the same through prepare_marco.sh
    r.bash(tutorial_block("join ", "awk "), cwd=r.marco)
    r.bash(f"bash scripts/msmarco/prepare_marco.sh {r.marco} {r.root / 'prepared'}")
    # 3. build_train, merge, split
    r.bash(tutorial_block("scripts/msmarco/build_train.py"))
    r.bash(reduce_split(tutorial_block("cat split*[0-9].jsonl")))
    # 4. stage 1
    r.bash(reduce_training(tutorial_block("openmatch.driver.train_dr", "$PLM_DIR/t5-base-scaled")))
    # 5. build_index, 6. retrieve the train queries, 7. build_hn + merge + split
    r.bash(tutorial_block("openmatch.driver.build_index", "$EMBEDDING_DIR/msmarco/t5/"))
    r.bash(tutorial_block("openmatch.driver.retrieve", "t5/train.trec"))
    r.bash(tutorial_block("scripts/msmarco/build_hn.py"))
    r.bash(reduce_split(tutorial_block("cat split*.hn.jsonl")))
    # 8. stage 2 from stage 1, 9. build_index + retrieve the dev queries, 10. evaluate
    r.bash(reduce_training(tutorial_block("openmatch.driver.train_dr", "$CHECKPOINT_DIR/msmarco/t5_s2")))
    r.bash(tutorial_block("openmatch.driver.build_index", "t5-s2/dev.trec"))
    r.evaluate = r.bash(tutorial_block("openmatch.driver.evaluate", "--metrics mrr@10,recall@100,recall@1000,ndcg@10,map"))
    return r


def test_prepare(recipe):
    corpus = (recipe.marco / "corpus.tsv").read_text().splitlines()
    assert len(corpus) == 120
    rows = [line.split("\t") for line in corpus]
    assert all(len(row) == 3 for row in rows)
    assert [int(row[0]) for row in rows] == sorted(int(row[0]) for row in rows)
    assert first_column(recipe.marco / "corpus.tsv") == first_column(recipe.marco / "para.txt")
    negatives = (recipe.marco / "train.negatives.tsv").read_text()
    assert first_column(recipe.marco / "train.negatives.tsv") == first_column(recipe.marco / "train.query.txt")
    assert "\r" not in negatives
    for name in ("corpus.tsv", "train.negatives.tsv"):
        assert (recipe.root / "prepared" / name).read_bytes() == (recipe.marco / name).read_bytes(), name


def test_train_files(recipe):
    p = recipe.processed
    total = check_jsonl(p / "train.jsonl", 96)
    assert total == 96  # one line per training query (one positive each)
    assert check_jsonl(p / "val.jsonl", VAL_LINES) == VAL_LINES
    assert check_jsonl(p / "train.new.jsonl", 1) == total - VAL_LINES
    assert (p / "train.new.jsonl").read_text() + (p / "val.jsonl").read_text() == (p / "train.jsonl").read_text()
    hn = check_jsonl(p / "train.hn.jsonl", 90)
    assert check_jsonl(p / "train.new.hn.jsonl", 1) == hn - VAL_LINES


def test_stage_checkpoints(recipe):
    texts = ["grey creature of the salt marshes", "which animal eats fruit"]
    s1 = check_reloadable(recipe.ckpt / "t5", texts)
    s2 = check_reloadable(recipe.ckpt / "t5_s2", texts)
    assert not np.allclose(s1, s2)  # stage 2 trained on
    for stage in ("t5", "t5_s2"):
        assert (recipe.ckpt / stage / "checkpoint-2").is_dir(), "--save_steps 2"
        events = list((recipe.vars["LOG_DIR"] / "msmarco" / stage).rglob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events under --logging_dir for {stage}"
    state = json.loads((recipe.ckpt / "t5" / "checkpoint-4" / "trainer_state.json").read_text())
    assert any("eval_loss" in entry for entry in state["log_history"]), "--evaluation_strategy steps evaluated"
    assert state["global_step"] == 4


def printed_metrics(stdout: str) -> tuple[dict[str, float], int]:
    """The evaluate driver's table: ``{metric: value}`` and the number of judged queries of its header."""
    lines = stdout.strip().splitlines()
    header = re.fullmatch(r"metric\s+value\s+\(over (\d+) judged queries\)", lines[0].strip())
    assert header, stdout
    values = {}
    for line in lines[1:]:
        name, value = line.split()
        values[name] = float(value)
    return values, int(header.group(1))


def pytrec_eval_means(qrels_path: Path, run: dict[str, list[tuple[str, int, float]]]) -> tuple[dict[str, float], int]:
    """The recipe's metrics by trec_eval's code (pytrec_eval), averaged over every judged query.

    MS MARCO's MRR@10 is trec_eval's ``recip_rank`` on each query's top 10 (in trec_eval's order: score, then
    passage id, both descending); a judged query absent from the run scores 0.
    """
    import pytrec_eval

    qrels: dict[str, dict[str, int]] = {}
    for line in qrels_path.read_text().splitlines():
        qid, _, pid, rel = line.split()
        qrels.setdefault(qid, {})[pid] = int(rel)
    judged = [qid for qid, rels in qrels.items() if any(rel > 0 for rel in rels.values())]
    full = {qid: {pid: score for pid, _, score in hits} for qid, hits in run.items()}
    top10 = {qid: dict(sorted(hits.items(), key=lambda h: (h[1], h[0]), reverse=True)[:10]) for qid, hits in full.items()}
    measures = {"recall@100": "recall_100", "recall@1000": "recall_1000", "ndcg@10": "ndcg_cut_10", "map": "map"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"recall", "ndcg_cut", "map"}).evaluate(full)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    means = {"mrr@10": sum(cut.get(q, {}).get("recip_rank", 0.0) for q in judged) / len(judged)}
    for name, measure in measures.items():
        means[name] = sum(per_query.get(q, {}).get(measure, 0.0) for q in judged) / len(judged)
    return means, len(judged)


def test_runs_and_evaluation(recipe):
    train_run = read_trec(recipe.results / "t5" / "train.trec")
    assert set(train_run) == first_column(recipe.marco / "train.query.txt")
    dev_run = read_trec(recipe.results / "t5-s2" / "dev.trec")
    assert set(dev_run) == first_column(recipe.marco / "dev.query.txt")  # the tutorial's dev-query fix
    assert all(len(hits) == 100 for hits in dev_run.values())
    corpus_ids = first_column(recipe.marco / "corpus.tsv")
    assert {p for hits in dev_run.values() for p, _, _ in hits} <= corpus_ids
    printed, judged = printed_metrics(recipe.evaluate.stdout)
    expected, expected_judged = pytrec_eval_means(recipe.marco / "qrels.dev.tsv", dev_run)
    assert judged == expected_judged == 24
    assert list(printed) == ["mrr@10", "recall@100", "recall@1000", "ndcg@10", "map"]
    for name, value in expected.items():
        assert abs(printed[name] - value) <= 5e-5 + 1e-9, (name, printed[name], value)  # printed to 4 decimals
    assert 0 < expected["mrr@10"] < 1 and 0 < expected["map"] < 1  # a vacuous 0 or 1 would hide a mismatch
    index = read_index(recipe.emb / "t5_s2")
    assert sorted(index) == sorted(corpus_ids)


def launch_block(block: str, driver: str) -> str:
    """The tutorial's command under the recipe's launcher: python -m torch.distributed.launch."""
    command = f"python -m openmatch.driver.{driver}"
    assert block.count(command) == 1
    return block.replace(command, f"python -m torch.distributed.launch --nproc_per_node=2 --master_port {free_port()} "
                                  f"-m openmatch.driver.{driver}")


def test_distributed_launch_build_index_equals_one_process(recipe):
    block = tutorial_block("openmatch.driver.build_index", "$EMBEDDING_DIR/msmarco/t5/")
    block = launch_block(block.replace("$EMBEDDING_DIR/msmarco/t5/", "$EMBEDDING_DIR/msmarco/t5_dist/"), "build_index")
    recipe.bash(block)
    manifest = json.loads((recipe.emb / "t5_dist" / "manifest.json").read_text())
    assert manifest["layout"]["world_size"] == 2
    assert {s["rank"] for s in manifest["shards"]} == {0, 1}
    dist, single = read_index(recipe.emb / "t5_dist"), read_index(recipe.emb / "t5")
    assert sorted(dist) == sorted(single) and len(single) == 120
    for pid, vec in single.items():
        np.testing.assert_allclose(dist[pid], vec, atol=1e-5, rtol=0)


def test_distributed_launch_train_dr_equals_one_process(recipe):
    """Stage 2 over 2 processes x 8 queries with ``--negatives_x_device`` takes the same AdamW steps as one
    process x 16 queries: the same global batch, the same in-batch negatives. Both start from the stage-1
    checkpoint with dropout off, which the two layouts would otherwise draw differently."""
    start = no_dropout(recipe.ckpt / "t5", recipe.root)
    block = tutorial_block("openmatch.driver.train_dr", "$CHECKPOINT_DIR/msmarco/t5_s2")
    model_flag = "--model_name_or_path $CHECKPOINT_DIR/msmarco/t5 "
    assert block.count(model_flag) == 1 and block.count("--per_device_train_batch_size 8 ") == 1
    block = reduce_training(block.replace(model_flag, f"--model_name_or_path {start} "))
    dist = block.replace("msmarco/t5_s2", "msmarco/t5_s2_dist").replace("--evaluation_strategy steps",
                                                                         "--evaluation_strategy steps --negatives_x_device")
    proc = recipe.bash(launch_block(dist, "train_dr"))
    assert "process 0 of 2" in proc.stderr + proc.stdout
    single = block.replace("msmarco/t5_s2", "msmarco/t5_s2_single").replace("--per_device_train_batch_size 8 ",
                                                                            "--per_device_train_batch_size 16 ")
    recipe.bash(single)

    out = recipe.ckpt / "t5_s2_dist"
    check_reloadable(out, ["grey creature of the salt marshes"])
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # Each Adam step moves a weight by about the learning rate whatever its gradient's size, so the weights'
    # changes, in units of the learning rate, are compared: other negatives would flip signs (errors ~1).
    lr = 5e-6
    initial = load_file(str(start / "model.safetensors"))
    got = load_file(str(out / "model.safetensors"))
    want = load_file(str(recipe.ckpt / "t5_s2_single" / "model.safetensors"))
    assert got.keys() == want.keys() == initial.keys()
    moved = 0
    for name, value in initial.items():
        delta_want, delta_got = (want[name] - value) / lr, (got[name] - value) / lr
        torch.testing.assert_close(delta_got, delta_want, rtol=0, atol=0.1, msg=name)
        moved += bool(delta_want.abs().max() > 1)
    assert moved > 10  # the models trained: not vacuously equal to the start
