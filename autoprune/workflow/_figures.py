"""The compare result as people see it: a table, a PNG, and a figure plus a note saved into
the study for optuna-dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import optuna
import plotly.graph_objects as go
from matplotlib.figure import Figure
from optuna_dashboard import save_note, save_plotly_graph_object

from autoprune._compat import set_study_system_attr
from autoprune.search.record import Budget
from autoprune.workflow._study_figures import COMPARE_ATTR, summary_note


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def compare_table(result: dict[str, Any]) -> list[list[Any]]:
    """One row per history size, then the search at its full budget."""
    rows = []
    for r in result["rows"]:
        s, b = r["surrogate"], r["search_same_trials"]
        rows.append(
            [
                r["history"],
                f"{r['cv_r2_acc_drop']:.2f}",
                f"{r.get('cv_kendall_tau_acc_drop', float('nan')):.2f}",
                f"{100 * r['size_error']:.1f}%",
                _ratio(s["best_ratio"]),
                f"{s['hypervolume']:.3f}",
                s["trials"],
                f"{s['wall_s']:.0f}",
                _ratio(b["best_ratio"]),
                f"{b['hypervolume']:.3f}",
                b["trials"],
                f"{b['wall_s']:.0f}",
            ]
        )
    full = result["search_full"]
    rows.append(
        [
            "search, full budget",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            _ratio(full["best_ratio"]),
            f"{full['hypervolume']:.3f}",
            full["trials"],
            f"{full['wall_s']:.0f}",
        ]
    )
    return rows


COMPARE_HEADER = [
    "history n",
    "CV R2 drop",
    "CV tau",
    "size err",
    "surrogate best",
    "HV",
    "trials",
    "wall s",
    "search best (n+k)",
    "HV",
    "trials",
    "wall s",
]


def compare_note(result: dict[str, Any]) -> str:
    budget = result["max_acc_drop"]
    lines = [
        f"## Surrogate versus search (validation drop <= {budget} points)",
        "",
        "For each history size n the MLP ensemble is fitted on the search's first n trials, proposes k "
        f'settings, and they are run for real in `{result["side_study"]}`. "search (n+k)" is the search '
        "after the same number of trials. HV: area dominated in (drop, log10 ratio) within the budget.",
        "",
        "| " + " | ".join(COMPARE_HEADER) + " |",
        "|" + "---|" * len(COMPARE_HEADER),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in compare_table(result)]
    return "\n".join(lines)


NONE_WITHIN = 1.0  # where a point with no trial within the budget is drawn: no compression


def _none_label(label: str) -> str:
    """What a series says where it has nothing within the budget: its first word."""
    return f"{label.split(':')[0].split()[0]}: none within budget"


def compare_series(result: dict[str, Any]) -> list[tuple[str, list[int], list[float | None]]]:
    """(label, history sizes, best ratio or None) for the surrogate and for the search."""
    n = [r["history"] for r in result["rows"]]
    return [
        ("surrogate: n history + k proposals", n, [r["surrogate"]["best_ratio"] for r in result["rows"]]),
        ("search after n + k trials", n, [r["search_same_trials"]["best_ratio"] for r in result["rows"]]),
    ]


def compare_plotly(result: dict[str, Any]) -> Any:
    """Both series on integer history sizes; a point with nothing within the budget is an open
    marker at 1x, labelled so (the two series' markers and labels apart, should both have none)."""

    fig = go.Figure()
    for (label, n, best), symbol, size, where in zip(
        compare_series(result), ("circle", "square"), (14, 8), ("top center", "middle right")
    ):
        fig.add_trace(
            go.Scatter(
                x=n,
                y=[b if b is not None else NONE_WITHIN for b in best],
                mode="lines+markers+text",
                name=label,
                marker={
                    "symbol": [symbol if b is not None else f"{symbol}-open" for b in best],
                    "size": size,
                },
                text=["" if b is not None else _none_label(label) for b in best],
                textposition=where,
            )
        )
    full = result["search_full"]["best_ratio"]
    if full is not None:
        fig.add_hline(
            y=full,
            line_dash="dash",
            annotation_text=f"search, full budget ({result['search_full']['trials']} trials)",
        )
    fig.update_layout(
        title=f"Best compression ratio within {result['max_acc_drop']} points (validation)",
        xaxis_title="history size n (search trials the surrogate learned from)",
        yaxis_title="compression ratio",
        xaxis={"tickmode": "array", "tickvals": [r["history"] for r in result["rows"]]},
    )
    return fig


def compare_png(result: dict[str, Any], path: Path) -> Path:
    with matplotlib.rc_context({"text.parse_math": False}):  # stored names are text, never mathtext
        fig = Figure(figsize=(6.5, 4))
        ax = fig.subplots()
        for i, ((label, n, best), marker) in enumerate(zip(compare_series(result), ("o", "s"))):
            y = [b if b is not None else NONE_WITHIN for b in best]
            size = 12 if i == 0 else 7  # one inside the other where both series have none
            line = ax.plot(n, y, f"{marker}-", label=label, markersize=size)[0]
            for x, b in zip(n, best):
                if b is None:  # drawn hollow at 1x and said in words, each series on its own line
                    ax.plot(
                        [x],
                        [NONE_WITHIN],
                        marker,
                        markerfacecolor="white",
                        color=line.get_color(),
                        markersize=size,
                    )
                    ax.annotate(
                        _none_label(label),
                        (x, NONE_WITHIN),
                        textcoords="offset points",
                        xytext=(0, 10 + 11 * i),
                        ha="center",
                        fontsize=7,
                        color=line.get_color(),
                    )
        full = result["search_full"]
        if full["best_ratio"] is not None:
            ax.axhline(
                full["best_ratio"],
                linestyle="--",
                color="grey",
                label=f"search, full budget ({full['trials']} trials)",
            )
        ax.set_xticks([r["history"] for r in result["rows"]])
        ax.set_xlabel("history size n (search trials the surrogate learned from)")
        ax.set_ylabel(f"best compression ratio, drop <= {result['max_acc_drop']} pt")
        ax.set_title(result["study"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return path


def publish(study: optuna.Study, result: dict[str, Any], budget: Budget) -> None:
    """The figure into the study, where optuna-dashboard shows it; the comparison's points
    beside the search's progress, and its table in the study's note."""

    save_plotly_graph_object(study, compare_plotly(result), graph_object_id="surrogate-compare")
    rows = [
        {"trials": r["surrogate"]["trials"], "best_ratio": r["surrogate"]["best_ratio"]}
        for r in result["rows"]
    ]
    set_study_system_attr(study, COMPARE_ATTR, {"rows": rows, "note": compare_note(result)})
    save_note(study, summary_note(study, budget))
