"""Reading a study back: trial rows, the Pareto front, the best feasible trial."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.ops.pareto import non_dominated
from autoprune.search.record import Budget, TrialRecord, goal, names, stored
from autoprune.search.spec import SpecError, StudySection


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    """A trial as the tables and ``--json`` show it: every field of the record (None where the
    trial has none), the recipe's name for a baseline, and ``params``: the sampled settings
    (the parameter count is the record's ``params`` user attribute)."""
    a = t.user_attrs
    return {
        "trial": t.number,
        "state": t.state.name,
        "recipe": a.get("recipe_name") if isinstance(a.get("recipe_name"), str) else None,
        **{name: stored(a, name) for name in names()},
        "params": t.params,
    }


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The study's Pareto front; for one objective, the feasible (accuracy, size) front."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: -t.user_attrs.get("accuracy", 0))
    ok = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(c <= 0 for c in t.constraints.values()) and "accuracy" in t.user_attrs
    ]
    points = [(t.user_attrs["accuracy"], t.user_attrs["packed_bytes"]) for t in ok]
    front = [t for t, keep in zip(ok, non_dominated(points, (True, False))) if keep] if ok else []
    return sorted(front, key=lambda t: -t.user_attrs["accuracy"])


def best_trial(study: optuna.Study, budget: Budget) -> FrozenTrial | None:
    """The best trial within the accuracy budget, drops judged by its rule: the highest
    compression ratio, or speed-up for a study searching on latency (:func:`goal`)."""
    done = [
        (t, r)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (r := TrialRecord.from_attrs(t.user_attrs)) is not None
    ]
    i = budget.best([r for _, r in done], study_goal(study))
    return None if i is None else done[i][0]


def state_counts(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def study_goal(study: optuna.Study) -> Callable[[TrialRecord], float]:
    """What "best" maximises in this study, from the objectives it stores."""
    stored = study.user_attrs.get("objectives")
    return goal([o for o in stored if isinstance(o, str)] if isinstance(stored, list) else None)


def study_metric(study: optuna.Study) -> str:
    """What the study's "accuracy" measures: top-1 accuracy, or its task's metric (stored:
    checked, one short line of plain text)."""
    metric = study.user_attrs.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        return "accuracy"
    return " ".join(metric.split())[:40]


def study_budget(study: optuna.Study) -> Budget:
    """The accuracy budget and selection rule of the spec stored in the study, checked (stored
    data). A study made before the selection rule existed is judged on the point estimate."""
    stored = study.user_attrs.get("spec")
    section = stored.get("study") if isinstance(stored, dict) else None
    section = section if isinstance(section, dict) else {}
    keys = {
        "max_acc_drop": StudySection.max_acc_drop,
        "min_speedup": StudySection.min_speedup,
        "selection": "point",
        "confidence": StudySection.confidence,
    }
    values = {k: section.get(k, default) for k, default in keys.items()}
    try:
        checked = StudySection(**values)  # the section's own checks
    except (SpecError, TypeError):
        raise SpecError(
            f"study {study.study_name!r} stores a budget it cannot state ({values}); pass --max-acc-drop"
        ) from None
    return checked.budget
