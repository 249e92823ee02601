"""How the admin commands show a table: drawn with rich on a terminal, aligned plain text in a pipe.

Scripts read `--json` instead, which the commands print themselves. rich is imported only when a
table is drawn, and `core.render` only when one is laid out here, so that a command piped or run by a
script starts as fast as before. A table of more than `MAX_DRAWN_ROWS` rows is printed plain on a
terminal too: rich takes milliseconds a row to lay one out, and a table that long scrolls past anyway
(it is for grep or a pager).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_DRAWN_ROWS = 200


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False  # right-aligned


def drawn(rows: int) -> bool:
    """Whether a table of this many rows is drawn with rich (stdout is a terminal) rather than printed plain."""
    return sys.stdout.isatty() and rows <= MAX_DRAWN_ROWS


def print_table(title: str | None, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """A table of text cells under its title: rich on a terminal, `text_table`'s alignment in a pipe."""
    from core.render import text_table

    if drawn(len(rows)):
        draw_table(title, columns, rows)
        return
    if title:
        print(title)
    print(text_table([column.header for column in columns], rows))


def draw_table(title: str | None, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, header_style="bold")
    for column in columns:
        table.add_column(column.header, justify="right" if column.numeric else "left")
    for row in rows:
        table.add_row(*row)
    Console(highlight=False).print(table)


def print_json(value: Any) -> None:
    """One JSON document on stdout, for scripts."""
    print(json.dumps(value, indent=1))
