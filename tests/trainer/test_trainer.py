"""DRTrainer: loss math, GradCache gradients, resume replay, TensorBoard scalars, learning a synthetic task."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, TrainerCallback

from openmatch.arguments import DataArguments, DRTrainingArguments, ModelArguments, parse_args
from openmatch.dataset.train_dataset import TrainCollator
from openmatch.driver.train_dr import build_trainer, main, resolve_resume
from openmatch.modeling import DRModel
from openmatch.trainer import GradCache
from tests.tiny_models import synthetic_words


def write_synthetic_task(model_dir, path, n, seed, n_words=100, p_words=6, q_words=3, n_neg=6):
    """A query is a few words of its positive passage; its negatives are other examples' positives (so the
    task cannot be solved by memorising which passages are negatives)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    vocab = synthetic_words(n_words)
    passages = [rng.sample(vocab, p_words) for _ in range(n)]

    def enc(words):
        return tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]

    with open(path, "w") as handle:
        for i in range(n):
            negatives = [passages[j] for j in rng.sample([j for j in range(n) if j != i], n_neg)]
            record = {"query": enc(rng.sample(passages[i], q_words)), "positives": [enc(passages[i])],
                      "negatives": [enc(p) for p in negatives]}
            handle.write(json.dumps(record) + "\n")
    return Path(path)


def arg_list(out, model, train, *extra, eval_path=None):
    argv = [
        "--output_dir", str(out), "--model_name_or_path", str(model), "--train_path", str(train),
        "--per_device_train_batch_size", "8", "--train_n_passages", "4", "--q_max_len", "16", "--p_max_len", "32",
        "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
        "--seed", "0", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
    ]
    if eval_path:
        argv += ["--eval_path", str(eval_path), "--per_device_eval_batch_size", "32"]
    return argv + [str(x) for x in extra]


def make_trainer(*args, callbacks=None, **kwargs):
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, DRTrainingArguments), arg_list(*args, **kwargs)
    )
    return build_trainer(model_args, data_args, training_args, callbacks=callbacks)


def no_dropout(model_dir, tmp_path) -> Path:
    """A copy of a tiny model folder with dropout switched off (exact gradient comparisons)."""
    import shutil

    dst = tmp_path / (Path(model_dir).name + "_nodrop")
    shutil.copytree(model_dir, dst)
    config = json.loads((dst / "config.json").read_text())
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout_rate"):
        if key in config:
            config[key] = 0.0
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def bert_task(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert_task")
    return (write_synthetic_task(tiny_bert, folder / "train.jsonl", 96, 0),
            write_synthetic_task(tiny_bert, folder / "val.jsonl", 40, 1))


def grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def naive_loss(q, p, temperature=1.0, removed=None):
    """The contrastive loss written out; ``removed[i]``: columns left out of query ``i``'s softmax."""
    n = p.size(0) // q.size(0)
    total = 0.0
    for i in range(q.size(0)):
        skip = (removed or {}).get(i, [])
        scores = [float(q[i] @ p[j]) / temperature if j not in skip else -math.inf for j in range(p.size(0))]
        top = max(scores)
        log_z = top + math.log(sum(math.exp(s - top) for s in scores))
        total += log_z - scores[i * n]
    return total / q.size(0)


def in_batch_positives(dataset, indices, batch) -> dict[int, list[int]]:
    """Query -> passage rows of the batch that hold one of its positives (by token ids), its target left out."""
    ids, attention = batch["passage"]["input_ids"], batch["passage"]["attention_mask"].bool()
    rows = [ids[r][attention[r]].tolist() for r in range(ids.size(0))]
    n = len(rows) // len(indices)
    removed = {}
    for i, index in enumerate(indices):
        positives = [dataset.layout.wrap(p, dataset.p_max_len) for p in dataset.raw(index)["positives"]]
        removed[i] = [j for j, row in enumerate(rows) if j != i * n and row in positives]
    return removed


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("temperature", ["1", "0.5"])
def test_loss_and_gradients_through_trainer_match_manual_encodings(tmp_path, tiny_bert, bert_task, temperature, mask):
    model_dir = no_dropout(tiny_bert, tmp_path)
    trainer = make_trainer(tmp_path / "out", model_dir, bert_task[0], "--temperature", temperature,
                           "--gradient_accumulation_steps", "2", *([] if mask else ["--no_mask_false_negatives"]))
    model = trainer.model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(5)])
    # The synthetic task's negatives are other examples' positives: this batch holds some of its queries'
    # positives as other queries' negatives, which the default loss leaves out of those queries' softmax.
    removed = in_batch_positives(trainer.train_dataset, range(5), batch) if mask else {}
    assert not mask or sum(map(len, removed.values())) > 0
    with torch.no_grad():
        q, p = model.encode_query(batch["query"]), model.encode_passage(batch["passage"])
        loss = trainer.compute_loss(model, batch)
    assert p.size(0) == 20
    assert loss.item() == pytest.approx(naive_loss(q, p, float(temperature), removed), rel=1e-5)

    # training_step back-propagates loss / accumulation steps and returns that value
    trainer.current_gradient_accumulation_steps = 2
    model.zero_grad()
    returned = trainer.training_step(model, batch)
    got = grads(model)
    model.zero_grad()
    q, p = model.encode_query(batch["query"]), model.encode_passage(batch["passage"])
    scores = q @ p.T / float(temperature)
    for i, columns in removed.items():
        scores[i, columns] = -math.inf
    reference = torch.nn.functional.cross_entropy(scores, torch.arange(5) * 4) / 2
    reference.backward()
    assert returned.item() == pytest.approx(reference.item(), rel=1e-5)
    want = grads(model)
    assert got.keys() == want.keys() and len(got) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def step_both(plain, cached, n: int = 8) -> None:
    """One training step of each trainer on the same first ``n`` examples, from zeroed gradients; their
    losses must agree (the gradients are the caller's to compare)."""
    batch = plain.data_collator([plain.train_dataset[i] for i in range(n)])
    for trainer in (plain, cached):
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.zero_grad()
    loss_plain = plain.training_step(plain.model, batch)
    loss_cached = cached.training_step(cached.model, batch)
    assert loss_cached.item() == pytest.approx(loss_plain.item(), rel=1e-5)


@pytest.mark.parametrize("which, extra", [("bert", ["--untie_encoder", "--add_linear_head",
                                                    "--projection_in_dim", "32", "--projection_out_dim", "16"]),
                                          ("t5", [])])
def test_grad_cache_gives_the_plain_step_gradients(tmp_path, tiny_bert, tiny_t5, which, extra):
    base = tiny_bert if which == "bert" else tiny_t5
    model_dir = no_dropout(base, tmp_path)
    train = write_synthetic_task(base, tmp_path / "train.jsonl", 16, 0)
    plain = make_trainer(tmp_path / "a", model_dir, train, *extra)
    cached = make_trainer(tmp_path / "b", model_dir, train, *extra, "--grad_cache", "--gc_q_chunk_size", "3",
                          "--gc_p_chunk_size", "5")
    cached.model.load_state_dict(plain.model.state_dict())  # an untied model's towers are initialised randomly
    step_both(plain, cached)
    want, got = grads(plain.model), grads(cached.model)
    assert got.keys() == want.keys()
    for name in want:  # chunked float32 sums differ from the whole-batch ones in the last bits
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_grad_cache_replays_dropout_masks(tmp_path, tiny_bert, bert_task):
    trainer = make_trainer(tmp_path / "out", tiny_bert, bert_task[0])  # dropout 0.1 on
    model = trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    cache = GradCache(2, 7, loss_fn=trainer.loss_fn)
    torch.manual_seed(1)
    cache(model, batch["query"], batch["passage"], check_replay=True)  # asserts re-forward == first forward
    with pytest.raises(AssertionError):  # and the check is not vacuous: without replay the masks differ
        torch.testing.assert_close(model.encode_query(batch["query"]), model.encode_query(batch["query"]))


class StopAt(TrainerCallback):
    """Simulates a crash: stops the run (without saving) after a given step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def step_losses(trainer):
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_inside_a_later_epoch_replays_the_same_losses(tmp_path, tiny_bert, bert_task, workers):
    # 96 examples / batch 8 = 12 steps per epoch; 2 epochs; checkpoints at steps 7 and 14; crash at step 17.
    # The checkpoint the run resumes from lies inside epoch 1: the resumed epoch starts from a skipping loader,
    # which must still draw epoch 1's passages (not epoch 0's) in epoch 1's shuffle order. With a loader
    # worker, the epoch must reach the dataset before the worker copies it.
    extra = ["--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "7", "--lr_scheduler_type", "linear",
             "--warmup_steps", "3", "--dataloader_num_workers", str(workers)]
    full = make_trainer(tmp_path / "full", tiny_bert, bert_task[0], *extra)
    full.train()
    expected = step_losses(full)
    assert len(expected) == 24

    out = tmp_path / "crash"
    crashed = make_trainer(out, tiny_bert, bert_task[0], *extra, callbacks=[StopAt(17)])
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-14", "checkpoint-7"]
    _, _, training_args = parse_args((ModelArguments, DataArguments, DRTrainingArguments),
                                     arg_list(out, tiny_bert, bert_task[0], *extra, "--resume_from_checkpoint", "true"))
    resume = resolve_resume(training_args)
    assert resume == str(out / "checkpoint-14")
    resumed = make_trainer(out, tiny_bert, bert_task[0], *extra)
    resumed.train(resume_from_checkpoint=resume)
    got = step_losses(resumed)  # steps 1-14 come back from the checkpoint's trainer state
    assert sorted(got) == list(range(1, 25))
    for step in got:  # a faithful replay is bitwise equal; other epochs' negatives move the loss by ~1e-3
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step


def test_checkpoint_reloads_to_same_embeddings_and_saves_args(tmp_path, tiny_bert, bert_task):
    out = tmp_path / "out"
    trainer = make_trainer(out, tiny_bert, bert_task[0], "--max_steps", "3", "--pooling", "mean", "--normalize")
    trainer.train()
    trainer.save_model()
    model = trainer.model.eval()
    batch = TrainCollator(0)([trainer.train_dataset[i] for i in range(4)])
    reloaded = DRModel.load(out).eval()
    assert reloaded.config.pooling == "mean" and reloaded.config.normalize
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_passage(batch["passage"]), model.encode_passage(batch["passage"]))
    saved = json.loads((out / "openmatch_args.json").read_text())
    assert saved["ModelArguments"]["pooling"] == "mean"
    assert saved["DataArguments"]["train_n_passages"] == 4
    assert saved["DRTrainingArguments"]["max_steps"] == 3


def test_refuses_to_train_over_a_previous_run(tmp_path, tiny_bert, bert_task, capsys):
    out = tmp_path / "out"
    (out / "checkpoint-10").mkdir(parents=True)
    argv = arg_list(out, tiny_bert, bert_task[0], "--max_steps", "1")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--overwrite_output_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(arg_list(tmp_path / "x", tiny_bert, bert_task[0], "--negatives_x_device"))
    assert "needs a distributed launch" in capsys.readouterr().err


def test_latest_complete_checkpoint_skips_and_removes_cut_off_saves(tmp_path, caplog):
    from openmatch.trainer.dr_trainer import incomplete_reason, latest_complete_checkpoint

    def checkpoint(step, files):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        return folder

    complete = {"openmatch_config.json": "{}", "trainer_state.json": '{"global_step": 1}'}
    checkpoint(2, complete)
    good = checkpoint(10, complete)  # numeric order: checkpoint-10 is newer than checkpoint-9
    checkpoint(9, complete)
    no_state = checkpoint(12, {"openmatch_config.json": "{}", "optimizer.pt": ""})
    cut_state = checkpoint(11, {"openmatch_config.json": "{}", "trainer_state.json": '{"global_st'})
    no_model = checkpoint(13, {"trainer_state.json": "{}", ".model.safetensors.ab12.tmp": ""})
    (tmp_path / "checkpoint-14.txt").write_text("")  # not a checkpoint folder
    assert incomplete_reason(no_state) == "no trainer_state.json"
    assert incomplete_reason(cut_state) == "trainer_state.json is cut off"
    assert incomplete_reason(no_model) == "no openmatch_config.json"
    assert incomplete_reason(good) is None

    assert latest_complete_checkpoint(tmp_path) == good
    assert no_state.exists() and cut_state.exists() and no_model.exists()  # only the saving rank removes
    with caplog.at_level("WARNING", logger="openmatch.trainer.dr_trainer"):
        assert latest_complete_checkpoint(tmp_path, remove_incomplete=True) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-14.txt", "checkpoint-2",
                                                          "checkpoint-9"]
    assert "checkpoint-13 is incomplete (no openmatch_config.json" in caplog.text
    assert latest_complete_checkpoint(tmp_path / "nowhere") is None


def test_save_errors_become_one_line_for_a_full_disk(tmp_path):
    import errno

    from openmatch.errors import ResourceError
    from openmatch.trainer.dr_trainer import save_error

    full = save_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.pt")), tmp_path)
    assert isinstance(full, ResourceError)
    assert str(full).startswith(f"{tmp_path / 'x.pt'}: no space left on device while saving {tmp_path}")
    other = OSError(errno.EIO, "Input/output error")
    assert save_error(other, tmp_path) is other  # not the user's to fix: keeps its traceback


def read_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in Path(logdir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


LEARNERS = {
    "t5_decoder": ("tiny_t5", ["--num_train_epochs", "2", "--learning_rate", "2e-3"]),
    "t5_encoder_only": ("tiny_t5", ["--encoder_only", "--pooling", "mean"]),
    "bert": ("tiny_bert", ["--pooling", "mean"]),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_tiny_models_learn_a_synthetic_retrieval_task(tmp_path, request, name, monkeypatch):
    fixture, extra = LEARNERS[name]
    model_dir = request.getfixturevalue(fixture)
    if fixture == "tiny_t5":
        # T5 applies dropout to its stacks' final output, i.e. straight onto the representation; over the 32
        # dimensions of a tiny random T5 that noise swamps the signal (T5-base has 768), so it is switched off.
        model_dir = no_dropout(model_dir, tmp_path)
    train = write_synthetic_task(model_dir, tmp_path / "train.jsonl", 512, 0)
    val = write_synthetic_task(model_dir, tmp_path / "val.jsonl", 48, 1)
    logdir = tmp_path / "tb"
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    argv = arg_list(tmp_path / "out", model_dir, train, "--learning_rate", "3e-3",
                    "--per_device_train_batch_size", "16", "--num_train_epochs", "3", "--logging_steps", "4",
                    "--evaluation_strategy", "steps", "--eval_steps", "16", "--report_to", "tensorboard",
                    "--logging_dir", logdir, *extra, eval_path=val)
    model_args, data_args, training_args = parse_args((ModelArguments, DataArguments, DRTrainingArguments), argv)
    trainer = build_trainer(model_args, data_args, training_args)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(name, before, after)
    assert after["eval_mrr@10"] > before["eval_mrr@10"] + 0.1
    assert after["eval_loss"] < before["eval_loss"]
    scalars = read_scalars(logdir)
    assert {"train/loss", "train/learning_rate", "eval/loss", "eval/mrr@10", "eval/recall@10", "eval/recall@100"} <= set(scalars)
    assert len(scalars["eval/mrr@10"]) >= 4


def test_grad_cache_under_bf16_autocast(tmp_path, tiny_bert, bert_task):
    model_dir = no_dropout(tiny_bert, tmp_path)
    plain = make_trainer(tmp_path / "a", model_dir, bert_task[0], "--bf16", "--use_cpu")
    cached = make_trainer(tmp_path / "b", model_dir, bert_task[0], "--bf16", "--use_cpu", "--grad_cache",
                          "--gc_q_chunk_size", "2", "--gc_p_chunk_size", "6")
    batch = plain.data_collator([plain.train_dataset[i] for i in range(6)])
    results = []
    for trainer in (plain, cached):
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.zero_grad()
        with trainer.accelerator.autocast():  # what accelerate wraps the prepared model's forward in
            loss = trainer.training_step(trainer.model, batch)
        results.append((loss, grads(trainer.model)))
    (loss_plain, want), (loss_cached, got) = results
    assert loss_cached.item() == pytest.approx(loss_plain.item(), rel=2e-2)
    assert got.keys() == want.keys()
    for name in want:
        # Gradients span six orders of magnitude across tensors (attention keys ~1e-8, embeddings ~1e-1), so
        # one absolute tolerance would pass an all-zero gradient for most of them. bf16 differences between
        # chunked and whole-batch forwards stay below 1% of each tensor's largest gradient; a zeroed or halved
        # gradient is off by 50-100% of it.
        scale = want[name].abs().max().item()
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=2e-2 * scale,
                                   msg=lambda text, name=name: f"{name}: {text}")
