"""Opening a study: the study itself (created or resumed, its sampler and pruner), the
inputs (data, base model, its metrics) every worker needs, and the trials queued before the
search's own: the baselines' recipes and the sensitivity warm start."""

from __future__ import annotations

import logging
import logging.handlers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from autoprune.compress import STAGES, CompressConfig, RecipeError, load_recipe
from autoprune.compress.recipe import fit_recipe
from autoprune.compress.structured import FilterPruneConfig
from autoprune.data import load_dataset
from autoprune.device import model_device
from autoprune.errors import AutoPruneError
from autoprune.measure import Metrics, measure_model
from autoprune.models import ModelSpec, create_model, load_checkpoint
from autoprune.search.ladder import enqueue_ladder, ladder_shares
from autoprune.search.objective import (
    SearchContext,
    store_recipe,
)
from autoprune.search.propose import Allocator, enqueue_proposals, proposal_budgets
from autoprune.search.record import Source
from autoprune.search.recovery import StudyLock
from autoprune.search.samplers import make_pruner, make_sampler
from autoprune.search.space import SpaceLayers, distributions, recipe_params
from autoprune.search.spec import SpecError, StudySpec, check_task, record
from autoprune.search.storage import (
    StorageInfo,
    artifact_dir,
    artifact_store,
)
from autoprune.sensitivity import sensitivity_for
from autoprune.task import load_task
from autoprune.train import train_base

log = logging.getLogger(__name__)


def open_study(
    spec: StudySpec, storage: BaseStorage, *, task: str | None = None, metric: str = "accuracy"
) -> optuna.Study:
    """Create the study, or load it to resume; its objectives must match the spec's. The
    sampler draws trial N from (``study.seed``, N), whichever worker runs it. A study searched
    with your own ``task`` records its name (a note: it is never imported from there) and its
    ``metric``, shown wherever accuracy would be."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    exists = spec.study.name in names
    study = optuna.create_study(
        study_name=spec.study.name,
        storage=storage,
        directions=spec.directions,
        sampler=make_sampler(spec, spec.study.seed),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    stored = study.user_attrs.get("objectives")
    if exists and stored is not None:
        check_task(study, task)  # a study resumed with the task (or the data) it was searched with
    if exists and stored is not None and stored != spec.study.objectives:
        raise AutoPruneError(
            f"study {spec.study.name!r} optimises {stored}, not {spec.study.objectives}; pick another --study"
        )
    if not exists or stored is None:
        study.set_user_attr("objectives", spec.study.objectives)
        study.set_user_attr("model", spec.model.name)
        study.set_user_attr("dataset", spec.data.name)
        study.set_user_attr("spec", record(spec))  # never the password
        study.set_user_attr("metric", metric)
        if task is not None:
            study.set_user_attr("task", task)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # the names optuna-dashboard shows
            study.set_metric_names([metric if o == "accuracy" else o for o in spec.study.objectives])
    return study


@dataclass(frozen=True)
class Inputs:
    """What a search needs before it touches the storage: the data, the base model and the
    baseline recipes, so that a refused search leaves no database or study behind."""

    splits: Any
    model_spec: ModelSpec
    base: torch.nn.Module
    baselines: tuple[CompressConfig, ...] = ()


def load_inputs(
    spec: StudySpec,
    *,
    progress: bool,
    spec_dir: Path | None = None,
    cached_only: bool = False,
    task: str | None = None,
) -> Inputs:
    """Load the data and the base model (trained at most once: cached; ``cached_only``: never
    trained here, for a study someone else made); with ``spec_dir``, read and check the baseline
    recipes too."""
    d = spec.data
    if task is not None:  # your own loop and metric in place of the spec's data
        if spec.space.distill:
            raise SpecError("space.distill: your task's finetune trains its own way; set it to 0 with --task")
        splits = load_task(task)
    else:
        splits = load_dataset(
            d.name, data_dir=d.data_dir or None, val_fraction=d.val_fraction, seed=d.seed, options=d.options
        )
    c, h, w = splits.input_shape
    model_spec = ModelSpec(spec.model.name, splits.num_classes, c, (h, w))
    model = create_model(model_spec)  # a bad factory fails here, before any training
    folder = spec_dir if spec_dir is not None else Path()
    recipes = tuple(
        recipe
        for path in (spec.study.baselines if spec_dir is not None else ())
        if (recipe := _fitted(load_recipe(folder / path if not Path(path).is_absolute() else path), model))
    )
    if spec.model.checkpoint:
        base = load_checkpoint(model, spec.model.checkpoint).eval()
    else:
        base = train_base(
            model_spec, splits, spec.train, seed=d.seed, progress=progress, cached_only=cached_only
        ).model
    return Inputs(splits, model_spec, base, recipes)


def _fitted(recipe: CompressConfig, model: torch.nn.Module) -> CompressConfig | None:
    """A baseline recipe said in ``model``'s layers; one that names a layer ``model`` lacks (a
    LeNet recipe beside your own network) is left out with a warning, not run (None)."""
    try:
        return fit_recipe(recipe, model)
    except RecipeError as e:
        log.warning("baseline recipe %s is left out: %s", recipe.name, e)
        return None


def prepare(
    spec: StudySpec,
    study: optuna.Study,
    storage: BaseStorage,
    info: StorageInfo,
    *,
    progress: bool,
    inputs: Inputs | None = None,
    read_only: bool = False,
) -> SearchContext:
    """One worker's context: the inputs (loaded now unless given), the artifact store and the
    base metrics (measured once per study). ``read_only``: a study only read (``--from``):
    nothing is written into it or beside it, and its base is never trained here."""
    inputs = inputs or load_inputs(spec, progress=progress, cached_only=read_only)
    folder = artifact_dir(info, spec.study.artifacts)
    store = FileSystemArtifactStore(str(folder)) if read_only else artifact_store(folder)
    metrics = base_metrics(study, inputs.base, inputs.splits, spec.study.latency_repeats, store=not read_only)
    ctx = SearchContext(
        spec,
        inputs.splits,
        inputs.model_spec,
        inputs.base,
        metrics,
        SpaceLayers.of(inputs.base),
        store,
        storage,
    )
    if hasattr(study.sampler, "attach"):  # a sampler that models the network (the surrogate's)
        study.sampler.attach(ctx)
    return ctx


def base_metrics(
    study: optuna.Study, base: torch.nn.Module, splits: Any, latency_repeats: int, *, store: bool = True
) -> Metrics:
    """The base model's metrics, measured once per study and shared by every worker
    (``store=False``: measured, never stored)."""
    stored = Metrics.from_stored(study.user_attrs.get("base"))
    if stored is None:  # not measured yet, or what is stored is not a measurement
        metrics = measure_model(base, splits, latency_repeats=latency_repeats)
        if store:
            study.set_user_attr("base", metrics.to_dict())
        return metrics
    return stored


def enqueue_baselines(study: optuna.Study, ctx: SearchContext, recipes: tuple[CompressConfig, ...]) -> int:
    """The manual recipes as the study's first trials, once per study (``source=baseline``).

    A baseline whose only trials failed (interrupted, or its worker lost) is queued again, once;
    one that failed twice is left with a warning naming why: the recipe itself fails."""
    if not recipes:
        return 0
    dists = distributions(ctx.spec.space, ctx.layers)
    with StudyLock(ctx.storage, ctx.spec.study.name):
        baselines = [
            t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("source") == Source.BASELINE
        ]
        added = 0
        for recipe in recipes:
            mine = [t for t in baselines if t.user_attrs.get("recipe_name") == recipe.name]
            if any(t.state != TrialState.FAIL for t in mine):
                continue  # done, running or queued
            if len(mine) >= 2:
                reason = mine[-1].user_attrs.get("fail_reason", "no reason recorded")
                log.warning(
                    "baseline %s failed %d times (%s); not queued again", recipe.name, len(mine), reason
                )
                continue
            params = recipe_params(recipe, dists, ctx.base)
            store_recipe(study, recipe, list(params))
            study.enqueue_trial(
                params,
                user_attrs={"source": Source.BASELINE.value, "recipe_name": recipe.name},
                skip_if_exists=False,
            )
            added += 1
    return added


def enqueue_warm_start(study: optuna.Study, ctx: SearchContext, *, progress: bool = False) -> int:
    """The sensitivity allocator's proposals as the study's first search trials, once per study
    (``source=sensitivity``, with the budget each was allocated under and its predicted drop).
    The analysis is computed at most once per base model (cached). Returns how many were queued."""
    s = ctx.spec.study
    if not s.warm_start:
        return 0
    with StudyLock(ctx.storage, s.name):
        if any(t.user_attrs.get("source") == Source.SENSITIVITY for t in study.get_trials(deepcopy=False)):
            return 0  # queued once: a resumed study does not queue them again
        sensitivity, _ = sensitivity_for(ctx.base, ctx.splits, progress=progress)
        allocator = Allocator(ctx.base, ctx.model_spec, ctx.spec.space, sensitivity)
        proposals = allocator.propose(
            proposal_budgets(s.max_acc_drop, s.warm_start), minimise=s.allocation_cost
        )
        added = enqueue_proposals(study, proposals)
    if not proposals:
        log.warning("warm start: no allocation fits any budget (the bits' own damage exceeds them)")
    return added


def enqueue_ranked_start(study: optuna.Study, ctx: SearchContext) -> int:
    """A ranked space's first ``space.ranked_start`` trials at shares whose MAC reductions step
    evenly in log (:mod:`autoprune.search.ladder`), once per study. Returns how many were queued."""
    space = ctx.spec.space
    if not space.ranked_start or "ranked_ratio" not in distributions(space, ctx.layers):
        return 0  # not ranked, no conv, or the share fixed
    with StudyLock(ctx.storage, ctx.spec.study.name):
        if any(t.user_attrs.get("source") == Source.LADDER for t in study.get_trials(deepcopy=False)):
            return 0  # queued once: a resumed study does not queue them again
        low, high = space.ratio
        config = STAGES.get("structured").from_params({"ranked_ratio": low}, space, ctx.layers)
        assert isinstance(config, FilterPruneConfig)  # the trials' own mapping of the share
        example = torch.zeros(1, *ctx.splits.input_shape, device=model_device(ctx.base))
        shares = ladder_shares(ctx.base, config, example, (low, high), space.ranked_start)
        return enqueue_ladder(study, shares)
