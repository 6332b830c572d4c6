"""One self-contained HTML report per experiment: tables, figures inlined, settings.

No scripts, no stylesheets or fonts from elsewhere: figures are embedded as base64
``data:`` URIs, so ``report.html`` can be mailed or opened offline as a single file.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.base import Figure, Table

REPORT_HTML = "report.html"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f7f7f7; }
.notes { font-size: 0.85em; color: #555; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #444; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f4f4f4; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.lead { background: #fff6e0; border-left: 4px solid #e0a000; padding: 0.4em 1em; font-size: 1.05em; }
.caption { font-weight: 600; margin: 1em 0 0.2em; }
.part td { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figures figure { margin: 0.5em 0; max-width: 100%; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Like report.md's cells, but a float already rounded to cents keeps them (Table 3's hours)."""
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if abs(value) >= 1 and value == round(value, 2):
            text = f"{value:,.2f}"
            return text[:-3] if text.endswith(".00") else text
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table_html(table: Table, heading: bool = True) -> str:
    """A Table as an HTML <table> (numbers formatted by ``_fmt``), with its notes; inside a
    :class:`Section` its title is a caption rather than a heading."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in row) + "</tr>" for row in table.rows)
    caption = f"<h2>{_esc(table.title)}</h2>" if heading else f'<p class="caption">{_esc(table.title)}</p>'
    parts = [
        f'<section class="table" id="table-{_esc(table.name)}">',
        caption,
        f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>",
    ]
    if table.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in table.notes) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure_html(figure: Figure) -> str:
    path = Path(figure.path)
    if not path.is_file():
        return f'<figure id="figure-{_esc(figure.name)}"><figcaption>{_esc(figure.title)} (missing: {_esc(path.name)})</figcaption></figure>'
    return (
        f'<figure id="figure-{_esc(figure.name)}"><img alt="{_esc(figure.title)}" src="{data_uri(path)}">'
        f"<figcaption>{_esc(figure.title)}</figcaption></figure>"
    )


@dataclass
class Section:
    """A titled part of a report: paragraphs, then tables, then figures side by side."""

    name: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def section_html(section: Section) -> str:
    parts = [f'<section class="part" id="{_esc(section.name)}">', f"<h2>{_esc(section.title)}</h2>"]
    parts += [f"<p>{_esc(p)}</p>" for p in section.paragraphs]
    parts += [table_html(t, heading=False) for t in section.tables]
    if section.figures:
        parts.append('<div class="figures">' + "".join(figure_html(f) for f in section.figures) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)


def write_html_report(
    out_dir: Path,
    title: str,
    tables: list[Table],
    figures: list[Figure],
    settings: dict[str, Any] | None = None,
    description: str = "",
    sections: list[Section] | None = None,
    lead: list[str] | None = None,
) -> Path:
    """Write ``out_dir/report.html``: the ``lead`` (a highlighted summary), the ``sections``, tables,
    inlined figures and the settings; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings is None:
        meta = out_dir / "settings.json"
        settings = json.loads(meta.read_text()) if meta.is_file() else {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if lead:
        parts.append('<div class="lead" id="summary">' + "".join(f"<p>{_esc(p)}</p>" for p in lead) + "</div>")
    if description:
        parts.append(f"<p>{_esc(description)}</p>")
    parts += [section_html(s) for s in sections or []]
    parts += [table_html(t) for t in tables]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [figure_html(f) for f in figures]
    parts.append("<h2>Settings</h2>")
    parts.append(f'<pre id="settings">{_esc(json.dumps(settings, indent=2, sort_keys=True, default=str))}</pre>')
    parts.append("</body></html>\n")
    path = out_dir / REPORT_HTML
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
