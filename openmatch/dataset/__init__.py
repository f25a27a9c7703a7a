"""Data layer: record readers, templates, qrels and runs, streaming and training datasets."""

from .readers import (
    DataFormatError,
    count_lines,
    find_id_key,
    iter_id_records,
    iter_records,
    load_id_records,
)
from .streaming import ShardedStream, reader_slot, take_share
from .template import Template

__all__ = [
    "DataFormatError",
    "ShardedStream",
    "Template",
    "count_lines",
    "find_id_key",
    "iter_id_records",
    "iter_records",
    "load_id_records",
    "reader_slot",
    "take_share",
]
