"""``autoprune report``: a study in one self-contained HTML file (its figures, its summary, its
spec and the machine), which opens without a server or a network, and the same figures as
PNGs for a paper or a ticket (plotly's own export: they need a local Chrome or Chromium)."""

from __future__ import annotations

import html
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import optuna
import plotly.io
import torch
from choreographer.browsers.chromium import Chromium
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
    pngs = write_pngs(figures, png) if png is not None else []  # before the HTML: a failure writes nothing
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


def write_pngs(figures: dict[str, Any], folder: Path) -> list[str]:
    """The figures as PNGs drawn by plotly's own static export (kaleido, which drives a local
    Chrome or Chromium headless, one browser for all): the pictures the dashboard shows."""
    browser = Chromium.find_browser(skip_local=False)
    if not browser or not os.access(browser, os.X_OK):
        raise AutoPruneError(
            "--png draws the figures with plotly's export, which needs Chrome or Chromium: install one "
            "(apt-get install chromium) or name it in BROWSER_PATH"
        )
    paths = {graph_id: folder / f"{graph_id}.png" for graph_id in figures}
    for path in paths.values():
        path.unlink(missing_ok=True)  # a picture of an earlier run is not this one's
    missing = dict(figures)
    for _ in range(2):  # kaleido returns a figure's failure (a render timeout on a busy machine)
        #                  instead of raising it: what is not on disk is drawn once more
        try:
            plotly.io.write_images(
                list(missing.values()), [paths[g] for g in missing], width=1100, height=520
            )
        except RuntimeError as e:  # the browser would not start or render
            raise AutoPruneError(
                f"--png: {browser} could not draw the figures ({' '.join(str(e).split())[:200]})"
            ) from None
        missing = {g: f for g, f in missing.items() if not paths[g].is_file()}
        if not missing:
            return [str(p) for p in paths.values()]
    raise AutoPruneError(
        f"--png: {browser} did not draw {', '.join(missing)}, twice; try again on a quieter machine"
    )
