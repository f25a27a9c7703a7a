"""The recipe's command lines parse unchanged on transformers 5 (openmatch/arguments.py)."""

from __future__ import annotations

import json
import math
import re
import shlex
import warnings

import pytest
import torch

from openmatch.arguments import (
    BM25Arguments,
    DataArguments,
    DRTrainingArguments,
    InferenceArguments,
    ModelArguments,
    TextArguments,
    parse_args,
)
from openmatch.errors import UsageError

TRAIN = [ModelArguments, DataArguments, DRTrainingArguments]
INFER = [ModelArguments, DataArguments, InferenceArguments]

# docs' recipe, stage 1, verbatim apart from the paths ($CHECKPOINT_DIR=ckpt, $PLM_DIR=plm, ...).
RECIPE_TRAIN = """
    --output_dir {tmp}/ckpt/msmarco/t5
    --model_name_or_path {tmp}/plm/t5-base-scaled
    --do_train
    --save_steps 20000
    --eval_steps 20000
    --train_path {tmp}/processed/msmarco/t5/train.new.jsonl
    --eval_path {tmp}/processed/msmarco/t5/val.jsonl
    --fp16
    --per_device_train_batch_size 8
    --train_n_passages 8
    --learning_rate 5e-6
    --q_max_len 32
    --p_max_len 128
    --num_train_epochs 3
    --logging_dir {tmp}/logs/msmarco/t5
    --evaluation_strategy steps
"""
RECIPE_BUILD_INDEX = """
    --output_dir {tmp}/emb/msmarco/t5/
    --model_name_or_path {tmp}/ckpt/msmarco/t5
    --per_device_eval_batch_size 256
    --corpus_path {tmp}/marco/corpus.tsv
    --doc_template "Title: <title> Text: <text>"
    --doc_column_names id,title,text
    --q_max_len 32
    --p_max_len 128
    --fp16
    --dataloader_num_workers 1
"""
RECIPE_RETRIEVE = """
    --output_dir {tmp}/emb/msmarco/t5/
    --model_name_or_path {tmp}/ckpt/msmarco/t5
    --per_device_eval_batch_size 256
    --query_path {tmp}/marco/train.query.txt
    --query_template "<text>"
    --query_column_names id,text
    --q_max_len 32
    --fp16
    --trec_save_path {tmp}/results/marco/t5/train.trec
    --dataloader_num_workers 1
"""


def argv(template: str, tmp_path) -> list[str]:
    return shlex.split(template.format(tmp=tmp_path))


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch):
    # --logging_dir exports TENSORBOARD_LOGGING_DIR; monkeypatch restores the environment afterwards.
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "unset-by-test")
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def parse_quietly(types, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse_args(types, args)


def test_recipe_train_command(tmp_path):
    model, data, train = parse_quietly(TRAIN, argv(RECIPE_TRAIN, tmp_path))
    assert model.model_name_or_path == f"{tmp_path}/plm/t5-base-scaled"
    assert data.train_path.endswith("train.new.jsonl") and data.eval_path.endswith("val.jsonl")
    assert (data.train_n_passages, data.q_max_len, data.p_max_len) == (8, 32, 128)
    assert train.do_train and train.save_steps == 20000 and train.eval_steps == 20000
    assert train.learning_rate == 5e-6 and train.num_train_epochs == 3
    assert train.per_device_train_batch_size == 8
    assert str(train.eval_strategy.value if hasattr(train.eval_strategy, "value") else train.eval_strategy) == "steps"
    assert train.logging_dir == f"{tmp_path}/logs/msmarco/t5"
    import os

    assert os.environ["TENSORBOARD_LOGGING_DIR"] == train.logging_dir
    assert "tensorboard" in train.report_to
    # OpenMatch's default warm-up ratio 0.1 (transformers 5 reads warmup_steps < 1 as a fraction).
    assert train.warmup_ratio == 0.1 and train.warmup_steps == pytest.approx(0.1)


def test_recipe_build_index_and_retrieve_commands(tmp_path):
    model, data, infer = parse_quietly(INFER, argv(RECIPE_BUILD_INDEX, tmp_path))
    assert data.doc_template == "Title: <title> Text: <text>"
    assert data.doc_column_names == "id,title,text"
    assert data.corpus_path.endswith("marco/corpus.tsv")
    assert infer.per_device_eval_batch_size == 256 and infer.dataloader_num_workers == 1
    assert infer.output_dir.rstrip("/").endswith("emb/msmarco/t5")

    model, data, infer = parse_quietly(INFER, argv(RECIPE_RETRIEVE, tmp_path))
    assert data.query_template == "<text>" and data.query_column_names == "id,text"
    assert infer.trec_save_path.endswith("results/marco/t5/train.trec")
    assert infer.retrieve_depth == 100


def test_defaults(tmp_path):
    model, data, infer = parse_quietly(INFER, ["--output_dir", str(tmp_path), "--model_name_or_path", "m"])
    assert (data.train_n_passages, data.q_max_len, data.p_max_len) == (8, 32, 128)
    assert infer.retrieve_depth == 100 and infer.max_inmem_docs == 10_000_000
    assert model.pooling == "first" and model.feature == "last_hidden_state"
    assert (model.projection_in_dim, model.projection_out_dim) == (768, 768)
    assert not model.encoder_only and not model.normalize and not model.add_linear_head
    assert model.temperature is None and not model.untie_encoder  # None: the checkpoint's, else 1
    assert data.query_template is None and data.doc_column_names is None
    _, _, train = parse_quietly(TRAIN, ["--output_dir", str(tmp_path), "--model_name_or_path", "m"])
    assert not train.negatives_x_device and not train.grad_cache
    assert not train.fp16


@pytest.mark.parametrize("flags", [["--local_rank", "1"], ["--local-rank=1"], ["--local-rank", "1"]])
def test_local_rank_both_spellings(tmp_path, flags):
    _, _, train = parse_quietly(TRAIN, ["--output_dir", str(tmp_path), "--model_name_or_path", "m", *flags])
    assert train.local_rank == 1


def test_removed_transformers_flags(tmp_path):
    base = ["--output_dir", str(tmp_path), "--model_name_or_path", "m"]
    _, _, train = parse_quietly(TRAIN, base + ["--warmup_ratio", "0.25", "--overwrite_output_dir"])
    assert train.warmup_ratio == 0.25 and train.warmup_steps == pytest.approx(0.25)
    assert train.overwrite_output_dir is True
    _, _, train = parse_quietly(TRAIN, base + ["--warmup_steps", "7", "--warmup_ratio", "0.25"])
    assert train.warmup_steps == 7  # explicit steps win
    _, _, train = parse_quietly(TRAIN, base + ["--evaluation_strategy", "epoch"])
    assert "epoch" in str(train.eval_strategy).lower()
    with pytest.raises(ValueError, match="warmup_ratio"):
        parse_quietly(TRAIN, base + ["--warmup_ratio", "1.5"])


def test_openmatch_flags(tmp_path):
    args = [
        "--output_dir", str(tmp_path), "--model_name_or_path", "m", "--untie_encoder", "--pooling", "mean",
        "--add_linear_head", "--projection_in_dim", "384", "--projection_out_dim", "128", "--encoder_only",
        "--normalize", "--temperature", "0.05", "--negatives_x_device", "--grad_cache", "--gc_q_chunk_size", "2",
        "--gc_p_chunk_size", "16", "--positive_passage_no_shuffle", "--negative_passage_no_shuffle",
        "--train_dir", str(tmp_path),
    ]
    model, data, train = parse_quietly(TRAIN, args)
    assert model.untie_encoder and model.pooling == "mean" and model.add_linear_head
    assert (model.projection_in_dim, model.projection_out_dim) == (384, 128)
    assert model.encoder_only and model.normalize and model.temperature == 0.05
    assert train.negatives_x_device and train.grad_cache and (train.gc_q_chunk_size, train.gc_p_chunk_size) == (2, 16)
    assert data.positive_passage_no_shuffle and data.negative_passage_no_shuffle and data.train_dir == str(tmp_path)
    _, _, infer = parse_quietly(INFER, ["--output_dir", str(tmp_path), "--model_name_or_path", "m", "--use_gpu",
                                        "--faiss_starting_gpu", "1", "--retrieve_depth", "1000", "--max_inmem_docs", "5"])
    assert infer.use_gpu and infer.faiss_starting_gpu == 1 and infer.retrieve_depth == 1000 and infer.max_inmem_docs == 5


def test_single_json_argument(tmp_path):
    config = {
        "output_dir": str(tmp_path / "out"), "model_name_or_path": "m", "train_path": "t.jsonl",
        "train_n_passages": 4, "q_max_len": 16, "pooling": "mean", "learning_rate": 1e-5,
        "evaluation_strategy": "steps", "eval_steps": 10,
    }
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config))
    model, data, train = parse_quietly(TRAIN, [str(path)])
    assert model.pooling == "mean" and data.train_n_passages == 4 and data.q_max_len == 16
    assert train.learning_rate == 1e-5 and "steps" in str(train.eval_strategy).lower()
    assert data.p_max_len == 128  # unspecified fields keep their defaults


def test_model_arguments_record_the_flags_given(tmp_path):
    # A checkpoint's stored configuration is compared with the flags the user gave, defaults included.
    model, _, _ = parse_quietly(TRAIN, ["--output_dir", str(tmp_path), "--model_name_or_path", "m", "--pooling",
                                        "first", "--normalize", "--learning_rate", "1e-5", "--untie_encoder=false"])
    assert model.given_flags == {"model_name_or_path", "pooling", "normalize", "untie_encoder", "output_dir",
                                 "learning_rate"}
    assert model.pooling == "first" and model.normalize and not model.untie_encoder  # values parsed as before
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path), "model_name_or_path": "m", "pooling": "mean"}))
    model, _, _ = parse_quietly(TRAIN, [str(path)])
    assert model.given_flags == {"output_dir", "model_name_or_path", "pooling"}
    assert ModelArguments(model_name_or_path="m").given_flags is None  # built in Python: unknown


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_fp16_without_gpu_warns_once_and_uses_float32(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, train = parse_args(TRAIN, ["--output_dir", str(tmp_path), "--model_name_or_path", "m", "--fp16"])
    fp16_warnings = [w for w in caught if "--fp16" in str(w.message)]
    assert len(fp16_warnings) == 1 and "float32" in str(fp16_warnings[0].message)
    assert train.fp16 is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_bf16_without_gpu_stays_on(tmp_path):
    for types in (TRAIN, INFER):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "falls back to float32" warning: nothing falls back
            _, _, args = parse_args(types, ["--output_dir", str(tmp_path), "--model_name_or_path", "m", "--bf16"])
        assert args.bf16 and args.use_cpu and args.device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_bf16_training_step_on_cpu(tiny_bert, tmp_path):
    """--bf16 without a GPU trains under bfloat16 autocast (float32 master weights), not silently in float32."""
    from openmatch.driver.train_dr import build_trainer

    train = tmp_path / "train.jsonl"
    train.write_text("".join(
        json.dumps({"query": [7 + i, 8], "positives": [[9, 10 + i, 11]], "negatives": [[12, 13 + i]]}) + "\n"
        for i in range(4)
    ))
    argv = ["--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tiny_bert), "--train_path", str(train),
            "--train_n_passages", "2", "--per_device_train_batch_size", "4", "--max_steps", "1", "--bf16",
            "--learning_rate", "1e-3", "--warmup_ratio", "0", "--report_to", "none", "--save_strategy", "no",
            "--disable_tqdm", "true"]
    trainer = build_trainer(*parse_quietly(TRAIN, argv))
    seen = []
    linear = trainer.model.lm_q.encoder.layer[0].intermediate.dense  # autocast keeps layer norms in float32
    linear.register_forward_hook(lambda module, inputs, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters())), "no update"
    assert result.global_step == 1 and math.isfinite(result.training_loss)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--no_such_flag", "1"], "no_such_flag"),
        (["--pooling", "max"], "pooling"),
        (["--train_n_passages", "0"], "train_n_passages"),
        (["--q_max_len", "1"], "q_max_len"),
        (["--temperature", "0"], "temperature"),
    ],
)
def test_bad_flags_fail(tmp_path, capsys, extra, message):
    base = ["--output_dir", str(tmp_path), "--model_name_or_path", "m"]
    with pytest.raises((SystemExit, ValueError)) as err:
        parse_quietly(TRAIN, base + extra)
    text = str(err.value) + capsys.readouterr().err
    assert message in text
    if err.type is SystemExit:
        assert err.value.code != 0


def test_output_dir_required(capsys):
    # argparse's own error, as a UsageError (one line from the commands), without its usage block.
    with pytest.raises(UsageError, match="required: --output_dir"):
        parse_quietly(INFER, ["--model_name_or_path", "m"])
    assert "usage:" not in capsys.readouterr().err


def test_output_dir_required_in_json(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"model_name_or_path": "m"}))
    with pytest.raises(ValueError, match="--output_dir is required"):
        parse_quietly(INFER, [str(path)])


@pytest.mark.parametrize("types, config, message", [
    (INFER, {"model_name_or_path": "m", "output_dir": "o", "per_device_eval_batch_size": "ten"},
     "'per_device_eval_batch_size' must be an integer, got \"ten\""),
    (TRAIN, {"model_name_or_path": "m", "output_dir": "o", "fp16": "yes"}, "'fp16' must be true or false"),
    (TRAIN, {"model_name_or_path": "m", "output_dir": "o", "learning_rate": True}, "'learning_rate' must be a number"),
    (TRAIN, {"model_name_or_path": "m", "output_dir": "o", "pooling": "max"}, "'pooling' must be one of"),
    (TRAIN, ["m"], "one JSON object"),
    ([TextArguments, BM25Arguments], {"corpus_path": "c.tsv"}, "--output_dir is required"),
    ([TextArguments, BM25Arguments], {"output_dir": "o", "retrieve_depth": "10"}, "'retrieve_depth' must be an integer"),
])
def test_json_values_are_checked_as_flags_are(tmp_path, types, config, message):
    """A .json argument file's values reach the dataclasses as they are: what argparse refuses in a flag (a
    missing required flag, a wrong type, a value not among the choices) is a UsageError naming the file."""
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config))
    with pytest.raises(UsageError, match=re.escape(message)) as err:
        parse_quietly(types, [str(path)])
    assert str(err.value).startswith(f"{path}: ")


def test_json_not_json_is_a_usage_error(tmp_path):
    path = tmp_path / "args.json"
    path.write_text('{"model_name_or_path": ')
    with pytest.raises(UsageError, match=f"{re.escape(str(path))}: not JSON"):
        parse_quietly(INFER, [str(path)])


def test_json_values_a_flag_would_take_are_accepted(tmp_path):
    # An int for a float, null for an optional field, and any string for a ``str | bool`` field (transformers'
    # include_num_input_tokens_seen: "all", "non_padding", "no" or a boolean).
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"model_name_or_path": "m", "output_dir": "o", "learning_rate": 1, "eval_steps": None,
                                "include_num_input_tokens_seen": "no", "fp16": False, "pooling": "mean"}))
    model, _, train = parse_quietly(TRAIN, [str(path)])
    assert train.learning_rate == 1 and model.pooling == "mean"
