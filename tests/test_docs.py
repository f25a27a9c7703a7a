"""Every code block of docs/*.md and README.md is checked against the code.

- Commands (``python -m openmatch.driver.X``, ``python scripts/...``, ``torchrun ... -m openmatch.driver.X``,
  ``python -m torch.distributed.launch ...``): their flags are parsed by the driver's own dataclasses
  (``ARGUMENT_CLASSES``) or the script's ``build_parser()``; launcher flags by torch's launcher parser.
- Python blocks of docs/api.md run, in order, against a tiny model.
- Format examples of docs/formats.md (tagged by the word after the language) are read with the project's
  readers or compared with real output.
- docs/arguments.md equals what ``scripts/gen_arguments_doc.py`` generates.
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
from pathlib import Path

import pytest

from tests import REPO
DOC_FILES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
PLACEHOLDER = "/tmp/openmatch-docs"
SCRIPT_PARSERS = {
    "scripts/msmarco/build_train.py", "scripts/msmarco/build_hn.py", "scripts/msmarco/make_sample.py",
    "scripts/scale_t5_weights.py", "scripts/gen_arguments_doc.py",
    "benchmarks/make_synthetic_marco.py", "benchmarks/bench_scale.py", "benchmarks/bench_ann.py",
    "benchmarks/bench_large_index.py", "benchmarks/bench_run_memory.py",
}
SHELL_ONLY = {"wget", "tar", "rm", "cd", "gunzip", "join", "awk", "cat", "tail", "head", "export", "pip",
              "mkdir", "tensorboard"}
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.M | re.S)


def code_blocks(path: Path) -> list[tuple[str, str, str]]:
    """``(language, tag, body)`` of every fenced block; ``tag`` is the word after the language."""
    out = []
    for info, body in _FENCE.findall(path.read_text()):
        words = info.split()
        out.append((words[0] if words else "", words[1] if len(words) > 1 else "", body))
    return out


def shell_commands(body: str) -> list[str]:
    """Commands of a shell block: recipe-style trailing comments removed, continuations joined, ``&&`` split."""
    lines = []
    for line in body.splitlines():
        line = re.sub(r"\\\s+#.*$", "\\\\", line)  # "\  # comment" (the recipe's style)
        line = re.sub(r"(^|\s)#\s.*$", "", line).rstrip()  # "cmd  # comment"
        lines.append(line)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines) + "\n")
    commands = []
    for line in joined.splitlines():
        commands += [part.strip() for part in _split_unquoted(line) if part.strip()]
    return commands


def _split_unquoted(line: str) -> list[str]:
    """Split at ``&&`` and ``;`` outside quotes (awk programs contain both inside quotes)."""
    parts, current, quote, i = [], "", None, 0
    while i < len(line):
        ch = line[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif line.startswith("&&", i) or ch == ";":
            parts.append(current)
            current, i = "", i + (2 if ch == "&" else 1)
            continue
        current += ch
        i += 1
    return parts + [current]


def substitute(command: str) -> str:
    command = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: f"{PLACEHOLDER}/{m.group(1).lower()}", command)
    return command


def all_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOC_FILES:
        for lang, _, body in code_blocks(path):
            if lang in ("bash", "sh", "shell", "console"):
                found += [(f"{path.name}: {cmd[:70]}", cmd) for cmd in shell_commands(body)]
    return found


def _strip_env(argv: list[str]) -> list[str]:
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]
    if argv[:2] == ["nice", "-n"]:  # benchmarks run niced on shared machines
        argv = argv[3:]
    return argv


def _driver_classes(name: str):
    import importlib

    module = importlib.import_module(f"openmatch.driver.{name}")
    return getattr(module, "ARGUMENT_CLASSES", None), module


def check_driver(name: str, args: list[str]) -> None:
    from openmatch.arguments import parse_args

    classes, module = _driver_classes(name)
    if classes is not None:
        parsed = parse_args(classes, args)
        assert len(parsed) == len(classes)
    else:
        module.build_parser().parse_args(args)


def check_launcher(kind: str, argv: list[str]) -> None:
    """``argv`` after the launcher: launcher flags, ``-m openmatch.driver.X``, driver flags."""
    assert "-m" in argv, f"the launcher must run a module with -m: {argv}"
    at = argv.index("-m")
    launcher_args, module, rest = argv[:at], argv[at + 1], argv[at + 2:]
    match = re.fullmatch(r"openmatch\.driver\.(\w+)", module)
    assert match, f"unknown module {module}"
    assert match.group(1) in ("train_dr", "build_index", "retrieve"), module
    if kind == "torchrun":
        from torch.distributed.run import get_args_parser
    else:
        from torch.distributed.launch import get_args_parser
    launched = get_args_parser().parse_args([*launcher_args, "--module", module, *rest])
    assert launched.module and launched.training_script == module
    check_driver(match.group(1), rest)


def check_command(command: str) -> bool:
    """Parse one shell command's flags; False when it is not an openmatch command."""
    argv = _strip_env(shlex.split(substitute(command)))
    if not argv or argv[0] in SHELL_ONLY:
        return False
    prog = argv[0]
    if prog == "bash":
        script = argv[1]
        assert (REPO / script).is_file(), f"{script} does not exist"
        return True
    if prog == "torchrun":
        check_launcher("torchrun", argv[1:])
        return True
    if re.fullmatch(r"(\S*/)?python3?", prog):
        if argv[1:3] == ["-m", "torch.distributed.launch"]:
            check_launcher("launch", argv[3:])
        elif argv[1:3] == ["-m", "pytest"]:
            assert all((REPO / a).exists() for a in argv[3:] if not a.startswith("-")), argv
        elif argv[1] == "-m":
            match = re.fullmatch(r"openmatch\.driver\.(\w+)", argv[2])
            assert match, f"unknown module {argv[2]}"
            check_driver(match.group(1), argv[3:])
        else:
            script = re.sub(r"^.*?(?=scripts/)", "", argv[1])  # /path/to/openmatch/scripts/... as in the recipe
            assert script in SCRIPT_PARSERS, f"unknown script {argv[1]}"
            parser = runpy.run_path(str(REPO / script), run_name="openmatch_docs")["build_parser"]()
            parser.parse_args(argv[2:])
        return True
    raise AssertionError(f"command not recognised (add it to the test): {command}")


COMMANDS = all_commands()


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_command_parses(where, command, monkeypatch, recwarn):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)  # set by --logging_dir
    check_command(command)


def test_every_driver_and_script_is_documented():
    text = "\n".join(command for _, command in COMMANDS)
    for name in ("train_dr", "build_index", "retrieve", "evaluate"):
        assert f"-m openmatch.driver.{name}" in text
    for script in ("build_train.py", "build_hn.py", "scale_t5_weights.py", "run_recipe.sh"):
        assert script in text
    assert "torchrun" in text and "torch.distributed.launch" in text


def test_comment_stripping_and_substitution():
    recipe = 'python x.py \\\n    --a $PLM_DIR/t5  \\  # the model\n    --b "Title: <title>"  # template\n'
    (cmd,) = shell_commands(recipe)
    assert shlex.split(substitute(cmd)) == ["python", "x.py", "--a", f"{PLACEHOLDER}/plm_dir/t5", "--b", "Title: <title>"]


def test_a_bad_flag_is_caught():
    with pytest.raises(SystemExit):
        check_command("python scripts/msmarco/build_train.py --tokenizer_nam x")
    with pytest.raises((SystemExit, ValueError)):
        check_command("python -m openmatch.driver.retrieve --output_dir e --model_name_or_path m --no_such_flag 1")


# --------------------------------------------------------------------------------------------- api.md


def test_api_examples_run(tiny_bert, tmp_path, monkeypatch, capsys):
    blocks = [body for lang, _, body in code_blocks(REPO / "docs" / "api.md") if lang == "python"]
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for body in blocks:
        assert '"path/to/model"' in body or "MODEL" not in body.split("=")[0]
        exec(compile(body.replace('"path/to/model"', repr(str(tiny_bert))), "docs/api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "3 passages of dimension" in out
    assert set(namespace["hits"]) == {"q1", "q2"} and all(len(h) == 3 for h in namespace["hits"].values())
    scores = namespace["api"].evaluate_run(tmp_path / "api-demo/qrels.tsv", tmp_path / "api-demo/run.trec", ["recall@3"])
    assert scores["recall@3"] == 1.0  # depth 3 over 3 passages finds every relevant one


# ----------------------------------------------------------------------------------------- formats.md


def format_blocks(tag: str) -> list[str]:
    blocks = [body for _, t, body in code_blocks(REPO / "docs" / "formats.md") if t == tag]
    assert blocks, f"no '{tag}' block in docs/formats.md"
    return blocks


def test_formats_blocks_are_all_checked():
    known = {"", "training", "run", "qrels", "index-folder", "manifest", "checkpoint-tied", "checkpoint-untied",
             "openmatch_config"}
    tags = {t for _, t, _ in code_blocks(REPO / "docs" / "formats.md")}
    assert tags <= known, f"untested format blocks: {tags - known}"


def test_training_jsonl_example(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from openmatch.dataset.train_dataset import TrainDataset

    (body,) = format_blocks("training")
    path = tmp_path / "train.jsonl"
    path.write_text(body)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    dataset = TrainDataset([str(path)], tokenizer, train_n_passages=2, q_max_len=8, p_max_len=6, show_progress=False)
    assert len(dataset) == len(body.strip().splitlines()) == 2
    first = json.loads(body.splitlines()[0])
    item = dataset[0]
    # special tokens added at load: [CLS] ids [SEP], truncated to the max length with them included
    assert item["query"] == [tokenizer.cls_token_id, *first["query"], tokenizer.sep_token_id]
    assert all(len(p) <= 6 and p[0] == tokenizer.cls_token_id and p[-1] == tokenizer.sep_token_id for p in item["passages"])
    assert item["passages"][0][1:-1] == first["positives"][0][:4]


def test_run_example(tmp_path):
    from openmatch.dataset.qrels import format_run_lines, load_run

    (body,) = format_blocks("run")
    path = tmp_path / "run.trec"
    path.write_text(body)
    run = load_run(path)
    assert run["1048585"]["7187158"] == pytest.approx(176.21875) and set(run) == {"1048585", "2"}
    # the writer produces exactly this layout
    line = next(format_run_lines("2", [("1001", 12.5)], "OpenMatch"))
    assert line == body.splitlines()[-1] + "\n"


def test_qrels_examples(tmp_path):
    from openmatch.dataset.qrels import load_qrels

    blocks = format_blocks("qrels")
    assert len(blocks) == 3
    for i, body in enumerate(blocks):
        path = tmp_path / f"qrels{i}.tsv"
        path.write_text(body)
        qrels = load_qrels(path)
        assert qrels["1048585"] == {"7187158": 1}
        assert qrels["2"]["1001"] >= 1
    assert load_qrels(tmp_path / "qrels0.tsv")["2"]["1002"] == 0


def test_openmatch_config_example():
    from openmatch.modeling.config import DRModelConfig

    (body,) = format_blocks("openmatch_config")
    data = json.loads(body)
    config = DRModelConfig.from_openmatch_json(data)
    assert config.uses_decoder and config.tied
    assert config.to_openmatch_json() == data  # the documented file is exactly what we write


def _listing(tag: str) -> list[str]:
    (body,) = format_blocks(tag)
    return [line.strip() for line in body.splitlines() if line.strip()]


def _same_keys(example, actual, where="manifest"):
    if isinstance(example, dict) and example:
        assert isinstance(actual, dict), where
        assert set(example) == set(actual), f"{where}: documented {sorted(example)} != written {sorted(actual)}"
        for key in example:
            if key not in ("config", "arguments"):  # model config and argument snapshot vary by model/driver
                _same_keys(example[key], actual[key], f"{where}.{key}")
    elif isinstance(example, list) and example:
        _same_keys(example[0], actual[0], f"{where}[0]")


def test_index_folder_and_manifest_examples(tmp_path, tiny_bert):
    from openmatch import api

    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"d{i}\ttitle {i}\ttext number {i}\n" for i in range(5)))
    model, tokenizer = api.load_model(tiny_bert)
    out = tmp_path / "index"
    manifest = api.build_index(model, tokenizer, corpus, out, template="Title: <title> Text: <text>",
                               column_names="id,title,text", max_len=16, device="cpu")
    assert sorted(_listing("index-folder")) == sorted(p.name for p in out.iterdir())
    (body,) = format_blocks("manifest")
    _same_keys(json.loads(body), manifest)
    assert json.loads((out / "manifest.json").read_text())["format"] == json.loads(body)["format"]


@pytest.mark.parametrize("tag,untie", [("checkpoint-tied", False), ("checkpoint-untied", True)])
def test_checkpoint_listings(tmp_path, tiny_bert, tag, untie):
    from openmatch import api

    model, tokenizer = api.load_model(tiny_bert, add_linear_head=True, projection_in_dim=32, projection_out_dim=16,
                                      untie_encoder=untie, pooling="mean")
    out = tmp_path / "ckpt"
    model.save(out, tokenizer=tokenizer)
    for name in _listing(tag):
        assert (out / name).is_file(), f"docs/formats.md lists {name}, which DRModel.save did not write"
    reloaded, _ = api.load_model(out)
    assert reloaded.config.tied is (not untie) and reloaded.embedding_dim == 16


# --------------------------------------------------------------------------------------- arguments.md


def test_arguments_doc_is_generated_and_current():
    generated = runpy.run_path(str(REPO / "scripts" / "gen_arguments_doc.py"), run_name="openmatch_docs")["generate"]()
    committed = (REPO / "docs" / "arguments.md").read_text()
    import difflib

    diff = "".join(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True), "committed", "generated"))
    assert not diff, f"docs/arguments.md is out of date: run python scripts/gen_arguments_doc.py\n{diff}"
    from openmatch.arguments import DataArguments, ModelArguments

    import dataclasses

    for cls in (ModelArguments, DataArguments):
        for field in dataclasses.fields(cls):
            assert f"`--{field.name}`" in committed


def test_readme_links_exist():
    text = (REPO / "README.md").read_text() + "".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    for target in set(re.findall(r"\]\(((?:docs/)?[\w.-]+\.md)(?:#[\w-]*)?\)", text)):
        candidates = [REPO / target, REPO / "docs" / target]
        assert any(c.is_file() for c in candidates), f"broken link to {target}"
