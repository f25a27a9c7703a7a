"""Training decoder LLMs with LoRA: learning, resume replay, GradCache, bf16, cross-device negatives (2 processes).

Run as a script (``torchrun ... tests/trainer/test_llm_training.py ARGS``), this file is the training driver.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from openmatch.arguments import DataArguments, DRTrainingArguments, ModelArguments, parse_args
from openmatch.driver.train_dr import resolve_resume
from openmatch.modeling import DRModel
from tests import free_port
from tests.trainer.test_train_distributed import run
from tests.trainer.test_trainer import (StopAt, arg_list, grads, make_trainer, step_both, step_losses,
                                        write_synthetic_task)

LLM = ["--pooling", "last", "--normalize", "--lora", "--query_prefix", "query:", "--passage_prefix", "passage:"]
SHARP = ["--temperature", "0.05"]  # normalised embeddings learn at a low temperature


@pytest.fixture(scope="module")
def qwen_task(tiny_qwen2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen_task")
    return write_synthetic_task(tiny_qwen2, folder / "train.jsonl", 48, 0)


def adapter_grads(model):
    got = grads(model)
    assert got and all("lora_" in name for name in got), sorted(got)[:5]  # the base stays frozen
    return got


def test_lora_model_learns_the_synthetic_task(tiny_qwen2, tmp_path):
    train = write_synthetic_task(tiny_qwen2, tmp_path / "train.jsonl", 512, 0)
    val = write_synthetic_task(tiny_qwen2, tmp_path / "val.jsonl", 48, 1)
    trainer = make_trainer(tmp_path / "out", tiny_qwen2, train, *LLM, *SHARP, "--learning_rate", "5e-3",
                           "--per_device_train_batch_size", "16", "--num_train_epochs", "4", "--logging_steps", "8",
                           eval_path=val)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(before, after)
    assert after["eval_mrr@10"] > before["eval_mrr@10"] + 0.1
    assert after["eval_loss"] < before["eval_loss"]
    trainer.save_model()
    reloaded = DRModel.load(tmp_path / "out")
    assert reloaded.config.lora is not None and reloaded.config.instructions.query == "query:"


def test_resume_from_a_mid_epoch_lora_checkpoint_replays_the_same_losses(tiny_qwen2, qwen_task, tmp_path):
    # 48 examples / batch 8 = 6 steps per epoch, 2 epochs; checkpoints at steps 4 and 8; crash at step 10. The run
    # resumes inside epoch 1 from an adapter-only checkpoint, with LoRA dropout drawing from the restored RNG.
    extra = [*LLM, *SHARP, "--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "4",
             "--lr_scheduler_type", "linear", "--warmup_steps", "2", "--lora_dropout", "0.1"]
    full = make_trainer(tmp_path / "full", tiny_qwen2, qwen_task, *extra)
    full.train()
    expected = step_losses(full)
    assert len(expected) == 12

    out = tmp_path / "crash"
    crashed = make_trainer(out, tiny_qwen2, qwen_task, *extra, callbacks=[StopAt(10)])
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    checkpoint = out / "checkpoint-8"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    _, _, training_args = parse_args((ModelArguments, DataArguments, DRTrainingArguments),
                                     arg_list(out, tiny_qwen2, qwen_task, *extra, "--resume_from_checkpoint", "true"))
    assert resolve_resume(training_args) == str(checkpoint)
    resumed = make_trainer(out, tiny_qwen2, qwen_task, *extra)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    got = step_losses(resumed)
    assert sorted(got) == list(range(1, 13))
    for step in range(9, 13):  # the steps run again after the resume
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step
    final, want = DRModel.load(out / "checkpoint-12"), DRModel.load(tmp_path / "full" / "checkpoint-12")
    for (name, a), b in zip(final.named_parameters(), want.parameters()):
        if "lora_" in name:
            torch.testing.assert_close(a, b, msg=name)


def test_grad_cache_gives_the_plain_lora_step_gradients(tiny_qwen2, qwen_task, tmp_path):
    no_dropout = [*LLM, "--lora_dropout", "0"]
    plain = make_trainer(tmp_path / "a", tiny_qwen2, qwen_task, *no_dropout)
    cached = make_trainer(tmp_path / "b", tiny_qwen2, qwen_task, *no_dropout, "--grad_cache", "--gc_q_chunk_size", "3",
                          "--gc_p_chunk_size", "5")
    cached.model.load_state_dict(plain.model.state_dict())
    with torch.no_grad():  # peft starts B at zero, which makes A's gradient zero: give both some value
        for name, param in plain.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    cached.model.load_state_dict(plain.model.state_dict())
    step_both(plain, cached)
    want, got = adapter_grads(plain.model), adapter_grads(cached.model)
    assert got.keys() == want.keys() and any("lora_A" in name for name in want)
    for name in want:  # chunked float32 sums differ from the whole-batch ones in the last bits
        scale = want[name].abs().max().item()
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5 * scale, msg=lambda text, name=name: f"{name} (largest {scale}): {text}")


def test_lora_step_under_bf16_autocast_and_gradient_checkpointing(tiny_qwen2, qwen_task, tmp_path):
    trainer = make_trainer(tmp_path / "out", tiny_qwen2, qwen_task, *LLM, "--bf16", "--use_cpu",
                           "--gradient_checkpointing", "--max_steps", "2")
    assert trainer.args.bf16
    trainer.train()
    assert trainer.model.is_activation_checkpointing
    losses = step_losses(trainer)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # bf16 runs as autocast over float32 weights; only the adapters are trained, and saved.
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    trainer.save_model()
    assert all("lora_" in name for name in load_file(str(tmp_path / "out" / "adapter_model.safetensors")))

N_EXAMPLES, EPOCHS = 32, 2  # 32 examples / global batch 8 = 4 steps per epoch
SGD = ["--num_train_epochs", str(EPOCHS), "--optim", "sgd", "--learning_rate", "0.5", "--lr_scheduler_type", "constant",
       "--warmup_ratio", "0", "--max_grad_norm", "0", "--weight_decay", "0", "--save_strategy", "no",
       "--train_n_passages", "3", "--lora_dropout", "0", *LLM]  # temperature 1: SGD at 0.5 stays stable


def test_two_process_negatives_x_device_lora_equals_one_process_on_the_global_batch(tiny_qwen2, tmp_path):
    train = write_synthetic_task(tiny_qwen2, tmp_path / "train.jsonl", N_EXAMPLES, 0)
    single = make_trainer(tmp_path / "single", tiny_qwen2, train, *SGD, "--per_device_train_batch_size", "8")
    initial = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.train()
    single.save_model()
    want = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))

    out = tmp_path / "torchrun"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", __file__,
         *arg_list(out, tiny_qwen2, train, *SGD, "--per_device_train_batch_size", "4", "--negatives_x_device")])
    got = load_file(str(out / "adapter_model.safetensors"))
    assert got.keys() == want.keys() and len(want) == 2 * 2 * 7  # A and B of 7 projections in 2 layers
    start = {name: _initial(initial, name) for name in want}
    moved = 0
    for name in want:
        delta_want, delta_got = want[name] - start[name], got[name] - start[name]
        scale = delta_want.abs().max().item()
        torch.testing.assert_close(delta_got, delta_want, rtol=0, atol=3e-2 * scale + 1e-9, msg=name)
        moved += scale > 1e-6
    assert moved == len(want)  # every adapter tensor moved (B from zero, A once B is non-zero)
    config = json.loads((out / "openmatch_config.json").read_text())
    assert config["lora"]["base_fingerprint"] == json.loads(
        (tmp_path / "single" / "openmatch_config.json").read_text())["lora"]["base_fingerprint"]


def _initial(state, adapter_key):
    """The initial value of a saved adapter tensor (peft saves ``...lora_A.weight`` for ``...lora_A.default.weight``)."""
    key = "lm_q." + adapter_key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
        ".lora_B.weight", ".lora_B.default.weight")
    return state[key]


if __name__ == "__main__":
    from openmatch.driver import train_dr

    sys.exit(train_dr.main(sys.argv[1:]))
