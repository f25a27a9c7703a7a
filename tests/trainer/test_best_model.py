"""--keep_best: the start model is validated before the first step and kept when training makes validation worse;
a model that improves validation replaces it (openmatch/trainer/best_model.py)."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch
from transformers import AutoTokenizer

from openmatch import api
from openmatch.driver.train_dr import main
from openmatch.modeling import DRModel
from openmatch.trainer.best_model import BEST_DIR, RECORD
from tests.tiny_models import synthetic_words


def write_task(model_dir, path, n, seed, adversarial=False, n_words=100, p_words=6, q_words=3, n_neg=3):
    """A query is a few words of its passage. Honest lines make that passage the positive; adversarial lines
    make another example's passage the positive and the query's own passage a negative, so that training on
    them teaches the opposite of what the (honest) validation set asks."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    vocab = synthetic_words(n_words)
    passages = [rng.sample(vocab, p_words) for _ in range(n)]

    def enc(words):
        return tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]

    with open(path, "w") as handle:
        for i in range(n):
            others = rng.sample([j for j in range(n) if j != i], n_neg + 1)
            positive, negatives = (others[0], [i] + others[1:n_neg]) if adversarial else (i, others[:n_neg])
            record = {"query": enc(rng.sample(passages[i], q_words)), "positives": [enc(passages[positive])],
                      "negatives": [enc(passages[j]) for j in negatives]}
            handle.write(json.dumps(record) + "\n")
    return path


def train_argv(out, model, train, val, *extra):
    return [
        "--output_dir", out, "--model_name_or_path", model, "--pooling", "mean", "--train_path", train,
        "--eval_path", val, "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
        "--train_n_passages", "4", "--q_max_len", "16", "--p_max_len", "32", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "4", "--seed", "0", "--disable_tqdm", "true",
        "--eval_strategy", "steps", "--eval_steps", "6", "--keep_best", *extra,
    ]


def run_train(argv):
    from openmatch.cli import run

    return run(main, [str(a) for a in argv])


def weights(folder):
    return DRModel.load(folder).state_dict()


@pytest.fixture(scope="module")
def validation(tiny_bert, tmp_path_factory):
    return write_task(tiny_bert, tmp_path_factory.mktemp("keep_best") / "val.jsonl", 40, 1)


def test_the_start_model_is_kept_when_training_makes_validation_worse(tiny_bert, validation, tmp_path, caplog):
    train = write_task(tiny_bert, tmp_path / "adversarial.jsonl", 64, 0, adversarial=True)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="openmatch"):
        assert run_train(train_argv(out, tiny_bert, train, validation, "--learning_rate", "3e-3",
                                    "--num_train_epochs", "2")) == 0
    record = json.loads((out / RECORD).read_text())
    history = record["history"]
    assert [entry["step"] for entry in history] == [0, 6, 12, 16]  # before the first step, every 6, after the last
    start = history[0]["value"]
    assert all(entry["value"] < start for entry in history[1:]), history  # training only made it worse
    assert record["kept"] == 0 and record["best"] == history[0] and record["metric"] == "eval_mrr@10"
    assert "kept the start model" in caplog.text
    # --output_dir holds the start model's weights, in our format, and no best_model/ is left over.
    base, _ = api.load_model(tiny_bert, pooling="mean")
    kept = weights(out)
    assert kept.keys() == base.state_dict().keys()
    for name, tensor in base.state_dict().items():
        torch.testing.assert_close(kept[name], tensor, rtol=0, atol=0, msg=name)
    assert (out / "openmatch_config.json").exists() and not (out / BEST_DIR).exists()


def test_a_model_that_improves_validation_replaces_the_start_model(tiny_bert, validation, tmp_path, caplog):
    train = write_task(tiny_bert, tmp_path / "honest.jsonl", 64, 0)
    out = tmp_path / "out"
    # A constant learning rate, so that a run stopped at the best step takes the same steps as this one; four
    # epochs at 3e-3 improve validation up to step 30 of 32 and then lose some of it.
    flags = ["--learning_rate", "3e-3", "--lr_scheduler_type", "constant", "--num_train_epochs", "4"]
    with caplog.at_level(logging.INFO, logger="openmatch"):
        assert run_train(train_argv(out, tiny_bert, train, validation, *flags)) == 0
    record = json.loads((out / RECORD).read_text())
    history = record["history"]
    best = max(history, key=lambda entry: entry["value"])
    assert 0 < best["step"] < history[-1]["step"] and history[-1]["value"] < best["value"], history
    assert best["value"] > history[0]["value"]
    assert record["kept"] == best["step"] and f"kept the model of step {best['step']}" in caplog.text
    # --output_dir holds the best step's weights: those of the same training stopped at that step (where the
    # best is the last model, so nothing is restored), which are not the start model's.
    stopped = tmp_path / "stopped"
    assert run_train(train_argv(stopped, tiny_bert, train, validation, *flags, "--max_steps", best["step"])) == 0
    assert json.loads((stopped / RECORD).read_text())["history"] == history[: history.index(best) + 1]
    kept, expected, base = weights(out), weights(stopped), api.load_model(tiny_bert, pooling="mean")[0].state_dict()
    assert kept.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(kept[name], tensor, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(kept[name], base[name]) for name in base)
    assert (out / "openmatch_config.json").exists() and not (out / BEST_DIR).exists()
