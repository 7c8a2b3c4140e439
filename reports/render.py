"""Rendering: the report as ordered sections (:class:`Doc`), written out as README.md and as
one self-contained report.html, and swapped into place whole."""

from __future__ import annotations

import base64
import html
import re
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from suite.errors import ConfigError, unwritable_folder


class Doc:
    """The report as ordered sections, written out twice: as markdown and as HTML."""

    def __init__(self, figures_dir: Path) -> None:
        self.dir = figures_dir
        self.sections: list[tuple] = []  # ("md", text) | ("table", frame) | ("fig", path, text)
        self.figures: list[Path] = []

    def md(self, text: str) -> None:
        if text:  # an empty note (nothing to say) adds no section
            self.sections.append(("md", text))

    def table(self, frame: pd.DataFrame) -> None:
        self.sections.append(("table", frame))

    def figure(self, fig: Figure | None, name: str, caption: str) -> None:
        if fig is None:  # nothing to draw (no such metric logged): no figure, no link
            return
        path = self.dir / f"{name}.png"
        try:
            fig.tight_layout()
            fig.savefig(path, dpi=150, bbox_inches="tight")  # a legend beside the axes
        finally:
            plt.close(fig)
        self.figures.append(path)
        self.sections.append(("fig", path, caption))


# What a report directory holds: all that swap() may replace. Anything else in an --out
# directory is someone's own (another report, a paper draft), never to be deleted with it.
REPORT_FILES = frozenset({"README.md", "report.html", "figures"})


def check_out_dir(out_dir: Path) -> None:
    """Raise ConfigError unless ``out_dir`` is free for a report: in a folder this user can
    write, and absent, empty, or a report directory (nothing in it but :data:`REPORT_FILES`),
    which the new report replaces whole.
    Called before anything runs, and again by :func:`swap`."""
    out_dir = Path(out_dir)
    why = unwritable_folder(out_dir.parent)  # the report is built beside it, then renamed in
    if why is not None:
        raise ConfigError(f"--out {out_dir}: {why}")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a directory; name a report directory")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in REPORT_FILES)
    if foreign:
        more = len(foreign) - 5
        shown = ", ".join(foreign[:5]) + (f" and {more} more" if more > 0 else "")
        raise ConfigError(
            f"--out {out_dir} holds files that are not a report's ({shown}); a report replaces "
            "its directory whole, so name a new directory or one that holds only a report "
            f"({', '.join(sorted(REPORT_FILES))})"
        )


def swap(work: Path, out_dir: Path) -> None:
    """Put the finished ``work`` where ``out_dir`` was; the old one goes only once it is in."""
    check_out_dir(out_dir)
    if not out_dir.exists():
        work.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
    old.rmdir()  # only the unique name is wanted: rename needs it free
    out_dir.rename(old)
    try:
        work.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def markdown(sections: list[tuple]) -> str:
    parts = []
    for kind, item, *rest in sections:
        if kind == "md":
            parts.append(item)
        elif kind == "table":
            cells = [list(item.columns), *item.astype(str).values.tolist()]
            rows = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
            parts.append("\n".join([rows[0], "|" + "---|" * len(item.columns), *rows[1:]]) + "\n")
        else:
            parts.append(f"![{item.stem}](figures/{item.name})\n\n_{rest[0]}_\n")
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.45}table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
    "td,th{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "img{max-width:100%}figcaption{color:#555;font-size:.9rem}code{background:#f4f4f4}"
    ".holds{color:#1a7f37;font-weight:600}.fails{color:#cf222e;font-weight:600}"
)


def to_html(paper: str, sections: list[tuple]) -> str:
    """One self-contained page: tables inline, figures as base64 data URIs."""
    body = []
    for kind, item, *rest in sections:
        if kind == "md":
            body.append(_md_to_html(item))
        elif kind == "table":
            table = _links(item.to_html(index=False, border=0, escape=True))
            body.append(
                re.sub(r"<td>(holds|fails)([^<]*)</td>", r'<td class="\1">\1\2</td>', table)
            )
        else:
            data = base64.b64encode(item.read_bytes()).decode()
            cap = html.escape(rest[0])
            body.append(
                f'<figure><img alt="{html.escape(item.stem)}" src="data:image/png;'
                f'base64,{data}"><figcaption>{cap}</figcaption></figure>'
            )
    title = f"Reproduction report: {html.escape(paper)}"
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _links(text: str) -> str:
    """Markdown links ``[text](http...)`` (escaped HTML already) as anchors."""
    return re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', text)


def _md_to_html(text: str) -> str:
    """The little markdown this module writes: headings, paragraphs, `code`, **bold**, _em_."""
    out = []
    for block in text.strip().split("\n\n"):
        block = html.escape(block.strip(), quote=False)
        block = _links(re.sub(r"`([^`]+)`", r"<code>\1</code>", block))
        block = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", block)
        block = re.sub(r"(?<![\w*])[*_]([^*_]+)[*_](?![\w*])", r"<em>\1</em>", block)
        level = len(block) - len(block.lstrip("#"))
        items = block.split("\n")
        if all(item.startswith("- ") for item in items):
            out.append("<ul>" + "".join(f"<li>{item[2:]}</li>" for item in items) + "</ul>")
        elif 0 < level <= 6 and block[level : level + 1] == " ":
            out.append(f"<h{level}>{block[level + 1 :]}</h{level}>")
        elif block:
            out.append(f"<p>{block}</p>")
    return "\n".join(out)
