"""Column widths for a table shown in a fixed number of characters (a terminal, or 80 when output is not one).

A rich table left to itself at 80 columns cuts numbers ("15.1…") and stretches text over many lines;
:func:`fit_columns` gives every column an explicit width instead: numbers whole, headers wrapped at
their spaces, text folded, and optional columns left out while the table does not fit.
"""

from __future__ import annotations

#: The narrowest a text column is folded to.
TEXT_MIN = 10
#: Cells that say nothing: an optional column of only these goes first.
BLANK = ("-", "0", "no", "")


def column_width(head: str, cells: list[str], text: bool) -> int:
    """The narrowest a column may be: its longest header word, and its longest cell (a number) or up to
    `TEXT_MIN` characters of it (text, folded)."""
    longest = max((len(c) for c in cells), default=0)
    return max(max((len(w) for w in head.split()), default=0), min(longest, TEXT_MIN) if text else longest)


def fit_columns(head: list[str], rows: list[list[str]], width: int, optional: tuple[str, ...] = (),
                text: tuple[str, ...] = (), per_column: int = 3, fixed: int = 1) -> dict[int, int]:
    """{column index: width} of the columns to show in `width` characters (a rich table with borders
    spends `per_column` = 3 per column and `fixed` = 1 on borders besides the text; one without borders
    or padding, 1 and -1). Columns named in `text` fold; the others are numbers, never narrower than
    their longest cell. Optional columns go, those that say nothing first, then in the order of
    `optional`, until the table fits; the room left widens the narrowed columns back towards their
    longest cell, then towards their header on one line."""
    keep = list(range(len(head)))
    need = [column_width(h, [r[i] for r in rows], h in text) for i, h in enumerate(head)]
    blank = [i for i in keep if head[i] in optional and rows and all(r[i] in BLANK for r in rows)]
    order = blank + [head.index(h) for h in optional if h in head and head.index(h) not in blank]
    while sum(need[i] + per_column for i in keep) + fixed > width and order:
        keep.remove(order.pop(0))
    widths = {i: need[i] for i in keep}
    room = width - sum(widths[i] + per_column for i in keep) - fixed
    cells = {i: max([len(r[i]) for r in rows], default=0) for i in keep}
    for target in (cells, {i: max(cells[i], len(head[i])) for i in keep}):  # unfold text first, then headers
        while room > 0:
            short = max(keep, key=lambda i: target[i] - widths[i])
            if target[short] <= widths[short]:
                break
            widths[short] += 1
            room -= 1
    return widths
