"""The surrogate on a stored study: fit on its history, propose, enqueue, and compare the
proposals, run for real, with the search's own trials."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.ops.pareto import best_within, hypervolume
from autoprune.search.objective import Objective, SearchContext
from autoprune.search.record import Budget, TrialRecord
from autoprune.search.report import study_budget
from autoprune.search.run import open_study, prepare, work
from autoprune.search.space import distributions
from autoprune.search.spec import StudySpec, trusted_spec
from autoprune.search.storage import StorageInfo, open_storage, resolve_study_name
from autoprune.surrogate import (
    Encoder,
    History,
    InverseThresholds,
    Proposal,
    ProposeConfig,
    Surrogate,
    SurrogateError,
    history_from_trials,
    layer_descriptors,
    propose,
)

COMPARE_SUFFIX = "-surrogate-compare"  # the side study that holds compare's real evaluations


@dataclass
class StudyView:
    """A stored autoprune study with what the surrogate needs: its spec, space and base model."""

    study: optuna.Study
    spec: StudySpec
    info: StorageInfo
    ctx: SearchContext
    encoder: Encoder
    descriptors: dict[str, np.ndarray]
    budget: Budget  # the study's own: its limit and how it judges a drop


def open_view(
    name: str | None,
    info: StorageInfo,
    *,
    progress: bool = False,
    model: str | None = None,
    checkpoint: str | None = None,
    data_dir: str | None = None,
    artifacts: str | None = None,
) -> StudyView:
    """The study ``name`` (None: the only one in the storage) with its data and base model.

    The spec stored in the study says which model and data to rebuild, but any code, file or
    folder it names is used only when the caller names it too (see :func:`trusted_spec`)."""
    storage = open_storage(info, create=False)
    name = resolve_study_name(storage, name, info.safe_url)
    study = optuna.load_study(study_name=name, storage=storage)
    if not isinstance(study.user_attrs.get("spec"), dict):
        raise SurrogateError(f"study {name!r} was not made by autoprune search (no spec in its attributes)")
    spec = trusted_spec(
        study.user_attrs["spec"], study=name, storage=info.url, model=model, checkpoint=checkpoint,
        data_dir=data_dir, artifacts=artifacts,
    )  # fmt: skip
    budget = study_budget(study)
    ctx = prepare(spec, study, storage, info, progress=progress)
    return StudyView(
        study, spec, info, ctx, Encoder(distributions(spec.space, ctx.layers)), layer_descriptors(ctx.base), budget
    )


def search_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The search's own finished trials in order (not the surrogate's proposals)."""
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.user_attrs.get("source") not in ("surrogate", "final")
    ]  # fmt: skip


def fit(
    view: StudyView, trials: Sequence[FrozenTrial] | None = None, *, seed: int = 0
) -> tuple[Surrogate, History]:
    history = history_from_trials(
        trials if trials is not None else view.study.get_trials(deepcopy=False), view.encoder, view.budget
    )
    return Surrogate(view.encoder, seed=seed).fit(history), history


def propose_for(
    view: StudyView, surrogate: Surrogate, history: History, config: ProposeConfig
) -> list[Proposal]:
    """Forward proposals plus the inverse MLP's thresholds at fractions of the budget, all
    ranked by the forward ensemble."""
    extra: list[np.ndarray] = []
    try:
        inverse = InverseThresholds(seed=config.seed).fit(history, view.descriptors)
        extra = inverse.rows(history, [config.max_acc_drop * f for f in (0.5, 0.75, 1.0)], view.descriptors)
    except SurrogateError:
        pass  # no per-layer thresholds in this space: forward proposals only
    return propose(surrogate, history, dataclasses.replace(config, extra=tuple(extra)))


def enqueue(study: optuna.Study, proposals: Sequence[Proposal], **attrs: Any) -> int:
    """Add the proposals as waiting trials (``source=surrogate``); ones already in the study are
    skipped. Returns how many were added."""
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for p in proposals:
        user_attrs = {
            "source": "surrogate",
            "proposal_kind": p.kind,
            "predicted_acc_drop": p.predicted["acc_drop"]["mean"],
            "predicted_compression_ratio": math.exp(p.predicted["log_compression_ratio"]["mean"]),
            **attrs,
        }
        study.enqueue_trial(p.params, user_attrs=user_attrs, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before


# ----------------------------------------------------------------------------- compare


def _summary(trials: Sequence[FrozenTrial], budget: Budget) -> dict[str, Any]:
    done = [(t, r) for t in trials
            if t.state == TrialState.COMPLETE and (r := TrialRecord.from_attrs(t.user_attrs)) is not None]  # fmt: skip
    i = best_within([r.compression_ratio for _, r in done], [budget.drop(r) for _, r in done], budget.max_drop)
    best, rec = done[i] if i is not None else (None, None)
    return {
        "trials": len(trials),
        "best_ratio": rec.compression_ratio if rec else None,
        "best_acc_drop": rec.acc_drop if rec else None,
        "best_test_accuracy": rec.test_accuracy if rec else None,
        "best_trial": best.number if best else None,
        "hypervolume": hypervolume([(budget.drop(r), r.compression_ratio) for _, r in done], budget.max_drop),
        "wall_s": sum(t.user_attrs.get("trial_s") or 0.0 for t in trials),
    }


def compare(
    view: StudyView, sizes: Sequence[int], *, k: int = 5, seed: int = 0, max_acc_drop: float | None = None
) -> dict[str, Any]:
    """For each history size n: fit on the search's first n trials, propose k, run them for real
    (in a side study, so the search's history stays its own), and set them beside the search
    after n + k trials and at its full budget."""
    own = search_trials(view.study)
    sizes = sorted(set(sizes))
    if not sizes or sizes[-1] > len(own):
        raise SurrogateError(
            f"--at must be history sizes up to the search's {len(own)} finished trials, got {sizes}"
        )
    side = _side_study(view)
    objective = Objective(dataclasses.replace(view.ctx, spec=_side_spec(view)), sampler_name="surrogate")
    budget = view.budget if max_acc_drop is None else dataclasses.replace(view.budget, max_drop=max_acc_drop)
    rows = []
    for n in sizes:
        started = time.perf_counter()
        surrogate, history = fit(view, own[:n], seed=seed)
        config = ProposeConfig(max_acc_drop=budget.max_drop, k=k, seed=seed + n)
        proposals = propose_for(view, surrogate, history, config)
        model_s = time.perf_counter() - started
        # Each proposal runs once: the same command again (or another budget proposing the
        # same settings) reuses the side study's trial.
        missing = [p for p in proposals if _trial_with(side, p.params) is None]
        enqueue(side, missing, history_size=n, budget=budget.max_drop)
        waiting = len(side.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        work(side, objective, sum(t.state.is_finished() for t in side.get_trials(deepcopy=False)) + waiting)
        evaluated = [t for p in proposals if (t := _trial_with(side, p.params)) is not None]
        rows.append(_compare_row(n, k, surrogate, own, evaluated, budget, model_s))
    return {
        "study": view.study.study_name,
        "side_study": side.study_name,
        "max_acc_drop": budget.max_drop,
        "rows": rows,
        "search_full": _summary(own, budget),
    }


def _trial_with(study: optuna.Study, params: dict[str, Any]) -> FrozenTrial | None:
    """The study's trial with exactly these parameter values (a waiting one: its fixed ones)."""
    key = json.dumps(params, sort_keys=True)
    return next(
        (
            t
            for t in study.get_trials(deepcopy=False)
            if json.dumps(t.system_attrs.get("fixed_params", t.params), sort_keys=True) == key
        ),
        None,
    )


def _compare_row(
    n: int, k: int, surrogate: Surrogate, own: Sequence[FrozenTrial], evaluated: list[FrozenTrial],
    budget: Budget, model_s: float,
) -> dict[str, Any]:  # fmt: skip
    """The surrogate (n history trials + its proposals) beside the search after as many trials."""
    mine = _summary(evaluated, budget)
    history = _summary(own[:n], budget)
    proposals = [
        {key: t.user_attrs.get(attr) for key, attr in PROPOSAL_FIELDS.items()} | {"trial": t.number}
        for t in evaluated
    ]  # fmt: skip
    return {
        "history": n,
        "k": k,
        "cv_r2_acc_drop": surrogate.cv_["acc_drop"].r2,
        "cv_mae_acc_drop": surrogate.cv_["acc_drop"].mae,
        "cv_r2_log_ratio": surrogate.cv_["log_compression_ratio"].r2,
        "surrogate": {
            **mine,  # best ratio among the proposals, run for real
            "trials": n + len(evaluated),
            "hypervolume": _summary(list(own[:n]) + evaluated, budget)["hypervolume"],
            "wall_s": history["wall_s"] + model_s + mine["wall_s"],
            "model_s": model_s,
            "proposals": proposals,
        },
        "search_same_trials": _summary(own[: n + len(evaluated)], budget),
    }


PROPOSAL_FIELDS = {  # compare's record of each proposal: key -> trial user attribute
    "kind": "proposal_kind",
    "predicted_acc_drop": "predicted_acc_drop",
    "acc_drop": "acc_drop",
    "predicted_ratio": "predicted_compression_ratio",
    "ratio": "compression_ratio",
}


def _side_spec(view: StudyView) -> StudySpec:
    study = dataclasses.replace(view.spec.study, name=view.spec.study.name + COMPARE_SUFFIX, baselines=[])
    return dataclasses.replace(view.spec, study=study)


def _side_study(view: StudyView) -> optuna.Study:
    spec = _side_spec(view)
    side = open_study(spec, view.ctx.storage)
    if "base" not in side.user_attrs:
        side.set_user_attr("base", view.ctx.base_metrics.to_dict())
    side.set_user_attr("compares", view.study.study_name)
    return side
