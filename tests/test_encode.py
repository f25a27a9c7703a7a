"""build_index: exactly-once encoding, dynamic padding changes nothing, resume, stale folders, bad input."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from openmatch import api
from openmatch.dataset.inference_dataset import InferenceDataset
from openmatch.dataset.readers import DataFormatError
from openmatch.retriever import index as index_mod
from openmatch.retriever.index import IndexFolderError
from tiny_models import synthetic_words

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
    real_write = index_mod.write_shard
    calls = []

    def crash_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("simulated crash")
        calls.append(args[2])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(index_mod, "write_shard", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        build(model_tok, corpus, out)
    assert not (out / "manifest.json").exists()
    (out / ".embeddings.rank0.shard1.npy.x1y2.tmp").write_bytes(b"half written")  # as a crash leaves it
    first = (out / "embeddings.rank0.shard0.npy").stat().st_mtime_ns
    written = []
    monkeypatch.setattr(index_mod, "write_shard", lambda *a, **k: written.append(a[2]) or real_write(*a, **k))
    build(model_tok, corpus, out)
    assert sorted(written) == [1, 2]  # shard 0 was not encoded again
    assert (out / "embeddings.rank0.shard0.npy").stat().st_mtime_ns == first
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    resumed = read_index(out)
    monkeypatch.setattr(index_mod, "write_shard", real_write)
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
    monkeypatch.setattr(index_mod, "write_shard", lambda *a, **k: written.append(a[2]) or real_write(*a, **k))
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
    assert np.load(out / "embeddings.rank0.shard0.npy", mmap_mode="r").dtype == np.float16
    assert manifest["model"]["config"]["pooling"] == "first"
    with pytest.raises(SystemExit):
        build_index.main(args[:4] + ["--corpus_path", str(tmp_path / "missing.tsv")])
    assert "missing.tsv" in capsys.readouterr().err


def test_query_encoder_check_ignores_the_loss_temperature(model_tok, corpus, tmp_path, tiny_bert):
    """A checkpoint loaded without the --temperature it was trained with still searches its own index
    (temperature never changes an embedding); a different pooling is refused."""
    from openmatch.driver.retrieve import check_compatible

    manifest = build(model_tok, corpus, tmp_path / "idx")
    same_weights_other_temperature, _ = api.load_model(tiny_bert, pooling="mean", normalize=False, temperature=0.05)
    check_compatible(same_weights_other_temperature, manifest, str(tmp_path / "idx"))
    other_pooling, _ = api.load_model(tiny_bert, pooling="first", normalize=False)
    with pytest.raises(ValueError, match="not the model that built the index"):
        check_compatible(other_pooling, manifest, str(tmp_path / "idx"))
