"""What a person sees of a study: autoprune's figures and a summary note, saved into the study
(where optuna-dashboard shows them, updated as the study grows) and gathered into a report.

Each figure is a plotly figure built from the study alone (and the packed files and base model
where it needs them): the trade-off between compression and accuracy (and speed, in a latency
study), where the bytes of the best trial and of the baselines went, the filter norms with the
filters the best trial removed, the sensitivity curves, and the search's progress.
"""

from __future__ import annotations

import html
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import save_note, save_plotly_graph_object
from torch import nn

from autoprune._compat import study_system_attr
from autoprune.compress import breakdown, read_header, weight_layers
from autoprune.names import bad_study_name
from autoprune.ops.pareto import non_dominated
from autoprune.search.record import Budget, Source, TrialRecord, speed_objectives
from autoprune.search.report import best_trial, study_goal, study_metric
from autoprune.search.storage import check_artifact_id
from autoprune.sensitivity import LayerSensitivity, Sensitivity, row_norms
from autoprune.workflow._export import NOTHING_WITHIN
from autoprune.workflow._sensitivity import norms_plotly, sensitivity_plotly, stored_sensitivity

SEARCH, BASELINE = "search", Source.BASELINE.value
STYLE = {
    SEARCH: ("circle", "#1f77b4"),
    BASELINE: ("diamond", "#d62728"),
    Source.FINAL.value: ("star", "#2ca02c"),
    Source.SURROGATE.value: ("triangle-up", "#9467bd"),
}


@dataclass
class Done:
    """A completed trial with its record."""

    trial: FrozenTrial
    record: TrialRecord

    @property
    def kind(self) -> str:
        source = self.record.source
        return source if source in (BASELINE, Source.FINAL, Source.SURROGATE) else SEARCH

    @property
    def label(self) -> str:
        name = self.trial.user_attrs.get("recipe_name")
        return f"#{self.trial.number} {name}" if name else f"#{self.trial.number}"


def completed(study: optuna.Study) -> list[Done]:
    return [
        Done(t, r)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (r := TrialRecord.from_attrs(t.user_attrs)) is not None
    ]


def settings_text(t: FrozenTrial, width: int = 4) -> str:
    """A trial's settings for a hover label, a few to a line."""
    items = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()]
    return "<br>".join(", ".join(items[i : i + width]) for i in range(0, len(items), width))


# ----------------------------------------------------------------------------- trade-off


def tradeoff_figure(study: optuna.Study, budget: Budget, *, latency: bool = False) -> Any:
    """Compression ratio (or measured speed-up) on a log axis against the accuracy drop,
    validation (filled) and test (open), every completed trial, baselines and finalized trials
    marked apart, the budget drawn and the search's front joined."""

    done = completed(study)
    x_of = (lambda d: d.record.speedup) if latency else (lambda d: d.record.compression_ratio)
    fig = go.Figure()
    for kind, (symbol, color) in STYLE.items():
        mine = [d for d in done if d.kind == kind and x_of(d) and math.isfinite(x_of(d))]
        if not mine:
            continue
        hover = [
            f"{d.label}<br>ratio {d.record.compression_ratio:.1f}x, speed-up {d.record.speedup:.2f}x<br>"
            f"drop {d.record.acc_drop:+.2f} val, {_num(d.record.test_acc_drop)} "
            f"test<br>{settings_text(d.trial)}"
            for d in mine
        ]
        fig.add_trace(
            go.Scatter(
                x=[x_of(d) for d in mine],
                y=[budget.drop(d.record) for d in mine],
                mode="markers",
                name=f"{kind}: validation",
                marker={"symbol": symbol, "color": color, "size": 9},
                hovertext=hover,
                hoverinfo="text",
            )
        )
        tested = [d for d in mine if d.record.test_acc_drop is not None]
        fig.add_trace(
            go.Scatter(
                x=[x_of(d) for d in tested],
                y=[d.record.test_acc_drop for d in tested],
                mode="markers",
                name=f"{kind}: test (reported only)",
                marker={"symbol": f"{symbol}-open", "color": color, "size": 9},
                hovertext=[hover[mine.index(d)] for d in tested],
                hoverinfo="text",
            )
        )
    searched = [d for d in done if d.kind == SEARCH and x_of(d) and math.isfinite(x_of(d))]
    if searched:
        points = [(budget.drop(d.record), x_of(d)) for d in searched]
        front = sorted(
            (p for p, keep in zip(points, non_dominated(points, (False, True))) if keep), key=lambda p: p[1]
        )
        fig.add_trace(
            go.Scatter(
                x=[p[1] for p in front],
                y=[p[0] for p in front],
                mode="lines",
                name="search: front (validation)",
                line={"color": STYLE[SEARCH][1], "dash": "dot"},
                hoverinfo="skip",
            )
        )
    rule = " (its upper bound)" if budget.z else ""
    fig.add_hline(
        y=budget.max_drop,
        line_dash="dash",
        line_color="grey",
        annotation_text=f"budget: {budget.max_drop} points{rule}",
    )
    drops = [y for trace in fig.data for y in trace.y if y is not None]
    top = max(5 * budget.max_drop, 5.0)
    above = sum(1 for d in done if budget.drop(d.record) > top)
    if drops and max(drops) > top:  # collapsed trials (drops of 80 points) would flatten the budget's region
        fig.update_yaxes(range=[min(min(drops), 0.0) - 0.5, top])
        fig.add_annotation(
            text=f"{above} trials lie above {top:g} points (zoom out to see them)",
            xref="paper",
            yref="paper",
            x=1,
            y=1,
            showarrow=False,
            xanchor="right",
        )
    what = "measured speed-up at batch 1" if latency else "compression ratio (base fp32 bytes / packed bytes)"
    metric = study_metric(study)
    fig.update_layout(  # titles on two lines and margins that hold them: none clipped or overlapping
        title=("Speed-up" if latency else "Compression") + f" against {metric} drop, every trial",
        xaxis={"type": "log", "title": {"text": what + ", log scale", "standoff": 8}, "automargin": True},
        yaxis={
            "title": {
                "text": f"{metric} drop, points<br>(validation as judged{rule}; test open)",
                "standoff": 8,
            },
            "automargin": True,
        },
        margin={"l": 90, "b": 70},
    )
    return fig


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:+.2f}"


# ----------------------------------------------------------------------------- bytes


def packed_path(t: FrozenTrial, artifacts: Path | None) -> Path | None:
    """A trial's packed file in the artifact folder (the id a study holds is checked to be an
    id, never a path), if it is there."""
    if artifacts is None:
        return None
    artifact_id = check_artifact_id(t.user_attrs.get("artifact_id"))
    path = artifacts / artifact_id if artifact_id else None
    return path if path is not None and path.is_file() else None


def bytes_figure(study: optuna.Study, budget: Budget, artifacts: Path | None) -> Any | None:
    """Stacked bars per layer (cluster indices, positions, codebook, float32) of the best trial
    within the budget and of each baseline, read from their packed files (the Deep
    Compression paper's tables); None when none of those files is at hand."""

    best = best_trial(study, budget)
    chosen = [
        d
        for d in completed(study)
        if d.kind == BASELINE or (best is not None and d.trial.number == best.number)
    ]
    parts: dict[str, list[tuple[str, float]]] = {
        "cluster indices": [],
        "positions": [],
        "codebook": [],
        "float32": [],
    }
    labels: list[str] = []
    for d in chosen:
        path = packed_path(d.trial, artifacts)
        if path is None:
            continue
        header, _ = read_header(path)
        tag = ("best " if best is not None and d.trial.number == best.number else "") + d.label
        for layer in breakdown(header):
            x = f"{tag}: {layer.layer}"
            labels.append(x)
            values = layer.nonzero * layer.bits_per_index / 8
            float_values = values if layer.shared_values == 0 else 0.0
            parts["cluster indices"].append((x, values - float_values))
            parts["positions"].append((x, layer.nonzero * layer.bits_per_position / 8))
            parts["codebook"].append((x, layer.codebook_bytes))
            parts["float32"].append((x, float_values + _raw_bytes(header, layer.layer)))
    if not labels:
        return None
    fig = go.Figure([go.Bar(x=[x for x, _ in v], y=[b for _, b in v], name=k) for k, v in parts.items()])
    fig.update_layout(
        barmode="stack",
        title="Where the bytes went, per layer (best within the budget, and the baselines)",
        yaxis={
            "title": "bytes in the packed file, log scale",
            "type": "log",
        },  # a 200 KB layer hides no other
        xaxis_title="trial: layer",
        xaxis_tickangle=-45,
    )
    return fig


def _raw_bytes(header: dict[str, Any], layer: str) -> float:
    """Bytes of a layer's tensors stored as plain numbers (bias, batch norm)."""
    return float(
        sum(
            e["data"][1]
            for e in header["tensors"]
            if e["encoding"] == "raw" and e["name"].rsplit(".", 1)[0] == layer
        )
    )


# ----------------------------------------------------------------------------- norms


def norms_figure(
    study: optuna.Study, budget: Budget, base: nn.Module | None, artifacts: Path | None
) -> Any | None:
    """Each conv layer's sorted filter L1 norms (the seed's Figure 1), the filters the best
    trial removed marked: from the stored sensitivity analysis, else from the base model."""
    sensitivity = stored_sensitivity(study)
    if sensitivity is None and base is None:
        return None
    if sensitivity is None:
        assert base is not None

        layers = tuple(
            LayerSensitivity(
                n,
                "conv" if isinstance(m, nn.Conv2d) else "fc",
                m.weight.numel(),
                0.0,
                tuple(float(v) for v in row_norms(m.weight)),
                False,
                (),
                (),
                (),
            )
            for n, m in weight_layers(base).items()
        )
        sensitivity = Sensitivity(0.0, layers)
    removed = {}
    best = best_trial(study, budget)
    path = packed_path(best, artifacts) if best is not None else None
    if path is not None:
        shapes = read_header(path)[0].get("shapes", {})
        for layer in sensitivity.layers:
            kept = shapes.get(layer.layer, {}).get("out_channels")
            if layer.kind == "conv" and isinstance(kept, int):
                removed[layer.layer] = max(len(layer.norms) - kept, 0)
    fig = norms_plotly(sensitivity, removed)
    if best is not None:
        fig.update_layout(
            title=f"Filter L1 norms per conv layer, sorted; x: filters trial #{best.number} "
            "(best within the budget) removed"
        )
    return fig


# ----------------------------------------------------------------------------- progress


def progress_figure(study: optuna.Study, budget: Budget, compare: dict[str, Any] | None = None) -> Any:
    """The best ratio (or speed-up) within the budget against finished search trials; the
    surrogate's comparison beside it when one was run."""

    value = study_goal(study)
    done = sorted((d for d in completed(study) if d.kind == SEARCH), key=lambda d: d.trial.number)
    best, curve = None, []
    for d in done:
        if budget.within(d.record):
            best = value(d.record) if best is None else max(best, value(d.record))
        curve.append(best)
    # until a trial is within the budget the best is no compression at all: drawn at 1x, hollow
    fig = go.Figure(
        go.Scatter(
            x=list(range(1, len(curve) + 1)),
            y=[c if c is not None else 1.0 for c in curve],
            mode="lines+markers",
            name="search: best within the budget so far",
            marker={"symbol": ["circle" if c is not None else "circle-open" for c in curve]},
            hovertext=[f"{c:.2f}" if c is not None else "none within the budget yet" for c in curve],
            hoverinfo="text",
        )
    )
    if compare:  # stored data: only numbers are drawn
        rows = [
            r for r in compare.get("rows", []) if isinstance(r, dict) and isinstance(r.get("trials"), int)
        ]
        fig.add_trace(
            go.Scatter(
                x=[r["trials"] for r in rows],
                y=[r["best_ratio"] if isinstance(r.get("best_ratio"), (int, float)) else None for r in rows],
                mode="markers+lines",
                name="surrogate: n history + k proposals",
                marker={"symbol": "triangle-up", "size": 11},
            )
        )
    fig.update_layout(
        title=f"Search progress: best within {budget.max_drop} points (validation, as judged)",
        xaxis_title="finished search trials",
        yaxis_title="best compression ratio (speed-up in a latency study)",
        xaxis={"dtick": max(1, len(curve) // 10)},
    )
    return fig


# ----------------------------------------------------------------------------- note


def summary_note(study: optuna.Study, budget: Budget) -> str:
    """The study in one markdown note: base, baselines, best within the budget (validation and
    test), the front, and the command that exports the best."""
    base = study.user_attrs.get("base")
    base = base if isinstance(base, dict) else {}
    best = best_trial(study, budget)
    lines = [f"## autoprune: {md_text(study.study_name)}", ""]
    metric = md_text(study_metric(study))
    if base:
        lines += [
            f"Base: {_fmt(base.get('accuracy'), '.2f')} validation {metric}, "
            f"{_fmt(base.get('test_accuracy'), '.2f')} "
            f"test, {_fmt(base.get('dense_bytes'), '.1f', scale=1 / 1024)} KB fp32, "
            f"{_fmt(base.get('latency_ms'), '.3f')} ms.",
            "",
        ]
    rule = f" (judged on its {budget.z:.2f}-sigma upper bound)" if budget.z else ""
    lines += [
        f"Budget: {budget.max_drop} points of validation {metric}{rule}; test is "
        "reported, never selected on.",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(study, budget, text=md_text)]
    lines.append("")
    if best is not None:
        name = study.study_name if not bad_study_name(study.study_name) else "NAME"
        lines.append(f"Export the best: `autoprune export --study {name} --trial best`")
    else:
        lines.append(f"No trial is within {budget.max_drop} points yet: {NOTHING_WITHIN}.")
    compare = study_system_attr(study, COMPARE_ATTR)
    if isinstance(compare, dict) and isinstance(
        compare.get("note"), str
    ):  # our markdown, but stored: no HTML
        lines += ["", re.sub(r"([<>&])", r"\\\1", compare["note"][:20_000])]
    return "\n".join(lines)


_MARKDOWN = re.compile(r"([\\`*_\[\]()#|!<>&~])")


SUMMARY_COLUMNS = ("trial", "what", "ratio", "val drop", "as judged", "within", "test drop", "speed-up")


def summary_rows(study: optuna.Study, budget: Budget, *, text: Callable[[object], str]) -> list[list[str]]:
    """The summary's rows: the baselines, the finalized trials, the search's front and the best,
    each judged as the budget judges; ``text`` makes stored names safe where they are shown."""
    done = completed(study)
    best = best_trial(study, budget)
    shown = [d for d in done if d.kind in (BASELINE, Source.FINAL)] + _front(done, budget)[:8]
    if best is not None and all(d.trial.number != best.number for d in shown):
        shown += [d for d in done if d.trial.number == best.number]
    rows = []
    for d in sorted({d.trial.number: d for d in shown}.values(), key=lambda d: d.trial.number):
        r = d.record
        what = ("best " if best is not None and d.trial.number == best.number else "") + text(
            d.trial.user_attrs.get("recipe_name") or d.kind
        )
        rows.append(
            [
                str(d.trial.number),
                what,
                f"{r.compression_ratio:.1f}x",
                f"{r.acc_drop:+.2f}",
                f"{budget.drop(r):+.2f}",
                "yes" if budget.within(r) else "no",
                _num(r.test_acc_drop),
                f"{r.speedup:.2f}x" + (" (slower than the base)" if r.speedup < 1 else ""),
            ]
        )
    return rows


def summary_figure(study: optuna.Study, budget: Budget) -> Any:
    """The summary as a table, the first of autoprune's figures: did the search beat the
    recipes, judged the same way?"""
    rows = summary_rows(study, budget, text=lambda v: html.escape(" ".join(str(v).split())[:80]))
    columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in SUMMARY_COLUMNS]
    rule = f" (its {budget.z:.2f}-sigma upper bound)" if budget.z else ""
    fig = go.Figure(
        go.Table(
            header={
                "values": [f"<b>{c}</b>" for c in SUMMARY_COLUMNS],
                "align": "left",
                "font": {"size": 11},
            },
            cells={"values": columns, "align": "left", "font": {"size": 11}, "height": 24},
            columnwidth=[0.5, 1.7, 0.6, 0.7, 0.7, 0.6, 0.7, 1.2],
        )
    )
    fig.update_layout(
        title=f"Summary: the best within {budget.max_drop} points,<br>"
        f"drops as judged{rule}, beside the baselines",
        height=130 + 26 * max(len(rows), 1),
        margin={"t": 70, "b": 10, "l": 10, "r": 10},
    )
    return fig


def md_text(value: object, limit: int = 80) -> str:
    """Stored text shown literally in markdown: one line, at most ``limit`` characters, every
    character that markdown or HTML would act on escaped (the dashboard renders raw HTML when
    started with ``--allow-unsafe``)."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(value).split())[:limit])


def _fmt(value: object, spec: str, scale: float = 1.0) -> str:
    """A stored number (times ``scale``) as text; '?' when what is stored is not a number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "?"
    return format(value * scale, spec)


def _front(done: list[Done], budget: Budget) -> list[Done]:
    searched = [d for d in done if d.kind == SEARCH]
    points = [(budget.drop(d.record), d.record.compression_ratio) for d in searched]
    keep = non_dominated(points, (False, True)) if points else np.zeros(0, dtype=bool)
    return sorted((d for d, k in zip(searched, keep) if k), key=lambda d: budget.drop(d.record))


# ----------------------------------------------------------------------------- all of them


FIGURES = ("summary", "trade-off", "trade-off-latency", "bytes", "l1-norms", "sensitivity", "progress")
COMPARE_ATTR = "autoprune:compare"  # the last surrogate comparison's rows, for the progress figure


def study_figures(
    study: optuna.Study, budget: Budget, *, base: nn.Module | None = None, artifacts: Path | None = None
) -> dict[str, Any]:
    """Every autoprune figure the study can show now, by graph id."""
    compare = study_system_attr(study, COMPARE_ATTR)
    objectives = study.user_attrs.get("objectives") or []
    figures: dict[str, Any] = {
        "summary": summary_figure(study, budget),
        "trade-off": tradeoff_figure(study, budget),
    }
    if speed_objectives(objectives):  # batch-1 latency, measured
        figures["trade-off-latency"] = tradeoff_figure(study, budget, latency=True)
    for name, make in (
        ("bytes", lambda: bytes_figure(study, budget, artifacts)),
        ("l1-norms", lambda: norms_figure(study, budget, base, artifacts)),
    ):
        fig = make()
        if fig is not None:
            figures[name] = fig
    sensitivity = stored_sensitivity(study)
    if sensitivity is not None:
        figures["sensitivity"] = sensitivity_plotly(sensitivity)
    figures["progress"] = progress_figure(study, budget, compare if isinstance(compare, dict) else None)
    return figures


def publish_study(study: optuna.Study, budget: Budget, **kwargs: Any) -> list[str]:
    """Save every figure and the summary note into the study (optuna-dashboard shows them);
    returns the graph ids."""

    figures = study_figures(study, budget, **kwargs)
    for graph_id, fig in figures.items():
        save_plotly_graph_object(study, fig, graph_object_id=graph_id)
    save_note(study, summary_note(study, budget))
    return list(figures)


class Publisher:
    """A search's hook: publishes the study's figures as it grows, at most every ``every``
    seconds and whenever the search ends, each time something new finished."""

    def __init__(self, budget: Budget, *, artifacts: Path | None = None, every: float = 10.0):
        self.budget, self.artifacts, self.every = budget, artifacts, every
        self.last = -math.inf
        self.count = -1

    def __call__(self, study: optuna.Study, context: Any) -> None:
        count = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        ended = count >= getattr(context.spec.study, "trials", 0)
        if count == self.count or (not ended and time.monotonic() - self.last < self.every):
            return
        try:
            publish_study(study, self.budget, base=context.base, artifacts=self.artifacts)
        except Exception as e:  # noqa: BLE001  a figure is never worth a search: said, and the search goes on
            logging.getLogger(__name__).warning(
                "the study's figures were not updated: %s: %s", type(e).__name__, e
            )
        self.last, self.count = time.monotonic(), count
