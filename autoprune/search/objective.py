"""What one Optuna trial does: a copy of the base model through the engine, measured and
recorded under stable names."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autoprune._compat import set_study_system_attr, study_system_attrs
from autoprune.compress import CompressConfig, RecipeError
from autoprune.data import DataSplits
from autoprune.errors import AutoPruneError, DivergedError
from autoprune.measure import Metrics
from autoprune.models import ModelSpec
from autoprune.pipeline import Continuation, compress, dataset_meta, pruned_shapes
from autoprune.search.record import Source, TrialRecord
from autoprune.search.space import (
    SpaceLayers,
    at_full_budget,
    baseline_config,
    config_from_params,
    distributions,
    out_of_space,
    suggest,
)
from autoprune.search.spec import StudySpec
from autoprune.search.stop import stop_requested
from autoprune.search.storage import check_artifact_id

log = logging.getLogger(__name__)
STATE_ATTR = "finetune_state_id"  # a search trial's saved fine-tuning state (an artifact), for its promotion
STATE_KEEP = (
    20  # fine-tuning states kept beside the Pareto front's: the most recent trials' (enforce_retention)
)
RECIPE_ATTR = (
    "autoprune:recipe:"  # + name: a baseline recipe, kept in the study (a trial holds only its name)
)


def store_recipe(study: optuna.Study, recipe: CompressConfig, params: list[str]) -> None:
    """Keep a baseline recipe in the study, with the space's parameters it sets: its trials
    carry only its name, so that a trial's page stays one line an attribute."""
    set_study_system_attr(
        study, RECIPE_ATTR + recipe.name, {"recipe": recipe.to_dict(), "params": sorted(params)}
    )


def stored_recipes(study: optuna.Study) -> dict[str, tuple[CompressConfig, set[str]]]:
    """The baseline recipes kept in the study, by name (stored data: each checked as a recipe
    file is; one this autoprune cannot read is left out)."""
    out = {}
    for key, value in study_system_attrs(study).items():
        if key.startswith(RECIPE_ATTR) and isinstance(value, dict):
            try:
                out[key.removeprefix(RECIPE_ATTR)] = (
                    CompressConfig.from_dict(value["recipe"]),
                    set(value["params"]),
                )
            except (RecipeError, KeyError, TypeError, ValueError):
                continue
    return out


def trial_recipe(
    trial: FrozenTrial | optuna.Trial, recipes: Mapping[str, tuple[CompressConfig, set[str]]]
) -> tuple[CompressConfig, set[str]] | None:
    """The recipe a baseline trial (or its final re-run) runs, and the space's parameters it
    sets; None for a search trial. A study made before recipes moved out of the trials keeps
    the recipe in the trial itself."""
    attrs = trial.user_attrs
    if isinstance(attrs.get("recipe"), dict):
        try:
            return CompressConfig.from_dict(attrs["recipe"]), set(attrs.get("recipe_params", []))
        except (RecipeError, TypeError, ValueError):
            return None
    name = attrs.get("recipe_name")
    return recipes.get(name) if isinstance(name, str) else None


@dataclass
class SearchContext:
    """What every trial of one worker shares: loaded once."""

    spec: StudySpec
    splits: DataSplits
    model_spec: ModelSpec
    base: nn.Module
    base_metrics: Metrics
    layers: SpaceLayers
    artifacts: FileSystemArtifactStore
    storage: optuna.storages.BaseStorage


class Objective:
    def __init__(self, context: SearchContext, *, sampler_name: str):
        self.ctx = context
        self.sampler_name = sampler_name
        self.dists = distributions(context.spec.space, context.layers)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        started = time.perf_counter()
        spec, ctx = self.ctx.spec, self.ctx
        d = spec.data
        source = trial.user_attrs.get("source") or self.sampler_name
        final = source == Source.FINAL
        stored = trial.user_attrs.get("parent")
        parent = stored if isinstance(stored, int) and not isinstance(stored, bool) else -1
        if final and not 0 <= parent < trial.number:
            return self._refuse(trial, f"names no earlier trial as its parent ({str(stored)[:40]})")
        number = parent if final else trial.number  # a final trial: its parent's seeds
        baseline = (
            trial_recipe(trial, stored_recipes(trial.study)) if "recipe_name" in trial.user_attrs else None
        )
        if "recipe_name" in trial.user_attrs and baseline is None:
            raise RecipeError(
                f"baseline {trial.user_attrs['recipe_name']!r} has no readable recipe in the study"
            )
        if baseline is not None:
            # A baseline runs its own recipe, fine-tuned as the trials are (budget, distillation); its
            # parameters are the recipe's values where the space can express them.
            config, names = baseline
            with warnings.catch_warnings():  # a recipe may lie outside the space (8 epochs, say)
                warnings.filterwarnings("ignore", message="Fixed parameter")
                suggest(trial, {k: v for k, v in self.dists.items() if k in names})
            config = baseline_config(config, spec.space, final=final)
        else:
            params = suggest(trial, self.dists)
            problem = out_of_space(params, self.dists)
            if problem is not None:  # an enqueued or stored trial
                return self._refuse(trial, problem)
            config = config_from_params(params, spec.space, ctx.layers, seed=spec.study.seed + number)
            if final:
                config = at_full_budget(config, spec.final.epochs, spec.final.quant_epochs)
        trial.set_user_attr("source", source)
        trial.set_user_attr(
            "worker", f"{socket.gethostname()}:{os.getpid()}"
        )  # which machine and process ran it
        if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:  # the GPU(s) its worker sees
            trial.set_user_attr("cuda_visible_devices", visible)
        if final:  # what "full budget" meant for this trial
            trial.set_user_attr(
                "budget",
                {
                    "epochs": config.finetune.epochs,
                    "max_batches": config.finetune.max_batches,
                    "quant_epochs": config.quantize.epochs,
                },
            )

        single = len(spec.study.objectives) == 1
        # a final trial runs another budget than the search's: its epochs are not comparable
        callbacks = [_stop_callback, _pruning_callback(trial)] if single and not final else [_stop_callback]
        # a search trial keeps its fine-tuning's end, so that finalize continues it (a promotion)
        promote = spec.final.promote and ctx.splits.task is None and baseline is None
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"trial-{trial.number}.apk"
            keep = Path(tmp) / "finetune-state.pt" if promote and not final else None
            resume = self._continuation(trial, parent, config, Path(tmp)) if promote and final else None
            if resume is not None:
                config, budget = _continued(config, resume, len(ctx.splits.train))
                trial.set_user_attr("budget", budget)
            try:
                result = compress(
                    ctx.base,
                    ctx.model_spec,
                    ctx.splits,
                    config,
                    out,
                    base_metrics=ctx.base_metrics,
                    callbacks=callbacks,
                    seed=spec.study.seed + number,
                    progress=False,
                    latency_repeats=spec.study.latency_repeats,
                    meta={
                        "study": trial.study.study_name,
                        "trial": trial.number,
                        "dataset": dataset_meta(d.name, d.data_dir, d.val_fraction, d.seed, ctx.splits)
                        if ctx.splits.task is None
                        else {"task": ctx.splits.name},  # your own data: eval asks for it
                        "recipe": trial.user_attrs.get("recipe_name") or f"{source} trial {trial.number}",
                        "settings": trial.params,
                        "base": ctx.base_metrics.summary(),
                    },
                    resume=resume,
                    keep=keep,
                )
            except DivergedError as e:
                trial.set_user_attr("fail_reason", str(e))
                raise optuna.TrialPruned(str(e)) from None
            record = TrialRecord.from_metrics(
                result.metrics, source=source, trial_s=time.perf_counter() - started
            )
            for key, value in record.to_user_attrs().items():
                trial.set_user_attr(key, value)
            artifact_id = upload_artifact(
                artifact_store=ctx.artifacts,
                file_path=str(out),
                study_or_trial=trial,
                mimetype="application/octet-stream",
            )
            trial.set_user_attr("artifact_id", artifact_id)
            if keep is not None and keep.is_file():
                state_id = upload_artifact(
                    artifact_store=ctx.artifacts,
                    file_path=str(keep),
                    study_or_trial=trial,
                    mimetype="application/octet-stream",
                )
                trial.set_user_attr(STATE_ATTR, state_id)
        judge = spec.study.budget
        if single:
            trial.set_constraint("acc_drop", judge.drop(record) - judge.max_drop)
        if judge.min_speedup:  # too slow is infeasible, for every sampler that reads constraints
            speedup = record.speedup if math.isfinite(record.speedup) else 0.0
            trial.set_constraint("speedup", judge.min_speedup - speedup)
        values = tuple(float(getattr(record, o)) for o in spec.study.objectives)
        return values[0] if single else values

    def _continuation(
        self, trial: optuna.Trial, parent: int, config: CompressConfig, folder: Path
    ) -> Continuation | None:
        """The parent search trial's saved fine-tuning state, or None: the final trial starts
        over (a study made before trials kept it, a state retention removed, or one that is not
        a state of this trial's network: stored data, checked before it is used)."""
        before = next((t for t in trial.study.get_trials(deepcopy=False) if t.number == parent), None)
        state_id = check_artifact_id(before.user_attrs.get(STATE_ATTR)) if before is not None else None
        if not state_id:
            return None
        path = folder / "parent-state.pt"
        try:
            download_artifact(artifact_store=self.ctx.artifacts, artifact_id=state_id, file_path=str(path))
            resume = Continuation.load(path)
            problem = resume.mismatch(pruned_shapes(self.ctx.base, config, self.ctx.splits.input_shape))
        except (FileNotFoundError, optuna.artifacts.exceptions.ArtifactNotFound):
            return None
        except AutoPruneError as e:
            problem = str(e)
        if problem:
            log.warning(
                "trial %d: trial %d's fine-tuning state is not usable (%s): starting over",
                trial.number,
                parent,
                problem,
            )
            return None
        return resume

    def _refuse(self, trial: optuna.Trial, problem: str) -> float | tuple[float, ...]:
        """Fail a trial that stored data made impossible, with one line, and let the search go
        on: Optuna fails a trial whose values are NaN (a ``fail_reason`` is never retried)."""
        trial.set_user_attr("fail_reason", problem)
        log.warning("trial %d: %s: not run", trial.number, problem)
        objectives = len(self.ctx.spec.study.objectives)
        return math.nan if objectives == 1 else (math.nan,) * objectives


def _continued(config: CompressConfig, resume: Continuation, train_size: int) -> tuple[CompressConfig, dict]:
    """``config`` at the full budget, less the batches its trial already had: the same epochs,
    each shortened so that the batches add up to the full budget's once."""
    ft = config.finetune
    total = ft.epochs * math.ceil(train_size / ft.batch_size)
    left = max(0, total - resume.batches)
    per_epoch = math.ceil(left / ft.epochs) if ft.epochs and left else None
    finetune = dataclasses.replace(ft, epochs=ft.epochs if per_epoch else 0, max_batches=per_epoch)
    budget = {
        "epochs": ft.epochs,
        "max_batches": None,
        "quant_epochs": config.quantize.epochs,
        "promoted": True,
        "batches_before": resume.batches,
        "batches_continued": (per_epoch or 0) * finetune.epochs,
    }
    return config.replace(finetune), budget


def _stop_callback(epoch: int, val_accuracy: float) -> None:
    """A requested stop (Ctrl-C) takes effect at an epoch boundary: a safe point."""
    if stop_requested():
        raise KeyboardInterrupt


def _pruning_callback(trial: optuna.Trial):
    def report(epoch: int, val_accuracy: float) -> None:
        trial.report(val_accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"validation accuracy {val_accuracy:.2f}% at epoch {epoch}")

    return report


def remove_orphans(storage: optuna.storages.BaseStorage, folder: Path, *, older_than: float) -> int:
    """Remove packed files no live trial of any study in ``storage`` owns: a worker killed
    between uploading its file and completing its trial leaves one behind, and so does a
    trial that failed after uploading. Files newer than ``older_than`` seconds are kept (a
    live worker may be between the two steps). Returns how many were removed."""
    if not folder.is_dir():
        return 0
    owned: set[str] = set()
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.COMPLETE:  # its own files: a retry inherits its parent's upload record
                owned.update(str(t.user_attrs.get(key)) for key in ("artifact_id", STATE_ATTR))
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):  # may be between upload and completion
                owned.update(
                    m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(t, storage=storage)
                )
    removed = 0
    now = time.time()
    for path in folder.iterdir():
        if (
            check_artifact_id(path.name) == path.name
            and path.name not in owned
            and now - path.stat().st_mtime > older_than
        ):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def enforce_retention(
    study: optuna.Study, store: FileSystemArtifactStore, keep: int, *, keep_states: int = STATE_KEEP
) -> int:
    """Keep the packed files of the Pareto front, the baselines and the ``keep`` most recent
    trials, and the fine-tuning states (about three times the network's size each, kept for a
    promotion) of the front and the ``keep_states`` most recent; remove the others. Returns how
    many packed files were removed."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    try:
        front = {t.number for t in study.best_trials}
    except RuntimeError:  # constrained single objective with no feasible trial
        front = set()
    baselines = {t.number for t in complete if t.user_attrs.get("source") == Source.BASELINE}
    recent = [t.number for t in complete]
    removed = 0
    for key, kept in (
        ("artifact_id", front | baselines | set(recent[-keep:])),
        (STATE_ATTR, front | set(recent[-keep_states:])),
    ):
        for t in complete:
            artifact_id = check_artifact_id(t.user_attrs.get(key))  # a path written into a study is skipped
            if t.number in kept or not artifact_id:
                continue
            try:
                store.remove(artifact_id)
                removed += key == "artifact_id"
            except (FileNotFoundError, optuna.artifacts.exceptions.ArtifactNotFound):
                pass
    return removed
