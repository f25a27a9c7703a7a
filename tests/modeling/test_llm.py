"""Decoder LLM backbones: last-token pooling, EOS through the tokenizer, instructions, LoRA checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from openmatch import api
from openmatch.arguments import ModelArguments
from openmatch.dataset.tokenization import SpecialTokenLayout
from openmatch.errors import InputError, MissingInputError, UsageError
from openmatch.modeling import DRModel, load_model_and_tokenizer
from openmatch.modeling import dr_model
from openmatch.retriever.encode import model_fingerprint

TEXTS = ["kalo mine ruka saka tivo zepa", "quodo fegi", "hoju kalo mine"]
FAMILIES = ["tiny_llama", "tiny_qwen2"]


def load(path, **flags):
    model, tokenizer = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(path), **flags))
    return model.eval(), tokenizer


def padded(tokenizer, texts, side):
    tokenizer.padding_side = side
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def alone(base, ids):
    """The backbone's last hidden state over one unpadded sequence: what pooling must return for it."""
    with torch.no_grad():
        return base(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]


def perturb_adapters(model, seed=0):
    """Adapters whose update is not zero (peft starts B at zero, which would hide a lost adapter)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_last_token_pooling_is_the_eos_state_under_left_and_right_padding(family, tmp_path):
    from tests.tiny_models import build_tiny_llm

    path = build_tiny_llm(tmp_path / family, family)
    model, tokenizer = load(path, pooling="last")
    assert model.config.plm_backbone_type == {"llama": "LlamaModel", "mistral": "MistralModel", "qwen2": "Qwen2Model",
                                              "qwen3": "Qwen3Model"}[family]
    base = AutoModel.from_pretrained(str(path)).eval()
    # The tokenizer now appends EOS (Llama's and Qwen2's append nothing), and it is counted in the length.
    plain = AutoTokenizer.from_pretrained(str(path))
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == plain(text)["input_ids"] + [tokenizer.eos_token_id]
    assert len(tokenizer(TEXTS[0], truncation=True, max_length=4)["input_ids"]) == 4
    assert tokenizer(TEXTS[0], truncation=True, max_length=4)["input_ids"][-1] == tokenizer.eos_token_id
    assert SpecialTokenLayout(tokenizer).suffix == [tokenizer.eos_token_id]  # the training data's path too

    want = torch.stack([alone(base, tokenizer(text)["input_ids"]) for text in TEXTS])
    for side in ("right", "left"):
        batch = padded(tokenizer, TEXTS, side)
        assert (batch["attention_mask"] == 0).any()  # the batch is really padded, on this side
        with torch.no_grad():
            got_q, got_p = model.encode_query(batch), model.encode_passage(batch)
        torch.testing.assert_close(got_q, want, atol=1e-5, rtol=1e-5, msg=side)
        torch.testing.assert_close(got_p, want, atol=1e-5, rtol=1e-5, msg=side)


def test_last_token_pool_reads_the_highest_masked_position():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert dr_model.last_token_pool(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert dr_model.last_token_pool(hidden, left).flatten().tolist() == [3.0, 7.0]


def test_insert_instruction_keeps_leading_special_tokens_and_realigns_padding():
    ids = torch.tensor([[9, 1, 5, 6, 2], [1, 7, 2, 0, 0]])  # row 0 left-padded (pad 9), row 1 right-padded
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    new_ids, new_mask = dr_model.insert_instruction(ids, mask, [40, 41], offset=1)
    assert new_ids.tolist()[0] == [1, 40, 41, 5, 6, 2, 9]
    assert new_ids.tolist()[1][:5] == [1, 40, 41, 7, 2]
    assert new_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]]


@pytest.mark.parametrize("fixture", FAMILIES)
def test_instructions_are_applied_by_the_model_and_kept_in_its_checkpoint(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    model, tokenizer = load(path, pooling="last", query_prefix="query:", passage_prefix="passage:")
    base = AutoModel.from_pretrained(str(path)).eval()
    layout = SpecialTokenLayout(tokenizer)
    instructions = model.config.instructions
    assert instructions.offset == len(layout.prefix) == (1 if fixture == "tiny_llama" else 0)
    assert instructions.query_ids == tokenizer("query:", add_special_tokens=False)["input_ids"]
    batch = padded(tokenizer, TEXTS, "right")
    for side, encode in (("query", model.encode_query), ("passage", model.encode_passage)):
        prefix = getattr(instructions, f"{side}_ids")
        want = []
        for text in TEXTS:
            ids = tokenizer(text)["input_ids"]
            # <s> (Llama only), the instruction, the text, </s>
            want.append(alone(base, ids[: instructions.offset] + prefix + ids[instructions.offset:]))
        with torch.no_grad():
            torch.testing.assert_close(encode(batch), torch.stack(want), atol=1e-5, rtol=1e-5)

    model.save(tmp_path / "ckpt", tokenizer=tokenizer)
    stored = json.loads((tmp_path / "ckpt" / "openmatch_config.json").read_text())
    assert stored["pooling"] == "last"
    assert stored["instructions"]["query"] == "query:" and stored["instructions"]["passage_ids"] == instructions.passage_ids
    # Loaded without the flags (as build_index and retrieve load it), the model encodes with them.
    reloaded = DRModel.load(tmp_path / "ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_query(batch), model.encode_query(batch))
        torch.testing.assert_close(reloaded.encode_passage(batch), model.encode_passage(batch))
    # The instruction is part of what an index records about its encoder.
    assert reloaded.config.encoding_json()["instructions"]["query_ids"] == instructions.query_ids


def test_decoder_models_refuse_first_token_pooling(tiny_qwen2):
    with pytest.raises(UsageError, match="decoder-only model.*--pooling last"):
        load(tiny_qwen2)


def test_bert_config_and_embeddings_are_unchanged_by_the_llm_keys(tiny_bert, tmp_path):
    model, tokenizer = load(tiny_bert, pooling="mean")
    assert set(model.config.encoding_json()) == {
        "tied", "plm_backbone", "pooling", "linear_head", "normalize", "projection_in_dim", "projection_out_dim",
        "encoder_only",
    }
    assert tokenizer("kalo")["input_ids"][-1] == tokenizer.sep_token_id  # no EOS business outside "last"


@pytest.mark.parametrize("fixture", FAMILIES)
def test_lora_checkpoint_holds_the_adapter_and_reloads_identically_merged_or_not(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    model, tokenizer = load(path, pooling="last", normalize=True, lora=True, lora_r=4, query_prefix="query:")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    perturb_adapters(model)
    out = tmp_path / "ckpt"
    model.save(out, tokenizer=tokenizer)
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert (out / "adapter_model.safetensors").stat().st_size < (path / "model.safetensors").stat().st_size / 5
    config = json.loads((out / "openmatch_config.json").read_text())
    assert config["lora"]["base_model"] == str(path.resolve()) and len(config["lora"]["base_fingerprint"]) == 64

    want = api.encode(model, tokenizer, TEXTS, side="query")
    base_only = api.encode(load(path, pooling="last", normalize=True, query_prefix="query:")[0], tokenizer, TEXTS,
                           side="query")
    assert abs(want - base_only).max() > 1e-2  # the adapter matters, so reloading it is really checked
    unmerged, tok = load(out)
    assert type(unmerged.lm_q).__name__ == "PeftModel"
    assert (api.encode(unmerged, tok, TEXTS, side="query") == want).all()
    merged, tok = load(out, merge_lora=True)
    assert type(merged.lm_q).__name__ == type(AutoModel.from_pretrained(str(path))).__name__
    torch.testing.assert_close(torch.from_numpy(api.encode(merged, tok, TEXTS, side="query")), torch.from_numpy(want),
                               atol=1e-5, rtol=1e-5)
    # An index built with one and searched with the other sees the same model.
    assert model_fingerprint(merged) == model_fingerprint(unmerged) == model_fingerprint(model)
    assert model_fingerprint(merged) != model_fingerprint(load(path, pooling="last", normalize=True)[0])


def test_lora_adapter_is_refused_on_another_base(tiny_qwen2, tmp_path):
    model, tokenizer = load(tiny_qwen2, pooling="last", lora=True)
    model.save(tmp_path / "ckpt", tokenizer=tokenizer)
    from tests.tiny_models import build_tiny_llm

    other = build_tiny_llm(tmp_path / "other", "qwen2", seed=1)  # same architecture, other weights
    with pytest.raises(InputError, match="trained on another base model"):
        load(tmp_path / "ckpt", lora_base_model=str(other))
    with pytest.raises(MissingInputError, match="no such folder"):
        load(tmp_path / "ckpt", lora_base_model=str(tmp_path / "nowhere"))
    # The base moved: the checkpoint says where it was and how to point to it.
    moved = tmp_path / "moved"
    shutil.copytree(tiny_qwen2, moved)
    config_path = tmp_path / "ckpt" / "openmatch_config.json"
    config = json.loads(config_path.read_text())
    config["lora"]["base_model"] = str(tmp_path / "gone")
    config_path.write_text(json.dumps(config))
    with pytest.raises(MissingInputError, match="--lora_base_model"):
        load(tmp_path / "ckpt")
    reloaded, _ = load(tmp_path / "ckpt", lora_base_model=str(moved))
    assert reloaded.config.lora.base_fingerprint == config["lora"]["base_fingerprint"]


def test_lora_flag_combinations_are_refused(tiny_qwen2):
    with pytest.raises(UsageError, match="--merge_lora"):
        ModelArguments(model_name_or_path=str(tiny_qwen2), lora=True, merge_lora=True)
    with pytest.raises(UsageError, match="--untie_encoder"):
        load(tiny_qwen2, pooling="last", lora=True, untie_encoder=True)
    with pytest.raises(UsageError, match="--lora_r"):
        ModelArguments(model_name_or_path=str(tiny_qwen2), lora_r=0)
    with pytest.raises(InputError, match="cannot attach LoRA"):
        load(tiny_qwen2, pooling="last", lora=True, lora_target_modules="no_such_proj")


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_lora_gradients(tiny_llama, reentrant):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same adapter initialisation
        model, tokenizer = load(tiny_llama, pooling="last", lora=True, lora_dropout=0.0)
        perturb_adapters(model)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": reentrant})
            assert model.is_activation_checkpointing
        batch = padded(tokenizer, TEXTS, "right")
        out = model(query=batch, passage=batch)
        (out.q_reps @ out.p_reps.T).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 2 * 7  # A and B of 7 projections, 2 layers
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


# ------------------------------------------------------------------------------------ docs/llm-retriever.md

DOC = "llm-retriever.md"


def doc_path():
    from tests import REPO

    return REPO / "docs" / DOC


def doc_blocks(language):
    from tests.test_docs import code_blocks

    return [body for lang, _, body in code_blocks(doc_path()) if lang == language]


def test_the_documented_commands_train_index_search_and_evaluate(tiny_qwen2, tmp_path, capfd):
    """The page's train / build_index / retrieve / evaluate commands, run as written on a tiny Qwen2-like model
    (the multi-GPU ``torchrun`` variant is only parsed, by tests/test_docs.py)."""
    import importlib
    import random
    import shlex

    from openmatch.cli import run
    from tests.faults import COMMANDS, assert_succeeded, Outcome
    from tests.test_docs import shell_commands
    from tests.tiny_models import synthetic_words
    from tests.trainer.test_trainer import write_synthetic_task

    rng = random.Random(0)
    words = synthetic_words(200)
    passages = {f"d{i}": rng.sample(words, 8) for i in range(40)}
    (tmp_path / "corpus.tsv").write_text("".join(f"{pid}\ttitle {pid}\t{' '.join(w)}\n" for pid, w in passages.items()))
    queries = {f"q{i}": (f"d{i}", rng.sample(passages[f"d{i}"], 3)) for i in range(8)}
    (tmp_path / "queries.tsv").write_text("".join(f"{qid}\t{' '.join(w)}\n" for qid, (_, w) in queries.items()))
    (tmp_path / "qrels.tsv").write_text("".join(f"{qid}\t0\t{pid}\t1\n" for qid, (pid, _) in queries.items()))
    paths = {
        "BASE": tiny_qwen2, "TRAIN": write_synthetic_task(tiny_qwen2, tmp_path / "train.jsonl", 16, 0),
        "CKPT": tmp_path / "ckpt", "CORPUS": tmp_path / "corpus.tsv", "QUERIES": tmp_path / "queries.tsv",
        "QRELS": tmp_path / "qrels.tsv", "EMB": tmp_path / "emb", "RUN": tmp_path / "run.trec",
    }
    commands = [command for body in doc_blocks("bash") for command in shell_commands(body)
                if not command.startswith("torchrun")]
    assert [shlex.split(c)[2] for c in commands] == [
        "openmatch.driver.train_dr", "openmatch.driver.build_index", "openmatch.driver.retrieve",
        "openmatch.driver.evaluate",
    ]
    outputs = {}
    for command in commands:
        for name, value in paths.items():
            command = command.replace(f"${name}", str(value))
        argv = shlex.split(command)
        name = argv[2].rsplit(".", 1)[1]
        capfd.readouterr()
        status = run(importlib.import_module(COMMANDS[name]).main, argv[3:])
        out, err = capfd.readouterr()
        assert_succeeded(Outcome(status, out, err))
        outputs[name] = out

    ckpt = paths["CKPT"]
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    stored = json.loads((ckpt / "openmatch_config.json").read_text())
    documented = json.loads(doc_blocks("json")[0])
    assert set(stored) == set(documented)  # the page shows every key the file has, and no other
    assert set(stored["lora"]) == set(documented["lora"]) and set(stored["instructions"]) == set(documented["instructions"])
    for key in ("pooling", "normalize", "temperature"):
        assert stored[key] == documented[key], key
    for key in ("r", "alpha", "dropout", "target_modules"):
        assert stored["lora"][key] == documented["lora"][key], key
    assert (stored["instructions"]["query"], stored["instructions"]["passage"]) == ("query: ", "passage: ")

    manifest = json.loads((paths["EMB"] / "manifest.json").read_text())
    assert manifest["model"]["config"]["instructions"] == stored["instructions"]
    run_lines = paths["RUN"].read_text().splitlines()
    assert len(run_lines) == 8 * 40  # every passage of the 40 for each of the 8 queries (depth 100)
    assert "mrr@10" in outputs["evaluate"]
    # The index was built and searched merged; the unmerged checkpoint is the same model to it.
    from openmatch.retriever.index import check_compatible

    check_compatible(load(ckpt)[0], manifest, str(paths["EMB"]))


# Shapes of the memory table's models (their Hugging Face configs).
MEMORY_MODELS = {
    "0.5B-class (Qwen2.5-0.5B)": dict(L=24, h=896, kv=128, I=4864, V=151936, qkv_bias=True),
    "1.5B-class (Qwen2.5-1.5B)": dict(L=28, h=1536, kv=256, I=8960, V=151936, qkv_bias=True),
    "7B-class (Llama-2-7B, RepLLaMA's)": dict(L=32, h=4096, kv=4096, I=11008, V=32000, qkv_bias=False),
}


def kept_per_token_and_layer(h, I, lora_dropout=True):
    """Bytes autograd keeps per token and layer (the page's inventory): RMSNorm inputs (fp32), attention's q, k, v,
    output (bf16), SwiGLU's three tensors (bf16), each LoRA branch's bf16 input and one-byte dropout mask."""
    return 8 * h + 8 * h + 6 * I + 2 * (6 * h + I) + ((6 * h + I) if lora_dropout else 0)


def layer_parameters(h, kv, I, qkv_bias):
    return 2 * h * h + 2 * h * kv + 3 * h * I + 2 * h + (h + 2 * kv if qkv_bias else 0)


def training_memory(L, h, kv, I, V, qkv_bias, r=8, tokens=8 * 32 + 8 * 8 * 128):
    """The page's formula, in bytes: parameters, weights, LoRA state, activations without and with checkpointing."""
    layer = layer_parameters(h, kv, I, qkv_bias)
    params = V * h + L * layer + h
    per_token_layer = kept_per_token_and_layer(h, I)
    return {
        "params": params,
        "weights": 4 * params,
        "lora": 16 * r * L * (9 * h + 2 * kv + 3 * I),
        "activations": per_token_layer * L * tokens + 2 * L * layer,
        "checkpointed": 4 * h * L * tokens + per_token_layer * tokens + 2 * layer,
    }


def test_the_activation_formula_is_what_autograd_keeps():
    """Measured with saved-tensor hooks: a LoRA step's forward under bf16 autocast on a small Llama-shaped model.
    Without LoRA dropout, whose masks the CPU keeps in float32 where CUDA keeps one byte."""
    from transformers import LlamaConfig, LlamaModel

    from openmatch.modeling.config import LoraSettings
    from openmatch.modeling.lora import attach

    h, I, kv, layers, batch, length = 256, 688, 64, 2, 8, 128
    torch.manual_seed(0)
    base = LlamaModel(LlamaConfig(vocab_size=1000, hidden_size=h, intermediate_size=I, num_hidden_layers=layers,
                                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=length))
    model = attach(base, LoraSettings(r=8, alpha=16, dropout=0.0))
    model.train()
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[:, -3:] = 0  # padded, as training batches are
    kept = {}

    def pack(tensor):
        kept[(tensor.untyped_storage().data_ptr(), tensor.dtype)] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), torch.autocast("cpu", torch.bfloat16):
        model(input_ids=torch.randint(0, 1000, (batch, length)), attention_mask=mask, use_cache=False)
    tokens = batch * length
    formula = kept_per_token_and_layer(h, I, lora_dropout=False) * layers * tokens + 2 * layers * layer_parameters(h, kv, I, False)
    assert 0.95 < sum(kept.values()) / formula < 1.08


def test_the_memory_table_is_the_formula():
    rows = {}
    for line in doc_path().read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] in MEMORY_MODELS:
            rows[cells[0]] = cells
    assert set(rows) == set(MEMORY_MODELS)
    gib = 2 ** 30
    for name, shape in MEMORY_MODELS.items():
        m = training_memory(**shape)
        want = [str(shape["L"]), str(shape["h"]), str(shape["I"]), f"{m['params'] / 1e9:.3f} B",
                f"{m['weights'] / gib:.1f} GiB", f"{m['lora'] / gib:.2f} GiB", f"{m['activations'] / gib:.1f} GiB",
                f"{m['checkpointed'] / gib:.1f} GiB", f"{(m['weights'] + m['lora'] + m['activations']) / gib:.1f} GiB",
                f"{(m['weights'] + m['lora'] + m['checkpointed']) / gib:.1f} GiB"]
        assert rows[name][1:] == want, name


@pytest.mark.parametrize("case", ["base_moved", "wrong_base"])
def test_build_index_refuses_a_lora_checkpoint_without_its_base(case, tiny_qwen2, tmp_path, capfd):
    """Through the command: exit 2, one line naming the checkpoint and the way out, no traceback, no output."""
    from tests.faults import assert_user_error, files_under, run_command
    from tests.tiny_models import build_tiny_llm

    base = tmp_path / "base"
    shutil.copytree(tiny_qwen2, base)
    model, tokenizer = load(base, pooling="last", lora=True)
    model.save(tmp_path / "ckpt", tokenizer=tokenizer)
    extra = []
    if case == "base_moved":
        shutil.rmtree(base)
    else:
        extra = ["--lora_base_model", build_tiny_llm(tmp_path / "other", "qwen2", seed=1)]
    (tmp_path / "corpus.tsv").write_text("d1\tkalo mine\nd2\tti vo\n")
    argv = ["--output_dir", tmp_path / "emb", "--model_name_or_path", tmp_path / "ckpt", "--corpus_path",
            tmp_path / "corpus.tsv", "--doc_column_names", "id,text", "--p_max_len", "16", *extra]
    outcome = run_command("build_index", argv, capfd)
    needles = ["ckpt", "--lora_base_model"] + (["is not there"] if case == "base_moved" else ["another base model"])
    assert_user_error(outcome, *needles)
    assert files_under(tmp_path / "emb") == set()
