"""Record readers, templates and special-token layout (openmatch/dataset/readers.py, template.py, tokenization.py)."""

from __future__ import annotations

import gzip
import json
import tempfile
import warnings

import pytest
import torch
from transformers import AutoTokenizer

from openmatch.dataset import readers as readers_module
from openmatch.dataset.readers import (
    DataFormatError,
    RecordStore,
    count_lines,
    find_id_key,
    iter_id_records,
    iter_records,
    load_id_records,
)
from openmatch.dataset.records import check_not_empty
from openmatch.dataset.template import Template
from openmatch.errors import InputError, OpenMatchWarning, UsageError
from openmatch.dataset.tokenization import SpecialTokenLayout, pad_batch


def write(path, text: str | bytes, gz: bool = False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def records(path, column_names=None):
    return [record for _, record in iter_records(path, column_names)]


# --- TSV -------------------------------------------------------------------------------------------------


def test_tsv_tab_only_quotes_kept_ids_are_strings(tmp_path):
    path = write(tmp_path / "c.tsv", '007\t"A quoted, title\tit\'s "half\n8\tx y, z\t\n')
    assert records(path, "id,title,text") == [
        {"id": "007", "title": '"A quoted, title', "text": "it's \"half"},
        {"id": "8", "title": "x y, z", "text": ""},
    ]


def test_tsv_header_line_and_crlf(tmp_path):
    path = write(tmp_path / "q.tsv", "id\ttext\r\n001\tfirst query\r\n\r\n002\tsecond\r\n")
    got = list(iter_records(path))
    assert got == [(2, {"id": "001", "text": "first query"}), (4, {"id": "002", "text": "second"})]


@pytest.mark.parametrize("gz", [False, True])
def test_tsv_gzip(tmp_path, gz):
    path = write(tmp_path / ("c.tsv.gz" if gz else "c.tsv"), "1\tA\n2\tB\n", gz=gz)
    assert records(path, ["id", "text"]) == [{"id": "1", "text": "A"}, {"id": "2", "text": "B"}]


def test_tsv_wrong_column_count_names_file_and_line(tmp_path):
    path = write(tmp_path / "c.tsv", "1\ta\tb\n2\tonly two\n")
    with pytest.raises(DataFormatError, match=r"c\.tsv:2: expected 3 tab-separated columns \(id,title,text\), found 2"):
        records(path, "id,title,text")


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path / "c.tsv", b"1\tok\n2\tbad \xff byte\n")
    with pytest.raises(DataFormatError, match=r"c\.tsv:2: invalid UTF-8 at byte 6"):
        records(path, "id,text")
    gz = write(tmp_path / "c.jsonl.gz", b'{"_id": "1"}\n{"_id": "\xc3"}\n', gz=True)
    with pytest.raises(DataFormatError, match=r"c\.jsonl\.gz:2: invalid UTF-8"):
        records(gz)


def test_bad_column_names():
    with pytest.raises(ValueError, match="column names"):
        list(iter_records("unused.tsv", "id,,text"))


# --- JSONL -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_beir(tmp_path, gz):
    lines = [{"_id": "007", "title": "T", "text": "body", "metadata": {"year": 2020}}, {"_id": "9", "title": "", "text": "x"}]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    path = write(tmp_path / ("c.jsonl.gz" if gz else "c.jsonl"), text, gz=gz)
    got = list(iter_id_records(path))
    assert [(line, rid) for line, rid, _ in got] == [(1, "007"), (2, "9")]
    assert got[0][2]["metadata"] == {"year": 2020}


def test_bad_json_names_file_and_line(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"_id": "1"}\n{"_id": 2,\n')
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: invalid JSON"):
        records(path)
    path = write(tmp_path / "d.jsonl", '{"_id": "1"}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"d\.jsonl:2: expected a JSON object"):
        records(path)


def test_id_key_detection_order(tmp_path):
    assert find_id_key({"id": 1, "_id": 2, "text_id": 3}) == "_id"
    assert find_id_key({"sample_id": 1, "text_id": 2, "id": 3}) == "id"
    assert find_id_key({"sample_id": 1, "text_id": 2}) == "text_id"
    assert find_id_key({"sample_id": 1}) == "sample_id"
    with pytest.raises(DataFormatError, match="no id field"):
        find_id_key({"pid": 1})
    path = write(tmp_path / "c.jsonl", '{"text_id": 12, "text": "a"}\n{"text_id": 13, "text": "b"}\n')
    assert [rid for _, rid, _ in iter_id_records(path)] == ["12", "13"]  # integer ids become strings
    path = write(tmp_path / "e.jsonl", '{"_id": "1"}\n{"_id": ""}\n')
    with pytest.raises(DataFormatError, match=r"e\.jsonl:2: empty id$"):
        list(iter_id_records(path))


def test_load_id_records_rejects_repeated_id(tmp_path):
    path = write(tmp_path / "c.tsv", "1\ta\n2\tb\n1\tc\n")
    with pytest.raises(DataFormatError, match=r"c\.tsv:3: id '1' repeated \(first seen on line 1\)"):
        load_id_records(path, "id,text")
    assert load_id_records(path, "id,text", allow_duplicates=True)["1"]["text"] == "c"
    assert list(load_id_records(write(tmp_path / "d.tsv", "9\tz\n007\ty\n"), "id,text")) == ["9", "007"]


def test_count_lines(tmp_path):
    assert count_lines(write(tmp_path / "a.txt", "x\ny\n")) == 2
    assert count_lines(write(tmp_path / "b.txt", "x\ny")) == 2  # no final newline
    assert count_lines(write(tmp_path / "c.txt", "")) == 0
    assert count_lines(write(tmp_path / "d.txt.gz", "1\n2\n3\n", gz=True)) == 3
    with pytest.raises(FileNotFoundError, match="no such file"):
        count_lines(tmp_path / "missing.txt")


# --- Records by offset (RecordStore) ----------------------------------------------------------------------


def store_records(store: RecordStore, ids) -> dict:
    """``{id: record}`` of the ids the store finds, read from the file; absent ids left out."""
    ids = list(ids)
    rows = store.rows(ids).tolist()
    found = [(rid, row) for rid, row in zip(ids, rows) if row >= 0]
    return dict(zip([rid for rid, _ in found], store.read([row for _, row in found], [rid for rid, _ in found])))


# Integer ids in and out of order, string ids, ids that only look like integers (007, +7, 1_000, ٣ are other ids
# than 7, 1000 and 3), a byte-order mark, CRLF, blank lines and a header line: what load_id_records reads.
STORE_FILES = {
    "sorted integers": "\ufeffid\ttitle\ttext\r\n0\tT0\tzero\r\n\r\n1\t\tone\r\n5\tT5\tfive \"q\"\r\n",
    "unsorted integers": "9\tA\tnine\n-3\tB\tminus three\n12\tC\ttwelve\n4\tD\t\n",
    "look-alikes": "7\tA\tseven\n007\tB\tzero zero seven\n+8\tC\tplus eight\n1_000\tD\tunderscore\n\u0663\tE\tarabic\n",
    "strings": "d1\tA\tβ-cells\nx-9\tB\tsecond\nd10\tC\tthird\n",
    "huge integers": "1\tA\tone\n99999999999999999999\tB\tbeyond int64\n",
}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", list(STORE_FILES))
def test_record_store_finds_what_load_id_records_reads(tmp_path, monkeypatch, name, gz):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = write(tmp_path / ("c.tsv.gz" if gz else "c.tsv"), STORE_FILES[name], gz=gz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OpenMatchWarning)  # the header line's
        expected = load_id_records(path, "id,title,text")
        store = RecordStore(path, "id,title,text")
    try:
        assert len(store) == len(expected)
        absent = ["404", "d2", "0x1", "", "7.0", "٣٣", "-0", "99999999999999999998"]
        ids = list(expected) + [rid for rid in absent if rid not in expected]
        assert store_records(store, reversed(ids)) == expected
        assert list(store) == list(expected)  # file order
        assert store.get(list(expected)[-1]) == expected[list(expected)[-1]] and store.get("404") is None
        # A .gz file is read from a decompressed copy that has no name: nothing is left in the temporary folder.
        assert not list((tmp_path / "tmp").iterdir())
    finally:
        store.close()


def test_record_store_switches_to_hashes_at_a_later_block(tmp_path, monkeypatch):
    monkeypatch.setattr(RecordStore, "_BLOCK", 2)
    lines = [f"{i}\tt\ttext {i}\n" for i in range(7)] + ["p7\tt\ttext 7\n", "8\tt\ttext 8\n"]
    path = write(tmp_path / "c.tsv", "".join(lines))
    store = RecordStore(path, "id,title,text")
    assert not store._integer_ids
    ids = [str(i) for i in range(7)] + ["p7", "8"]
    assert store.rows(ids + ["7", "p8"]).tolist() == list(range(9)) + [-1, -1]
    assert [record["text"] for record in store.read(range(9), ids)] == [f"text {i}" for i in range(9)]


def test_record_store_tells_apart_ids_that_share_a_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_module, "_hash_id", len)  # every id of one length collides
    path = write(tmp_path / "c.tsv", "aa\tt\tone\nbb\tt\ttwo\nc\tt\tthree\ncc\tt\tfour\n")
    store = RecordStore(path, "id,title,text")
    assert store.rows(["cc", "bb", "aa", "c", "dd", "ddd"]).tolist() == [3, 1, 0, 2, -1, -1]
    assert [r["text"] for r in store.read([3, 1], ["cc", "bb"])] == ["four", "two"]
    # An id that is not in the file but shares the hash of the only id of its length is found at that id's row,
    # and refused when read: the line read holds another id.
    assert store.rows(["d"]).tolist() == [2]
    with pytest.raises(InputError, match=r"c\.tsv: the record read for id 'd' has id 'c'"):
        store.read([2], ["d"])
    # A repeated id among ids that share their hash is still a repeated id.
    path = write(tmp_path / "d.tsv", "aa\tt\tone\nbb\tt\ttwo\naa\tt\tthree\n")
    with pytest.raises(DataFormatError, match=r"d\.tsv:3: id 'aa' repeated \(first seen on line 1\)$"):
        RecordStore(path, "id,title,text")


@pytest.mark.parametrize(
    "content",
    [
        "1\ta\tx\n2\tb\tx\n3\tc\tx\n2\td\tx\n1\te\tx\n",  # the first repeat in file order is 2's
        "1\ta\tx\n2\tb\tx\n1\tc\tx\nbad line\n",  # a repeat before a bad line is the first problem
        "1\ta\tx\nbad line\n1\tc\tx\n",  # a bad line before a repeat is the first problem
        "a\ta\tx\nb\tb\tx\na\tc\tx\n\xff\n",
        "1\ta\tx\n2\tb\tx\n1 \tc\tx\n",
        "\n  \r\n",
    ],
    ids=["repeats", "repeat then bad line", "bad line then repeat", "strings", "white space", "empty"],
)
def test_record_store_reports_the_problem_load_id_records_reports(tmp_path, content):
    path = write(tmp_path / "c.tsv", content)
    with pytest.raises(DataFormatError) as expected:
        load_id_records(path, "id,title,text")
    with pytest.raises(DataFormatError) as got:
        RecordStore(path, "id,title,text")
    assert str(got.value) == str(expected.value)


def test_record_store_refuses_a_file_changed_after_its_pass(tmp_path):
    path = write(tmp_path / "c.tsv", "1\tt\tone\n2\tt\ttwo\n3\tt\tthree\n")
    store = RecordStore(path, "id,title,text")
    path.write_text("1\tt\tone\n3\tt\tthree\n2\tt\ttwo\n")
    with pytest.raises(InputError, match="the record read for id '2' has id '3': the file changed"):
        store.read(store.rows(["2"]), ["2"])
    path.write_text("1\tt\tone\n")
    with pytest.raises(InputError, match="the file changed while it was being read"):
        store.read(store.rows(["3"]), ["3"])


# --- Header lines ------------------------------------------------------------------------------------------


def test_a_header_repeating_the_column_names_is_skipped_with_a_warning(tmp_path):
    path = write(tmp_path / "c.tsv", "ID\tTitle\ttext\n1\ta\tb\n")
    with pytest.warns(OpenMatchWarning) as caught:
        read = list(iter_id_records(path, "id,title,text"))
    assert [(line, rid) for line, rid, _ in read] == [(2, "1")]
    assert [str(w.message) for w in caught] == [
        f"{path}:1: skipped a header line (ID, Title, text); the columns are named by id,title,text"
    ]
    # The id column may be headed by any usual id name; a first line that only resembles a header is data.
    for name in ("_id", "qid", "docid", "query-id"):
        with pytest.warns(OpenMatchWarning, match="skipped a header line"):
            assert list(load_id_records(write(tmp_path / "q.tsv", f"{name}\ttext\nq1\tx\n"), "id,text")) == ["q1"]
    assert list(load_id_records(write(tmp_path / "r.tsv", "1\ttitle\ttext\n"), "id,title,text")) == ["1"]


def test_column_names_read_from_a_data_line_hint_at_the_flags(tmp_path):
    path = write(tmp_path / "c.tsv", "d1\tkalo mine\nd2\truka\n")
    with pytest.raises(DataFormatError) as info:
        load_id_records(path)
    assert str(info.value) == (
        f"{path}:2: no id field (one of _id, id, text_id, sample_id) in ['d1', 'kalo mine'] (line 1 was read as the "
        "header, naming the columns d1,kalo mine, because no column names were given; a file without a header line "
        "needs --doc_column_names / --query_column_names, e.g. id,title,text)"
    )
    with pytest.raises(DataFormatError, match=r"^.*c\.tsv: no records: the file holds a single line, read as its header \(line 1"):
        check_not_empty(write(tmp_path / "c.tsv", "d1\tkalo mine\n"))
    # A real header (it names an id column) gets no hint for a bad line further down.
    with pytest.raises(DataFormatError) as info:
        load_id_records(write(tmp_path / "h.tsv", "id\ttext\nd1\ta\nd2\n"))
    assert str(info.value) == f"{tmp_path / 'h.tsv'}:3: expected 2 tab-separated columns (id,text), found 1"


# --- Templates -------------------------------------------------------------------------------------------


def test_template_markers_and_dotted_names():
    template = Template("Title: <title> Text: <text>")
    assert template.fields == ["title", "text"]
    assert template.fill({"title": "A", "text": "b c", "id": "1"}) == "Title: A Text: b c"
    nested = Template("<meta.source> | <text>")
    assert nested({"meta": {"source": "pubmed"}, "text": 7}) == "pubmed | 7"
    assert Template("<text>")({"text": "  padded  "}) == "padded"
    with pytest.raises(ValueError, match="no <field> marker"):
        Template("plain text")
    with pytest.raises(ValueError, match="must not be empty"):
        Template("")


def test_template_missing_or_null_field_empty_and_warned_once():
    template = Template("Title: <title> Text: <text> <meta.year>")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = [template.fill({"text": f"t{i}", "meta": {}}, "c.jsonl", i + 1) for i in range(50)]
        rows.append(template.fill({"text": "x", "title": None, "meta": {"year": 2001}}, "c.jsonl", 51))
        rows.append(template.fill({"text": "y", "title": None, "meta": {"year": 2002}}, "c.jsonl", 52))
    assert rows[0] == "Title:  Text: t0"
    assert rows[-2] == "Title:  Text: x 2001"
    messages = [str(w.message) for w in caught if issubclass(w.category, OpenMatchWarning)]
    # One per missing field and one for the null title, not one per row; each names the first record.
    assert sorted(messages) == [
        "c.jsonl:1: field 'meta.year' missing from a record; using an empty string (reported once)",
        "c.jsonl:1: field 'title' missing from a record; using an empty string (reported once)",
        "c.jsonl:51: field 'title' is null; using an empty string (reported once)",
    ]


@pytest.mark.parametrize("value, kind", [([1, 2], "list"), ({"a": "b"}, "JSON object"), (True, "boolean")])
def test_template_refuses_a_field_that_is_not_text(value, kind):
    with pytest.raises(DataFormatError) as info:
        Template("<title> <text>").fill({"title": "t", "text": value}, "c.jsonl", 7)
    assert str(info.value) == (
        f"c.jsonl:7: field 'text' is a {kind}, not text: a template field must be a string or a number"
    )


def test_template_requires_its_fields_in_a_first_record():
    template = Template("Title: <tilte> Text: <text> <meta.year>")
    assert template.missing_fields({"title": "a", "text": "b", "meta": {"year": 1}}) == ["tilte"]
    with pytest.raises(UsageError) as info:
        template.require_fields({"id": "1", "title": "a", "text": "b"}, "c.jsonl", 1, "--doc_template")
    assert str(info.value) == (
        "--doc_template 'Title: <tilte> Text: <text> <meta.year>': no field <tilte>, <meta.year> in the first record "
        "of c.jsonl (line 1), whose fields are id, text, title"
    )
    Template("<text>").require_fields({"id": "1", "text": None}, "c.jsonl", 1)  # null is a value, not a typo


# --- Special tokens and padding ---------------------------------------------------------------------------


def test_special_token_layout_bert(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    layout = SpecialTokenLayout(tokenizer)
    assert layout.prefix == [tokenizer.cls_token_id] and layout.suffix == [tokenizer.sep_token_id]
    ids = tokenizer("kalo mine ruka sati vozepa", add_special_tokens=False)["input_ids"]
    assert layout.wrap(ids, 128) == tokenizer("kalo mine ruka sati vozepa")["input_ids"]
    wrapped = layout.wrap(ids, 4)
    assert len(wrapped) == 4 and wrapped == [tokenizer.cls_token_id, *ids[:2], tokenizer.sep_token_id]
    with pytest.raises(ValueError, match="no room"):
        layout.wrap(ids, 2)


def test_special_token_layout_t5(tiny_t5):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    layout = SpecialTokenLayout(tokenizer)
    assert layout.prefix == [] and layout.suffix == [tokenizer.eos_token_id] and layout.pad_id == 0
    ids = tokenizer("kalo mine ruka", add_special_tokens=False)["input_ids"]
    assert layout.wrap(ids, 32) == tokenizer("kalo mine ruka")["input_ids"]
    assert layout.wrap(ids, 3) == [*ids[:2], tokenizer.eos_token_id]
    assert layout.wrap([], 3) == [tokenizer.eos_token_id]


def test_pad_batch():
    batch = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    padded = pad_batch([[1, 2, 3, 4, 5]], pad_id=9, pad_to_multiple_of=4)
    assert padded["input_ids"].tolist() == [[1, 2, 3, 4, 5, 9, 9, 9]]
    with pytest.raises(ValueError, match="empty batch"):
        pad_batch([], pad_id=0)


# --- Real data --------------------------------------------------------------------------------------------


def test_real_scifact_corpus_jsonl_gz(shared_data):
    path = shared_data / "scifact" / "corpus.jsonl.gz"
    corpus = load_id_records(path)
    assert len(corpus) == 5183 == count_lines(path)
    assert all(set(record) >= {"_id", "title", "text"} for record in corpus.values())
    template = Template("Title: <title> Text: <text>")
    some_id = next(iter(corpus))
    assert template(corpus[some_id]).startswith("Title: " + corpus[some_id]["title"])


def test_real_scifact_marco_para(shared_data):
    path = shared_data / "scifact-marco" / "para.txt"
    para = load_id_records(path, "id,text")
    assert len(para) == count_lines(path) == 5183
    corpus = load_id_records(shared_data / "scifact" / "corpus.jsonl.gz")
    assert set(para) == set(corpus)  # same collection, same string ids
