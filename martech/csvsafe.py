"""Spreadsheet-safe CSV cells.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
is run as a formula by Excel, LibreOffice and Google Sheets, and such values
reach us from public forms (``=HYPERLINK("http://evil", "click")`` as a first
name). As OWASP recommends for CSV injection, an export prefixes such a cell
with a single quote, which spreadsheets show as text (a plain number such as
``-12.50`` is left alone: it is a value, not a formula). ``cell_unescape``
undoes exactly that on import, so an exported file imports back to the same
values: a value that already starts with quotes before a trigger character
gets one more quote on export, and loses one on import.
"""
from __future__ import annotations

import re
from typing import Any

FORMULA_TRIGGERS = frozenset("=+-@\t\r")
# A plain number ("-12.50", "+14155550100") is read as a number, not run: kept
# as it is so amounts and phone numbers stay usable in the spreadsheet.
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def cell_escape(value: Any) -> Any:
    """The value as a spreadsheet shows it as text; non-strings unchanged."""
    if isinstance(value, str) and value.lstrip("'")[:1] in FORMULA_TRIGGERS and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def cell_unescape(value: str) -> str:
    """The inverse of ``cell_escape`` for a cell read back from a file."""
    if value.startswith("'") and value.lstrip("'")[:1] in FORMULA_TRIGGERS:
        return value[1:]
    return value
