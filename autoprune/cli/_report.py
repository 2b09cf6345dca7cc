"""``autoprune report``: a stored study as one self-contained HTML file (and PNGs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoprune.cli._common import output_path
from autoprune.cli._surrogate import _common, _view
from autoprune.errors import AutoPruneError
from autoprune.workflow import (
    artifact_dir,
    file_stem,
    write_report,
)


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report",
        help="a study as one self-contained HTML file (figures, tables, spec, machine)",
        description="Write the study's figures (trade-off, where the bytes went, filter norms, sensitivity, "
        "progress), its summary table, its spec and the machine into one HTML file that opens without a "
        "server or a network; --png writes the same figures as PNG files.",
    )
    _common(r, seed=False)
    r.add_argument("--out", type=Path, metavar="FILE", help="the HTML file (default: STUDY-report.html)")
    r.add_argument("--png", type=Path, metavar="DIR", help="also write every figure as DIR/NAME.png")
    r.set_defaults(run=run_report, format=format_report)


def run_report(args: argparse.Namespace) -> dict[str, Any]:

    output_path(args.out, "--out")
    if args.png is not None and args.png.exists() and not args.png.is_dir():
        raise AutoPruneError(f"--png {args.png} is a file; give a folder")
    view = _view(args)
    out = args.out or output_path(Path(f"{file_stem(view.study.study_name)}-report.html"), "--out")
    artifacts = Path(args.artifacts) if args.artifacts else artifact_dir(view.info, view.spec.study.artifacts)
    return write_report(view.study, view.budget, out, base=view.ctx.base, artifacts=artifacts, png=args.png)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"wrote {r['out']} ({r['bytes'] / 1e6:.1f} MB, self-contained: {', '.join(r['figures'])})"]
    if r["png"]:
        lines.append(f"and {len(r['png'])} PNG files: {', '.join(r['png'])}")
    return "\n".join(lines)
