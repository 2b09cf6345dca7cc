"""``autoprune report``: a study in one self-contained HTML file (its figures, its summary, its
spec and the machine), which opens without a server or a network, and the same figures as
PNGs for a paper or a ticket."""

from __future__ import annotations

import html
import json
import platform
import re
from pathlib import Path
from typing import Any

import matplotlib
import optuna
import torch
from matplotlib.figure import Figure
from plotly.offline import get_plotlyjs

from autoprune.errors import AutoPruneError
from autoprune.search.record import Budget
from autoprune.workflow._study_figures import study_figures, summary_note

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}pre{background:#f7f7f7;padding:1em;overflow-x:auto}.figure{height:520px;margin:2em 0}
code{background:#f2f2f2;padding:1px 4px}"""


def write_report(
    study: optuna.Study,
    budget: Budget,
    out: Path,
    *,
    base: Any = None,
    artifacts: Path | None = None,
    png: Path | None = None,
) -> dict[str, Any]:
    """Write the study's report to ``out`` (and its figures as PNGs into ``png``); returns what
    was written."""

    if png is not None:  # first: a folder that cannot be made leaves nothing written
        try:
            png.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AutoPruneError(f"--png {png}: cannot make the folder ({e.strerror})") from None
    figures = study_figures(study, budget, base=base, artifacts=artifacts)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>autoprune: {html.escape(study.study_name)}</title><style>{_CSS}</style>",
        f"<script>{get_plotlyjs()}</script></head><body>",  # plotly.js itself, inline: no network needed
        markdown_html(summary_note(study, budget)),
    ]
    for graph_id, fig in figures.items():
        parts.append(f"<div class='figure' id='{graph_id}'></div>")
        parts.append(
            f"<script>(function(){{var f={fig.to_json()};"
            f"Plotly.newPlot('{graph_id}',f.data,f.layout);}})();</script>"
        )
    spec = study.user_attrs.get("spec")
    parts += [
        "<h2>Spec</h2>",
        f"<pre>{html.escape(json.dumps(spec, indent=2))}</pre>",
        "<h2>Machine</h2>",
        f"<pre>{html.escape(machine(study))}</pre>",
        "</body></html>",
    ]
    out.write_text("\n".join(parts))
    pngs = [str(figure_png(fig, png / f"{graph_id}.png")) for graph_id, fig in figures.items()] if png else []
    return {
        "study": study.study_name,
        "out": str(out),
        "bytes": out.stat().st_size,
        "figures": list(figures),
        "png": pngs,
    }


def machine(study: optuna.Study) -> str:
    """Where the search ran (as its base model's measurement recorded it) and where this
    report was made."""
    base = study.user_attrs.get("base")
    base = base if isinstance(base, dict) else {}
    ran = (
        f"search: latency timed with {base.get('threads')} threads on {base.get('backend')}"
        if base
        else "search: unknown"
    )
    here = (
        f"report: {platform.platform()}, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, optuna {optuna.__version__}"
    )
    return f"{ran}\n{here}"


def markdown_html(text: str) -> str:
    """The summary note's markdown (headings, tables, paragraphs, inline code) as HTML."""
    out: list[str] = []
    table: list[str] = []  # the lines of a markdown table

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"(?<!\\)\*\*(.+?)(?<!\\)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"(?<!\\)`(.+?)(?<!\\)`", r"<code>\1</code>", s)
        return re.sub(r"\\(.)", r"\1", s)  # markdown's backslash escapes: the character itself

    def flush() -> None:
        if table:
            cells = [
                re.split(r"(?<!\\)\|", row.strip().removeprefix("|").removesuffix("|"))
                for row in table
                if "---" not in row
            ]
            head, *rows = [[inline(c.strip()) for c in row] for row in cells]
            out.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
                + "</table>"
            )
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


# ----------------------------------------------------------------------------- PNG


_SYMBOLS = {"circle": "o", "diamond": "D", "star": "*", "square": "s", "triangle-up": "^", "x": "x"}


def figure_png(fig: Any, path: Path) -> Path:
    """A plotly figure of scatter and bar traces drawn again with matplotlib (no browser, no
    extra package): the same data, axes (log ones included), lines and titles."""
    with matplotlib.rc_context({"text.parse_math": False}):  # stored names are text, never mathtext
        layout = fig.layout
        axes_ids = sorted({(t.xaxis or "x") for t in fig.data}, key=lambda a: int(a[1:] or 1))
        figure = Figure(figsize=(7 * len(axes_ids), 4.6))
        axes = figure.subplots(1, len(axes_ids), squeeze=False)
        by_id = dict(zip(axes_ids, axes[0]))
        stacks: dict[str, list[float]] = {}
        for trace in fig.data:
            ax = by_id[trace.xaxis or "x"]
            if trace.type == "bar":
                x, y = list(trace.x), list(trace.y)
                bottom = [stacks.get(k, 0.0) for k in x]
                ax.bar(range(len(x)), y, bottom=bottom, label=trace.name)
                for k, v, b in zip(x, y, bottom):
                    stacks[k] = b + v
                ax.set_xticks(range(len(x)), x, rotation=60, ha="right", fontsize=6)
                continue
            x = [v for v in (trace.x or [])]
            y = [float("nan") if v is None else v for v in (trace.y or [])]
            mode = trace.mode or "markers"
            symbol = (
                trace.marker.symbol
                if trace.marker is not None and isinstance(trace.marker.symbol, str)
                else "circle"
            )
            color = (
                trace.marker.color
                if trace.marker is not None and isinstance(trace.marker.color, str)
                else None
            ) or (trace.line.color if trace.line is not None else None)
            style = {"label": trace.name, "color": color}
            marker = _SYMBOLS.get(symbol.removesuffix("-open"), "o") if "markers" in mode else ""
            line = "--" if trace.line is not None and trace.line.dash in ("dash", "dot") else "-"
            if symbol.endswith("-open"):
                style["markerfacecolor"] = "none"
            ax.plot(x, y, marker + (line if "lines" in mode else ""), **style)
        for shape in layout.shapes or ():
            if shape.y0 == shape.y1 and shape.y0 is not None:
                by_id["x"].axhline(shape.y0, linestyle="--", color="grey")
        for axis_id, ax in by_id.items():
            xaxis = layout[f"xaxis{axis_id[1:]}"] if axis_id != "x" else layout.xaxis
            yaxis = layout[f"yaxis{axis_id[1:]}"] if axis_id != "x" else layout.yaxis
            if xaxis.type == "log":
                ax.set_xscale("log")
            if yaxis.range is not None:
                ax.set_ylim(*yaxis.range)
            ax.set_xlabel(xaxis.title.text or "", fontsize=8)
            ax.set_ylabel(yaxis.title.text or "", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        figure.suptitle(layout.title.text or "", fontsize=10)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    return path
