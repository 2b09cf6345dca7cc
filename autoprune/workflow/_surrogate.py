"""The surrogate on a stored study: fit on its history, propose, enqueue, and compare the
proposals, run for real, with the search's own trials."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.ops.pareto import hypervolume
from autoprune.search.objective import Objective, SearchContext, stored_recipes
from autoprune.search.record import Budget, Source, TrialRecord, speed_objectives
from autoprune.search.report import study_budget
from autoprune.search.setup import load_inputs, open_study, prepare
from autoprune.search.spec import StudySpec, check_task, trusted_spec
from autoprune.search.storage import (
    StorageInfo,
    open_storage,
    parse_storage,
    resolve_study_name,
    storage_errors,
)
from autoprune.search.workers import work
from autoprune.surrogate import (
    History,
    ModelSpace,
    Proposal,
    ProposeConfig,
    Surrogate,
    SurrogateError,
    anchors,
    history_from_trials,
    model_space,
    propose,
)

COMPARE_SUFFIX = "-surrogate-compare"  # the side study that holds compare's real evaluations


@dataclass
class StudyView:
    """A stored autoprune study with what the surrogate needs: its spec, base model and budget."""

    study: optuna.Study
    spec: StudySpec
    info: StorageInfo
    ctx: SearchContext
    budget: Budget  # the study's own: its limit and how it judges a drop
    _model: ModelSpace | None = None

    @property
    def model(self) -> ModelSpace:
        """Its network as the surrogate sees it (the sensitivity analysis run at most once per
        base model: cached; ``autoprune sensitivity`` also stores it in the study)."""
        if self._model is None:
            self._model = model_space(self.ctx)
        return self._model

    @property
    def latency(self) -> bool:
        """Whether the study searches on latency (the surrogate then learns it too)."""
        return bool(speed_objectives(self.spec.study.objectives))


def open_view(
    name: str | None,
    info: StorageInfo,
    *,
    progress: bool = False,
    model: str | None = None,
    checkpoint: str | None = None,
    data_dir: str | None = None,
    artifacts: str | None = None,
    read_only: bool = False,
    task: str | None = None,
) -> StudyView:
    """The study ``name`` (None: the only one in the storage) with its data and base model.

    The spec stored in the study says which model and data to rebuild, but any code, file or
    folder it names is used only when the caller names it too (see :func:`trusted_spec`).
    ``read_only``: another's study (``--from``): opened so that nothing can be written into it,
    its base model taken from the cache only, never trained with its stored settings."""
    storage = open_storage(info, create=False, read_only=read_only)
    name = resolve_study_name(storage, name, info.where)
    study = optuna.load_study(study_name=name, storage=storage)
    if not isinstance(study.user_attrs.get("spec"), dict):
        raise SurrogateError(f"study {name!r} was not made by autoprune search (no spec in its attributes)")
    spec = trusted_spec(
        study.user_attrs["spec"],
        study=name,
        storage=info.url,
        model=model,
        checkpoint=checkpoint,
        data_dir=data_dir,
        artifacts=artifacts,
    )
    check_task(study, task)
    inputs = load_inputs(spec, progress=progress, cached_only=read_only, task=task)
    ctx = prepare(spec, study, storage, info, progress=progress, read_only=read_only, inputs=inputs)
    return StudyView(study, spec, info, ctx, study_budget(study))


def open_sources(sources: Sequence[str], default_url: str, *, progress: bool = False) -> list[StudyView]:
    """The studies named by ``--from STUDY`` (in the same storage) or ``--from STUDY@URL``,
    read only: nothing is written into them."""
    views = []
    for source in sources:
        name, _, url = source.partition("@")
        info = parse_storage(url or default_url)
        with storage_errors(info):
            views.append(open_view(name or None, info, progress=progress, read_only=True))
    return views


def search_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The search's own finished trials in order (not the surrogate's proposals)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.user_attrs.get("source") not in (Source.SURROGATE, Source.FINAL)
    ]


def history(
    view: StudyView, trials: Sequence[FrozenTrial] | None = None, sources: Sequence[StudyView] = ()
) -> History:
    """The study's usable trials (``trials``: these only) and every source study's, each judged
    by its own study's rule, as one history."""
    own = trials if trials is not None else view.study.get_trials(deepcopy=False)
    parts = [history_from_trials(own, view.model, view.budget, stored_recipes(view.study))]
    parts += [
        history_from_trials(s.study.get_trials(deepcopy=False), s.model, s.budget, stored_recipes(s.study))
        for s in sources
    ]
    return History.join(parts)


def fit(
    view: StudyView,
    trials: Sequence[FrozenTrial] | None = None,
    *,
    seed: int = 0,
    sources: Sequence[StudyView] = (),
) -> tuple[Surrogate, History]:
    """The surrogate fitted on the study's history and its sources', with its cross-validated error."""
    joined = history(view, trials, sources)
    return Surrogate(seed=seed, latency=view.latency).fit(joined), joined


def propose_for(
    view: StudyView, surrogate: Surrogate, history: History, config: ProposeConfig
) -> list[Proposal]:
    """Proposals in the study's own space, on its own network; searched around its best trials
    when it has any."""
    near = anchors(history, view.model.name, config.max_acc_drop)
    return propose(surrogate, view.model, config, near=near)


def enqueue(study: optuna.Study, proposals: Sequence[Proposal], **attrs: Any) -> int:
    """Add the proposals as waiting trials (``source=surrogate``, with what was predicted);
    ones already in the study are skipped. Returns how many were added."""
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for p in proposals:
        user_attrs = {
            "source": Source.SURROGATE.value,
            "proposer": p.proposer,
            "predicted_acc_drop": p.drop,
            "predicted_acc_drop_spread": p.spread,
            "predicted_compression_ratio": p.ratio,
            **attrs,
        }
        study.enqueue_trial(p.params, user_attrs=user_attrs, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before


# ----------------------------------------------------------------------------- compare


def _summary(trials: Sequence[FrozenTrial], budget: Budget) -> dict[str, Any]:
    done = [
        (t, r)
        for t in trials
        if t.state == TrialState.COMPLETE and (r := TrialRecord.from_attrs(t.user_attrs)) is not None
    ]
    i = budget.best([r for _, r in done], lambda r: r.compression_ratio)
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
    if not sizes or sizes[0] < 1 or sizes[-1] > len(own):
        raise SurrogateError(
            f"--at must be history sizes up to the search's {len(own)} finished trials, got {sizes}"
        )
    side = _side_study(view)
    objective = Objective(
        dataclasses.replace(view.ctx, spec=_side_spec(view)), sampler_name=Source.SURROGATE.value
    )
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
        rows.append(_compare_row(n, k, surrogate, history, own, evaluated, budget, model_s))
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


def size_error(history: History) -> float:
    """Median relative error of the computed compression ratio against the measured one, over
    a history's trials (the computed one is what proposals are ranked by)."""
    return float(np.median(np.abs(history.data.ratio / history.ratio - 1))) if len(history) else float("nan")


def _compare_row(
    n: int,
    k: int,
    surrogate: Surrogate,
    history: History,
    own: Sequence[FrozenTrial],
    evaluated: list[FrozenTrial],
    budget: Budget,
    model_s: float,
) -> dict[str, Any]:
    """The surrogate (n history trials + its proposals) beside the search after as many trials."""
    mine = _summary(evaluated, budget)
    before = _summary(own[:n], budget)
    proposals = [
        {key: t.user_attrs.get(attr) for key, attr in PROPOSAL_FIELDS.items()} | {"trial": t.number}
        for t in evaluated
    ]
    return {
        "history": n,
        "k": k,
        "cv_r2_acc_drop": surrogate.cv_["acc_drop"].r2,
        "cv_mae_acc_drop": surrogate.cv_["acc_drop"].mae,
        "cv_kendall_tau_acc_drop": surrogate.cv_["acc_drop"].kendall_tau,
        "cv_top5_hit_acc_drop": surrogate.cv_["acc_drop"].top_hit(5),
        "size_error": size_error(history),
        "surrogate": {
            **mine,  # best ratio among the proposals, run for real
            "trials": n + len(evaluated),
            "hypervolume": _summary(list(own[:n]) + evaluated, budget)["hypervolume"],
            "wall_s": before["wall_s"] + model_s + mine["wall_s"],
            "model_s": model_s,
            "proposals": proposals,
        },
        "search_same_trials": _summary(own[: n + len(evaluated)], budget),
    }


PROPOSAL_FIELDS = {  # compare's record of each proposal: key -> trial user attribute
    "proposer": "proposer",
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
    task = (
        view.study.user_attrs.get("task") if view.ctx.splits.task is not None else None
    )  # checked by open_view
    side = open_study(spec, view.ctx.storage, task=task, metric=view.ctx.splits.metric)
    if "base" not in side.user_attrs:
        side.set_user_attr("base", view.ctx.base_metrics.to_dict())
    side.set_user_attr("compares", view.study.study_name)
    return side
