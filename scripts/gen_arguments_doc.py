#!/usr/bin/env python
"""Generate ``docs/arguments.md`` from the argument dataclasses and the scripts' argparse parsers.

    python scripts/gen_arguments_doc.py            # rewrite docs/arguments.md
    python scripts/gen_arguments_doc.py --check    # exit 1 if docs/arguments.md is out of date

The reference is generated, never edited by hand, so it cannot drift from the code: ``tests/test_docs.py``
regenerates it and fails when the committed file differs. Training/inference classes inherit Hugging Face's
``TrainingArguments``; only the fields this project declares (and a few stock ones the recipe uses) are
listed, with a pointer to the transformers documentation for the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

DOC_PATH = REPO / "docs" / "arguments.md"

# Stock TrainingArguments fields the recipe's commands pass (listed with their current defaults).
RECIPE_HF_FIELDS = (
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "learning_rate",
    "num_train_epochs", "max_steps", "warmup_steps", "weight_decay", "do_train", "eval_strategy", "eval_steps",
    "save_steps", "save_total_limit", "logging_steps", "fp16", "bf16", "seed", "data_seed",
    "dataloader_num_workers", "resume_from_checkpoint", "use_cpu", "activation_checkpointing", "gradient_checkpointing",
)

SCRIPTS = (
    ("scripts/msmarco/build_train.py", "python scripts/msmarco/build_train.py"),
    ("scripts/msmarco/build_hn.py", "python scripts/msmarco/build_hn.py"),
    ("scripts/msmarco/make_sample.py", "python scripts/msmarco/make_sample.py"),
    ("scripts/scale_t5_weights.py", "python scripts/scale_t5_weights.py"),
)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _prose(text) -> str:
    """A description cell: angle brackets escaped so that ``<text>`` is not read as an HTML tag."""
    return _cell(text).replace("<", "&lt;").replace(">", "&gt;")


def _type_name(cls, field: dataclasses.Field) -> str:
    # From the class annotations, not ``field.type``: HfArgumentParser rewrites ``field.type`` in place
    # (unwrapping Optional), so the output would depend on whether a parser was built before.
    for klass in cls.__mro__:
        annotation = klass.__dict__.get("__annotations__", {}).get(field.name)
        if annotation is not None:
            break
    else:
        annotation = field.type
    if not isinstance(annotation, str):
        annotation = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return annotation.replace("typing.", "")


def _default(field: dataclasses.Field) -> str:
    if field.metadata.get("required"):
        return "**required**"
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f"`{field.default_factory()!r}`"  # type: ignore[misc]
    return "**required**"


def _help(field: dataclasses.Field) -> str:
    text = field.metadata.get("help", "")
    choices = field.metadata.get("choices")
    if choices:
        text += f" (one of: {', '.join(map(str, choices))})"
    return text


def own_fields(cls) -> list[dataclasses.Field]:
    """The dataclass fields declared in ``cls`` itself (not inherited), in declaration order."""
    declared = cls.__dict__.get("__annotations__", {})
    return [f for f in dataclasses.fields(cls) if f.name in declared]


def dataclass_table(cls, fields=None) -> list[str]:
    """A markdown table of ``fields`` (default: all fields) of the dataclass ``cls``."""
    fields = dataclasses.fields(cls) if fields is None else fields
    lines = ["| flag | type | default | description |", "|---|---|---|---|"]
    for f in fields:
        if f.name.startswith("_") or not f.init:
            continue
        lines.append(f"| `--{f.name}` | {_cell(_type_name(cls, f))} | {_cell(_default(f))} | {_prose(_help(f))} |")
    return lines


def parser_table(parser: argparse.ArgumentParser) -> list[str]:
    lines = ["| flag | type | default | description |", "|---|---|---|---|"]
    for action in parser._actions:  # argparse has no public accessor for its actions
        if isinstance(action, argparse._HelpAction):
            continue
        flag = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind = "flag"
        elif action.type is not None:
            kind = getattr(action.type, "__name__", str(action.type))
        else:
            kind = "str"
        if action.nargs in ("+", "*"):
            kind += " (one or more)"
        default = "**required**" if action.required else f"`{action.default!r}`"
        lines.append(f"| {flag} | {_cell(kind)} | {_cell(default)} | {_prose(action.help or '')} |")
    return lines


def generate() -> str:
    from openmatch.arguments import (
        BM25Arguments,
        DataArguments,
        DRTrainingArguments,
        IndexArguments,
        InferenceArguments,
        ModelArguments,
        OpenMatchTrainingArguments,
        SearchArguments,
        TextArguments,
    )
    from openmatch.driver import bm25, build_index, evaluate, fuse, retrieve, train_dr

    hf_fields = {f.name: f for f in dataclasses.fields(DRTrainingArguments)}
    out = [
        "# Arguments reference",
        "",
        "<!-- Generated by `python scripts/gen_arguments_doc.py`; do not edit by hand "
        "(tests/test_docs.py fails when this file is out of date). -->",
        "",
        "The drivers parse dataclasses with `transformers.HfArgumentParser`: every field is a `--flag`, a boolean "
        "field is a switch (`--fp16`), and a single `.json` argument (`python -m openmatch.driver.train_dr "
        "args.json`) replaces all flags. An unknown flag is an error. The scripts use `argparse`.",
        "",
        "| command | argument classes (in order) |",
        "|---|---|",
    ]
    for name, module in (("train_dr", train_dr), ("build_index", build_index), ("retrieve", retrieve), ("bm25", bm25)):
        classes = ", ".join(f"[`{c.__name__}`](#{c.__name__.lower()})" for c in module.ARGUMENT_CLASSES)
        out.append(f"| `python -m openmatch.driver.{name}` | {classes} |")
    out += [
        "| `python -m openmatch.driver.evaluate` | argparse, [below](#python--m-openmatchdriverevaluate) |",
        "| `python -m openmatch.driver.fuse` | argparse, [below](#python--m-openmatchdriverfuse) |",
        "",
        "## ModelArguments",
        "",
        _cell(ModelArguments.__doc__.strip()) + " Used by `train_dr`, `build_index` and `retrieve`. A checkpoint "
        "folder written by `train_dr` (it holds `openmatch_config.json`) decides its own architecture; the flags "
        "then only matter for a plain Hugging Face model.",
        "",
        *dataclass_table(ModelArguments),
        "",
        "## TextArguments",
        "",
        _cell(TextArguments.__doc__.strip()) + " `bm25`'s input, and part of `DataArguments`.",
        "",
        *dataclass_table(TextArguments),
        "",
        "## DataArguments",
        "",
        _cell(DataArguments.__doc__.strip()) + " Used by `train_dr`, `build_index` and `retrieve`: the fields of "
        "[`TextArguments`](#textarguments) and these:",
        "",
        *dataclass_table(DataArguments, own_fields(DataArguments)),
        "",
        "## OpenMatchTrainingArguments",
        "",
        _cell(OpenMatchTrainingArguments.__doc__.strip()) + " The base of `DRTrainingArguments` and "
        "`InferenceArguments`: `--evaluation_strategy` sets `--eval_strategy`; `--logging_dir` sets "
        "`TENSORBOARD_LOGGING_DIR`; `--warmup_ratio` becomes a fractional `--warmup_steps`.",
        "",
        *dataclass_table(OpenMatchTrainingArguments, own_fields(OpenMatchTrainingArguments)),
        "",
        "## DRTrainingArguments",
        "",
        _cell(DRTrainingArguments.__doc__.strip()) + " Fields added to `OpenMatchTrainingArguments`:",
        "",
        *dataclass_table(DRTrainingArguments, own_fields(DRTrainingArguments)),
        "",
        "Everything else is Hugging Face's "
        "[`TrainingArguments`](https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments) "
        f"(transformers {_major_minor()}). The stock flags the recipe uses, with their defaults:",
        "",
        *dataclass_table(DRTrainingArguments, [hf_fields[name] for name in RECIPE_HF_FIELDS if name in hf_fields]),
        "",
        "## InferenceArguments",
        "",
        _cell(InferenceArguments.__doc__.strip()) + " Fields added to `OpenMatchTrainingArguments` (of the stock "
        "ones, `--per_device_eval_batch_size`, `--dataloader_num_workers`, `--fp16`, `--bf16` and `--use_cpu` "
        "are used):",
        "",
        *dataclass_table(InferenceArguments, own_fields(InferenceArguments)),
        "",
        "## IndexArguments",
        "",
        _cell(IndexArguments.__doc__.strip()) + " `build_index` only.",
        "",
        *dataclass_table(IndexArguments),
        "",
        "## SearchArguments",
        "",
        _cell(SearchArguments.__doc__.strip()) + " `retrieve` only.",
        "",
        *dataclass_table(SearchArguments),
        "",
        "## BM25Arguments",
        "",
        _cell(BM25Arguments.__doc__.strip()) + " `bm25` only.",
        "",
        *dataclass_table(BM25Arguments),
        "",
        "## python -m openmatch.driver.evaluate",
        "",
        *parser_table(evaluate.build_parser()),
        "",
        "## python -m openmatch.driver.fuse",
        "",
        *parser_table(fuse.build_parser()),
    ]
    for path, command in SCRIPTS:
        parser = runpy.run_path(str(REPO / path), run_name="openmatch_docs")["build_parser"]()
        out += ["", f"## {command}", "", *parser_table(parser)]
    return "\n".join(out) + "\n"


def _major_minor() -> str:
    import transformers

    return ".".join(transformers.__version__.split(".")[:2])


def main(argv=None) -> int:
    from openmatch.cli import ArgumentParser  # an argparse error is one line, as in the commands

    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    parser.add_argument("--output", default=str(DOC_PATH), help="where to write (default docs/arguments.md)")
    args = parser.parse_args(argv)
    text = generate()
    target = Path(args.output)
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is out of date: run python scripts/gen_arguments_doc.py", file=sys.stderr)
            return 1
        return 0
    from openmatch.utils import atomic_output

    with atomic_output(target, "w") as handle:
        handle.write(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
