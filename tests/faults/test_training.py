"""Fault-matrix cases of the model and training side: model folders that are missing or damaged, lengths the
model cannot take, an output folder that cannot be written or fills up, resuming past a checkpoint that a killed
save left incomplete, flags that contradict a checkpoint, a weight fingerprint that sees every weight and token
ids outside the vocabulary. Each runs the real command (train_dr, build_index, retrieve)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from tests.faults import assert_succeeded, assert_user_error, files_under, run_command
from tests.tiny_models import synthetic_words


# ------------------------------------------------------------------------------------------------ inputs
@pytest.fixture(scope="module")
def train_file(tiny_bert, tmp_path_factory) -> Path:
    """Sixteen training examples in build_train's format, tokenised for the tiny BERT."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rng = random.Random(0)
    words = synthetic_words(200)

    def ids(k):
        return tokenizer(" ".join(rng.sample(words, k)), add_special_tokens=False)["input_ids"]

    path = tmp_path_factory.mktemp("fault_train") / "train.jsonl"
    path.write_text("".join(
        json.dumps({"query": ids(3), "positives": [ids(8)], "negatives": [ids(8), ids(8)]}) + "\n" for _ in range(16)
    ))
    return path


@pytest.fixture
def train_argv(tiny_bert, train_file):
    """train_dr's arguments: a few CPU steps on the tiny BERT, nothing saved unless ``extra`` asks."""

    def argv(out: Path, *extra, model=tiny_bert, train=train_file) -> list:
        return ["--output_dir", out, "--model_name_or_path", model, "--train_path", train,
                "--per_device_train_batch_size", "4", "--train_n_passages", "2", "--q_max_len", "16",
                "--p_max_len", "32", "--learning_rate", "1e-3", "--max_steps", "2", "--report_to", "none",
                "--save_strategy", "no", "--logging_steps", "1", "--seed", "0", "--disable_tqdm", "true",
                "--dataloader_num_workers", "0", "--use_cpu", "true", *extra]

    return argv


@pytest.fixture(scope="module")
def mean_pooled_checkpoint(tiny_bert, tmp_path_factory) -> Path:
    """A train_dr checkpoint of the tiny BERT with mean pooling and a linear head (openmatch_config.json)."""
    from openmatch.modeling import DRModel

    folder = tmp_path_factory.mktemp("fault_ckpt") / "ckpt"
    DRModel.load(tiny_bert, pooling="mean", add_linear_head=True, projection_in_dim=32, projection_out_dim=16).save(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert / name, folder / name)
    return folder


def command_argv(command, out, model, build_index_argv, retrieve_argv, train_argv, built_index, *extra) -> list:
    """The arguments of ``command`` with ``--model_name_or_path model``, writing to ``out``."""
    if command == "train_dr":
        return train_argv(out, *extra, model=model)
    argv = build_index_argv(out, *extra) if command == "build_index" else retrieve_argv(built_index, out, *extra)
    argv[argv.index("--model_name_or_path") + 1] = model
    return argv


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


# --------------------------------------------------------------------- 1. a model that is not there
@pytest.mark.parametrize("command", ["train_dr", "build_index", "retrieve"])
@pytest.mark.parametrize("kind", ["missing_path", "hub_name", "a_file"])
def test_model_that_is_not_a_folder(command, kind, build_index_argv, retrieve_argv, train_argv, built_index,
                                    collection, tmp_path, capfd):
    model = {"missing_path": tmp_path / "no" / "model", "hub_name": "no-such-org/no-such-model",
             "a_file": collection.corpus}[kind]
    out = tmp_path / "out"
    argv = command_argv(command, out, model, build_index_argv, retrieve_argv, train_argv, built_index)
    outcome = run_command(command, argv, capfd)
    line = assert_user_error(outcome, "--model_name_or_path", str(model))
    if kind == "hub_name":
        assert "Hugging Face" in line
    assert files_under(out) == set() and not out.exists()


# ------------------------------------------------------------------------ 2. damaged weight files
@pytest.mark.parametrize("command", ["build_index", "train_dr"])
@pytest.mark.parametrize("damaged", ["model.safetensors", "linear.safetensors", "linear.pt"])
def test_truncated_weights(command, damaged, mean_pooled_checkpoint, build_index_argv, retrieve_argv, train_argv,
                           built_index, tmp_path, capfd):
    model = tmp_path / "model"
    shutil.copytree(mean_pooled_checkpoint, model)
    if damaged == "linear.pt":  # OpenMatch's head file is read when ours is absent
        (model / "linear.safetensors").unlink()
    truncate(model / damaged)
    out = tmp_path / "out"
    argv = command_argv(command, out, model, build_index_argv, retrieve_argv, train_argv, built_index)
    outcome = run_command(command, argv, capfd)
    assert_user_error(outcome, str(model / damaged), "truncated or corrupt")
    assert files_under(out) == set()


# --------------------------------------------------------------------- 3. lengths beyond the model
@pytest.mark.parametrize("command,flag", [("train_dr", "--p_max_len"), ("train_dr", "--q_max_len"),
                                          ("build_index", "--p_max_len"), ("retrieve", "--q_max_len")])
def test_max_len_above_the_position_embeddings(command, flag, tiny_bert, build_index_argv, retrieve_argv, train_argv,
                                               built_index, tmp_path, capfd):
    out = tmp_path / "out"
    argv = command_argv(command, out, tiny_bert, build_index_argv, retrieve_argv, train_argv, built_index)
    argv[argv.index(flag) + 1] = 300  # the tiny BERT has 256 positions
    outcome = run_command(command, argv, capfd)
    assert_user_error(outcome, f"{flag} 300", "256")
    assert files_under(out) == set()


def test_t5_has_no_length_limit(tiny_t5, build_index_argv, tmp_path, capfd):
    # Relative positions: a length beyond every BERT's table is not refused.
    argv = build_index_argv(tmp_path / "emb")
    argv[argv.index("--model_name_or_path") + 1] = tiny_t5
    argv[argv.index("--p_max_len") + 1] = 1024
    assert_succeeded(run_command("build_index", argv, capfd))


# ------------------------------------------------------------------ 4. an output folder that fails
@pytest.mark.parametrize("kind", ["under_a_file", "read_only", "permission_denied"])
def test_output_dir_not_writable(kind, train_argv, tmp_path, capfd, monkeypatch):
    if kind == "under_a_file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    elif kind == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o555)
        out = tmp_path / "ro" / "run"
    else:  # what a read-only folder gives a non-root user, for runs as root
        import tempfile

        def denied(*args, dir=None, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", dir)

        monkeypatch.setattr(tempfile, "mkstemp", denied)
        out = tmp_path / "run"
    outcome = run_command("train_dr", train_argv(out), capfd)
    assert_user_error(outcome, "--output_dir", str(out))
    assert not out.exists()


def _fill_disk_while_writing(path: Path, data: bytes):
    # What a full disk leaves: the file cut short, then ENOSPC naming it.
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize("failing", ["checkpoint_weights", "checkpoint_optimizer", "final_weights"])
def test_disk_full_while_saving(failing, train_argv, collection, tmp_path, capfd, monkeypatch):
    import torch
    import transformers.modeling_utils

    out = tmp_path / "run"
    real_save_file, real_torch_save = transformers.modeling_utils.safe_save_file, torch.save

    def save_file(tensors, filename, metadata=None):
        if failing == "checkpoint_weights" or (failing == "final_weights" and Path(filename).parent == out):
            from safetensors.torch import save

            _fill_disk_while_writing(Path(filename), save(tensors, metadata=metadata))
        return real_save_file(tensors, filename, metadata=metadata)

    def torch_save(obj, f, *args, **kwargs):
        if failing == "checkpoint_optimizer" and str(f).endswith("optimizer.pt"):
            _fill_disk_while_writing(Path(f), b"x" * 1000)
        return real_torch_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)
    monkeypatch.setattr(torch, "save", torch_save)
    outcome = run_command("train_dr", train_argv(out, "--save_strategy", "steps", "--save_steps", "1"), capfd)
    failed_in = out if failing == "final_weights" else out / "checkpoint-1"
    file = failed_in / ("optimizer.pt" if failing == "checkpoint_optimizer" else "model.safetensors")
    assert_user_error(outcome, str(file), "no space left")
    monkeypatch.undo()
    if failing == "final_weights":
        # Both checkpoints were saved before; the final folder never looks complete, and loading it says so.
        assert not (out / "openmatch_config.json").exists()
        assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
        outcome = run_command("build_index", ["--output_dir", tmp_path / "emb", "--model_name_or_path", out,
                                              "--corpus_path", collection.corpus], capfd)
        assert_user_error(outcome, str(out), "incomplete checkpoint")
    else:
        assert not (out / "checkpoint-1").exists(), files_under(out)


# ------------------------------------------------------------- 5. resuming past an incomplete save
def _cut_off(folder: Path, how: str) -> None:
    """Make ``folder`` look like a checkpoint whose save was killed."""
    if how == "killed_in_model_save":
        (folder / "trainer_state.json").unlink()
        (folder / "openmatch_config.json").unlink()
        (folder / ".model.safetensors.x1y2.tmp").write_bytes(b"\0" * 100)  # atomic_output's leftover
    else:  # killed while the trainer state was written
        text = (folder / "trainer_state.json").read_text()
        (folder / "trainer_state.json").write_text(text[: len(text) // 2])


@pytest.mark.parametrize("how", ["killed_in_model_save", "killed_in_trainer_state"])
def test_resume_skips_an_incomplete_newest_checkpoint(how, train_argv, tmp_path, capfd, caplog):
    out = tmp_path / "run"
    argv = train_argv(out, "--save_strategy", "steps", "--save_steps", "1", "--max_steps", "3")
    assert_succeeded(run_command("train_dr", argv, capfd))
    state_path = out / "checkpoint-3" / "trainer_state.json"
    losses = [e["loss"] for e in json.loads(state_path.read_text())["log_history"] if "loss" in e]
    _cut_off(out / "checkpoint-3", how)

    outcome = run_command("train_dr", argv + ["--resume_from_checkpoint", "true"], capfd)
    assert_succeeded(outcome)
    # In-process runs log to pytest's handler, not to stderr.
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.text
    assert "checkpoint-3 is incomplete" in caplog.text and "removed it" in caplog.text
    # checkpoint-3 was written afresh by the resumed run: complete, with no leftover of the killed save, and
    # its log holds steps 1-2 from checkpoint-2's state and step 3 trained again, replaying the first run.
    assert not [name for name in files_under(out / "checkpoint-3") if name.endswith(".tmp")]
    state = json.loads(state_path.read_text())
    assert state["global_step"] == 3
    assert [e["loss"] for e in state["log_history"] if "loss" in e] == pytest.approx(losses, rel=1e-5)


@pytest.mark.parametrize("case", ["explicit_path", "nothing_complete"])
def test_resume_refused_without_a_complete_checkpoint(case, train_argv, tmp_path, capfd):
    out = tmp_path / "run"
    saving = ("--save_strategy", "steps", "--save_steps", "1")
    assert_succeeded(run_command("train_dr", train_argv(out, *saving, "--max_steps", "1"), capfd))
    _cut_off(out / "checkpoint-1", "killed_in_model_save")
    before = files_under(out)
    target = out / "checkpoint-1" if case == "explicit_path" else "true"
    outcome = run_command("train_dr", train_argv(out, *saving, "--resume_from_checkpoint", target), capfd)
    needle = "checkpoint-1: incomplete checkpoint" if case == "explicit_path" else "checkpoint-1 is incomplete"
    assert_user_error(outcome, needle, "(no openmatch_config.json)")
    assert files_under(out) == before  # nothing removed when there is nothing to resume from


# ------------------------------------------------------------ 6. flags that contradict a checkpoint
@pytest.mark.parametrize("command,flags,needles", [
    ("build_index", ("--pooling", "first"), ("--pooling first", "pooling mean")),
    ("build_index", ("--normalize",), ("--normalize True", "normalize False")),
    ("retrieve", ("--projection_out_dim", "8"), ("--projection_out_dim 8", "projection_out_dim 16")),
    ("train_dr", ("--pooling", "first", "--untie_encoder"), ("--pooling first", "--untie_encoder True")),
])
def test_flag_contradicting_the_checkpoint(command, flags, needles, mean_pooled_checkpoint, build_index_argv,
                                           retrieve_argv, train_argv, built_index, tmp_path, capfd):
    out = tmp_path / "out"
    argv = command_argv(command, out, mean_pooled_checkpoint, build_index_argv, retrieve_argv, train_argv,
                        built_index, *flags)
    outcome = run_command(command, argv, capfd)
    assert_user_error(outcome, *needles, str(mean_pooled_checkpoint / "openmatch_config.json"))
    assert files_under(out) == set()


def test_flags_agreeing_with_the_checkpoint(mean_pooled_checkpoint, build_index_argv, tmp_path, capfd):
    argv = build_index_argv(tmp_path / "emb", "--pooling", "mean", "--add_linear_head", "--projection_out_dim", "16")
    argv[argv.index("--model_name_or_path") + 1] = mean_pooled_checkpoint
    assert_succeeded(run_command("build_index", argv, capfd))


# ---------------------------------------------------------------------- 7. every weight counts
def test_query_encoder_differing_beyond_the_first_weights(tiny_bert, built_index, retrieve_argv, tmp_path, capfd):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    state = load_file(model / "model.safetensors")
    embeddings = state["embeddings.word_embeddings.weight"]
    assert embeddings.numel() > 4096  # the change lies past the values the old fingerprint sampled
    embeddings[-1] += 0.5
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    argv = retrieve_argv(built_index, tmp_path / "run.trec")
    argv[argv.index("--model_name_or_path") + 1] = model
    outcome = run_command("retrieve", argv, capfd)
    assert_user_error(outcome, "is not the model that built the index", str(built_index), "its weights differ")
    assert not (tmp_path / "run.trec").exists()


def test_query_encoder_with_other_settings_names_them(built_index, retrieve_argv, tmp_path, capfd):
    """The same model folder with other encoding flags than the index's (the usual mistake: the paths are the
    same) is refused naming each setting, the index's value first."""
    outcome = run_command("retrieve", retrieve_argv(built_index, tmp_path / "run.trec", "--pooling", "mean",
                                                    "--normalize"), capfd)
    assert_user_error(outcome, "is not the model that built the index", "encoding settings differ",
                      "pooling: 'first' -> 'mean'", "normalize: False -> True")
    assert not (tmp_path / "run.trec").exists()


# ------------------------------------------------------------------- 8. token ids out of the vocabulary
def test_token_id_beyond_the_vocabulary(tiny_bert, train_file, train_argv, tmp_path, capfd):
    from transformers import AutoConfig

    vocab_size = AutoConfig.from_pretrained(tiny_bert).vocab_size
    lines = train_file.read_text().splitlines()
    for i in range(2, len(lines)):  # as from a file tokenised for a larger vocabulary: every step meets one
        record = json.loads(lines[i])
        record["query"][0] = vocab_size
        lines[i] = json.dumps(record)
    bad = tmp_path / "train.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    outcome = run_command("train_dr", train_argv(out, train=bad), capfd)
    assert_user_error(outcome, f"{bad}:3:", str(vocab_size), "vocabulary")
    assert not out.exists()
