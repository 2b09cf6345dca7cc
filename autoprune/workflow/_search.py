"""The search as a command runs it: which spec, the run itself, and what it reports."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from autoprune.errors import AutoPruneError
from autoprune.search.record import Source, best_field
from autoprune.search.report import best_trial, pareto_front, state_counts, study_metric, trial_row
from autoprune.search.run import run_search
from autoprune.search.spec import StudySpec, load_spec
from autoprune.search.storage import (
    StorageInfo,
    artifact_dir,
    artifact_store,
    open_storage,
    parse_storage,
    resolve_study_name,
    storage_errors,
)
from autoprune.search.workers import counts
from autoprune.workflow._study_figures import Publisher

DEFAULT_SPEC = Path("studies/digits-lenet5.toml")  # the embedded default, in a checkout


class Interrupted(AutoPruneError):
    exit_code = 130


def search_spec(path: Path | None = None, **overrides: Any) -> tuple[StudySpec, Path]:
    """The spec at ``path`` (default: the embedded digits default) with the study section's
    ``overrides`` (None: not given), and the folder its baseline recipes are relative to."""
    if path is not None:
        spec, spec_dir = load_spec(path), path.resolve().parent
    elif DEFAULT_SPEC.is_file():
        spec, spec_dir = load_spec(DEFAULT_SPEC), DEFAULT_SPEC.resolve().parent
    else:  # outside a checkout: the same default, without the baseline recipe files
        spec, spec_dir = StudySpec(), Path.cwd()
        spec = spec.with_study(name="digits-lenet5")
    return spec.with_study(**overrides), spec_dir


def search(
    spec: StudySpec,
    info: StorageInfo,
    *,
    spec_dir: Path,
    jobs: int = 1,
    threads: int | None = None,
    progress: bool = True,
    setup_only: bool = False,
    task: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the search and summarise it; an interruption leaves every finished
    trial stored and says how many."""
    try:
        with storage_errors(info):
            publish = Publisher(spec.study.budget, artifacts=artifact_dir(info, spec.study.artifacts))
            study = run_search(
                spec,
                info,
                jobs=jobs,
                threads=threads,
                progress=progress,
                spec_dir=spec_dir,
                setup_only=setup_only,
                on_trial=publish,
                task=task,
            )
            return search_summary(study, spec, info)
    except KeyboardInterrupt:
        try:
            study = optuna.load_study(study_name=spec.study.name, storage=open_storage(info))
        except KeyError:  # stopped in base training, before the study was made
            raise Interrupted(
                "interrupted before the first trial (no study stored yet); run "
                "the same command again to start"
            ) from None
        raise Interrupted(
            f"interrupted: {counts(study)[0]} of {spec.study.trials} trials finished and stored; "
            "run the same command again to resume"
        ) from None


def command_prefix() -> str:
    """How to run autoprune again as this process runs: ``autoprune`` when that name on PATH is
    this installation's, else the script beside this Python (a virtual environment that is not
    activated: ``.venv/bin/autoprune``), else ``python -m autoprune``."""
    beside = Path(sys.executable).parent / "autoprune"
    found = shutil.which("autoprune")
    if found and (not beside.exists() or Path(found).resolve() == beside.resolve()):
        return "autoprune"
    if beside.exists():
        relative = os.path.relpath(beside)
        return shlex.quote(relative if not relative.startswith("..") else str(beside))
    return f"{shlex.quote(sys.executable)} -m autoprune"


def search_summary(study: optuna.Study, spec: StudySpec, info: StorageInfo) -> dict[str, Any]:
    budget = spec.study.budget
    best = best_trial(study, budget)
    storage_arg = info.safe_url if "***" not in info.safe_url else "URL"
    run = command_prefix()
    baselines = [
        {**trial_row(t), "judged_drop": budget.judged(t.user_attrs), "within": budget.within(t.user_attrs)}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("source") == Source.BASELINE
    ]
    return {
        "study": study.study_name,
        "storage": info.safe_url,
        "objectives": spec.study.objectives,
        "best_field": best_field(spec.study.objectives),  # what "best" maximises
        "metric": study_metric(study),
        "target_trials": spec.study.trials,
        "states": state_counts(study),
        "base": study.user_attrs.get("base"),
        "pareto": [trial_row(t) for t in pareto_front(study)],
        "best": trial_row(best) if best else None,
        "best_judged_drop": budget.judged(best.user_attrs) if best else None,  # drop + z * se, as judged
        "z": budget.z,
        "baselines": baselines,
        "run": run,  # how to call autoprune from here: the commands printed use it
        "max_acc_drop": spec.study.max_acc_drop,
        "min_speedup": spec.study.min_speedup,
        "selection": spec.study.selection,
        "confidence": spec.study.confidence,
        "dashboard": f"{run} dashboard --storage {shlex.quote(storage_arg)}",
    }


def open_stored(storage: str, study: str | None) -> tuple[optuna.Study, StorageInfo]:
    """The study a read command names (the only one in the storage when ``study`` is None), from
    a storage it never creates."""
    info = parse_storage(storage)
    with storage_errors(info):
        opened = open_storage(info, create=False)
        name = resolve_study_name(opened, study, info.where)
        return optuna.load_study(study_name=name, storage=opened), info


def trials_summary(study: optuna.Study, info: StorageInfo) -> dict[str, Any]:
    """Every trial of the study as a row (``autoprune trials``)."""
    return {
        "study": study.study_name,
        "storage": info.safe_url,
        "states": state_counts(study),
        "metric": study_metric(study),
        "trials": [trial_row(t) for t in study.get_trials(deepcopy=False)],
    }


def dashboard_sources(storage: str, artifacts: Path | None) -> tuple[BaseStorage, StorageInfo, Any]:
    """What ``autoprune dashboard`` serves: the storage (never created by it) and the artifact
    store beside it (None when there is none and none was named)."""
    info = parse_storage(storage)
    with storage_errors(info):
        opened = open_storage(info, create=False)  # it only shows studies: it never makes a database
    folder = artifacts or artifact_dir(info)
    store = artifact_store(folder, create=False) if folder.is_dir() or artifacts else None
    return opened, info, store
