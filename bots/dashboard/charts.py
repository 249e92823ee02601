"""Charts as SVG drawn on the server: the page needs no script and nothing from the internet to show them.

Two shapes serve the five charts: rows of bars (a filled part over a track, both as fractions of the
row's width, with a caption), and columns of stacked parts (tokens per day, one colour per model).
Colours are attributes and everything else is a CSS class, so the page's Content-Security-Policy can
forbid inline styles. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 640
ROW_HEIGHT = 30
LABEL_WIDTH = 210
CAPTION_WIDTH = 150
BAR_WIDTH = WIDTH - LABEL_WIDTH - CAPTION_WIDTH - 20
COLUMNS_HEIGHT = 220
LEGEND_ROW = 20
# Distinct on white and for the common kinds of colour blindness (Okabe and Ito), then a few more.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000", "#999999", "#7f3c8d")


@dataclass(frozen=True)
class Bar:
    """One row: `fill` drawn over `track`, both fractions (0 to 1) of the bar's width."""

    label: str
    fill: float
    track: float
    caption: str
    title: str = ""  # shown on hover; the label when empty


@dataclass(frozen=True)
class Column:
    """One column of stacked parts: (series, value) from the bottom up."""

    label: str
    parts: Sequence[tuple[str, int]]


def bars(title: str, rows: Sequence[Bar], *, empty: str = "Nothing yet.") -> str:
    """Rows of bars, one per item, as an SVG element."""
    if not rows:
        return _empty(title, empty)
    height = ROW_HEIGHT * len(rows) + 8
    shapes = []
    for index, row in enumerate(rows):
        top = 4 + index * ROW_HEIGHT
        middle = top + ROW_HEIGHT / 2
        fill, track = _fraction(row.fill), _fraction(row.track)
        shapes.append(
            f"<g><title>{escape(row.title or row.label)}: {escape(row.caption)}</title>"
            f'<text class="label" x="{LABEL_WIDTH - 8}" y="{middle:.1f}">{escape(_shorten(row.label))}</text>'
            f'<rect class="track" x="{LABEL_WIDTH}" y="{top + 6}" width="{track * BAR_WIDTH:.1f}" height="{ROW_HEIGHT - 12}"/>'
            f'<rect class="fill" x="{LABEL_WIDTH}" y="{top + 6}" width="{fill * BAR_WIDTH:.1f}" height="{ROW_HEIGHT - 12}"/>'
            f'<text class="caption" x="{LABEL_WIDTH + BAR_WIDTH + 8}" y="{middle:.1f}">{escape(row.caption)}</text></g>'
        )
    return _svg(title, height, "".join(shapes))


def stacked_columns(title: str, columns: Sequence[Column], *, empty: str = "Nothing yet.") -> str:
    """Columns of stacked parts with a legend of the series below, as an SVG element."""
    series = sorted({name for column in columns for name, value in column.parts if value > 0})
    if not series:
        return _empty(title, empty)
    colours = {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(series)}
    highest = max(sum(value for _, value in column.parts) for column in columns)
    slot = WIDTH / len(columns)
    shapes = []
    for index, column in enumerate(columns):
        x = index * slot + slot * 0.15
        bottom = float(COLUMNS_HEIGHT)
        for name, value in column.parts:
            if value <= 0:
                continue
            height = value / highest * (COLUMNS_HEIGHT - 10)
            bottom -= height
            shapes.append(
                f'<rect x="{x:.1f}" y="{bottom:.1f}" width="{slot * 0.7:.1f}" height="{height:.1f}" fill="{colours[name]}">'
                f"<title>{escape(column.label)} {escape(name)}: {value:,} tokens</title></rect>"
            )
        shapes.append(
            f'<text class="tick" x="{index * slot + slot / 2:.1f}" y="{COLUMNS_HEIGHT + 16}">{escape(column.label)}</text>'
        )
    legend_top = COLUMNS_HEIGHT + 30
    for index, name in enumerate(series):
        y = legend_top + index * LEGEND_ROW
        shapes.append(
            f'<rect x="0" y="{y}" width="12" height="12" fill="{colours[name]}"/>'
            f'<text class="legend" x="18" y="{y + 10}">{escape(_shorten(name, 60))}</text>'
        )
    return _svg(title, legend_top + LEGEND_ROW * len(series), "".join(shapes))


def _svg(title: str, height: float, body: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height:.0f}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{body}</svg>'
    )


def _empty(title: str, message: str) -> str:
    return _svg(title, 40, f'<text class="empty" x="{WIDTH / 2}" y="24">{escape(message)}</text>')


def _fraction(value: float) -> float:
    return min(1.0, max(0.0, value))


def _shorten(text: str, most: int = 30) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"
