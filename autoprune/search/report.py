"""Reading a study back: trial rows, the Pareto front, the best feasible trial."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.ops.pareto import best_within, non_dominated
from autoprune.search.spec import SpecError, StudySection


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    a = t.user_attrs
    return {
        "trial": t.number,
        "state": t.state.name,
        "source": a.get("source"),
        "recipe": a.get("recipe_name"),
        "accuracy": a.get("accuracy"),
        "test_accuracy": a.get("test_accuracy"),
        "acc_drop": a.get("acc_drop"),
        "packed_bytes": a.get("packed_bytes"),
        "compression_ratio": a.get("compression_ratio"),
        "latency_ms": a.get("latency_ms"),
        "backend": a.get("backend"),
        "other_load": a.get("other_load"),
        "speedup": a.get("speedup"),
        "macs": a.get("macs"),
        "trial_s": a.get("trial_s"),
        "params": t.params,
    }


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The study's Pareto front; for one objective, the feasible (accuracy, size) front."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: -t.user_attrs.get("accuracy", 0))
    ok = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(c <= 0 for c in t.constraints.values()) and "accuracy" in t.user_attrs
    ]  # fmt: skip
    points = [(t.user_attrs["accuracy"], t.user_attrs["packed_bytes"]) for t in ok]
    front = [t for t, keep in zip(ok, non_dominated(points, (True, False))) if keep] if ok else []
    return sorted(front, key=lambda t: -t.user_attrs["accuracy"])


def best_trial(study: optuna.Study, max_acc_drop: float) -> FrozenTrial | None:
    """The highest compression ratio within the accuracy budget."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    drops = [_number(t.user_attrs.get("acc_drop")) for t in done]
    i = best_within([_number(t.user_attrs.get("compression_ratio")) for t in done], drops, max_acc_drop)
    return None if i is None else done[i]


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def state_counts(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def study_budget(study: optuna.Study) -> float:
    """The accuracy budget (points) of the spec stored in the study, checked: stored data."""
    stored = study.user_attrs.get("spec")
    section = stored.get("study") if isinstance(stored, dict) else None
    value = section.get("max_acc_drop", StudySection.max_acc_drop) if isinstance(section, dict) else StudySection.max_acc_drop
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise SpecError(f"study {study.study_name!r} stores a budget of {value!r} points; pass --max-acc-drop")
    return float(value)
