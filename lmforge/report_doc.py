"""A tiny document model for the report card, rendered twice: Markdown and self-contained HTML.

The report is built once as a list of blocks (headings, paragraphs, tables, images, bullet lists)
so report.md and report.html cannot drift apart. The HTML embeds images as base64 data URIs and
its CSS inline: one file that opens anywhere, offline, and can be attached to an issue or mail.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

EMPTY = "—"  # what a table shows for a missing value
NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?%?(\s|$)")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    collapsible: str | None = None  # HTML: fold the table into <details> with this summary line

    @property
    def numeric_columns(self) -> list[bool]:
        """Columns whose every filled cell starts with a number: right-aligned, so digits line up."""
        def numeric(column: int) -> bool:
            cells = [str(row[column]).strip() for row in self.rows if column < len(row)]
            filled = [c for c in cells if c not in ("", EMPTY)]
            return bool(filled) and all(NUMBER.match(c) for c in filled)

        return [column > 0 and numeric(column) for column in range(len(self.header))]


@dataclass
class Image:
    filename: str
    title: str
    caption: str
    png: bytes


@dataclass
class Doc:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def table(self, header: list[str], rows: list[list[str]], collapsible: str | None = None) -> None:
        self.blocks.append(("table", Table(header, rows, collapsible)))

    def image(self, filename: str, title: str, caption: str, png: bytes) -> None:
        self.blocks.append(("image", Image(filename, title, caption, png)))

    @property
    def images(self) -> list[Image]:
        return [block for kind, block in self.blocks if kind == "image"]


# ---------------------------------------------------------------- cell text


def fmt(value) -> str:
    """Numbers for tables: thousands separators for counts, up to 4 decimals for scores and losses."""
    if value is None:
        return EMPTY
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.1f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _setting(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_setting(v) for v in value) + "]"
    return "''" if value == "" else str(value)


def config_rows(config: dict) -> list[list[str]]:
    """config.yaml as one row per section (`model`, `sft.train`, ...): `key=value, key=value`."""
    rows: list[list[str]] = []

    def walk(section: str, node: dict) -> None:
        scalars = [f"{k}={_setting(v)}" for k, v in node.items() if not isinstance(v, dict)]
        if scalars:
            rows.append([section, ", ".join(scalars)])
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{section}.{k}" if section != "run" else str(k), v)

    walk("run", config)
    return rows


# ---------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    align = ["---:" if numeric else "---" for numeric in table.numeric_columns]
    lines = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return lines


def render_markdown(doc: Doc, image_dir: str = "plots") -> str:
    lines = [f"# {doc.title}", ""]
    for kind, block in doc.blocks:
        if kind == "heading":
            lines += [f"## {block}", ""]
        elif kind == "para":
            lines += [block, ""]
        elif kind == "bullets":
            lines += [f"- {item}" for item in block] + [""]
        elif kind == "table":
            lines += _md_table(block) + [""]
        elif kind == "image":
            lines += [f"**{block.title}.** {block.caption}", "", f"![{block.title}]({image_dir}/{block.filename})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { padding: .3em .8em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f5f5f7; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:hover td { background: #fafafa; }
code { background: #f2f2f2; padding: 0 .25em; border-radius: 3px; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
details summary { cursor: pointer; color: #0b5cad; margin: .4em 0; }
""".strip()


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>: the only Markdown the report's prose uses."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(table: Table) -> str:
    numeric = table.numeric_columns

    def cell(tag: str, text: str, column: int) -> str:
        cls = ' class="num"' if column < len(numeric) and numeric[column] else ""
        return f"<{tag}{cls}>{_inline(str(text))}</{tag}>"

    head = "<tr>" + "".join(cell("th", h, i) for i, h in enumerate(table.header)) + "</tr>"
    body = "\n".join("<tr>" + "".join(cell("td", c, i) for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    out = f"<table>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    if table.collapsible:
        out = f"<details><summary>{html.escape(table.collapsible)}</summary>\n{out}\n</details>"
    return out


def render_html(doc: Doc) -> str:
    parts = [f"<h1>{html.escape(doc.title)}</h1>"]
    for kind, block in doc.blocks:
        if kind == "heading":
            parts.append(f"<h2>{html.escape(block)}</h2>")
        elif kind == "para":
            parts.append(f"<p>{_inline(block)}</p>")
        elif kind == "bullets":
            parts.append("<ul>\n" + "\n".join(f"<li>{_inline(item)}</li>" for item in block) + "\n</ul>")
        elif kind == "table":
            parts.append(_html_table(block))
        elif kind == "image":
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(block.title)}" src="data:image/png;base64,{data}">'
                         f"<figcaption><b>{html.escape(block.title)}.</b> {_inline(block.caption)}</figcaption>"
                         "</figure>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(doc.title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")
