"""Training data: the build_train/build_hn JSONL, read by random access, and its collator.

Each line is ``{"query": [ids], "positives": [[ids], ...], "negatives": [[ids], ...]}`` with token ids
WITHOUT special tokens (OpenMatch's format). The dataset is map-style: one scan of the files records the
byte offset of every line, and an item is read, parsed and tokenised on demand (MS MARCO's 400k lines ×
30 negatives never sit in memory). A map-style dataset under the Trainer's sampler gives every example to
exactly one (rank, loader worker), which OpenMatch's ``IterableDataset`` got wrong.

Passage choice is a pure function of ``(seed, epoch, example index)``, so a resumed run replays exactly:

- positive: a uniformly random one (``numpy.random.default_rng([seed, epoch, index])``), or the first one
  with ``--positive_passage_no_shuffle``;
- negatives (``train_n_passages - 1`` of them): the example's negatives are shuffled once by
  ``default_rng([seed, index])`` and each epoch takes the next window of that permutation (epoch ``e``
  starts at ``e * (n - 1) mod len``, wrapping around), as OpenMatch/Tevatron do, so consecutive epochs use
  different negatives and all of them are seen before any repeats. With ``--negative_passage_no_shuffle``
  the first ``n - 1`` negatives in file order are taken every epoch (OpenMatch's behaviour);
- an example with fewer negatives than ``n - 1`` draws them with replacement (logged once per dataset);
  an example with no negatives at all when ``n > 1`` is a ``DataFormatError``.

Before training, :meth:`TrainDataset.from_args` checks every line while it indexes the files (one pass,
:func:`check_training_line`): a JSON object whose ``query``, ``positives`` and ``negatives`` are non-empty lists
of token ids below the tokenizer's vocabulary size, and negatives when ``n > 1``. A bad line is a
``DataFormatError`` naming it before the model trains a step, not hours into the run; :func:`scan_training_file`
runs the same check on its own. A user error raised in a loader worker reaches the main process as itself
(:mod:`openmatch.dataset.workers`).

Passage identity, for the loss's false-negative mask: each item also carries the keys (:func:`passage_key`)
of ALL its example's positives, and the collator adds the key of every passage of the batch, so the loss
can tell when a passage of the batch is one of a query's positives (a positive shared by two queries, a
repeated passage, another of the query's own positives) and not count it as that query's negative.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError, MissingInputError, UsageError
from .records import DataFormatError, decode_json_object, decode_line, is_blank, no_records, open_binary
from .tokenization import SpecialTokenLayout, pad_batch, require_pad_id
from .workers import user_errors_leave_workers

logger = logging.getLogger(__name__)


def resolve_train_files(train_path: Optional[str] = None, train_dir: Optional[str] = None) -> list[str]:
    """The training files: ``--train_path`` (one file) or every ``*.jsonl`` of ``--train_dir``, sorted."""
    if bool(train_path) == bool(train_dir):
        raise UsageError("give exactly one of --train_path and --train_dir")
    if train_path:
        if not os.path.isfile(train_path):
            raise MissingInputError(f"{train_path}: no such file (--train_path)")
        return [train_path]
    if not os.path.isdir(train_dir):
        raise MissingInputError(f"{train_dir}: no such folder (--train_dir)")
    files = sorted(glob.glob(os.path.join(train_dir, "*.jsonl")))
    if not files:
        raise MissingInputError(f"{train_dir}: no *.jsonl files (--train_dir)")
    return files


def passage_key(token_ids: Sequence[int]) -> int:
    """A 64-bit key of a passage's model input (its token ids as the model sees them): equal inputs, equal keys.

    Two different passages share a key with probability about ``2**-64`` per pair (blake2b); passages that
    are equal after truncation share it by design, as the model cannot tell them apart.
    """
    digest = hashlib.blake2b(np.asarray(token_ids, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _check_ids(value, path: str, line: int, what: str, vocab_size: Optional[int] = None) -> list[int]:
    if not isinstance(value, list) or not value:
        raise DataFormatError(path, line, f"{what} must be a non-empty list of token ids")
    if not all(isinstance(tok, int) and not isinstance(tok, bool) and tok >= 0 for tok in value):
        raise DataFormatError(path, line, f"{what} must hold non-negative integer token ids")
    if vocab_size is not None and max(value) >= vocab_size:
        raise DataFormatError(
            path, line, f"{what} holds token id {max(value)}, beyond the vocabulary of {vocab_size} tokens (was the file "
            "tokenised with another tokenizer?)"
        )
    return value


def _validated(record: dict, path: str, line: int, vocab_size: Optional[int] = None) -> dict:
    """``{"query", "positives", "negatives"}`` of a decoded line, each checked, with errors naming the field."""
    query = _check_ids(record.get("query"), path, line, '"query"', vocab_size)
    positives = record.get("positives")
    if not isinstance(positives, list) or not positives:
        raise DataFormatError(path, line, 'no positive passages ("positives" is missing or empty)')
    negatives = record.get("negatives", [])
    if not isinstance(negatives, list):
        raise DataFormatError(path, line, '"negatives" must be a list of token-id lists')
    positives = [_check_ids(p, path, line, f'"positives"[{i}]', vocab_size) for i, p in enumerate(positives)]
    negatives = [_check_ids(p, path, line, f'"negatives"[{i}]', vocab_size) for i, p in enumerate(negatives)]
    return {"query": query, "positives": positives, "negatives": negatives}


_INT_LIST_SYNTAX = b'0123456789[]{},:" \t\r\n'


def check_training_line(raw: bytes, path: str, line: int, vocab_size: Optional[int] = None, train_n_passages: int = 1) -> None:
    """Refuse a line of training JSONL that training would fail on (see the module docstring), as
    ``DataFormatError(path, line, what)``; token ids are checked against ``vocab_size`` when given."""
    record = decode_json_object(decode_line(raw, path, line), path, line)
    query, positives, negatives = record.get("query"), record.get("positives"), record.get("negatives", [])
    # The common case in C-level passes (a line holds thousands of ids, MS MARCO's file half a million lines);
    # any doubt goes to _validated, which finds and words the problem.
    ok = type(query) is list and type(positives) is list and type(negatives) is list and query and positives
    lists = [query, *positives, *negatives] if ok else []
    ok = ok and all(type(ids) is list and ids for ids in lists)
    # Once digits and JSON punctuation are deleted, only the keys' letters are left unless some value is a
    # float, a negative number, a string with letters, true, false or null.
    ok = ok and raw.translate(None, _INT_LIST_SYNTAX) == "".join(record).encode().translate(None, _INT_LIST_SYNTAX)
    if ok:
        try:  # comparing a digit string, a list or an object with an int raises TypeError
            top = max(map(max, lists))
            ok = top >= 0 and (vocab_size is None or top < vocab_size)
        except TypeError:
            ok = False
    if not ok:
        _validated(record, path, line, vocab_size)
    if train_n_passages > 1 and not negatives:
        raise DataFormatError(path, line, f"no negatives, but --train_n_passages {train_n_passages} needs {train_n_passages - 1}")


def scan_training_file(path: str | os.PathLike, vocab_size: Optional[int] = None, train_n_passages: int = 1) -> int:
    """Check every line of a training JSONL file (:func:`check_training_line`) in one pass, before any
    expensive work; returns the number of examples. The first bad line is a ``DataFormatError`` naming it."""
    path = os.fspath(path)
    count = 0
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not is_blank(raw):
                check_training_line(raw, path, line_no, vocab_size, train_n_passages)
                count += 1
    if not count:
        raise no_records(path)
    return count


class TrainDataset(Dataset):
    """Map-style training set over one or more JSONL files (see the module docstring for the sampling).

    ``dataset[i]`` is ``{"query": [ids], "passages": [[ids] * train_n_passages], "positive_keys": [key, ...]}``
    with special tokens added and truncated to ``q_max_len`` / ``p_max_len``; the first passage is the positive,
    and ``positive_keys`` are the :func:`passage_key` of every positive of the example (wrapped the same way). ``check_lines`` checks
    every line while the files are indexed (token ids below ``vocab_size`` when given), as ``from_args`` does.
    """

    def __init__(
        self,
        paths: Sequence[str],
        tokenizer=None,
        *,
        layout: Optional[SpecialTokenLayout] = None,
        train_n_passages: int = 8,
        q_max_len: int = 32,
        p_max_len: int = 128,
        seed: int = 42,
        positive_passage_no_shuffle: bool = False,
        negative_passage_no_shuffle: bool = False,
        show_progress: bool = True,
        check_lines: bool = False,
        vocab_size: Optional[int] = None,
    ):
        if layout is None:
            if tokenizer is None:
                raise ValueError("TrainDataset needs a tokenizer or a SpecialTokenLayout")
            layout = SpecialTokenLayout(tokenizer)
        if train_n_passages < 1:
            raise ValueError(f"train_n_passages must be at least 1, got {train_n_passages}")
        self.paths = [os.fspath(p) for p in paths]
        for path in self.paths:
            if path.endswith(".gz"):
                raise InputError(f"{path}: training files are read by byte offset and must not be compressed")
        self.layout = layout
        self.train_n_passages = train_n_passages
        self.q_max_len, self.p_max_len = q_max_len, p_max_len
        self.seed = seed
        self.positive_passage_no_shuffle = positive_passage_no_shuffle
        self.negative_passage_no_shuffle = negative_passage_no_shuffle
        self.epoch = 0
        self._warned_replacement = False
        self._fds: dict[int, int] = {}
        self._fd_pid: Optional[int] = None
        self._build_index(show_progress, check_lines, vocab_size)

    @classmethod
    def from_args(cls, data_args, tokenizer, seed: int, path: Optional[str] = None,
                  check_lines: bool = True) -> "TrainDataset":
        """The training set of ``--train_path``/``--train_dir``, or the file ``path`` (e.g. ``--eval_path``),
        every line checked against the tokenizer's vocabulary while the files are indexed (``check_lines=False``
        for a caller that ran :func:`scan_training_file` already, as train_dr does before loading the model)."""
        paths = [path] if path else resolve_train_files(data_args.train_path, data_args.train_dir)
        return cls(
            paths,
            tokenizer,
            train_n_passages=data_args.train_n_passages,
            q_max_len=data_args.q_max_len,
            p_max_len=data_args.p_max_len,
            seed=seed,
            positive_passage_no_shuffle=data_args.positive_passage_no_shuffle,
            negative_passage_no_shuffle=data_args.negative_passage_no_shuffle,
            check_lines=check_lines,
            vocab_size=len(tokenizer),
        )

    # -- index -------------------------------------------------------------------------------------------

    def _build_index(self, show_progress: bool, check_lines: bool = False, vocab_size: Optional[int] = None) -> None:
        """Record (file, start, end, line number) of every non-blank line in one buffered scan, checking each
        line (:func:`check_training_line`, token ids below ``vocab_size``) when ``check_lines``."""
        from tqdm.auto import tqdm

        files, starts, ends, lines = [], [], [], []
        total = sum(os.path.getsize(p) for p in self.paths)
        with tqdm(total=total, unit="B", unit_scale=True, desc="checking training data" if check_lines else "indexing training data",
                  disable=not show_progress or total < (64 << 20)) as bar:
            for file_no, path in enumerate(self.paths):
                with open_binary(path) as handle:
                    offset = handle.tell()  # past a byte-order mark
                    for line_no, raw in enumerate(handle, start=1):
                        if not is_blank(raw):
                            if check_lines:
                                check_training_line(raw, path, line_no, vocab_size, self.train_n_passages)
                            files.append(file_no)
                            starts.append(offset)
                            ends.append(offset + len(raw))
                            lines.append(line_no)
                        offset += len(raw)
                        bar.update(len(raw))
        if not starts:
            raise no_records(", ".join(self.paths))
        self._file = np.asarray(files, dtype=np.int32)
        self._start = np.asarray(starts, dtype=np.int64)
        self._end = np.asarray(ends, dtype=np.int64)
        self._line = np.asarray(lines, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._start)

    def __getstate__(self):
        # File descriptors are per process; loader workers (fork or spawn) open their own.
        state = self.__dict__.copy()
        state["_fds"], state["_fd_pid"] = {}, None
        return state

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def _fd(self, file_no: int) -> int:
        if self._fd_pid != os.getpid():  # a forked worker must not share (or close) the parent's descriptors
            self._fds, self._fd_pid = {}, os.getpid()
        fd = self._fds.get(file_no)
        if fd is None:
            fd = self._fds[file_no] = os.open(self.paths[file_no], os.O_RDONLY)
        return fd

    def location(self, index: int) -> tuple[str, int]:
        """``(path, line number)`` of example ``index``."""
        return self.paths[self._file[index]], int(self._line[index])

    def raw(self, index: int) -> dict:
        """Example ``index`` as stored (without special tokens), validated; errors name file and line."""
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range (dataset has {len(self)})")
        file_no, start, end = int(self._file[index]), int(self._start[index]), int(self._end[index])
        path, line = self.location(index)
        data = os.pread(self._fd(file_no), end - start, start)
        return _validated(decode_json_object(decode_line(data, path, line), path, line), path, line)

    # -- sampling ----------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose passages ``__getitem__`` returns (called by the trainer each epoch)."""
        self.epoch = int(epoch)

    def sample_passages(self, index: int, record: dict, epoch: Optional[int] = None) -> list[list[int]]:
        """The ``train_n_passages`` passages (positive first) of example ``index`` at ``epoch``."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        positives, negatives = record["positives"], record["negatives"]
        positive = positives[0] if self.positive_passage_no_shuffle else positives[int(rng.integers(len(positives)))]
        k = self.train_n_passages - 1
        if k == 0:
            return [positive]
        if not negatives:
            path, line = self.location(index)
            raise DataFormatError(path, line, f"no negatives, but --train_n_passages {self.train_n_passages} needs {k}")
        if len(negatives) < k:
            if not self._warned_replacement:
                self._warned_replacement = True
                path, line = self.location(index)
                logger.warning(
                    "%s:%d has %d negatives, fewer than the %d needed (--train_n_passages %d): sampling with "
                    "replacement for such examples (reported once)", path, line, len(negatives), k,
                    self.train_n_passages,
                )
            picks = rng.integers(len(negatives), size=k)
        elif self.negative_passage_no_shuffle:
            picks = range(k)
        else:
            order = np.random.default_rng([self.seed, index]).permutation(len(negatives))
            offset = epoch * k % len(negatives)
            picks = order[(offset + np.arange(k)) % len(negatives)]
        return [positive] + [negatives[int(i)] for i in picks]

    def __getitem__(self, index: int) -> dict:
        with user_errors_leave_workers():
            index = int(index)
            record = self.raw(index)
            passages = self.sample_passages(index, record)
            wrap = self.layout.wrap
            return {
                "query": wrap(record["query"], self.q_max_len),
                "passages": [wrap(p, self.p_max_len) for p in passages],
                "positive_keys": [passage_key(wrap(p, self.p_max_len)) for p in record["positives"]],
            }


class TrainCollator:
    """Batch ``TrainDataset`` items: ``{"query": {input_ids, attention_mask}, "passage": {...}}``.

    Passages are flattened query by query (query ``i``'s positive is row ``i * n``). Padding is to the
    longest sequence of the batch, not to max length: the same math with less compute. When the items carry
    ``positive_keys``, the batch also holds ``passage_keys`` (LongTensor ``[B * n]``, the :func:`passage_key`
    of each passage row) and ``positive_keys`` (LongTensor ``[B, k]``, each query's positives' keys, a short
    row padded by repeating its first key), from which the loss masks in-batch false negatives.
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: Optional[int] = None):
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    @classmethod
    def for_tokenizer(cls, tokenizer, pad_to_multiple_of: Optional[int] = None) -> "TrainCollator":
        return cls(require_pad_id(tokenizer), pad_to_multiple_of)

    def __call__(self, items: Sequence[dict]) -> dict:
        sizes = {len(item["passages"]) for item in items}
        if len(sizes) != 1:
            raise ValueError(f"every example must bring the same number of passages, got {sorted(sizes)}")
        queries = [item["query"] for item in items]
        passages = [p for item in items for p in item["passages"]]
        batch = {
            "query": pad_batch(queries, self.pad_id, self.pad_to_multiple_of),
            "passage": pad_batch(passages, self.pad_id, self.pad_to_multiple_of),
        }
        if items and all(item.get("positive_keys") for item in items):
            width = max(len(item["positive_keys"]) for item in items)
            batch["passage_keys"] = torch.tensor([passage_key(p) for p in passages], dtype=torch.long)
            batch["positive_keys"] = torch.tensor(
                [keys + [keys[0]] * (width - len(keys)) for keys in (list(item["positive_keys"]) for item in items)],
                dtype=torch.long,
            )
        return batch
