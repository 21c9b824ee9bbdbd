"""Self-contained HTML for the weekly summary: escaped tables, inline SVG charts, one stylesheet, no scripts.

Nothing is fetched when the page opens (no fonts, scripts or images from the network): it must render from a
mail attachment or a file share. Charts are drawn by matplotlib as SVG with text kept as text, so they stay
sharp when printed and searchable in the browser.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

Formatter = Callable[[object], str]

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; margin: 24px auto;
       max-width: 1180px; color: #1d2330; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #d6dae3; padding-bottom: 0.2em; }
.subtitle { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.6em 0; }
th, td { border: 1px solid #d6dae3; padding: 4px 8px; vertical-align: top; }
th { background: #f1f3f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: 600; background: #f7f8fa; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 1em 0; }
.tile { border: 1px solid #d6dae3; border-radius: 6px; padding: 10px 14px; min-width: 150px; }
.tile .value { font-size: 1.5em; font-weight: 600; }
.tile .label { color: #5b6475; font-size: 0.85em; }
.warning { background: #fff3cd; border: 1px solid #e0b100; border-radius: 6px; padding: 10px 14px; }
.ok { color: #2f6b2f; }
.grid td { width: 30%; }
.risk-high { background: #fbe3e1; } .risk-medium { background: #fdf3dc; } .risk-low { background: #e6f4e6; }
.cell-name { font-weight: 600; }
.muted { color: #5b6475; font-size: 0.85em; }
figure { margin: 0.6em 0; } figure svg { width: 100%; max-width: 1100px; height: auto; }
.charts { display: grid; grid-template-columns: 1fr; gap: 16px; }
.models { background: #f7f8fa; border-left: 3px solid #1f4e8c; padding: 8px 12px; }
dl.glossary dt { font-weight: 600; margin-top: 0.5em; } dl.glossary dd { margin: 0 0 0 1.5em; }
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def table(
    frame: pd.DataFrame,
    *,
    formats: Mapping[str, Formatter] | None = None,
    headers: Mapping[str, str] | None = None,
    row_class: Callable[[pd.Series], str] | None = None,
    numeric: Sequence[str] = (),
) -> str:
    """An HTML table of ``frame``: every cell escaped, ``formats`` per column, numeric columns right-aligned."""
    formats = formats or {}
    headers = headers or {}
    head = "".join(f"<th>{esc(headers.get(c, c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cls = f' class="{esc(row_class(row))}"' if row_class else ""
        cells = []
        for c in frame.columns:
            v = row[c]
            text = "" if _missing(v) else formats.get(c, str)(v)
            align = ' class="num"' if c in numeric else ""
            cells.append(f"<td{align}>{esc(text)}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def svg(fig: Figure, title: str) -> str:
    """``fig`` as an inline SVG element (text kept as text) inside a captioned figure."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": title}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    start = text.index("<svg")
    caption = f'<figcaption class="muted">{esc(title)}</figcaption>'
    return f'<figure aria-label="{esc(title)}">{text[start:]}{caption}</figure>'


def money(v: object) -> str:
    return f"{float(v):,.0f}"  # type: ignore[arg-type]


def money2(v: object) -> str:
    return f"{float(v):,.2f}"  # type: ignore[arg-type]


def pct(v: object) -> str:
    return f"{100 * float(v):.1f}%"  # type: ignore[arg-type]


def prob(v: object) -> str:
    return f"{float(v):.3f}"  # type: ignore[arg-type]


def count(v: object) -> str:
    return f"{int(v):,}"  # type: ignore[call-overload]


def signed(fmt: Formatter) -> Formatter:
    """``fmt`` with an explicit + on positive changes."""

    def out(v: object) -> str:
        text = fmt(v)
        return text if text.startswith("-") or float(v) == 0 else f"+{text}"  # type: ignore[arg-type]

    return out


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """A complete HTML document with the inline stylesheet."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class='subtitle'>{esc(subtitle)}</p>" + "\n".join(sections) + "</body></html>\n"
    )
