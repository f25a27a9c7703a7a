"""scripts/scale_t5_weights.py: the rescaled T5 computes the same function with a 100x smaller residual stream."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5Model

from tests import REPO as REPO_ROOT

_spec = importlib.util.spec_from_file_location("scale_t5_weights", REPO_ROOT / "scripts" / "scale_t5_weights.py")
scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale)

TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def t5_outputs(model, input_ids):
    """Encoder output, decoder output at the first (decoder start) position, and every pre-norm stream."""
    decoder_input_ids = torch.full((input_ids.shape[0], 1), model.config.decoder_start_token_id, dtype=torch.long)
    pre_norm = []  # the last block's output, i.e. the input of each stack's final RMSNorm
    hooks = [
        stack.final_layer_norm.register_forward_pre_hook(lambda _module, args: pre_norm.append(args[0].detach()))
        for stack in (model.encoder, model.decoder)
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    # hidden_states: the input of each block, then the final-norm output (dropped: it is normalised).
    streams = list(out.encoder_hidden_states[:-1]) + list(out.decoder_hidden_states[:-1]) + pre_norm
    return out.encoder_last_hidden_state, out.last_hidden_state[:, 0], streams


@pytest.fixture
def inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, 200, (3, 11), generator=gen)


@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_t5_gated"])
def test_scaled_t5model_same_function_smaller_stream(fixture, request, tmp_path, inputs):
    src = request.getfixturevalue(fixture)
    out_dir = tmp_path / "scaled"
    assert scale.main(["--input_model_path", str(src), "--output_model_path", str(out_dir)]) == 0

    before = T5Model.from_pretrained(src).eval()
    after = T5Model.from_pretrained(out_dir).eval()
    enc_a, dec_a, streams_a = t5_outputs(before, inputs)
    enc_b, dec_b, streams_b = t5_outputs(after, inputs)
    assert rel_err(enc_a, enc_b) < TOL
    assert rel_err(dec_a, dec_b) < TOL
    # Every residual stream (embeddings and each block's output, encoder and decoder) is 100x smaller.
    assert len(streams_a) == 2 * (before.config.num_layers + 1)  # embeddings, between blocks, pre-final-norm
    for a, b in zip(streams_a, streams_b):
        assert a.norm() / b.norm() == pytest.approx(100.0, rel=1e-3)

    # Only what the math allows was touched.
    sd_a, sd_b = before.state_dict(), after.state_dict()
    for name, value in sd_a.items():
        ratio = (value.norm() / sd_b[name].norm()).item()
        if name.endswith(("layer_norm.weight", "relative_attention_bias.weight", "q.weight", "k.weight", "v.weight")):
            assert ratio == pytest.approx(1.0), name
        elif "wi_0" in name:
            assert ratio == pytest.approx(1.0), name
        elif name.endswith(("wi.weight", "wi_1.weight", "wo.weight")):
            assert ratio == pytest.approx(10.0), name
        elif name.endswith(("o.weight", "shared.weight", "embed_tokens.weight")):
            assert ratio == pytest.approx(100.0), name
    assert after.config.layer_norm_epsilon == pytest.approx(before.config.layer_norm_epsilon / 1e4)

    files = sorted(p.name for p in out_dir.iterdir())
    assert "model.safetensors" in files and "pytorch_model.bin" not in files
    assert "tokenizer.json" in files and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    record = json.loads((out_dir / "scale_t5_weights.json").read_text())
    assert record["gated"] == (fixture == "tiny_t5_gated")


def test_scaling_gelu_branch_would_break_the_function(tiny_t5_gated, tmp_path, inputs):
    """Dividing wi_0 too (OpenMatch-style 'scale every wi') changes the outputs: the equality test can fail."""
    model = T5Model.from_pretrained(tiny_t5_gated).eval()
    enc_a, dec_a, _ = t5_outputs(model, inputs)
    scale.scale_t5_model(model)
    enc_b, dec_b, _ = t5_outputs(model, inputs)
    assert rel_err(enc_a, enc_b) < TOL and rel_err(dec_a, dec_b) < TOL
    with torch.no_grad():
        for stack in (model.encoder, model.decoder):
            for block in stack.block:
                block.layer[-1].DenseReluDense.wi_0.weight /= 10
    enc_c, dec_c, _ = t5_outputs(model, inputs)
    assert rel_err(enc_a, enc_c) > 100 * TOL
    assert rel_err(dec_a, dec_c) > 100 * TOL


def test_unscaled_epsilon_is_only_approximate(tiny_t5, tmp_path, inputs):
    """OpenMatch's file (epsilon kept) is measurably off, and dividing epsilon by 10^4 is what removes the error."""
    before = T5Model.from_pretrained(tiny_t5).eval()
    enc_a, dec_a, _ = t5_outputs(before, inputs)
    errors = {}
    for keep in (True, False):
        out_dir = tmp_path / f"keep_{keep}"
        scale.scale_checkpoint(tiny_t5, out_dir, keep_layer_norm_epsilon=keep)
        after = T5Model.from_pretrained(out_dir).eval()
        factor = 1 if keep else scale.EPSILON_FACTOR
        assert after.config.layer_norm_epsilon == pytest.approx(before.config.layer_norm_epsilon / factor)
        enc_b, dec_b, _ = t5_outputs(after, inputs)
        errors[keep] = rel_err(enc_a, enc_b), rel_err(dec_a, dec_b)
    # Scaled, the tiny model's stream has a mean square of ~1e-4, only ~100x the kept epsilon 1e-6: about 1%
    # off, thousands of times the exact variant's rounding. A scaling that ignored the flag fails here.
    for kept, exact in zip(errors[True], errors[False]):
        assert exact < TOL
        assert 10 * TOL < kept < 0.1
        assert kept > 1000 * exact


@pytest.mark.parametrize("tied", [True, False])
def test_conditional_generation_logits_unchanged(tiny_t5, tmp_path, inputs, tied):
    config = T5Config.from_pretrained(tiny_t5)
    if not tied:
        config = T5Config(**{**config.to_dict(), "tie_word_embeddings": False, "feed_forward_proj": "gated-gelu"})
    torch.manual_seed(1)
    model = T5ForConditionalGeneration(config).eval()
    src = tmp_path / "src"
    model.save_pretrained(src)
    out_dir = tmp_path / "scaled"
    scale.scale_checkpoint(src, out_dir)
    after = T5ForConditionalGeneration.from_pretrained(out_dir).eval()
    labels = inputs[:, :4].contiguous()
    with torch.no_grad():
        la = model(input_ids=inputs, labels=labels).logits
        lb = after(input_ids=inputs, labels=labels).logits
    assert rel_err(la, lb) < TOL
    assert after.lm_head.weight.data_ptr() != after.shared.weight.data_ptr()


def test_encoder_model(tiny_t5, tmp_path, inputs):
    src = tmp_path / "enc"
    T5EncoderModel.from_pretrained(tiny_t5).save_pretrained(src)
    out_dir = tmp_path / "scaled"
    scale.scale_checkpoint(src, out_dir, num_layers=2)
    a = T5EncoderModel.from_pretrained(src).eval()
    b = T5EncoderModel.from_pretrained(out_dir).eval()
    with torch.no_grad():
        assert rel_err(a(input_ids=inputs).last_hidden_state, b(input_ids=inputs).last_hidden_state) < TOL


def test_refuses_existing_weights_unless_overwrite(tiny_t5, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    stale = out_dir / "pytorch_model.bin"
    stale.write_bytes(b"unscaled")
    args = ["--input_model_path", str(tiny_t5), "--output_model_path", str(out_dir)]
    assert scale.main(args) == 2
    assert "already holds weight files (pytorch_model.bin)" in capsys.readouterr().err
    assert stale.read_bytes() == b"unscaled"
    assert scale.main(args + ["--overwrite"]) == 0
    names = {p.name for p in out_dir.iterdir()}
    assert "pytorch_model.bin" not in names and "model.safetensors" in names


def test_in_place_with_overwrite(tiny_t5, tmp_path, inputs):
    work = tmp_path / "copy"
    shutil.copytree(tiny_t5, work)
    before = T5Model.from_pretrained(work).eval()
    assert scale.main(["--input_model_path", str(work), "--output_model_path", str(work), "--overwrite"]) == 0
    after = T5Model.from_pretrained(work).eval()
    assert rel_err(t5_outputs(before, inputs)[0], t5_outputs(after, inputs)[0]) < TOL
    assert after.shared.weight.norm().item() * 100 == pytest.approx(before.shared.weight.norm().item(), rel=1e-5)


def test_clear_errors(tiny_t5, tiny_bert, tmp_path, capsys):
    def run(*args):
        code = scale.main(list(args))
        return code, capsys.readouterr().err

    code, err = run("--input_model_path", str(tiny_bert), "--output_model_path", str(tmp_path / "a"))
    assert code == 2 and "model_type 'bert' is not T5" in err
    code, err = run("--input_model_path", str(tiny_t5), "--output_model_path", str(tmp_path / "b"), "--num_layers", "12")
    assert code == 2 and "--num_layers 12 but the model has 2 encoder layers" in err
    code, err = run("--input_model_path", str(tiny_t5), "--output_model_path", str(tmp_path / "c"), "--num_layers", "0")
    assert code == 2 and "must be positive" in err
    code, err = run("--input_model_path", str(tmp_path / "nothing"), "--output_model_path", str(tmp_path / "d"))
    assert code == 2 and "no such model folder" in err
    assert not any(p.name in {"a", "b", "c", "d"} for p in tmp_path.iterdir())
