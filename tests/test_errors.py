"""One error family and one command-line wrapper: user errors are one ``error:`` line (exit 2), bugs keep
their traceback (exit 1); console entry points name the drivers' and scripts' ``main``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import runpy
import subprocess
import sys

import pytest

from openmatch.dataset.readers import DataFormatError
from openmatch.driver import evaluate
from openmatch.cli import run as run_cli
from openmatch.preprocessing import PreprocessingError
from openmatch.retriever.index import IndexFolderError

from tests import REPO


def errors():
    return importlib.import_module("openmatch.errors")


@pytest.fixture
def run_files(tmp_path):
    qrels, run = tmp_path / "qrels.tsv", tmp_path / "run.trec"
    qrels.write_text("q1 0 d1 1\nq2 0 d3 1\n")
    run.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\nq2 Q0 d2 1 3.0 x\n")
    return ["--qrels", str(qrels), "--run", str(run)]


def test_every_user_error_is_an_openmatch_error_and_keeps_its_builtin_base():
    e = errors()
    expected = {
        e.UsageError: ValueError,
        e.InputError: ValueError,
        DataFormatError: ValueError,
        e.MissingInputError: FileNotFoundError,
        e.OutputExistsError: FileExistsError,
        IndexFolderError: FileExistsError,
        e.ResourceError: RuntimeError,
        e.DependencyError: ImportError,
        PreprocessingError: RuntimeError,
    }
    for cls, builtin in expected.items():
        assert issubclass(cls, e.OpenMatchError) and issubclass(cls, builtin), cls
    # The classes defined beside their code are the ones openmatch.errors names.
    assert (e.DataFormatError, e.IndexFolderError, e.PreprocessingError) == (DataFormatError, IndexFolderError, PreprocessingError)


# (class, where it is defined, constructor arguments, the expected message)
USER_ERRORS = [
    ("UsageError", "openmatch.errors", ("--metrics: no metric given",), "--metrics: no metric given"),
    ("InputError", "openmatch.errors", ("the run and the qrels share no query",), "the run and the qrels share no query"),
    ("DataFormatError", "openmatch.dataset.readers", ("qrels.tsv", 3, "expected 4 columns"), "qrels.tsv:3: expected 4 columns"),
    ("MissingInputError", "openmatch.errors", ("a.tsv: no such file",), "a.tsv: no such file"),
    ("OutputExistsError", "openmatch.errors", ("out holds a training run",), "out holds a training run"),
    ("IndexFolderError", "openmatch.retriever.index", ("emb already holds an index",), "emb already holds an index"),
    ("ResourceError", "openmatch.errors", ("--use_gpu needs faiss-gpu",), "--use_gpu needs faiss-gpu"),
    ("DependencyError", "openmatch.errors", ("searching needs faiss: pip install faiss-cpu",), "searching needs faiss: pip install faiss-cpu"),
    ("PreprocessingError", "openmatch.preprocessing", ("no example\nsee above",), "no example see above"),
    ("FileNotFoundError", "builtins", (2, "No such file or directory", "q.tsv"), "q.tsv: No such file or directory"),
    ("IsADirectoryError", "builtins", (21, "Is a directory", "runs"), "runs: Is a directory"),
    ("NotADirectoryError", "builtins", (20, "Not a directory", "a.tsv/x"), "a.tsv/x: Not a directory"),
    ("PermissionError", "builtins", (13, "Permission denied", "locked.tsv"), "locked.tsv: Permission denied"),
]


@pytest.mark.parametrize("name, module, args, message", USER_ERRORS, ids=[case[0] for case in USER_ERRORS])
def test_user_error_is_one_line_and_exit_2(name, module, args, message, run_files, monkeypatch, capsys):
    error = getattr(importlib.import_module(module), name)(*args)

    def fail(path):
        raise error

    monkeypatch.setattr(evaluate, "load_qrels", fail)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(run_files)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]


@pytest.mark.parametrize(
    "bug",
    [
        ValueError("operands could not be broadcast together with shapes (3,) (4,)"),
        IndexError("index 7 is out of bounds for axis 0 with size 3"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        FileNotFoundError("a path computed by the code, not given by the user"),
    ],
    ids=lambda bug: type(bug).__name__,
)
def test_a_bug_inside_a_driver_propagates(bug, run_files, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise bug

    monkeypatch.setattr(evaluate, "evaluate", fail)
    with pytest.raises(type(bug)) as raised:
        evaluate.main(run_files)
    assert raised.value is bug
    assert "error:" not in capsys.readouterr().err


def test_a_bug_prints_its_traceback_and_exits_1(run_files):
    program = (
        "import sys\n"
        "from openmatch.driver import evaluate\n"
        "def evaluate_stub(*args, **kwargs):\n"
        "    raise ValueError('operands could not be broadcast together')\n"
        "evaluate.evaluate = evaluate_stub\n"
        "sys.exit(evaluate.main(sys.argv[1:]))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", program, *run_files], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "ValueError: operands could not be broadcast together"
    assert "error:" not in proc.stderr


def test_transformers_argument_checks_are_usage_errors(tmp_path, capsys):
    from openmatch.driver import build_index

    argv = ["--output_dir", str(tmp_path / "emb"), "--model_name_or_path", "m", "--corpus_path", "c.tsv",
            "--eval_strategy", "steps", "--save_strategy", "epoch", "--load_best_model_at_end"]
    with pytest.raises(SystemExit) as exit_info:
        build_index.main(argv)
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: --load_best_model_at_end")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_om_errors_{name}", REPO / "scripts" / "msmarco" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_bug_inside_build_train_propagates(tmp_path, monkeypatch):
    import openmatch.preprocessing as preprocessing

    for name in ("negatives.tsv", "qrels.tsv", "queries.tsv", "corpus.tsv"):
        (tmp_path / name).write_text("1\t2\n")

    def load_tokenizer(name):
        raise ValueError("a bug below the script")

    monkeypatch.setattr(preprocessing, "load_tokenizer", load_tokenizer)
    argv = ["--negative_file", tmp_path / "negatives.tsv", "--tokenizer_name", "t", "--qrels", tmp_path / "qrels.tsv",
            "--queries", tmp_path / "queries.tsv", "--collection", tmp_path / "corpus.tsv", "--save_to", tmp_path / "out"]
    with pytest.raises(ValueError, match="a bug below the script"):
        run_cli(_load_script("build_train").main, [str(a) for a in argv])


@pytest.mark.skipif(not (REPO / "setup.py").is_file(), reason="needs the source checkout")
def test_console_entry_points_name_the_commands(monkeypatch):
    import setuptools

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    scripts = dict(
        (name.strip(), target.strip())
        for name, target in (line.split("=") for line in captured["entry_points"]["console_scripts"])
    )
    assert set(scripts) == {
        "openmatch-train-dr", "openmatch-build-index", "openmatch-retrieve", "openmatch-evaluate",
        "openmatch-build-train", "openmatch-build-hn", "openmatch-bm25", "openmatch-fuse",
    }
    for name, target in scripts.items():
        module_name, function = target.split(":")
        main = getattr(importlib.import_module(module_name), function)
        assert getattr(main, "is_command", False), f"{name}: {target} is not wrapped by openmatch.cli.main_wrapper"
    # The recipe's scripts run the same function as their console command.
    assert _load_script("build_train").main is importlib.import_module("openmatch.driver.build_train").main
    assert _load_script("build_hn").main is importlib.import_module("openmatch.driver.build_hn").main


ARGPARSE_COMMANDS = ["build_hn", "build_train", "evaluate", "fuse", "bm25", "build_index", "retrieve", "train_dr"]


@pytest.mark.parametrize("command", ARGPARSE_COMMANDS)
@pytest.mark.parametrize("argv, needle", [
    ([], "the following arguments are required"),
    (["--log_level", "bogus"], "invalid choice: 'bogus'"),
], ids=["required_flag_missing", "bad_choice"])
def test_argparse_errors_are_one_line_in_every_command(command, argv, needle, capsys):
    """argparse's own errors are the one ``error:`` line of any user error, in the argparse commands as in the
    dataclass ones: no usage block first, no ``prog:`` prefix."""
    main = importlib.import_module(f"openmatch.driver.{command}").main
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err and "--help" in err, err


@pytest.mark.parametrize("script, argv", [
    ("scripts/msmarco/make_sample.py", ["--output_dir", "x", "--passages", "many"]),
    ("scripts/scale_t5_weights.py", []),
    ("scripts/gen_arguments_doc.py", ["--no_such_flag"]),
])
def test_argparse_errors_are_one_line_in_the_scripts(script, argv):
    proc = subprocess.run([sys.executable, str(REPO / script), *argv], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_folder_to_write_refuses_a_file_in_its_place_or_above_it(tmp_path):
    import argparse

    from openmatch.cli import folder_to_write

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for path, message in [(a_file, f"{a_file} is a file"), (a_file / "sub" / "dir", f"{a_file / 'sub' / 'dir'}: {a_file} is a file")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            folder_to_write(str(path))
    for path in (tmp_path, tmp_path / "new" / "deeper"):  # a folder, or one that can be created
        assert folder_to_write(str(path)) == str(path)
