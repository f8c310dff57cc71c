"""Tables that a benchmark script keeps in a doc, between ``<!-- table: NAME -->`` and ``<!-- /table -->``."""

from __future__ import annotations

import re
from pathlib import Path


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- table: {re.escape(name)} -->\n)(.*?)(<!-- /table -->)", re.S)


def write_table(doc: Path, name: str, text: str) -> None:
    """Replace the block `name` of `doc` with `text`; a doc without the block is an error that names it."""
    content = doc.read_text()
    if not _block(name).search(content):
        raise SystemExit(f"{doc}: no <!-- table: {name} --> ... <!-- /table --> block")
    doc.write_text(_block(name).sub(lambda m: m.group(1) + text + m.group(3), content))


def table_cells(doc: Path, name: str) -> list[list[str]]:
    """The cells of the markdown table rows in block `name` of `doc`, header and rule left out."""
    lines = [line for line in _block(name).search(doc.read_text()).group(2).splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
