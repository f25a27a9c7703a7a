"""One record parser: every reader words the same bad line the same way and holds ids to the same rule.

The readers are driven through the entry points the commands use: build_index's corpus reader
(``api.build_index``), retrieve's query reader (``api.encode_file``), build_train's query reader
(``load_texts``) and collection reader (``CollectionTexts``, by byte offset), the API's ``load_id_records``,
train_dr's training JSONL, qrels, runs (evaluate's ``load_run``, build_hn's ``iter_run_groups``) and
build_train's negatives file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from openmatch import api
from openmatch.dataset.qrels import load_qrels, load_run
from openmatch.dataset.readers import DataFormatError, load_id_records
from openmatch.dataset.template import Template
from openmatch.dataset.train_dataset import TrainDataset
from openmatch.preprocessing import (
    COLLECTION_COLUMNS,
    QUERY_COLUMNS,
    CollectionTexts,
    iter_negatives_file,
    iter_run_groups,
    load_texts,
)


@pytest.fixture(scope="module")
def model_tok(tiny_bert):
    torch.manual_seed(0)
    return api.load_model(tiny_bert, pooling="mean", normalize=False)


def collection_texts(path, template: str) -> dict:
    """``{pid: text}`` of a collection as build_train reads it (by offset, ``CollectionTexts``)."""
    texts = CollectionTexts(path, COLLECTION_COLUMNS, Template(template))
    try:
        pids = list(texts.store)
        return dict(zip(pids, texts.texts(list(range(len(pids))), pids)))
    finally:
        texts.close()


@dataclass
class Reader:
    name: str
    filename: str
    line: Callable[[str], str]  # a valid line of this file whose id is the argument
    read: Callable[[Path, tuple, Path], object]  # reads the whole file: (path, (model, tokenizer), scratch folder)
    has_ids: bool = True  # whether its ids are records' ids (TSV/JSONL), held to the id rule by the parser
    white_space_splits: bool = False  # qrels and runs: white space separates columns


def tsv_corpus_line(rid):
    return f"{rid}\tTitle\tkalo mine ruka"


def jsonl_corpus_line(rid):
    return json.dumps({"_id": rid, "title": "Title", "text": "kalo mine ruka"})


def tsv_query_line(rid):
    return f"{rid}\tkalo mine"


def jsonl_query_line(rid):
    return json.dumps({"_id": rid, "text": "kalo mine"})


def build_index_reader(column_names):
    def read(path, model_tok, scratch):
        model, tok = model_tok
        return api.build_index(model, tok, path, scratch / "index", template="<text>", column_names=column_names,
                               max_len=16, batch_size=4, progress=False)
    return read


def encode_file_reader(column_names):
    def read(path, model_tok, scratch):
        model, tok = model_tok
        return api.encode_file(model, tok, path, template="<text>", column_names=column_names, max_len=16)
    return read


def training_read(path, model_tok, scratch):
    dataset = TrainDataset([path], model_tok[1], train_n_passages=2, show_progress=False)
    return [dataset.raw(i) for i in range(len(dataset))]


READERS = [
    Reader("build_index corpus tsv", "corpus.tsv", tsv_corpus_line, build_index_reader("id,title,text")),
    Reader("build_index corpus jsonl", "corpus.jsonl", jsonl_corpus_line, build_index_reader(None)),
    Reader("retrieve queries tsv", "queries.tsv", tsv_query_line, encode_file_reader("id,text")),
    Reader("retrieve queries jsonl", "queries.jsonl", jsonl_query_line, encode_file_reader(None)),
    Reader("build_train queries", "train.query.txt", tsv_query_line,
           lambda path, mt, scratch: load_texts(path, QUERY_COLUMNS, Template("<text>"))),
    Reader("build_train collection", "corpus.tsv", tsv_corpus_line,
           lambda path, mt, scratch: collection_texts(path, "Title: <title> Text: <text>")),
    Reader("build_train collection jsonl", "corpus.jsonl", jsonl_corpus_line,
           lambda path, mt, scratch: collection_texts(path, "<text>")),
    Reader("load_id_records", "para.txt", tsv_query_line, lambda path, mt, scratch: load_id_records(path, "id,text")),
    Reader("negatives file qid", "train.negatives.tsv", lambda rid: f"{rid}\td1,d2",
           lambda path, mt, scratch: list(iter_negatives_file(path))),
    Reader("negatives file pid", "train.negatives.tsv", lambda rid: f"q{len(rid)}\td1,{rid},d2",
           lambda path, mt, scratch: list(iter_negatives_file(path))),
    Reader("training jsonl", "train.jsonl", lambda rid: '{"query": [5, 6], "positives": [[7, 8]], "negatives": [[9]]}',
           training_read, has_ids=False),
    Reader("qrels", "qrels.tsv", lambda rid: f"{rid}\t0\td1\t1", lambda path, mt, scratch: load_qrels(path),
           white_space_splits=True),
    Reader("evaluate run", "run.trec", lambda rid: f"{rid} Q0 d1 1 2.5 r", lambda path, mt, scratch: load_run(path),
           white_space_splits=True),
    Reader("build_hn run", "run.trec", lambda rid: f"{rid} Q0 d1 1 2.5 r",
           lambda path, mt, scratch: list(iter_run_groups(path, 10)), white_space_splits=True),
]
JSONL_READERS = [r for r in READERS if r.filename.endswith(".jsonl")]
ID_READERS = [r for r in READERS if r.has_ids and not r.white_space_splits]
# Readers that refuse a file without records (a run or negatives file without lines yields no example,
# which build_train/build_hn report as such).
EMPTY_READERS = [r for r in READERS if "run" not in r.name and "negatives" not in r.name]


def write(folder: Path, reader: Reader, lines: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / reader.filename
    path.write_bytes(b"".join(lines))
    return path


def error_of(reader: Reader, path: Path, model_tok, scratch: Path) -> Optional[str]:
    try:
        reader.read(path, model_tok, scratch)
    except DataFormatError as err:
        return str(err)
    return None


def ids(reader):
    return pytest.mark.parametrize("reader", reader, ids=[r.name for r in reader])


@ids(READERS)
def test_invalid_utf8_is_worded_the_same_by_every_reader(reader, model_tok, tmp_path):
    good = (reader.line("k1") + "\n").encode()
    path = write(tmp_path / "data", reader, [good, b"\xff" + (reader.line("k2") + "\n").encode()])
    assert error_of(reader, path, model_tok, tmp_path) == f"{path}:2: invalid UTF-8 at byte 0"


@ids(JSONL_READERS)
@pytest.mark.parametrize(
    "bad, message",
    [(b'{"_id": "k2",\n', "invalid JSON: Expecting property name enclosed in double quotes"),
     (b"[1, 2]\n", "expected a JSON object")],
    ids=["invalid", "array"],
)
def test_bad_json_is_worded_the_same_by_every_reader(reader, bad, message, model_tok, tmp_path):
    path = write(tmp_path / "data", reader, [(reader.line("k1") + "\n").encode(), bad])
    assert error_of(reader, path, model_tok, tmp_path) == f"{path}:2: {message}"


def count_records(result) -> int:
    if isinstance(result, dict) and "total" in result:  # build_index's manifest
        return result["total"]
    if isinstance(result, tuple):  # encode_file's (ids, embeddings)
        return len(result[0])
    return len(result)  # records, texts, examples, queries of qrels and runs, negatives lines


@ids(READERS)
def test_blank_lines_and_crlf_are_read_the_same_by_every_reader(reader, model_tok, tmp_path):
    # A line of white space only (tabs included) holds no record, for every reader alike.
    lines = [(reader.line("k1") + "\r\n").encode(), b" \t \r\n", b"\n", (reader.line("k22") + "\r\n").encode()]
    path = write(tmp_path / "data", reader, lines)
    assert count_records(reader.read(path, model_tok, tmp_path)) == 2


@ids(ID_READERS)
@pytest.mark.parametrize("rid", ["a b", "a\u00a0b", "tail "], ids=["space", "nbsp", "trailing"])
def test_an_id_with_white_space_is_refused_in_the_same_words(reader, rid, model_tok, tmp_path):
    path = write(tmp_path / "data", reader, [(reader.line("k1") + "\n").encode(), (reader.line(rid) + "\n").encode()])
    assert error_of(reader, path, model_tok, tmp_path) == (
        f"{path}:2: id {rid!r} contains white space, which a TREC run cannot hold"
    )


@ids([r for r in READERS if r.white_space_splits])
@pytest.mark.parametrize("rid", ["a b", "a\u00a0b"], ids=["space", "nbsp"])
def test_qrels_and_runs_refuse_an_id_with_white_space_too(reader, rid, model_tok, tmp_path):
    # Their columns are split at white space, so such an id shows up as a line with too many columns.
    path = write(tmp_path / "data", reader, [(reader.line("k1") + "\n").encode(), (reader.line(rid) + "\n").encode()])
    error = error_of(reader, path, model_tok, tmp_path)
    assert error is not None and error.startswith(f"{path}:2: ") and "columns" in error


@ids([r for r in ID_READERS if "negatives" not in r.name])
def test_an_empty_id_is_refused_in_the_same_words(reader, model_tok, tmp_path):
    path = write(tmp_path / "data", reader, [(reader.line("k1") + "\n").encode(), (reader.line("") + "\n").encode()])
    assert error_of(reader, path, model_tok, tmp_path) == f"{path}:2: empty id"


@ids([r for r in ID_READERS if "negatives" not in r.name])
def test_a_repeated_id_is_refused_in_the_same_words(reader, model_tok, tmp_path):
    lines = [(reader.line(rid) + "\n").encode() for rid in ("x", "y", "x")]
    path = write(tmp_path / "data", reader, lines)
    assert error_of(reader, path, model_tok, tmp_path) == f"{path}:3: id 'x' repeated (first seen on line 1)"


@ids(EMPTY_READERS)
def test_a_file_without_records_is_refused_in_the_same_words(reader, model_tok, tmp_path):
    path = write(tmp_path / "data", reader, [b"\n", b"  \r\n"])
    assert error_of(reader, path, model_tok, tmp_path) == f"{path}: no records: the file is empty"


def test_negatives_file_ids(tmp_path):
    pids = [f"d{i}" for i in range(500)]
    path = tmp_path / "train.negatives.tsv"
    path.write_text("q1\t" + ",".join(pids) + "\nq2\t\n")
    assert list(iter_negatives_file(path)) == [(1, "q1", pids), (2, "q2", [])]  # an empty column: no candidate
    for bad, message in [(pids[:7] + ["d 7"] + pids[8:], "id 'd 7' contains white space"),
                         (pids[:7] + [""] + pids[8:], "empty id"),
                         (pids + [""], "empty id")]:
        path.write_text("q1\td1\nq2\t" + ",".join(bad) + "\n")
        with pytest.raises(DataFormatError) as info:
            list(iter_negatives_file(path))
        assert str(info.value).startswith(f"{path}:2: {message}")


def test_real_msmarco_and_scifact_marco_ids_pass_the_rule(shared_data):
    queries = load_id_records(shared_data / "msmarco-dev-small" / "queries.dev.small.tsv", "id,text")
    qrels = load_qrels(shared_data / "msmarco-dev-small" / "qrels.dev.small.trec.txt")
    assert len(queries) == 6980 and set(qrels) <= set(queries)
    marco = shared_data / "scifact-marco"
    for name in ("train.query.txt", "dev.query.txt"):
        texts = load_texts(marco / name, QUERY_COLUMNS, Template("<text>"))
        assert all(texts.values())
    assert len(load_texts(marco / "para.txt", "id,text", Template("<text>"))) == 5183


def comparable(reader: Reader, result, scratch: Path):
    """What a reader made of a file, in a form two reads can be compared by: an index by its ids, encoded
    queries by ids and embeddings, the rest as read."""
    if isinstance(result, dict) and "total" in result:
        folder = scratch / "index"
        return [line for name in sorted(p.name for p in folder.glob("ids.*")) for line in (folder / name).read_text().splitlines()]
    if isinstance(result, tuple):
        return result[0], result[1].round(5).tolist()
    return result


@ids(READERS)
def test_a_byte_order_mark_is_dropped_by_every_reader(reader, model_tok, tmp_path):
    lines = [(reader.line(rid) + "\n").encode() for rid in ("k1", "k22")]
    plain = comparable(reader, reader.read(write(tmp_path / "plain", reader, lines), model_tok, tmp_path / "a"), tmp_path / "a")
    marked = write(tmp_path / "marked", reader, [b"\xef\xbb\xbf" + lines[0], lines[1]])
    assert comparable(reader, reader.read(marked, model_tok, tmp_path / "b"), tmp_path / "b") == plain


@ids([r for r in READERS if r.read is not training_read])  # training files are read by offset: never gzip
def test_a_truncated_gzip_is_named_by_every_reader(reader, model_tok, tmp_path):
    import gzip

    lines = [reader.line(f"k{i}") + "\n" for i in range(400)]
    data = gzip.compress("".join(lines).encode())
    path = tmp_path / "data" / (reader.filename + ".gz")
    path.parent.mkdir()
    path.write_bytes(data[: len(data) // 2])
    error = error_of(reader, path, model_tok, tmp_path)
    assert error is not None and error.startswith(f"{path}:") and ": truncated or corrupt gzip (" in error
    line = int(error[len(f"{path}:"):].split(":")[0])
    # The line the data ends in: every line before it was read.
    with gzip.open(path, "rb") as handle:
        read = b""
        try:
            while chunk := handle.read1(1 << 16):
                read += chunk
        except EOFError:
            pass
    assert line == read.count(b"\n") + 1
