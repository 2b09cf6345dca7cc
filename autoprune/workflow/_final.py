"""The final stage: what practitioners do after a search. The best trials within the budget,
the Pareto front's knee and every baseline recipe are run again with the full fine-tuning
budget (``[final]`` in the spec, no batch cap), in the same study, each linked to the trial it
refines, so the search and the hand-tuned recipes are compared at the same budget."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.device import resolve_device, use_device
from autoprune.errors import AutoPruneError
from autoprune.ops.pareto import non_dominated
from autoprune.search.objective import Objective
from autoprune.search.record import Budget, Source, TrialRecord
from autoprune.search.report import study_goal, study_metric, trial_row
from autoprune.search.setup import load_inputs, prepare
from autoprune.search.spec import StudySpec, check_task
from autoprune.search.stop import stop_requested
from autoprune.search.storage import StorageInfo, open_storage, resolve_study_name, storage_errors

RECIPE_ATTRS = (
    "recipe_name",
    "recipe",
    "recipe_params",
)  # what a baseline's re-run needs (the last two: older studies)


def parents(study: optuna.Study, budget: Budget, k: int, slack: float = 0.0) -> list[FrozenTrial]:
    """The trials the final stage refines: ``k`` best (highest ratios, or speed-ups for a study
    on latency) on a ladder of budgets from the budget to the budget + ``slack`` (k = 3, slack
    2: the best within 1, 2 and 3 points), so that the picks spread over the capped drops the
    full budget may bring back within, not all at the loosest; the knee of the (judged drop, log
    ratio) front; and every baseline; in trial order."""
    done = [
        (t, r)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("source") != Source.FINAL and (r := TrialRecord.from_attrs(t.user_attrs))
    ]
    searched = [(t, r) for t, r in done if r.source != Source.BASELINE]
    value = study_goal(study)
    ranked = sorted(searched, key=lambda p: -value(p[1]))
    steps = [slack * i / (k - 1) for i in range(k)] if k > 1 else [slack]
    chosen: dict[int, FrozenTrial] = {}
    for step in steps:
        pick = next(
            (
                t
                for t, r in ranked
                if t.number not in chosen
                and budget.drop(r) <= budget.max_drop + step
                and budget.fast_enough(r)
            ),
            None,
        )
        if pick is not None:
            chosen[pick.number] = pick
    knee = _knee([(budget.drop(r), math.log(r.compression_ratio)) for _, r in searched])
    if knee is not None:
        chosen.setdefault(searched[knee][0].number, searched[knee][0])
    chosen.update({t.number: t for t, r in done if r.source == Source.BASELINE})
    return [chosen[n] for n in sorted(chosen)]


def _knee(points: list[tuple[float, float]]) -> int | None:
    """The front's point farthest from the line through its two ends (both axes scaled to
    [0, 1]): where more compression starts to cost much more accuracy."""
    if not points:
        return None
    front = [i for i, keep in enumerate(non_dominated(points, (False, True))) if keep]
    if len(front) < 3:
        return None
    xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    scaled = sorted(((x - min(xs)) / span_x, (y - min(ys)) / span_y, i) for x, y, i in zip(xs, ys, front))
    (x0, y0, _), (x1, y1, _) = scaled[0], scaled[-1]
    norm = math.hypot(x1 - x0, y1 - y0) or 1.0
    distance = {i: abs((y1 - y0) * x - (x1 - x0) * y + x1 * y0 - y1 * x0) / norm for x, y, i in scaled}
    return max(distance, key=lambda i: distance[i])


def enqueue_finals(study: optuna.Study, chosen: list[FrozenTrial]) -> int:
    """Queue a full-budget re-run of each chosen trial that has none yet (done, queued or running)."""
    refined = {
        _parent(t)
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("source") == Source.FINAL and t.state != TrialState.FAIL
    }
    added = 0
    for t in chosen:
        if t.number in refined:
            continue
        attrs = {
            "source": Source.FINAL.value,
            "parent": t.number,
            **{k: t.user_attrs[k] for k in RECIPE_ATTRS if k in t.user_attrs},
        }
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
        added += 1
    return added


def _parent(t: FrozenTrial) -> int | None:
    """The trial a final trial refines, as stored (None when what is stored is not a trial number)."""
    parent = t.user_attrs.get("parent")
    return parent if isinstance(parent, int) and not isinstance(parent, bool) else None


def finalize(
    spec: StudySpec,
    info: StorageInfo,
    *,
    k: int | None = None,
    progress: bool = True,
    task: str | None = None,
) -> dict[str, Any]:
    """Run the final stage on the study ``spec`` names (which must exist), on the spec's
    device, and compare each finalized trial with the trial it refines."""
    with use_device(resolve_device(spec.study.device)), storage_errors(info):
        storage = open_storage(
            info,
            create=False,
            liveness=spec.study.liveness,
        )
        name = resolve_study_name(storage, spec.study.name, info.where)
        study = optuna.load_study(study_name=name, storage=storage)
        budget = spec.study.budget
        chosen = parents(study, budget, k or spec.final.k, spec.final.slack)
        if not chosen:
            raise AutoPruneError(
                f"study {name!r} has no completed trial to finalize; run 'autoprune search' first"
            )
        check_task(study, task)
        inputs = load_inputs(spec, progress=progress, task=task)
        ctx = prepare(spec, study, storage, info, progress=progress, inputs=inputs)
        enqueue_finals(study, chosen)
        objective = Objective(ctx, sampler_name=Source.FINAL.value)
        while any(
            t.user_attrs.get("source") == Source.FINAL
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        ):
            if stop_requested():
                raise KeyboardInterrupt
            study.optimize(objective, n_trials=1, gc_after_trial=False)
        return final_summary(study, budget)


def final_summary(study: optuna.Study, budget: Budget) -> dict[str, Any]:
    """Each finalized trial beside the trial it refines: both drops and the ratio."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for t in trials.values():
        if t.user_attrs.get("source") != Source.FINAL or t.state != TrialState.COMPLETE:
            continue
        number = _parent(t)
        parent = trials.get(number) if number is not None else None
        if parent is None:
            continue
        rows.append(
            {
                "kind": parent.user_attrs.get("recipe_name") or "search",
                "parent": trial_row(parent),
                "final": trial_row(t),
                "within": budget.within(t.user_attrs),
            }
        )
    return {
        "study": study.study_name,
        "metric": study_metric(study),
        "max_acc_drop": budget.max_drop,
        "z": budget.z,
        "rows": sorted(rows, key=lambda r: r["parent"]["trial"]),
    }
