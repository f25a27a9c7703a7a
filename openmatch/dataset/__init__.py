"""Data layer: the record parser and readers, templates, qrels and runs, streaming and training datasets."""

from .readers import iter_id_records, iter_records, load_id_records
from .records import DataFormatError, RecordParser, check_id, count_lines, find_id_key
from .streaming import ShardedStream, reader_slot, take_share
from .template import Template

__all__ = [
    "DataFormatError",
    "RecordParser",
    "ShardedStream",
    "Template",
    "check_id",
    "count_lines",
    "find_id_key",
    "iter_id_records",
    "iter_records",
    "load_id_records",
    "reader_slot",
    "take_share",
]
