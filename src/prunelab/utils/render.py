"""Reports as documents: one model, rendered to Markdown (figures beside it) and to one HTML file.

A document is a title, intro paragraphs and sections; a section is a title and an ordered list of
blocks, each one of:

- ``Paragraph(text)``;
- ``Table(header, rows, caption="")`` (first column left-aligned, the others right-aligned);
- ``Figure(name, png, caption)`` (PNG bytes: a file beside the Markdown, a data URI in the HTML).

Every report prunelab writes (the generic bench report and each paper's report) goes through
:func:`write_document`, so they look alike and are written atomically.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from prunelab.utils.io import atomic_write_bytes, atomic_write_text


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str


Block = Union[Paragraph, Table, Figure]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[tuple[int, int, Figure]]:
        """``(section index, figure index within the section, figure)`` for every figure."""
        out = []
        for si, sec in enumerate(self.sections):
            figs = [b for b in sec.blocks if isinstance(b, Figure)]
            out += [(si, fi, fig) for fi, fig in enumerate(figs)]
        return out


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#fafafa}
figure{margin:1.2em 0}figcaption{font-size:.85em;color:#555}img{max-width:100%;height:auto}p.small{font-size:.85em;color:#555}
"""


def slug(text: str) -> str:
    """A file-name-safe lower-case form of ``text`` (at most 60 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(doc: Document, figure_paths: dict[tuple[int, int], str]) -> str:
    """The Markdown text; ``figure_paths`` maps (section index, figure index) to relative paths."""
    out = [f"# {doc.title}", ""] + [line + "\n" for line in doc.intro]
    for si, sec in enumerate(doc.sections):
        out += [f"## {sec.title}", ""]
        fi = 0
        for block in sec.blocks:
            if isinstance(block, Paragraph):
                out += [block.text, ""]
            elif isinstance(block, Table):
                out += ([block.caption, ""] if block.caption else []) + markdown_table(block.header, block.rows) + [""]
            else:
                out += [f"![{block.name}]({figure_paths[(si, fi)]})", "", f"*{block.caption}*", ""]
                fi += 1
    return "\n".join(out)


def figure_html(name: str, png: bytes, caption: str) -> str:
    """An HTML ``<figure>`` with the PNG embedded (data URI), so the page needs no other file."""
    e = html.escape
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{e(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def render_html(doc: Document) -> str:
    """One self-contained HTML page: inline CSS, figures as data URIs, no external reference."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(doc.title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(doc.title)}</h1>"]
    parts += [f"<p>{e(line)}</p>" for line in doc.intro]
    for sec in doc.sections:
        parts.append(f"<h2>{e(sec.title)}</h2>")
        for block in sec.blocks:
            if isinstance(block, Paragraph):
                parts.append(f"<p>{e(block.text)}</p>")
            elif isinstance(block, Table):
                if block.caption:
                    parts.append(f"<p>{e(block.caption)}</p>")
                parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in block.header)
                             + "</tr></thead><tbody>")
                parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block.rows]
                parts.append("</tbody></table>")
            else:
                parts.append(figure_html(block.name, block.png, block.caption))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_document(doc: Document, dest: str | Path, name: str = "report",
                   figures_dir: str = "figures", figure_names: Sequence[str] | None = None) -> dict:
    """Write ``dest/<name>.md`` (figures as PNGs in ``dest/<figures_dir>``) and ``dest/<name>.html``.

    Args:
        doc: the document.
        dest: the output folder (created when missing).
        name: the base name of the two files.
        figures_dir: the figures' folder, relative to ``dest``.
        figure_names: file names of the figures, one per figure of ``doc`` in order (default:
            ``<section>-<title>-<figure>-<name>.png``); fixed names keep links to them valid when a
            report is written again.

    Returns:
        ``{"markdown": path, "html": path, "figures": [paths]}``.

    Raises:
        ValueError: ``figure_names`` does not name every figure once.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    figures = doc.figures()
    if figure_names is None:
        figure_names = [f"{si:02d}-{slug(doc.sections[si].title)}-{fi:02d}-{slug(fig.name)}.png"
                        for si, fi, fig in figures]
    if len(figure_names) != len(figures):
        raise ValueError(f"{len(figures)} figures but {len(figure_names)} file names")
    paths, written = {}, []
    for (si, fi, fig), file_name in zip(figures, figure_names):
        written.append(atomic_write_bytes(dest / figures_dir / file_name, fig.png, mkdir=True))
        paths[(si, fi)] = f"{figures_dir}/{file_name}"
    md_path, html_path = dest / f"{name}.md", dest / f"{name}.html"
    atomic_write_text(html_path, render_html(doc))
    atomic_write_text(md_path, render_markdown(doc, paths))
    return {"markdown": md_path, "html": html_path, "figures": written}
