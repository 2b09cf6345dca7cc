"""The compression search: an Optuna study in which every trial compresses a copy of the
network. ``spec`` (what to search), ``space`` (the only module that calls ``trial.suggest_*``),
``objective`` (one trial), ``samplers`` (the registry), ``setup`` (the study, its inputs and
queued baselines), ``recovery`` (the lock, lost and stale trials), ``workers`` (the trial loop,
worker processes, their logs), ``run`` (all of it, resumed), ``storage``, ``report``."""

from autoprune.search.record import OBJECTIVES, Budget, TrialRecord
from autoprune.search.report import (
    best_trial,
    pareto_front,
    state_counts,
    study_budget,
    study_metric,
    trial_row,
)
from autoprune.search.run import run_search
from autoprune.search.samplers import list_samplers, make_sampler, register_sampler
from autoprune.search.spec import SpecError, StudySpec, load_spec, spec_from_dict
from autoprune.search.stop import stop_on_signals
from autoprune.search.storage import (
    StorageError,
    StorageInfo,
    artifact_dir,
    artifact_store,
    open_storage,
    parse_storage,
    resolve_study_name,
    storage_errors,
)

__all__ = [
    "OBJECTIVES",
    "Budget",
    "TrialRecord",
    "SpecError",
    "StorageError",
    "StorageInfo",
    "StudySpec",
    "artifact_dir",
    "artifact_store",
    "best_trial",
    "list_samplers",
    "load_spec",
    "make_sampler",
    "open_storage",
    "pareto_front",
    "parse_storage",
    "register_sampler",
    "resolve_study_name",
    "run_search",
    "spec_from_dict",
    "state_counts",
    "stop_on_signals",
    "storage_errors",
    "study_budget",
    "study_metric",
    "trial_row",
]
