"""Text templates such as ``"Title: <title> Text: <text>"`` that turn a record into model input."""

from __future__ import annotations

import re
import warnings
from typing import Optional

from ..errors import OpenMatchWarning, UsageError
from .records import DataFormatError

_MARKER = re.compile(r"<([A-Za-z_][\w.\-]*)>")

_MISSING = object()


class Template:
    """Fill ``<marker>`` placeholders from a record; dotted names reach into nested JSON.

    A field's value is used as it is when it is a string and written out when it is a number. A field
    missing from a record, or null in it, becomes "" (an empty text, as an empty string would be) with one
    warning per field and kind, not one per row, so a collection without some titles does not flood the log.
    A list, object or boolean is refused (``path:line: field 'text' is a list ...``): its Python spelling is
    never the text that was meant. Callers refuse a field missing from a file's first record first
    (:meth:`require_fields`), which is a typo in the template rather than a gap in the data.
    """

    def __init__(self, template: str):
        if not template:
            raise UsageError("a template must not be empty; e.g. '<text>' or 'Title: <title> Text: <text>'")
        self.template = template
        self.fields = _MARKER.findall(template)
        if not self.fields:
            raise UsageError(f"template {template!r} has no <field> marker")
        self._parts = _MARKER.split(template)  # literal, field, literal, field, ..., literal
        self._warned: set[tuple[str, str]] = set()

    @staticmethod
    def _value(record: dict, name: str):
        value = record
        for key in name.split("."):
            if isinstance(value, dict) and key in value:
                value = value[key]
            else:
                return _MISSING
        return value

    def missing_fields(self, record: dict) -> list[str]:
        """The template's fields that ``record`` does not have (in template order, each once)."""
        return [name for name in dict.fromkeys(self.fields) if self._value(record, name) is _MISSING]

    def require_fields(self, record: dict, path: str, line: int, flag: str = "the template") -> None:
        """Refuse the template when a field is missing from ``record``, the first record of ``path``: the
        records of a file share their fields, so the template (``flag``) has a typo."""
        missing = self.missing_fields(record)
        if missing:
            markers = ", ".join(f"<{name}>" for name in missing)
            raise UsageError(
                f"{flag} {self.template!r}: no field {markers} in the first record of {path} (line {line}), "
                f"whose fields are {', '.join(sorted(map(str, record)))}"
            )

    def _warn_once(self, kind: str, name: str, message: str) -> None:
        if (kind, name) not in self._warned:
            self._warned.add((kind, name))
            warnings.warn(message, OpenMatchWarning, stacklevel=3)

    def _lookup(self, record: dict, name: str, path: Optional[str], line: Optional[int]) -> str:
        value = self._value(record, name)
        if isinstance(value, str):
            return value
        where = f"{path}:{line}: " if path is not None else ""
        if value is _MISSING:
            self._warn_once("missing", name, f"{where}field {name!r} missing from a record; using an empty string "
                                             "(reported once)")
            return ""
        if value is None:
            self._warn_once("null", name, f"{where}field {name!r} is null; using an empty string (reported once)")
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        kind = {bool: "boolean", list: "list", dict: "JSON object"}.get(type(value), type(value).__name__)
        raise DataFormatError(path or "<record>", line, f"field {name!r} is a {kind}, not text: a template field must "
                                                        "be a string or a number")

    def fill(self, record: dict, path: Optional[str] = None, line: Optional[int] = None) -> str:
        """The template filled from ``record``, stripped; ``path`` and ``line`` name the record in messages."""
        parts = self._parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(self._lookup(record, parts[i], path, line))
            out.append(parts[i + 1])
        return "".join(out).strip()

    __call__ = fill

    def __repr__(self) -> str:
        return f"Template({self.template!r})"
