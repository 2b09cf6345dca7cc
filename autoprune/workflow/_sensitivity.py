"""``autoprune sensitivity`` on a stored study: the analysis of its base model, kept in the study
(where the surrogate reads it) and shown as figures (a PNG, and plotly figures that
optuna-dashboard shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import optuna
import plotly.graph_objects as go
from matplotlib.figure import Figure
from optuna_dashboard import save_plotly_graph_object
from plotly.subplots import make_subplots

from autoprune._compat import set_study_system_attr, study_system_attr
from autoprune.search.propose import Allocator, SensitivityProposal, proposal_budgets
from autoprune.sensitivity import Sensitivity, sensitivity_for

SENSITIVITY_ATTR = "autoprune:sensitivity"  # a study system attribute: out of the dashboard's attribute table


def stored_sensitivity(study: optuna.Study) -> Sensitivity | None:
    """The analysis stored in the study, or None (checked: a study is data)."""
    stored = study_system_attr(study, SENSITIVITY_ATTR)
    return Sensitivity.from_dict(stored) if isinstance(stored, dict) else None


def study_sensitivity(view: Any, *, progress: bool = False) -> tuple[Sensitivity, bool]:
    """The analysis of the study's base model: from the cache when this base was analysed
    before, stored into the study and its figures saved there; returns it and whether it came
    from the cache."""
    result, cached = sensitivity_for(view.ctx.base, view.ctx.splits, progress=progress)
    stored = stored_sensitivity(view.study)
    if stored is None or stored.key != result.key:
        set_study_system_attr(view.study, SENSITIVITY_ATTR, result.to_dict())
        publish_sensitivity(view.study, result)
    return result, cached


def zero_shot(
    view: Any,
    scales: list[float],
    *,
    max_acc_drop: float | None = None,
    minimise: str | None = None,
    progress: bool = False,
) -> tuple[list[SensitivityProposal], list[float]]:
    """Proposals before any trial (:mod:`autoprune.search.propose`) for the study's base and
    space, one per budget: ``scales`` x the budget (the study's unless ``max_acc_drop``);
    returns them and the budgets."""
    sensitivity, _ = study_sensitivity(view, progress=progress)
    budgets = proposal_budgets(view.budget.max_drop if max_acc_drop is None else max_acc_drop, scales)
    allocator = Allocator(view.ctx.base, view.ctx.model_spec, view.spec.space, sensitivity)
    return allocator.propose(budgets, minimise=minimise or view.spec.study.allocation_cost), budgets


def sensitivity_rows(
    s: Sensitivity,
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9),
    qualities: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0),
) -> list[dict[str, Any]]:
    """Per layer: its size and the accuracy lost at a few points of each curve."""
    return [
        {
            "layer": layer.layer,
            "kind": layer.kind,
            "params": layer.params,
            "filters": len(layer.norms) if layer.filters else None,
            "ratio_drop": {r: round(s.drop_at_ratio(layer.layer, r), 2) for r in ratios}
            if layer.filters
            else None,
            "quality_drop": {q: round(s.drop_at_quality(layer.layer, q), 2) for q in qualities},
        }
        for layer in s.layers
    ]


def sensitivity_plotly(s: Sensitivity) -> Any:
    """Accuracy lost against the share of filters removed (left) and against the magnitude
    threshold (right), one line per layer."""

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "filters removed (L1, lowest first)",
            "single weights pruned (threshold = quality x std)",
        ),
    )
    for i, layer in enumerate(s.layers):
        color = _COLORS[i % len(_COLORS)]
        if layer.filters:
            fig.add_trace(
                go.Scatter(
                    x=[0.0, *s.ratios],
                    y=[0.0, *(s.base_accuracy - a for a in layer.ratio_acc)],
                    mode="lines+markers",
                    name=layer.layer,
                    legendgroup=layer.layer,
                    line={"color": color},
                    hovertemplate=f"{layer.layer}: %{{x:.0%}} of filters, drop %{{y:.2f}} pt<extra></extra>",
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=[0.0, *s.qualities],
                y=[0.0, *(s.base_accuracy - a for a in layer.quality_acc)],
                mode="lines+markers",
                name=layer.layer,
                legendgroup=layer.layer,
                showlegend=not layer.filters,
                line={"color": color},
                customdata=[0.0, *layer.quality_sparsity],
                hovertemplate=f"{layer.layer}: quality %{{x}}, %{{customdata:.0%}} of weights zeroed, "
                "drop %{y:.2f} pt"
                "<extra></extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="share of the layer's filters removed", tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text="magnitude quality", row=1, col=2)
    fig.update_yaxes(title_text="validation accuracy drop (points), no fine-tuning", row=1, col=1)
    fig.update_layout(title=f"Layer sensitivity (base {s.base_accuracy:.2f}% validation)")
    return fig


def norms_plotly(s: Sensitivity, removed: dict[str, int] | None = None) -> Any:
    """Each layer's filter L1 norms, sorted and divided by the largest (the seed's Figure 1);
    with ``removed`` (layer -> filters a trial removed), those filters marked."""

    fig = go.Figure()
    for i, layer in enumerate(x for x in s.layers if x.kind == "conv"):
        color = _COLORS[i % len(_COLORS)]
        n = len(layer.norms)
        rank = [j / max(n - 1, 1) for j in range(n)]
        fig.add_trace(
            go.Scatter(
                x=rank,
                y=list(layer.norms),
                mode="lines",
                name=layer.layer,
                line={"color": color},
                hovertemplate=f"{layer.layer}: filter %{{x:.0%}} by norm, %{{y:.3f}} of the largest"
                "<extra></extra>",
            )
        )
        cut = (removed or {}).get(layer.layer, 0)
        if cut:
            fig.add_trace(
                go.Scatter(
                    x=rank[n - cut :],
                    y=list(layer.norms[n - cut :]),
                    mode="markers",
                    name=f"{layer.layer}: removed ({cut})",
                    marker={"color": color, "symbol": "x"},
                )
            )
    fig.update_layout(
        title="Filter L1 norms per conv layer, sorted (the seed paper's Figure 1)",
        xaxis_title="filters, largest norm first (share of the layer)",
        xaxis_tickformat=".0%",
        yaxis_title="L1 norm / the layer's largest",
    )
    return fig


_COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def publish_sensitivity(study: optuna.Study, s: Sensitivity) -> None:
    """The sensitivity and L1-norm figures into the study, where optuna-dashboard shows them."""

    save_plotly_graph_object(study, sensitivity_plotly(s), graph_object_id="sensitivity")
    save_plotly_graph_object(study, norms_plotly(s), graph_object_id="l1-norms")


def sensitivity_png(s: Sensitivity, path: Path, title: str = "") -> Path:
    """Three panels: sorted filter norms, filter-pruning sensitivity, magnitude sensitivity."""
    with matplotlib.rc_context({"text.parse_math": False}):  # stored names are text, never mathtext
        fig = Figure(figsize=(15, 4.2))
        axes = fig.subplots(1, 3)
        for i, layer in enumerate(s.layers):
            color = _COLORS[i % len(_COLORS)]
            if layer.kind == "conv":
                n = len(layer.norms)
                axes[0].plot(
                    [j / max(n - 1, 1) for j in range(n)], layer.norms, color=color, label=layer.layer
                )
            if layer.filters:
                axes[1].plot(
                    [0.0, *s.ratios],
                    [0.0, *(s.base_accuracy - a for a in layer.ratio_acc)],
                    "o-",
                    color=color,
                    label=layer.layer,
                )
            axes[2].plot(
                [0.0, *s.qualities],
                [0.0, *(s.base_accuracy - a for a in layer.quality_acc)],
                "o-",
                color=color,
                label=layer.layer,
            )
        axes[0].set(
            xlabel="filters, largest L1 norm first (share)", ylabel="L1 norm / largest", title="filter norms"
        )
        axes[1].set(
            xlabel="share of the layer's filters removed",
            ylabel="validation drop (points), no fine-tuning",
            title="filter pruning, one layer at a time",
        )
        axes[2].set(
            xlabel="magnitude quality (threshold / std)",
            ylabel="validation drop (points), no fine-tuning",
            title="magnitude pruning, one layer at a time",
        )
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title or f"layer sensitivity, base {s.base_accuracy:.2f}% validation")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return path
