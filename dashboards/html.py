"""Assemble one self-contained HTML page: inline CSS, PNGs as base64 data URIs, tables as HTML.
Nothing is fetched from the network, so the file opens anywhere (and inside the MLflow UI)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
nav a { margin-right: 1em; }
table.tbl { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
table.tbl th, table.tbl td { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
table.tbl th { background: #f3f3f3; }
.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: .4em .7em; margin: .4em 0; }
img { max-width: 100%; display: block; margin: .6em 0; }
dl.meta dt { float: left; clear: left; width: 11em; font-weight: 600; } dl.meta dd { margin-left: 12em; }
"""

# Marks each image as decoded (data-ok="1") or broken ("0"), and the body with "ok/total",
# so a headless browser's DOM dump shows whether every figure rendered.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img"), ok = 0;
  imgs.forEach(function (img) {
    var good = img.complete && img.naturalWidth > 0;
    img.setAttribute("data-ok", good ? "1" : "0");
    if (good) { ok += 1; }
  });
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
});
"""


@dataclass
class Section:
    id: str
    title: str
    blocks: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.blocks.append(note(text))

    def add(self, block: str | None) -> None:
        if block:
            self.blocks.append(block)


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def heading(text: str) -> str:
    return f"<h3>{html.escape(text)}</h3>"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def image(path: Path | None, alt: str) -> str | None:
    if path is None:
        return None
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" '
            'onload="this.setAttribute(\'data-ok\', \'1\')" onerror="this.setAttribute(\'data-ok\', \'0\')">')


def table(frame: pd.DataFrame, max_rows: int | None = None) -> str:
    """A DataFrame as an escaped HTML table; long tables are cut with a note."""
    if frame is None or frame.empty:
        return note("(empty table)")
    shown = frame if max_rows is None else frame.head(max_rows)
    out = shown.to_html(index=False, escape=True, na_rep="–", border=0, classes="tbl")
    if len(shown) < len(frame):
        out += note(f"Showing {len(shown)} of {len(frame)} rows; all of them are in trials.parquet.")
    return out


def meta_list(items: dict[str, object]) -> str:
    rows = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items())
    return f'<dl class="meta">{rows}</dl>'


def page(title: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>\n' + "\n".join(s.blocks) + "</section>"
                     for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>\n"
            f"<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>\n{body}\n</body></html>\n")
