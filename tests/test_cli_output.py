"""What a command prints: our INFO lines, no third-party INFO chatter (faiss's loader) unless ``--log_level
debug``, and our warnings as one plain ``warning: ...`` line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

from tests import REPO
FP16_WARNING = "warning: --fp16 needs a GPU; none is available, so this run uses float32."


@pytest.fixture
def output_session():
    """Run a test inside the commands' output set-up, which puts the caller's logging back afterwards."""
    from openmatch.cli import command_output

    with command_output():
        yield


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of --fp16")
def test_retrieve_prints_our_lines_only(tiny_bert, tmp_path):
    from openmatch import api

    corpus, queries = tmp_path / "corpus.tsv", tmp_path / "queries.tsv"
    corpus.write_text("d1\tkaka\tloka mimi\nd2\tnene\truru sasa\nd3\ttiti\tvovo zeze\n")
    queries.write_text("q1\tkaka loka\nq2\truru\n")
    model, tokenizer = api.load_model(str(tiny_bert))
    api.build_index(model, tokenizer, corpus, tmp_path / "emb", model_path=str(tiny_bert), max_len=16,
                    template="<title> <text>", column_names="id,title,text", device="cpu")
    command = [
        sys.executable, "-m", "openmatch.driver.retrieve", "--output_dir", str(tmp_path / "emb"),
        "--model_name_or_path", str(tiny_bert), "--query_path", str(queries), "--query_template", "<text>",
        "--query_column_names", "id,text", "--q_max_len", "16", "--retrieve_depth", "2",
        "--trec_save_path", str(tmp_path / "run.trec"), "--fp16",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert not [line for line in lines if "faiss" in line], proc.stderr  # the loader's INFO lines
    assert lines.count(FP16_WARNING) == 1, proc.stderr
    # Python's own format would add "UserWarning" and the source line that issued the warning.
    assert "UserWarning" not in proc.stderr and "__post_init__" not in proc.stderr
    assert any(line.endswith(f"INFO openmatch.retrieve: wrote 4 lines for 2 queries to {tmp_path / 'run.trec'}")
               for line in lines), proc.stderr


def test_third_party_info_needs_log_level_debug(output_session):
    from openmatch.utils import setup_logging

    ours, faiss_loader = logging.getLogger("openmatch.retrieve"), logging.getLogger("faiss.loader")
    setup_logging(0)
    assert ours.isEnabledFor(logging.INFO) and not faiss_loader.isEnabledFor(logging.INFO)
    assert faiss_loader.isEnabledFor(logging.WARNING)
    setup_logging(0, "passive")
    assert ours.isEnabledFor(logging.INFO) and not faiss_loader.isEnabledFor(logging.INFO)
    setup_logging(0, "debug")
    assert ours.isEnabledFor(logging.DEBUG) and faiss_loader.isEnabledFor(logging.DEBUG)
    assert logging.getLogger("transformers").isEnabledFor(logging.DEBUG)
    setup_logging(0, "warning")
    assert not ours.isEnabledFor(logging.INFO) and not faiss_loader.isEnabledFor(logging.INFO)
    setup_logging(1, "info")  # other ranks: warnings only
    assert not ours.isEnabledFor(logging.INFO) and ours.isEnabledFor(logging.WARNING)


def test_our_warnings_are_one_plain_line(capsys):
    from openmatch.cli import command_output
    from openmatch.errors import OpenMatchWarning

    with warnings.catch_warnings(record=True) as others:
        warnings.simplefilter("always")
        with command_output():
            warnings.warn("--fp16 needs a GPU;\nnone is available", OpenMatchWarning)
            warnings.warn("a library's warning", UserWarning)
        warnings.warn("after the command", OpenMatchWarning)
    assert capsys.readouterr().err == "warning: --fp16 needs a GPU; none is available\n"
    # Other warnings are left to Python and the caller, and so are ours once the command is over.
    assert [str(w.message) for w in others] == ["a library's warning", "after the command"]


def test_a_command_puts_the_callers_logging_back(tmp_path, capsys):
    from openmatch.driver import evaluate

    qrels, run = tmp_path / "qrels.tsv", tmp_path / "run.trec"
    qrels.write_text("q1 0 d1 1\n")
    run.write_text("q1 Q0 d1 1 2.0 x\n")
    names = ("", "openmatch", "transformers")
    before = {name: logging.getLogger(name).level for name in names}
    handlers, showwarning = list(logging.getLogger().handlers), warnings.showwarning
    assert evaluate.main(["--qrels", str(qrels), "--run", str(run), "--log_level", "debug"]) == 0
    assert "mrr@10" in capsys.readouterr().out
    assert {name: logging.getLogger(name).level for name in names} == before
    assert logging.getLogger().handlers == handlers and warnings.showwarning is showwarning
