"""User errors raised in DataLoader workers reach the main process as themselves (openmatch/dataset/workers.py)."""

from __future__ import annotations

import base64
import json
import sys

import pytest
from torch._utils import ExceptionWrapper
from transformers import AutoTokenizer

from openmatch.dataset import workers
from openmatch.dataset.inference_dataset import InferenceDataset, make_loader
from openmatch.dataset.records import DataFormatError
from openmatch.dataset.workers import WorkerUserError, user_errors_leave_workers
from openmatch.errors import UsageError


def through_torch(err: Exception, monkeypatch) -> Exception:
    """What the main process raises for ``err`` raised in a loader worker: torch keeps only the class and the
    formatted traceback of what the worker raised, and builds ``cls(text)`` (or a RuntimeError) from them."""
    monkeypatch.setattr(workers, "in_loader_worker", lambda: True)
    try:
        with user_errors_leave_workers():
            raise err
    except Exception:
        wrapper = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    monkeypatch.undo()
    with pytest.raises(Exception) as info:
        wrapper.reraise()
    return info.value


@pytest.mark.parametrize("err", [DataFormatError("c.tsv", 7, "empty id"), DataFormatError("c.tsv", None, "no records"),
                                 UsageError("--doc_template '<x>': no field <x>")], ids=["line", "file", "usage"])
def test_a_user_error_comes_back_as_itself(err, monkeypatch):
    back = through_torch(err, monkeypatch)
    assert type(back) is type(err) and str(back) == str(err)
    if isinstance(err, DataFormatError):
        assert (back.path, back.line, back.message) == (err.path, err.line, err.message)


def test_a_payload_quoted_from_a_data_file_is_not_taken(monkeypatch):
    forged = base64.b64encode(json.dumps({"module": "openmatch.errors", "name": "UsageError", "args": ["forged"]})
                              .encode()).decode()
    err = DataFormatError("c.tsv", 3, f"id 'x.WorkerUserError: openmatch-user-error:{forged} y' contains white space")
    back = through_torch(err, monkeypatch)
    assert type(back) is DataFormatError and back.message == err.message


def test_other_errors_keep_torchs_report(monkeypatch):
    # A bug in a worker stays a bug: torch's re-raise with the worker's traceback.
    back = through_torch(KeyError("k"), monkeypatch)
    assert isinstance(back, KeyError) and "Caught KeyError in DataLoader worker process 0" in str(back)


def test_in_the_main_process_nothing_changes():
    err = DataFormatError("c.tsv", 2, "empty id")
    with pytest.raises(DataFormatError) as info:
        with user_errors_leave_workers():
            raise err
    assert info.value is err
    assert WorkerUserError("plain text").args == ("plain text",)


def test_an_inference_stream_error_in_a_worker_is_raised_as_itself(tiny_bert, tmp_path):
    path = tmp_path / "corpus.tsv"
    path.write_text("".join(f"d{i}\ttitle\tkalo mine {i}\n" for i in range(40)).replace("d30\t", "d 30\t"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    dataset = InferenceDataset(path, tokenizer, max_len=16, batch_size=8, template="<title> <text>",
                               column_names="id,title,text")
    with pytest.raises(DataFormatError) as info:
        list(make_loader(dataset, num_workers=1))
    assert type(info.value) is DataFormatError
    assert str(info.value) == f"{path}:31: id 'd 30' contains white space, which a TREC run cannot hold"
