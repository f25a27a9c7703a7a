"""Query and corpus streams for encoding: exactly once, tokenised in the loader workers, length-sorted.

A record file (TSV, JSONL, optionally gzip) is read as raw lines. Each non-empty data line gets a position
``g``; rank ``g % world_size`` owns it and calls it its local position ``j = g // world_size``. Inside a
rank, :class:`~openmatch.dataset.streaming.ShardedStream` deals the rank's lines to its DataLoader workers,
so every record is encoded by exactly one (rank, worker). The split of the corpus between ranks does not
depend on the number of loader workers, so an interrupted run can be resumed with another worker count.

A worker only decodes and parses the lines it owns (with :class:`~openmatch.dataset.records.RecordParser`,
the parser of every reader). It collects a window of ``window_batches × batch_size`` records, tokenises
them in one call of the fast tokenizer (truncation to ``max_len``, special tokens included), sorts the
window by length and cuts it into batches padded to their own longest sequence
(:func:`~openmatch.dataset.tokenization.pad_batch`). Padding is masked, so this changes no embedding
while skipping most of the work spent on padding when texts vary in length.

Templates: ``--doc_template``/``--query_template`` as in OpenMatch (``"Title: <title> Text: <text>"``).
OpenMatch has no default; here a missing template means ``"<text>"`` (the record's text field), with a
warning for passages because a title, if any, is then ignored.

The file's first record is parsed in the main process when the dataset is made (:func:`check_first_record`):
a wrong column count, a missing id or a template field absent from it (a typo such as ``<tilte>``) stops the
command before anything is encoded. A user error raised later in a loader worker reaches the main process as
itself (:mod:`openmatch.dataset.workers`).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset

from ..distributed import dist_context
from ..errors import MissingInputError, UsageError
from .records import RecordParser, iter_raw_data_lines, no_records, parse_column_names
from .streaming import ShardedStream
from .template import Template
from .tokenization import length_sorted_batches, require_pad_id
from .workers import user_errors_leave_workers

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "<text>"

# The flags that set a side's template and column names, named in errors and warnings.
FLAGS = {
    "passage": ("--doc_template", "--doc_column_names"),
    "query": ("--query_template", "--query_column_names"),
}


def check_first_record(path: str | os.PathLike, column_names: Optional[str | Sequence[str]], template: Template,
                       kind: str = "passage") -> None:
    """Parse the first record of a query or corpus file and check that it holds every field of ``template``.

    A field missing from the first record of a file whose records share their fields is a typo in the
    template flag, refused here instead of encoding every record without it; a field missing only from
    later records is filled with "" and warned about (:class:`~openmatch.dataset.template.Template`). Also
    refuses an empty file and reports a first line that is a header.
    """
    template_flag, names_flag = FLAGS.get(kind, FLAGS["passage"])
    parser = RecordParser(path, column_names, names_flag=names_flag)
    for line_no, raw in iter_raw_data_lines(path, parser):
        _, record = parser.parse(raw, line_no)
        template.require_fields(record, os.fspath(path), line_no, template_flag)
        return
    raise no_records(path)


def resolve_template(template: Optional[str], kind: str = "passage") -> Template:
    """The :class:`Template` for ``template``, or ``"<text>"`` when none is given (see module docstring)."""
    if template:
        return Template(template)
    if kind == "passage":
        logger.warning(
            "no --doc_template given: encoding each passage's <text> field only (a title, if any, is ignored); "
            "pass e.g. --doc_template 'Title: <title> Text: <text>' to include it"
        )
    return Template(DEFAULT_TEMPLATE)


class InferenceDataset(IterableDataset):
    """Padded, length-sorted batches of one rank's share of a query or corpus file.

    Each yielded batch is a dict with ``input_ids``/``attention_mask`` (LongTensors padded to the batch's
    longest sequence), ``ids`` (record ids) and ``positions`` (LongTensor of the records' local positions
    ``j`` in this rank's share, in file order). ``skip(j) -> bool`` drops positions before they are parsed
    (used to resume a partly built index).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer,
        max_len: int,
        batch_size: int,
        template: Optional[str | Template] = None,
        column_names: Optional[str | Sequence[str]] = None,
        kind: str = "passage",
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        skip: Optional[Callable[[int], bool]] = None,
        window_batches: int = 50,
        sort_by_length: bool = True,
    ):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise MissingInputError(f"{self.path}: no such file")
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.batch_size = batch_size
        self.template = template if isinstance(template, Template) else resolve_template(template, kind)
        self.column_names = parse_column_names(column_names)
        self.rank, self.world_size = rank, world_size
        self.skip = skip
        self.window = max(1, window_batches) * batch_size if sort_by_length else batch_size
        self.sort_by_length = sort_by_length
        self.names_flag = FLAGS.get(kind, FLAGS["passage"])[1]
        require_pad_id(tokenizer)
        check_first_record(self.path, self.column_names, self.template, kind)

    def _placement(self) -> tuple[int, int]:
        rank, world_size = dist_context()
        return (self.rank if self.rank is not None else rank, self.world_size if self.world_size is not None else world_size)

    def _rank_lines(self, parser: RecordParser) -> Iterator[tuple[int, int, bytes]]:
        """``(line_no, j, raw)`` of the lines this rank owns and does not skip; nothing is parsed here."""
        rank, world_size = self._placement()
        skip = self.skip
        for g, (line_no, raw) in enumerate(iter_raw_data_lines(self.path, parser, report_header=False)):
            if g % world_size != rank:
                continue
            j = g // world_size
            if skip is not None and skip(j):
                continue
            yield line_no, j, raw

    def _batches(self, window: list, parser: RecordParser) -> Iterator[dict]:
        ids, positions, texts = [], [], []
        for line_no, j, raw in window:
            rid, record = parser.parse(raw, line_no)
            ids.append(rid)
            positions.append(j)
            texts.append(self.template.fill(record, self.path, line_no))
        for rows, batch in length_sorted_batches(self.tokenizer, texts, self.max_len, self.batch_size, self.sort_by_length):
            batch["ids"] = [ids[i] for i in rows]
            batch["positions"] = torch.tensor([positions[i] for i in rows], dtype=torch.long)
            yield batch

    def __iter__(self) -> Iterator[dict]:
        with user_errors_leave_workers():
            parser = RecordParser(self.path, self.column_names, names_flag=self.names_flag)
            # ShardedStream, told it is the only rank, deals this rank's lines to the loader workers.
            lines = iter(ShardedStream(lambda: self._rank_lines(parser), rank=0, world_size=1))
            window: list = []
            for item in lines:
                window.append(item)
                if len(window) >= self.window:
                    yield from self._batches(window, parser)
                    window = []
            if window:
                yield from self._batches(window, parser)


def make_loader(dataset: InferenceDataset, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over already-batched items (``batch_size=None``)."""
    kwargs = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = 4
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)
