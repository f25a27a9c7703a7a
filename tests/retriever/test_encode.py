"""build_index: exactly-once encoding, dynamic padding changes nothing, resume, stale folders, bad input."""

from __future__ import annotations

import copy
import json
import os
import random

import numpy as np
import pytest
import torch

from openmatch import api
from openmatch.dataset.inference_dataset import InferenceDataset
from openmatch.dataset.readers import DataFormatError
from openmatch.errors import OpenMatchWarning
from openmatch.retriever import builder
from openmatch.retriever.index import IndexFolderError
from tests.tiny_models import synthetic_words

N_DOCS = 101


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A header-less TSV corpus with lengths from 1 to 80 words (so length sorting and padding matter)."""
    rng = random.Random(7)
    words = synthetic_words()
    path = tmp_path_factory.mktemp("corpus") / "corpus.tsv"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(N_DOCS):
            handle.write(f"d{i:03d}\tt{i}\t{' '.join(rng.choice(words) for _ in range(rng.randint(1, 80)))}\n")
            if i == 50:
                handle.write("\n")  # blank lines are skipped, not records
    return path


@pytest.fixture(scope="module")
def model_tok(tiny_bert):
    torch.manual_seed(0)
    return api.load_model(tiny_bert, pooling="mean", normalize=False)


def read_index(folder) -> dict[str, np.ndarray]:
    manifest = json.loads((folder / "manifest.json").read_text())
    out = {}
    for shard in manifest["shards"]:
        emb = np.load(folder / shard["embeddings"], mmap_mode="r")
        ids = (folder / shard["ids"]).read_text().split("\n")[:-1]
        assert len(ids) == len(emb) == shard["count"]
        for rid, row in zip(ids, emb):
            assert rid not in out, f"{rid} encoded twice"
            out[rid] = np.array(row, dtype=np.float32)
    return out


def build(model_tok, corpus, out, **kw):
    model, tok = model_tok
    opts = dict(max_len=48, batch_size=8, template="<title> <text>", column_names="id,title,text", max_inmem_docs=40, progress=False)
    opts.update(kw)
    return api.build_index(model, tok, corpus, out, model_path="tiny", **opts)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_exactly_once_and_unpadded_equality(model_tok, corpus, tmp_path, workers):
    manifest = build(model_tok, corpus, tmp_path / "idx", num_workers=workers)
    vectors = read_index(tmp_path / "idx")
    assert sorted(vectors) == [f"d{i:03d}" for i in range(N_DOCS)]
    assert manifest["total"] == N_DOCS and [s["count"] for s in manifest["shards"]] == [40, 40, 21]
    if workers != 1:
        return
    # Each passage encoded alone, unpadded: length-sorted dynamic padding must not change it.
    model, tok = model_tok
    lines = [line.split("\t") for line in corpus.read_text().splitlines() if line]
    with torch.inference_mode():
        for rid, title, text in lines:
            ids = tok(f"{title} {text}", truncation=True, max_length=48)["input_ids"]
            batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
            direct = model.encode_passage(batch)[0].numpy()
            np.testing.assert_allclose(vectors[rid], direct, atol=1e-5, rtol=0)


def test_rank_and_worker_split_is_a_partition(tiny_bert, corpus, model_tok):
    _, tok = model_tok
    seen = []
    for rank in range(3):
        ds = InferenceDataset(corpus, tok, 32, 4, "<text>", "id,title,text", rank=rank, world_size=3, window_batches=2)
        for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2):
            assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())  # padded to its longest
            seen += batch["ids"]
    assert sorted(seen) == [f"d{i:03d}" for i in range(N_DOCS)]


def test_resume_after_crash_skips_complete_shards(model_tok, corpus, tmp_path, monkeypatch):
    out = tmp_path / "idx"
    real_write = builder.write_shard
    calls = []

    def crash_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("simulated crash")
        calls.append(args[2])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(builder, "write_shard", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        build(model_tok, corpus, out)
    assert not (out / "manifest.json").exists()
    (out / ".embeddings.rank0.shard1.npy.x1y2.tmp").write_bytes(b"half written")  # as a crash leaves it
    first = (out / "embeddings.rank0.shard0.npy").stat().st_mtime_ns
    written = []
    monkeypatch.setattr(builder, "write_shard", lambda *a, **k: written.append(a[2]) or real_write(*a, **k))
    build(model_tok, corpus, out)
    assert sorted(written) == [1, 2]  # shard 0 was not encoded again
    assert (out / "embeddings.rank0.shard0.npy").stat().st_mtime_ns == first
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    resumed = read_index(out)
    monkeypatch.setattr(builder, "write_shard", real_write)
    build(model_tok, corpus, tmp_path / "clean")
    clean = read_index(tmp_path / "clean")
    assert resumed.keys() == clean.keys()
    for rid in clean:
        np.testing.assert_allclose(resumed[rid], clean[rid], atol=1e-6, rtol=0)  # other batch mates
    # A corrupted shard is detected by its checksum and redone.
    with open(out / "embeddings.rank0.shard2.npy", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x80\x7f")
    os.unlink(out / "manifest.json")
    written.clear()
    monkeypatch.setattr(builder, "write_shard", lambda *a, **k: written.append(a[2]) or real_write(*a, **k))
    with pytest.warns(OpenMatchWarning, match="shard 2 of rank 0 is damaged"):
        build(model_tok, corpus, out)
    assert written == [2]


def test_stale_folder_refused_then_overwritten(model_tok, corpus, tmp_path, tiny_bert):
    out = tmp_path / "idx"
    build(model_tok, corpus, out)
    (out / "notes.txt").write_text("not ours")
    with pytest.raises(IndexFolderError, match="another model, corpus or configuration.*max_len"):
        build(model_tok, corpus, out, max_len=32)
    other_model = api.load_model(tiny_bert, pooling="first")
    with pytest.raises(IndexFolderError, match="pooling"):
        build(other_model, corpus, out)
    manifest = build(model_tok, corpus, out, max_len=32, overwrite=True)
    assert manifest["encoding"]["max_len"] == 32 and (out / "notes.txt").exists()
    # OpenMatch's pickles are never read or merged.
    (out / "embeddings.corpus.rank.0.0-100").write_bytes(b"pickle")
    with pytest.raises(IndexFolderError, match="pickle"):
        build(model_tok, corpus, out, max_len=32)


def test_bad_corpus_errors(model_tok, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError, match="empty"):
        build(model_tok, empty, tmp_path / "a")
    dup = tmp_path / "dup.tsv"
    dup.write_text("a\tt\tx y\nb\tt\tz\na\tt\tw\n")
    with pytest.raises(DataFormatError, match=r"dup.tsv:3: id 'a' repeated \(first seen on line 1\)"):
        build(model_tok, dup, tmp_path / "b", max_inmem_docs=2)
    assert not (tmp_path / "b" / "manifest.json").exists() and not list((tmp_path / "b").glob("*.npy"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tt\tx\nb\tonly two\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv:2: expected 3 tab-separated columns"):
        build(model_tok, bad, tmp_path / "c")
    badjson = tmp_path / "bad.jsonl"
    badjson.write_text('{"_id": "1", "text": "x"}\n{"_id": "2", "text": \n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: invalid JSON"):
        build(model_tok, badjson, tmp_path / "d", column_names=None, template="<text>")


def test_driver_flags_and_float16(tiny_bert, corpus, tmp_path, capsys):
    from openmatch.driver import build_index

    out = tmp_path / "idx"
    args = [
        "--output_dir", str(out), "--model_name_or_path", str(tiny_bert), "--corpus_path", str(corpus),
        "--doc_template", "Title: <title> Text: <text>", "--doc_column_names", "id,title,text",
        "--q_max_len", "16", "--p_max_len", "32", "--per_device_eval_batch_size", "16", "--bf16",
        "--dataloader_num_workers", "0", "--embedding_dtype", "float16", "--max_inmem_docs", "64",
    ]
    assert build_index.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoding"]["dtype"] == "float16" and manifest["total"] == N_DOCS
    assert manifest["encoding"]["precision"] == "bf16"  # --bf16 runs on the CPU too
    assert np.load(out / "embeddings.rank0.shard0.npy", mmap_mode="r").dtype == np.float16
    assert manifest["model"]["config"]["pooling"] == "first"
    with pytest.raises(SystemExit):
        build_index.main(args[:4] + ["--corpus_path", str(tmp_path / "missing.tsv")])
    assert "missing.tsv" in capsys.readouterr().err


def test_query_encoder_check_ignores_the_loss_temperature(model_tok, corpus, tmp_path, tiny_bert):
    """A checkpoint loaded without the --temperature it was trained with still searches its own index
    (temperature never changes an embedding); a different pooling is refused."""
    from openmatch.retriever.index import check_compatible

    manifest = build(model_tok, corpus, tmp_path / "idx")
    same_weights_other_temperature, _ = api.load_model(tiny_bert, pooling="mean", normalize=False, temperature=0.05)
    check_compatible(same_weights_other_temperature, manifest, str(tmp_path / "idx"))
    other_pooling, _ = api.load_model(tiny_bert, pooling="first", normalize=False)
    with pytest.raises(ValueError, match="not the model that built the index"):
        check_compatible(other_pooling, manifest, str(tmp_path / "idx"))


ENCODE_TEXTS = ["kalo mine ruka saka tivo zepa", "quodo fegi", "hoju kalo", "ruka " * 20]


def snapshot(model):
    return {name: t.clone() for name, t in model.state_dict().items()}, [m.training for m in model.modules()]


@pytest.mark.parametrize("how", ["encode", "encode_file", "build_index"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_the_callers_model_is_left_as_it_was(tiny_bert, corpus, tmp_path, how, bf16):
    """A notebook model in training mode: encoding must not cast it, move it or switch it to eval."""
    model, tok = api.load_model(tiny_bert, pooling="mean")
    model.train()
    model.lm_q.pooler.eval()  # one submodule in another mode: each module's flag is restored, not one for all
    weights, modes = snapshot(model)
    if how == "encode":
        api.encode(model, tok, ENCODE_TEXTS, max_len=16, bf16=bf16)
    elif how == "encode_file":
        api.encode_file(model, tok, corpus, max_len=16, template="<text>", column_names="id,title,text", bf16=bf16)
    else:
        build((model, tok), corpus, tmp_path / "idx", bf16=bf16)
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert after.keys() == weights.keys()
    for name, tensor in weights.items():
        assert after[name].dtype == tensor.dtype and after[name].device == tensor.device, name
        assert torch.equal(after[name], tensor), f"{name} changed"


def test_bf16_encodes_in_bfloat16_on_cpu(model_tok, corpus, tmp_path):
    """--bf16 is not silently float32 without a GPU: the embeddings are a bfloat16 model's (close to float32's,
    but not equal), from api.encode, api.encode_file and build_index alike."""
    import copy

    model, tok = model_tok
    fp32 = api.encode(model, tok, ENCODE_TEXTS, max_len=16, batch_size=1, device="cpu")
    bf16 = api.encode(model, tok, ENCODE_TEXTS, max_len=16, batch_size=1, device="cpu", bf16=True)
    assert not np.array_equal(bf16, fp32)
    scale = np.abs(fp32).max()
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * scale, rtol=0)  # bfloat16 keeps 8 significant bits
    # The same numbers as a model whose weights are bfloat16 throughout (each text alone: same shapes).
    reference = copy.deepcopy(model).to(torch.bfloat16).eval()
    with torch.inference_mode():
        for text, got in zip(ENCODE_TEXTS, bf16):
            ids = tok(text, truncation=True, max_length=16)["input_ids"]
            batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
            np.testing.assert_array_equal(got, reference.encode_passage(batch)[0].float().numpy())

    ids, from_file = api.encode_file(model, tok, corpus, max_len=16, template="<text>", column_names="id,title,text",
                                     side="passage", bf16=True)
    _, from_file_fp32 = api.encode_file(model, tok, corpus, max_len=16, template="<text>", column_names="id,title,text",
                                        side="passage")
    assert not np.array_equal(from_file, from_file_fp32)
    np.testing.assert_allclose(from_file, from_file_fp32, atol=0.05 * np.abs(from_file_fp32).max(), rtol=0)

    manifest = build(model_tok, corpus, tmp_path / "idx", bf16=True)
    assert manifest["encoding"]["precision"] == "bf16"
    build(model_tok, corpus, tmp_path / "idx32")
    indexed, fp32_index = read_index(tmp_path / "idx"), read_index(tmp_path / "idx32")
    assert any(not np.array_equal(indexed[rid], fp32_index[rid]) for rid in indexed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_fp16_on_cpu_is_float32_with_one_warning(model_tok):
    model, tok = model_tok
    fp32 = api.encode(model, tok, ENCODE_TEXTS, max_len=16)
    with pytest.warns(UserWarning, match="fp16 needs a GPU") as caught:
        fp16 = api.encode(model, tok, ENCODE_TEXTS, max_len=16, fp16=True)
    assert len([w for w in caught if "fp16" in str(w.message)]) == 1
    np.testing.assert_array_equal(fp16, fp32)


def test_fingerprint_covers_every_weight():
    from openmatch.retriever.encode import _legacy_fingerprint, fingerprint_matches, model_fingerprint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(1000, 16), torch.nn.Linear(16, 16))
    other = torch.nn.Sequential(torch.nn.Embedding(1000, 16), torch.nn.Linear(16, 16))
    other.load_state_dict(model.state_dict())
    assert model_fingerprint(other) == model_fingerprint(model)
    with torch.no_grad():
        other[0].weight[-1, -1] += 1e-3  # value 15,999 of 16,000: past any sample of the first values
    assert model_fingerprint(other) != model_fingerprint(model)
    assert not fingerprint_matches(other, model_fingerprint(model))
    # Indexes built before the full hash stored a sampled one: still compared, the old way.
    assert fingerprint_matches(model, _legacy_fingerprint(model))
    assert fingerprint_matches(other, _legacy_fingerprint(model)), "the old sample could not see that change"
    # Weights exact in bfloat16 hash alike in either dtype (the hash sees values, not the storage type).
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    assert model_fingerprint(copy.deepcopy(model).to(torch.bfloat16)) == model_fingerprint(model)


def test_fingerprint_hashes_a_tied_tensor_once():
    from openmatch.retriever.encode import model_fingerprint

    tied = torch.nn.Module()
    tied.a = torch.nn.Linear(8, 8, bias=False)
    tied.b = torch.nn.Linear(8, 8, bias=False)
    tied.b.weight = tied.a.weight
    untied = torch.nn.Module()
    untied.a, untied.b = torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False)
    untied.load_state_dict(tied.state_dict())
    # Same values, but one is a shared tensor: they are different models to load, so they differ.
    assert model_fingerprint(tied) != model_fingerprint(untied)
    assert model_fingerprint(tied) == model_fingerprint(tied)
