"""Command-line arguments of every driver, parsed by ``transformers.HfArgumentParser``.

The flag names and defaults are OpenMatch v2's, so the recipe's command lines work unchanged. Flags that
transformers 5 removed from ``TrainingArguments`` but the recipe still passes (``--evaluation_strategy``,
``--logging_dir``, ``--warmup_ratio``, ``--overwrite_output_dir``) are accepted here and mapped onto their
current equivalents.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn, Optional, Sequence

from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from .errors import OpenMatchWarning, UsageError

logger = logging.getLogger(__name__)

POOLING_CHOICES = ("first", "mean", "last")
# Said in the help of every flag that a checkpoint's openmatch_config.json also stores.
_STORED = "; with a train_dr checkpoint it must agree with the stored value (an error otherwise)"


@dataclass
class ModelArguments:
    """Which backbone to load and how a sequence becomes one vector."""

    model_name_or_path: str = field(
        metadata={"help": "Hugging Face model folder, or an openmatch/OpenMatch checkpoint folder"}
    )
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "tokenizer folder if not the model's"})
    config_name: Optional[str] = field(default=None, metadata={"help": "config folder if not the model's"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Hugging Face cache folder"})
    untie_encoder: bool = field(default=False, metadata={"help": "separate query and passage towers" + _STORED})
    feature: str = field(default="last_hidden_state", metadata={"help": "backbone output used as features" + _STORED})
    pooling: str = field(
        default="first",
        metadata={
            "help": "first token, masked mean (encoder-only models) or last real token (decoder LLMs; the tokenizer "
            "then appends its EOS token)" + _STORED,
            "choices": list(POOLING_CHOICES),
        },
    )
    add_linear_head: bool = field(default=False, metadata={"help": "bias-free projection after pooling" + _STORED})
    projection_in_dim: int = field(default=768, metadata={"help": "input size of the linear head" + _STORED})
    projection_out_dim: int = field(default=768, metadata={"help": "output size of the linear head" + _STORED})
    encoder_only: bool = field(default=False, metadata={"help": "T5: use only the encoder and pool it" + _STORED})
    normalize: bool = field(default=False, metadata={"help": "L2-normalise representations" + _STORED})
    temperature: Optional[float] = field(
        default=None,
        metadata={
            "help": "scores are divided by this in the loss (1 = plain dot product); not given: a checkpoint's "
            "stored value, else 1"
        },
    )

    # The fields the user set (command line, .json file or keywords), or None when unknown (built in Python):
    # a checkpoint's stored configuration is compared with these, so that "--pooling first" given on purpose
    # is told apart from the default. Not a dataclass field, hence no flag.
    given_flags: ClassVar[Optional[frozenset]] = None

    query_prefix: Optional[str] = field(
        default=None,
        metadata={"help": "instruction put in front of every query (e.g. 'query: '); stored in the checkpoint"},
    )
    passage_prefix: Optional[str] = field(
        default=None,
        metadata={"help": "instruction put in front of every passage (e.g. 'passage: '); stored in the checkpoint"},
    )
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (peft) on a frozen backbone"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha/r)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA branch's input"})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={"help": "comma-separated module names given adapters (e.g. q_proj,v_proj), or all-linear"},
    )
    lora_base_model: Optional[str] = field(
        default=None,
        metadata={"help": "base model of a LoRA checkpoint, if not where it was at training (checked by fingerprint)"},
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "merge a LoRA checkpoint's adapter into its base when loading (faster encoding)"}
    )

    def __post_init__(self):
        if self.temperature is not None and self.temperature <= 0:
            raise UsageError(f"--temperature must be positive, got {self.temperature}")
        if self.lora_r < 1:
            raise UsageError(f"--lora_r must be at least 1, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise UsageError(f"--lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not [name for name in self.lora_target_modules.split(",") if name.strip()]:
            raise UsageError("--lora_target_modules names no module")
        if self.lora and self.merge_lora:
            raise UsageError(
                "--merge_lora folds a trained adapter into its base for encoding; it cannot be combined with --lora, "
                "which trains one"
            )


@dataclass
class TextArguments:
    """The query and passage files and how their records become text."""

    query_path: Optional[str] = field(default=None, metadata={"help": "queries (TSV/JSONL, optionally .gz)"})
    corpus_path: Optional[str] = field(default=None, metadata={"help": "passages (TSV/JSONL, optionally .gz)"})
    query_template: Optional[str] = field(default=None, metadata={"help": 'e.g. "<text>"'})
    query_column_names: Optional[str] = field(default=None, metadata={"help": "e.g. id,text (header-less TSV)"})
    doc_template: Optional[str] = field(default=None, metadata={"help": 'e.g. "Title: <title> Text: <text>"'})
    doc_column_names: Optional[str] = field(default=None, metadata={"help": "e.g. id,title,text (header-less TSV)"})


@dataclass
class DataArguments(TextArguments):
    """Where the data lies and how records become model input."""

    train_path: Optional[str] = field(default=None, metadata={"help": "training JSONL (build_train/build_hn)"})
    train_dir: Optional[str] = field(default=None, metadata={"help": "folder whose *.jsonl files are the training set"})
    eval_path: Optional[str] = field(default=None, metadata={"help": "validation JSONL, same format as training"})
    train_n_passages: int = field(default=8, metadata={"help": "passages per query: 1 positive + n-1 negatives"})
    positive_passage_no_shuffle: bool = field(default=False, metadata={"help": "always take the first positive"})
    negative_passage_no_shuffle: bool = field(default=False, metadata={"help": "take negatives in file order"})
    q_max_len: int = field(default=32, metadata={"help": "query length in tokens, special tokens included"})
    p_max_len: int = field(default=128, metadata={"help": "passage length in tokens, special tokens included"})

    def __post_init__(self):
        if self.train_n_passages < 1:
            raise UsageError(f"--train_n_passages must be at least 1, got {self.train_n_passages}")
        for name in ("q_max_len", "p_max_len"):
            if getattr(self, name) < 2:
                raise UsageError(f"--{name} must be at least 2, got {getattr(self, name)}")


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


@dataclass
class OpenMatchTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the recipe's flags that transformers 5 no longer has."""

    # Required as in OpenMatch (transformers 5 defaults it to "trainer_output", which would silently put a
    # build_index's embeddings in an unexpected folder).
    output_dir: Optional[str] = field(
        default=None,
        metadata={"help": "checkpoint folder (train_dr) or embedding folder (build_index/retrieve)", "required": True},
    )
    evaluation_strategy: Optional[str] = field(
        default=None, metadata={"help": "old name of --eval_strategy (no/steps/epoch)"}
    )
    logging_dir: Optional[str] = field(default=None, metadata={"help": "TensorBoard log folder"})
    warmup_ratio: float = field(
        default=0.1, metadata={"help": "linear warm-up over this fraction of steps, unless --warmup_steps is set"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace what --output_dir holds instead of refusing or resuming"}
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "logging integrations (tensorboard by default)"}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep every collated field"})

    def __post_init__(self):
        if not self.output_dir:
            raise UsageError("--output_dir is required")
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_steps == 0 and self.warmup_ratio:
            if not 0 <= self.warmup_ratio < 1:
                raise UsageError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            # transformers 5 reads a warmup_steps below 1 as a fraction of the training steps.
            self.warmup_steps = self.warmup_ratio
        if self.logging_dir:
            self.logging_dir = os.path.expanduser(self.logging_dir)
            # transformers 5's TensorBoard callback takes its folder from this variable only.
            os.environ["TENSORBOARD_LOGGING_DIR"] = self.logging_dir
        if (self.fp16 or self.bf16) and not self.use_cpu and not _has_accelerator():
            if self.fp16:
                warnings.warn("--fp16 needs a GPU; none is available, so this run uses float32.", OpenMatchWarning, stacklevel=2)
                self.fp16 = False
            if self.bf16:
                # bf16 works on the CPU (autocast in training, bf16 weights when encoding); transformers accepts
                # it there only when told the run is on the CPU.
                self.use_cpu = True
        launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1
        if launched and not self.use_cpu and not _has_accelerator():
            # accelerate only forms a multi-process CPU group (gloo) when told the run is on CPU; otherwise each
            # process of a torchrun / torch.distributed.launch job would silently train alone.
            self.use_cpu = True
        if self.dataloader_pin_memory and not _has_accelerator():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on every loader
        super().__post_init__()


@dataclass
class DRTrainingArguments(OpenMatchTrainingArguments):
    """Training flags for ``openmatch.driver.train_dr``."""

    negatives_x_device: bool = field(
        default=False, metadata={"help": "share passages across ranks as in-batch negatives"}
    )
    grad_cache: bool = field(default=False, metadata={"help": "gradient caching for large batches"})
    gc_q_chunk_size: int = field(default=4, metadata={"help": "queries per GradCache sub-batch"})
    gc_p_chunk_size: int = field(default=32, metadata={"help": "passages per GradCache sub-batch"})
    eval_retrieval_k: str = field(
        default="10,100", metadata={"help": "cut-offs for validation MRR/Recall (first one is used for MRR)"}
    )
    mask_false_negatives: bool = field(
        default=True,
        metadata={
            "help": "leave a passage of the batch out of a query's negatives when it is one of that query's positives "
            "(a positive shared with another query, a repeated passage); --no_mask_false_negatives counts it as a "
            "negative, as OpenMatch did"
        },
    )
    keep_best: bool = field(
        default=False,
        metadata={
            "help": "validate before the first step, at each evaluation and after the last step, and end with the best "
            "of these models (the start model included) in --output_dir, by validation MRR@k (needs --eval_path)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.grad_cache and (self.gc_q_chunk_size < 1 or self.gc_p_chunk_size < 1):
            raise UsageError("--gc_q_chunk_size and --gc_p_chunk_size must be positive")


@dataclass
class InferenceArguments(OpenMatchTrainingArguments):
    """Flags for ``build_index`` and ``retrieve`` (``--output_dir`` is the embedding folder)."""

    use_gpu: bool = field(default=False, metadata={"help": "search on the GPU(s) with faiss-gpu"})
    faiss_starting_gpu: int = field(default=0, metadata={"help": "first GPU used by faiss"})
    faiss_index: str = field(
        default="Flat", metadata={"help": "faiss index factory string: Flat (exact), IVF4096,Flat, HNSW32, ..."}
    )
    trec_save_path: Optional[str] = field(default=None, metadata={"help": "where retrieve writes its TREC run"})
    retrieve_depth: int = field(default=100, metadata={"help": "passages retrieved per query"})
    max_inmem_docs: int = field(
        default=10_000_000,
        metadata={
            "help": "passages per embedding shard, over all processes; each process holds its shard in memory until "
            "written, so a size whose shards do not fit this machine's memory is refused before encoding, naming one "
            "that fits (MS MARCO × 768 float32 at the default is one 27 GB shard)"
        },
    )
    run_id: str = field(default="OpenMatch", metadata={"help": "last column of the TREC run"})

    def __post_init__(self):
        super().__post_init__()
        if self.retrieve_depth < 1:
            raise UsageError(f"--retrieve_depth must be positive, got {self.retrieve_depth}")
        if self.max_inmem_docs < 1:
            raise UsageError(f"--max_inmem_docs must be positive, got {self.max_inmem_docs}")


@dataclass
class IndexArguments:
    """Index-only flags (not in OpenMatch)."""

    embedding_dtype: str = field(
        default="float32", metadata={"help": "dtype of the stored embeddings", "choices": ["float32", "float16"]}
    )


@dataclass
class SearchArguments:
    """Search flags beyond OpenMatch's."""

    faiss_nprobe: int = field(default=32, metadata={"help": "IVF lists visited per query (approximate search)"})
    faiss_ef_search: int = field(default=128, metadata={"help": "HNSW efSearch (approximate search)"})
    faiss_train_sample: int = field(default=262_144, metadata={"help": "vectors sampled to train an approximate index"})
    search_batch_size: int = field(default=8192, metadata={"help": "queries per faiss call"})
    check_recall: int = field(
        default=0,
        metadata={
            "help": "with an approximate --faiss_index: its recall@retrieve_depth against exact search on this many "
            "sampled queries, logged and written to <trec_save_path>.recall.json (0: off)"
        },
    )
    allow_model_mismatch: bool = field(
        default=False, metadata={"help": "search even if the query encoder's weights differ from the index's model"}
    )


@dataclass
class BM25Arguments:
    """Flags of ``openmatch.driver.bm25`` besides the data flags (tokens and scores: :mod:`openmatch.retriever.bm25`)."""

    output_dir: str = field(
        metadata={"help": "folder of the BM25 index; a rerun with the same corpus and settings reuses it"}
    )
    trec_save_path: Optional[str] = field(default=None, metadata={"help": "where to write the TREC run of --query_path"})
    retrieve_depth: int = field(default=100, metadata={"help": "passages retrieved per query"})
    run_id: str = field(default="BM25", metadata={"help": "last column of the TREC run"})
    k1: float = field(default=0.9, metadata={"help": "BM25 term-frequency saturation"})
    b: float = field(default=0.4, metadata={"help": "BM25 length normalisation, in [0, 1]"})
    method: str = field(
        default="lucene",
        metadata={"help": "bm25s's BM25 variant", "choices": ["lucene", "robertson", "atire", "bm25l", "bm25+"]},
    )
    stemmer: str = field(
        default="english",
        metadata={"help": "PyStemmer's Snowball English stemmer, the Porter stemmer, or none",
                  "choices": ["english", "porter", "none"]},
    )
    stopwords: str = field(
        default="en", metadata={"help": "remove English stopwords (bm25s's list) or none", "choices": ["en", "none"]}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "rebuild the index even if --output_dir holds one of other settings"}
    )
    log_level: str = field(
        default="passive",
        metadata={"help": "openmatch's messages from this level up (passive: info)",
                  "choices": ["debug", "info", "warning", "error", "critical", "passive"]},
    )

    def __post_init__(self):
        if self.retrieve_depth < 1:
            raise UsageError(f"--retrieve_depth must be positive, got {self.retrieve_depth}")
        if not self.run_id or any(ch.isspace() for ch in self.run_id):
            raise UsageError(f"--run_id must be one word (no white space), got {self.run_id!r}")


def parse_args(dataclass_types: Sequence[type], args: Optional[Sequence[str]] = None) -> tuple:
    """Parse flags (or a single ``.json`` file) into the given dataclasses.

    Unknown flags are an error, as with any argparse program, so a typo never silently does nothing. Each
    ``ModelArguments`` gets ``given_flags``: the names of the fields the flags (or the file) set.
    """
    argv = list(sys.argv[1:] if args is None else args)
    parser = HfArgumentParser(tuple(dataclass_types))
    parser.error = _raise_usage_error
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(os.path.abspath(argv[0]), encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise UsageError(f"{argv[0]}: not JSON ({err})") from err
        _check_json_arguments(parser, data, argv[0])
        outputs = parser.parse_dict(data)
        given = frozenset(data)
    else:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        outputs = tuple(parsed)
        if unknown:
            flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")] or unknown
            raise UsageError(f"{', '.join(flags)}: not {'a flag' if len(flags) == 1 else 'flags'} of this command "
                             f"(its flags: --help); got {' '.join(unknown)}")
        given = _given_fields(parser, argv)
    for output in outputs:
        if isinstance(output, ModelArguments):
            output.given_flags = given
    return outputs


def _raise_usage_error(message: str) -> NoReturn:
    """argparse's own complaints (a required flag missing, a value of the wrong type) as one error line.

    argparse would print the usage block first: several hundred flags once the training arguments are in.
    """
    raise UsageError(f"{message} (its flags: --help)")


def _check_json_arguments(parser: argparse.ArgumentParser, data, path: str) -> None:
    """What argparse checks of flags, checked of a ``.json`` argument file, whose values go to the dataclasses
    as they are: every required field given, numbers, booleans and choices of the right kind."""
    if not isinstance(data, dict):
        raise UsageError(f"{path}: an argument file is one JSON object of flag names and values, "
                         f"got a JSON {type(data).__name__}")
    actions = {action.dest: action for action in parser._actions
               if action.option_strings and action.option_strings[0] == f"--{action.dest}"}
    missing = [f"--{dest}" for dest, action in actions.items() if action.required and dest not in data]
    if missing:
        raise UsageError(f"{path}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required "
                         "(its flags: --help)")
    hints = {}
    for dtype in parser.dataclass_types:
        hints.update(typing.get_type_hints(dtype))
    for key, value in data.items():
        action = actions.get(key)
        if action is None or (value is None and action.default is None):
            continue  # a key of no flag: parse_dict names it
        hint = hints.get(key)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint):
            continue  # str | bool, str | Enum: a flag parses the other type, but any string can be meant
        if action.nargs == "+" and not isinstance(value, list):
            raise UsageError(f"{path}: {key!r} must be a list, got {json.dumps(value)} (its flags: --help)")
        for item in value if action.nargs == "+" else [value]:
            kind = _json_kind_error(action, item)
            if kind is not None:
                raise UsageError(f"{path}: {key!r} must be {kind}, got {json.dumps(value)} (its flags: --help)")


def _json_kind_error(action: argparse.Action, item) -> Optional[str]:
    """What ``item`` should have been for ``action``'s flag, or ``None`` when it is fine."""
    if action.type is string_to_bool:
        return None if isinstance(item, bool) else "true or false"
    if action.type is int and (isinstance(item, bool) or not isinstance(item, int)):
        return "an integer"
    if action.type is float and (isinstance(item, bool) or not isinstance(item, (int, float))):
        return "a number"
    if action.choices is not None and item not in action.choices:
        return f"one of {', '.join(map(str, action.choices))}"
    return None


def _given_fields(parser: argparse.ArgumentParser, argv: Sequence[str]) -> frozenset:
    """The destinations the command line sets (abbreviated flags and ``--no_X`` resolved as argparse does)."""
    # With every default suppressed, the namespace holds exactly the flags that were given.
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return frozenset(vars(namespace))
