"""DRModel: representations against manual backbone calls, save/load round trips, OpenMatch checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertModel, T5Model

from openmatch.arguments import ModelArguments, parse_args
from openmatch.errors import UsageError
from openmatch.modeling import ContrastiveLoss, DRModel, DROutput, load_model_and_tokenizer

TEXTS = ["kalo mine ruka saka tivo zepa", "quodo fegi", "hoju kalo"]


def build(path, **flags) -> DRModel:
    model = DRModel.build(ModelArguments(model_name_or_path=str(path), **flags))
    return model.eval()


def batch_for(path, texts=TEXTS):
    tok = AutoTokenizer.from_pretrained(str(path))
    return dict(tok(texts, padding=True, return_tensors="pt"))


def reps(model: DRModel, batch):
    with torch.no_grad():
        return model.encode_query(batch), model.encode_passage(batch)


# ---------------------------------------------------------------- representations

@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_t5_gated"])
def test_t5_decoder_first_token(fixture, request):
    path = request.getfixturevalue(fixture)
    batch = batch_for(path)
    model = build(path, pooling="mean")  # pooling is ignored with a decoder
    assert model.config.plm_backbone_type == "T5Model" and model.config.uses_decoder
    ref = T5Model.from_pretrained(str(path)).eval()
    with torch.no_grad():
        want = ref(**batch, decoder_input_ids=torch.zeros(len(TEXTS), 1, dtype=torch.long)).last_hidden_state[:, 0]
    q, p = reps(model, batch)
    torch.testing.assert_close(q, want)
    torch.testing.assert_close(p, want)
    # Padding does not change a sequence's representation.
    alone = batch_for(path, TEXTS[1:2])
    torch.testing.assert_close(reps(model, alone)[0][0], q[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_t5_encoder_only_pooling(tiny_t5, pooling):
    batch = batch_for(tiny_t5)
    model = build(tiny_t5, encoder_only=True, pooling=pooling)
    assert model.config.plm_backbone_type == "T5EncoderModel" and not model.config.uses_decoder
    ref = T5Model.from_pretrained(str(tiny_t5)).eval()
    with torch.no_grad():
        hidden = ref.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    if pooling == "first":
        want = hidden[:, 0]
    else:
        want = torch.stack(
            [hidden[i, batch["attention_mask"][i].bool()].mean(0) for i in range(len(TEXTS))]
        )
    torch.testing.assert_close(reps(model, batch)[0], want)


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_bert_pooling_and_padding(tiny_bert, pooling):
    batch = batch_for(tiny_bert)
    assert (batch["attention_mask"] == 0).any(), "test needs padding"
    model = build(tiny_bert, pooling=pooling)
    ref = BertModel.from_pretrained(str(tiny_bert)).eval()
    q, _ = reps(model, batch)
    for i, text in enumerate(TEXTS):
        single = batch_for(tiny_bert, [text])
        with torch.no_grad():
            hidden = ref(**single).last_hidden_state[0]
        want = hidden[0] if pooling == "first" else hidden.mean(0)
        torch.testing.assert_close(q[i], want, atol=1e-5, rtol=1e-5)


def test_linear_head_and_normalize(tiny_bert):
    batch = batch_for(tiny_bert)
    plain = build(tiny_bert, pooling="mean")
    headed = build(tiny_bert, pooling="mean", add_linear_head=True, projection_in_dim=32, projection_out_dim=12)
    assert headed.embedding_dim == 12 and plain.embedding_dim == 32
    weight = headed.head_q.linear.weight
    assert headed.head_q.linear.bias is None
    pooled = reps(plain, batch)[0]
    torch.testing.assert_close(reps(headed, batch)[0], pooled @ weight.detach().T)

    normed = build(tiny_bert, pooling="mean", add_linear_head=True, projection_in_dim=32, projection_out_dim=12, normalize=True)
    normed.head_q.load_state_dict(headed.head_q.state_dict())
    q = reps(normed, batch)[0]
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(q, torch.nn.functional.normalize(pooled @ weight.detach().T, dim=-1))


def test_projection_dim_mismatch_is_clear(tiny_bert):
    with pytest.raises(ValueError, match="projection_in_dim 768 does not match the hidden size 32"):
        build(tiny_bert, add_linear_head=True)


def test_forward_score_and_tying(tiny_bert):
    batch = batch_for(tiny_bert)
    model = build(tiny_bert)
    out = model(query=batch, passage=batch)
    assert isinstance(out, DROutput) and out.loss is None
    assert model(query=batch).p_reps is None
    # Tied: one backbone, registered once (no duplicated tensors in the state dict).
    assert model.lm_p is model.lm_q
    names = list(model.state_dict())
    assert len(names) == len(set(names)) and not any(n.startswith("_lm_p") for n in names)
    # The BERT pooler is not part of the representation: frozen so DDP sees no unused trainable parameters.
    assert not any(p.requires_grad for p in model.lm_q.pooler.parameters())
    untied = build(tiny_bert, untie_encoder=True)
    assert untied.lm_p is not untied.lm_q
    torch.testing.assert_close(reps(untied, batch)[0], reps(untied, batch)[1])


def test_scores_are_the_loss_logits_of_independently_computed_reps(tiny_bert):
    """score(q, p) equals dot products of reps computed here by hand (each text alone, unpadded, through its
    own tower, mean-pooled, headed and normalised), and the loss is cross-entropy over score / temperature."""
    passages = ["ruka saka", "tivo zepa kalo mine", "fegi", "quodo hoju kalo ruka", "zepa", "mine saka tivo"]
    model = build(tiny_bert, untie_encoder=True, pooling="mean", add_linear_head=True, projection_in_dim=32,
                  projection_out_dim=8, normalize=True)
    perturb(model.lm_p, 1)  # the towers differ, so a query encoded as a passage would give other scores
    perturb(model.head_p, 2)
    q_batch, p_batch = batch_for(tiny_bert), batch_for(tiny_bert, passages)
    with torch.no_grad():
        out = model(query=q_batch, passage=p_batch)
        scores = model.score(out.q_reps, out.p_reps)

    def by_hand(lm, head, texts):
        rows = []
        for text in texts:
            with torch.no_grad():
                pooled = lm(**batch_for(tiny_bert, [text])).last_hidden_state[0].mean(0)
            rows.append(torch.nn.functional.normalize(head.linear.weight.detach() @ pooled, dim=0))
        return torch.stack(rows)

    want = by_hand(model.lm_q, model.head_q, TEXTS) @ by_hand(model.lm_p, model.head_p, passages).T
    assert scores.shape == (3, 6)
    torch.testing.assert_close(scores, want, atol=1e-5, rtol=1e-5)
    assert (scores.argsort(dim=1, descending=True) == want.argsort(dim=1, descending=True)).all()
    # Two passages per query (positive first): the loss's logits are these scores over the temperature.
    loss = ContrastiveLoss(temperature=0.05)(out.q_reps, out.p_reps)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(want / 0.05, torch.tensor([0, 2, 4])))


def test_untied_towers_train_separately(tiny_bert):
    batch = batch_for(tiny_bert)
    model = build(tiny_bert, untie_encoder=True).train()
    out = model(query=batch, passage=batch)
    out.q_reps.sum().backward()
    assert all(p.grad is None for p in model.lm_p.parameters())
    assert any(p.grad is not None for p in model.lm_q.parameters())


# ---------------------------------------------------------------- save / load

def perturb(module: torch.nn.Module, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)


@pytest.mark.parametrize(
    "fixture,flags",
    [
        ("tiny_bert", {}),
        ("tiny_t5", {}),
        ("tiny_bert", dict(untie_encoder=True, add_linear_head=True, projection_in_dim=32, projection_out_dim=8,
                           pooling="mean", normalize=True, temperature=0.05)),
        ("tiny_t5", dict(encoder_only=True, pooling="mean")),
    ],
    ids=["tied-bert", "tied-t5", "untied-bert-head", "encoder-only-t5"],
)
def test_save_load_round_trip(fixture, flags, request, tmp_path):
    path = request.getfixturevalue(fixture)
    batch = batch_for(path)
    model, tok = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(path), **flags))
    model.eval()
    perturb(model.lm_p, 1)  # untied: the passage tower now differs from the query tower
    if model.head_p is not None:
        perturb(model.head_p, 2)
    q, p = reps(model, batch)
    if flags.get("untie_encoder"):
        assert not torch.allclose(q, p)
    out = tmp_path / "ckpt"
    model.save(out, tokenizer=tok)
    stored = json.loads((out / "openmatch_config.json").read_text())
    assert stored["tied"] == (not flags.get("untie_encoder", False))
    assert stored["plm_backbone"]["type"] == model.config.plm_backbone_type
    if flags.get("untie_encoder"):
        for tower in ("query_model", "passage_model"):
            assert (out / tower / "model.safetensors").exists()
            assert json.loads((out / tower / "head_config.json").read_text()) == {"input_dim": 32, "output_dim": 8}
            assert (out / tower / "linear.safetensors").exists() and (out / tower / "linear.pt").exists()
    else:
        assert (out / "model.safetensors").exists()
    assert not list(tmp_path.glob(".*tmp")), "temporary folder left behind"

    # The stored configuration comes back whole, the loss temperature included.
    loaded, tok2 = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(out)))
    loaded.eval()
    assert loaded.config == model.config
    assert tok2.pad_token_id == tok.pad_token_id
    q2, p2 = reps(loaded, batch)
    torch.testing.assert_close(q2, q, rtol=0, atol=0)
    torch.testing.assert_close(p2, p, rtol=0, atol=0)
    # DRModel.load keeps the stored temperature.
    assert DRModel.load(out).config.temperature == flags.get("temperature", 1.0)


def write_train_file(path: Path) -> Path:
    path.write_text("".join(json.dumps({"query": [7, 8], "positives": [[9, 10, 11]], "negatives": [[12, 13]]}) + "\n"
                            for _ in range(4)))
    return path


def test_checkpoint_temperature_is_kept_unless_the_flag_is_given(tiny_bert, tmp_path):
    from openmatch.arguments import DataArguments, DRTrainingArguments
    from openmatch.driver.train_dr import build_trainer

    build(tiny_bert, pooling="mean", normalize=True, temperature=0.05).save(tmp_path / "ckpt")
    train = write_train_file(tmp_path / "train.jsonl")

    def trained_at(model_path, *flags) -> float:
        """The loss temperature of train_dr given these flags (as on its command line)."""
        argv = ["--model_name_or_path", str(model_path), "--output_dir", str(tmp_path / "out"), "--train_path",
                str(train), "--report_to", "none", *flags]
        trainer = build_trainer(*parse_args((ModelArguments, DataArguments, DRTrainingArguments), argv))
        assert trainer.model.config.temperature == trainer.loss_fn.temperature
        return trainer.loss_fn.temperature

    assert trained_at(tmp_path / "ckpt") == 0.05  # further training optimises the loss it was trained with
    assert trained_at(tmp_path / "ckpt", "--temperature", "0.1") == 0.1
    # Given on purpose, the plain model's default is a choice too: not mistaken for "no flag".
    assert trained_at(tmp_path / "ckpt", "--temperature", "1") == 1.0
    assert trained_at(tiny_bert) == 1.0
    assert trained_at(tiny_bert, "--temperature", "0.2") == 0.2
    # Inference and the Python API agree.
    assert DRModel.load(tmp_path / "ckpt").config.temperature == 0.05
    assert DRModel.load(tmp_path / "ckpt", temperature=0.5).config.temperature == 0.5
    assert DRModel.load(tmp_path / "ckpt", temperature=1.0).config.temperature == 1.0


def test_training_settings_are_stored_beside_the_encoder_not_in_it(tiny_bert, tmp_path):
    """The temperature round-trips through openmatch_config.json as a training setting, while the encoder's
    identity (what indexes record) is the same whatever the temperature."""
    from openmatch.modeling import DRModelConfig, TrainingSettings
    from openmatch.modeling.checkpoint import read_config

    encoder = dict(pooling="mean", normalize=True, plm_backbone_type="BertModel")
    cold = DRModelConfig(**encoder, training=TrainingSettings(temperature=0.05))
    warm = DRModelConfig(**encoder)
    stored = cold.to_openmatch_json()
    assert stored["temperature"] == 0.05 and cold.temperature == 0.05 and warm.temperature == 1.0
    assert DRModelConfig.from_openmatch_json(stored) == cold
    assert cold != warm and cold.encoding_json() == warm.encoding_json()
    assert not set(TrainingSettings().to_json()) & set(cold.encoding_json())

    build(tiny_bert, pooling="mean", normalize=True, temperature=0.05).save(tmp_path / "ckpt")
    assert read_config(tmp_path / "ckpt").training == TrainingSettings(temperature=0.05)
    assert read_config(tmp_path / "ckpt").encoding_json() == warm.encoding_json()


def test_encoder_only_is_not_saved_and_old_checkpoints_with_it_load(tiny_t5, tmp_path):
    model = build(tiny_t5, encoder_only=True, pooling="mean")
    model.save(tmp_path / "ckpt")
    stored = json.loads((tmp_path / "ckpt" / "openmatch_config.json").read_text())
    assert sorted(stored) == ["linear_head", "normalize", "plm_backbone", "pooling", "projection_in_dim",
                              "projection_out_dim", "temperature", "tied"]
    assert stored["plm_backbone"]["type"] == "T5EncoderModel"  # what --encoder_only chose, without its own key

    # A checkpoint written before keeps its encoder_only key: read, ignored, same model.
    (tmp_path / "ckpt" / "openmatch_config.json").write_text(json.dumps({**stored, "encoder_only": True}))
    old = build(tmp_path / "ckpt")
    assert old.config == model.config
    batch = batch_for(tiny_t5)
    torch.testing.assert_close(reps(old, batch), reps(model, batch), rtol=0, atol=0)
    # Indexes built before recorded this identity (encoder_only included); it must still match.
    assert old.config.encoding_json() == {
        "tied": True, "plm_backbone": {"type": "T5EncoderModel", "feature": "last_hidden_state"},
        "pooling": "mean", "linear_head": False, "normalize": False, "projection_in_dim": None,
        "projection_out_dim": None, "encoder_only": True,
    }


def test_checkpoint_file_names_are_spelled_once():
    """Every checkpoint file and folder name is a constant of openmatch.modeling.checkpoint: no other module of
    the package or scripts spells it, so a renamed file cannot be read under its old name somewhere."""
    import ast

    from openmatch.modeling import checkpoint

    names = {checkpoint.CONFIG_NAME, checkpoint.HEAD_CONFIG_NAME, checkpoint.HEAD_WEIGHTS_NAME,
             checkpoint.OPENMATCH_HEAD_WEIGHTS_NAME, checkpoint.HEAD_WEIGHT_KEY, checkpoint.QUERY_MODEL_DIR,
             checkpoint.PASSAGE_MODEL_DIR, *checkpoint.OPENMATCH_HEAD_DIRS}
    root = Path(checkpoint.__file__).parents[2]
    spelled = {}
    for source in sorted((root / "openmatch").rglob("*.py")) + sorted((root / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.setdefault(node.value, []).append(f"{source.relative_to(root)}:{node.lineno}")
    assert set(spelled) == names
    assert {name: places for name, places in spelled.items() if len(places) > 1} == {}
    assert {place.split(":")[0] for places in spelled.values() for place in places} == {
        "openmatch/modeling/checkpoint.py"
    }


class OpenMatchLinearHead(torch.nn.Module):
    """OpenMatch v2's ``LinearHead`` (src/openmatch/modeling/linear.py), reproduced to check our files."""

    def __init__(self, input_dim: int = 768, output_dim: int = 768):
        super().__init__()
        self.linear = torch.nn.Linear(input_dim, output_dim, bias=False)
        self.config = {"input_dim": input_dim, "output_dim": output_dim}

    def forward(self, rep):
        return self.linear(rep)

    @classmethod
    def load(cls, ckpt_dir):
        import os

        with open(os.path.join(ckpt_dir, "head_config.json")) as f:
            config = json.load(f)
        model = cls(**config)
        # OpenMatch calls torch.load without arguments; torch >= 2.6 means weights_only=True by default.
        model.load_state_dict(torch.load(os.path.join(ckpt_dir, "linear.pt"), weights_only=True))
        return model


def test_openmatch_loads_our_heads(tiny_bert, tmp_path):
    import transformers

    model, tok = load_model_and_tokenizer(ModelArguments(
        model_name_or_path=str(tiny_bert), pooling="mean", add_linear_head=True, projection_in_dim=32,
        projection_out_dim=8,
    ))
    model.eval()
    perturb(model, 4)
    model.save(tmp_path / "tied", tokenizer=tok)
    batch = batch_for(tiny_bert)
    # OpenMatch's DRModel.build for a tied checkpoint: the backbone class named in openmatch_config.json
    # from the folder, then LinearHead.load of the same folder.
    config = json.loads((tmp_path / "tied" / "openmatch_config.json").read_text())
    backbone = getattr(transformers, config["plm_backbone"]["type"]).from_pretrained(str(tmp_path / "tied")).eval()
    head = OpenMatchLinearHead.load(tmp_path / "tied")
    mask = batch["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad():
        pooled = (backbone(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
        theirs = head(pooled)
    torch.testing.assert_close(theirs, reps(model, batch)[0], atol=1e-6, rtol=1e-6)

    # Untied: each tower folder's head is loadable the same way and holds that tower's weights.
    untied = build(tiny_bert, untie_encoder=True, add_linear_head=True, projection_in_dim=32, projection_out_dim=8)
    perturb(untied.head_p, 5)
    untied.save(tmp_path / "untied")
    for tower, ours in (("query_model", untied.head_q), ("passage_model", untied.head_p)):
        theirs = OpenMatchLinearHead.load(tmp_path / "untied" / tower)
        assert torch.equal(theirs.linear.weight, ours.linear.weight)


def test_interrupted_head_save_never_looks_complete(tiny_bert, tmp_path, monkeypatch):
    model = build(tiny_bert, add_linear_head=True, projection_in_dim=32, projection_out_dim=8)
    real_save = torch.save

    def half_written(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.iterdir())
    (tmp_path / "run").mkdir()
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(("linear", "openmatch"))) == [
        "linear.safetensors"
    ], "no half-written linear.pt, no completion marker"
    monkeypatch.setattr(torch, "save", real_save)
    model.save(tmp_path / "run")
    assert OpenMatchLinearHead.load(tmp_path / "run").linear.weight.shape == (8, 32)


def test_flags_contradicting_a_checkpoint_are_one_error(tiny_bert, tmp_path):
    build(tiny_bert, pooling="mean").save(tmp_path / "ckpt")
    # Without a record of the given flags, those away from their defaults are compared.
    with pytest.raises(UsageError) as err:
        build(tmp_path / "ckpt", untie_encoder=True, normalize=True)
    message = str(err.value)
    assert "--untie_encoder True contradicts the checkpoint's untie_encoder False" in message
    assert "--normalize True contradicts the checkpoint's normalize False" in message
    assert "openmatch_config.json" in message
    # A flag given on purpose counts at its default value too; one that agrees is fine.
    with pytest.raises(UsageError, match="--pooling first contradicts the checkpoint's pooling mean"):
        DRModel.load(tmp_path / "ckpt", pooling="first")
    (model_args,) = parse_args((ModelArguments,), ["--model_name_or_path", str(tmp_path / "ckpt"), "--pooling", "first"])
    with pytest.raises(UsageError, match="--pooling first"):
        DRModel.build(model_args)
    assert DRModel.load(tmp_path / "ckpt", pooling="mean", normalize=False).config.pooling == "mean"
    # The loss temperature is a training setting: the flag replaces the stored value.
    assert DRModel.load(tmp_path / "ckpt", temperature=0.05).config.temperature == 0.05


def test_max_input_length_follows_the_position_table(tiny_bert, tiny_t5, tmp_path):
    from transformers import RobertaConfig, RobertaModel

    from openmatch.modeling.checkpoint import check_max_len

    assert build(tiny_bert).max_input_length == 256  # max_position_embeddings of the tiny BERT
    assert build(tiny_t5).max_input_length is None  # relative positions
    # RoBERTa's positions start after the padding index: 66 rows cover 64 tokens.
    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=66, pad_token_id=1)
    RobertaModel(config).save_pretrained(tmp_path / "roberta")
    roberta = build(tmp_path / "roberta")
    assert roberta.max_input_length == 64
    check_max_len(roberta, p_max_len=64)
    with pytest.raises(UsageError, match="--q_max_len 65 is above the 64 input positions"):
        check_max_len(roberta, p_max_len=8, q_max_len=65)
    batch = {"input_ids": torch.full((1, 64), 5), "attention_mask": torch.ones(1, 64, dtype=torch.long)}
    roberta.encode_query(batch)  # the limit is really usable
    with pytest.raises((IndexError, RuntimeError)):  # and one more token is not
        roberta.encode_query({k: torch.cat([v, v[:, :1]], dim=1) for k, v in batch.items()})


def test_save_into_existing_folder_and_interrupted_save(tiny_bert, tmp_path):
    model = build(tiny_bert)
    out = tmp_path / "run"
    out.mkdir()
    (out / "trainer_state.json").write_text("{}")  # e.g. a Trainer output folder with other files
    model.save(out)
    assert (out / "openmatch_config.json").exists() and (out / "trainer_state.json").exists()

    class Failing:
        def save_pretrained(self, folder):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        model.save(out, tokenizer=Failing())
    assert not (out / "openmatch_config.json").exists(), "an interrupted save must not look complete"
    with pytest.raises(RuntimeError, match="disk full"):
        model.save(tmp_path / "fresh", tokenizer=Failing())
    assert not (tmp_path / "fresh").exists() and not list(tmp_path.glob(".*tmp"))


def write_openmatch_checkpoint(src: Path, dst: Path, tied: bool, head_weight=None, safetensors=False):
    """A folder laid out as OpenMatch v2 saves it: HF files, linear.pt + head_config.json, its config keys only."""
    towers = [dst] if tied else [dst / "query_model", dst / "passage_model"]
    for i, tower in enumerate(towers):
        tower.mkdir(parents=True)
        model = BertModel.from_pretrained(str(src))
        perturb(model, 10 + i)
        shutil.copy(src / "config.json", tower / "config.json")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if safetensors:
            from safetensors.torch import save_file

            save_file(state, str(tower / "model.safetensors"))
        else:
            torch.save(state, tower / "pytorch_model.bin")
        if head_weight is not None:
            head_dir = dst if tied else dst / ("query_head" if i == 0 else "passage_head")
            head_dir.mkdir(exist_ok=True)
            torch.save({"linear.weight": head_weight * (i + 1)}, head_dir / "linear.pt")
            (head_dir / "head_config.json").write_text(json.dumps({"input_dim": 32, "output_dim": 4}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    (dst / "openmatch_config.json").write_text(json.dumps({
        "tied": tied, "plm_backbone": {"type": "BertModel", "feature": "last_hidden_state"},
        "pooling": "mean", "linear_head": head_weight is not None, "normalize": False,
    }, indent=4))
    return [BertModel.from_pretrained(str(t)).eval() for t in towers]


@pytest.mark.parametrize("tied,safetensors", [(True, False), (True, True), (False, False)],
                         ids=["tied-bin", "tied-safetensors", "untied-bin"])
def test_openmatch_checkpoint_loads(tiny_bert, tmp_path, tied, safetensors):
    weight = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    refs = write_openmatch_checkpoint(tiny_bert, tmp_path / "om", tied, weight, safetensors)
    model, _ = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(tmp_path / "om")))
    model.eval()
    assert model.config.tied == tied and model.config.pooling == "mean" and model.embedding_dim == 4
    batch = batch_for(tiny_bert)
    q, p = reps(model, batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    for i, (got, ref) in enumerate(zip((q, p), refs if not tied else refs * 2)):
        with torch.no_grad():
            pooled = (ref(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
        scale = 1 if tied else i + 1
        torch.testing.assert_close(got, pooled @ (weight * scale).T, atol=1e-5, rtol=1e-5)


def test_missing_files_are_clear_errors(tiny_bert, tmp_path):
    build(tiny_bert).save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt: checkpoint is missing its weights file \(one of model.safetensors"):
        build(tmp_path / "ckpt")

    build(tiny_bert, untie_encoder=True, add_linear_head=True, projection_in_dim=32).save(tmp_path / "untied")
    for name in ("linear.safetensors", "linear.pt"):
        (tmp_path / "untied" / "passage_model" / name).unlink()
    with pytest.raises(FileNotFoundError, match="passage_model: checkpoint has a linear head but neither linear.safetensors"):
        build(tmp_path / "untied")
    shutil.rmtree(tmp_path / "untied" / "query_model")
    with pytest.raises(FileNotFoundError, match="query_model: checkpoint folder not found"):
        build(tmp_path / "untied")

    # Weights present but incomplete: an error, not a silently random layer.
    (tmp_path / "partial").mkdir()
    shutil.copy(tiny_bert / "config.json", tmp_path / "partial" / "config.json")
    state = BertModel.from_pretrained(str(tiny_bert)).state_dict()
    state = {k: v for k, v in state.items() if ".layer.1." not in k}
    torch.save(state, tmp_path / "partial" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"partial: checkpoint has no weights for 16 parameter\(s\) of BertModel"):
        build(tmp_path / "partial")

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "openmatch_config.json").write_text('{"tied": true}')
    with pytest.raises(ValueError, match="openmatch_config.json: missing key"):
        build(tmp_path / "bad")


def test_damaged_sharded_weights_and_cut_off_saves_are_clear_errors(tiny_bert, tmp_path):
    from openmatch.errors import InputError, MissingInputError

    sharded = tmp_path / "sharded"
    BertModel.from_pretrained(str(tiny_bert)).save_pretrained(sharded, max_shard_size="100KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").exists()
    assert build(sharded).max_input_length == 256  # intact, it loads
    with open(shards[-1], "r+b") as handle:
        handle.truncate(shards[-1].stat().st_size - 10)
    with pytest.raises(InputError, match=f"{shards[-1].name}: truncated or corrupt safetensors file"):
        build(sharded)
    shards[-1].unlink()
    with pytest.raises(MissingInputError, match=f"{shards[-1].name}: weights shard listed in model.safetensors.index"):
        build(sharded)

    # The trainer writes openmatch_args.json first and openmatch_config.json last: a save cut off in between
    # must not load as a plain Hugging Face model with default flags.
    build(tiny_bert, pooling="mean").save(tmp_path / "run")
    (tmp_path / "run" / "openmatch_args.json").write_text("{}")
    (tmp_path / "run" / "openmatch_config.json").unlink()
    with pytest.raises(InputError, match="run: incomplete checkpoint: it has openmatch_args.json but not openmatch_conf"):
        build(tmp_path / "run")


def test_tokenizer_without_pad_token(tiny_bert, tmp_path):
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok")).pad_token_id is None
    with pytest.raises(ValueError, match="tokenizer has no pad token"):
        load_model_and_tokenizer(ModelArguments(model_name_or_path=str(tiny_bert), tokenizer_name=str(tmp_path / "tok")))


def test_gradient_checkpointing_gives_same_gradients(tiny_bert):
    batch = batch_for(tiny_bert)
    grads = []
    for checkpointing in (False, True):
        model = build(tiny_bert, untie_encoder=True).train()
        torch.manual_seed(0)  # same dropout masks
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
            assert model.is_activation_checkpointing and model.is_gradient_checkpointing
        out = model(query=batch, passage=batch)
        (out.q_reps @ out.p_reps.T).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
