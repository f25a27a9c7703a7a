"""Text templates such as ``"Title: <title> Text: <text>"`` that turn a record into model input."""

from __future__ import annotations

import logging
import re

from ..errors import UsageError

logger = logging.getLogger(__name__)

_MARKER = re.compile(r"<([A-Za-z_][\w.\-]*)>")


class Template:
    """Fill ``<marker>`` placeholders from a record; dotted names reach into nested JSON.

    A field missing from a record becomes "" and is reported once per field, not once per row, so a
    collection without titles does not flood the log.
    """

    def __init__(self, template: str):
        if not template:
            raise UsageError("a template must not be empty; e.g. '<text>' or 'Title: <title> Text: <text>'")
        self.template = template
        self.fields = _MARKER.findall(template)
        if not self.fields:
            raise UsageError(f"template {template!r} has no <field> marker")
        self._parts = _MARKER.split(template)  # literal, field, literal, field, ..., literal
        self._warned: set[str] = set()

    def _lookup(self, record: dict, name: str) -> str:
        value = record
        for key in name.split("."):
            if isinstance(value, dict) and key in value:
                value = value[key]
            else:
                if name not in self._warned:
                    self._warned.add(name)
                    logger.warning("field %r missing from a record; using an empty string (reported once)", name)
                return ""
        return "" if value is None else str(value)

    def fill(self, record: dict) -> str:
        parts = self._parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(self._lookup(record, parts[i]))
            out.append(parts[i + 1])
        return "".join(out).strip()

    __call__ = fill

    def __repr__(self) -> str:
        return f"Template({self.template!r})"
