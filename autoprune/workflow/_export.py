"""Reading results back out of a study: the packed file of one trial, or of the best one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from autoprune.errors import AutoPruneError
from autoprune.names import file_stem
from autoprune.search.report import best_trial, study_budget
from autoprune.search.storage import StorageInfo, artifact_dir, artifact_store, check_artifact_id

NOTHING_WITHIN = (
    "run more trials (search --trials N), re-run the best at the full fine-tuning budget (finalize), "
    "allow more drop (--max-acc-drop), or pick a trial from the table (--trial N)"
)


def find_trial(study: optuna.Study, trial: int | str, *, max_acc_drop: float | None = None) -> FrozenTrial:
    """Trial number ``trial``, or with ``"best"`` the highest compression ratio within the
    budget (``max_acc_drop``, default the study's own)."""
    if trial == "best":
        budget = study_budget(study)
        if max_acc_drop is not None:
            budget = dataclasses.replace(budget, max_drop=max_acc_drop)
        found = best_trial(study, budget)
        if found is None:
            raise AutoPruneError(
                f"no completed trial of {study.study_name} is within {budget.max_drop} points of the base"
                + (" (judged on the drop's upper confidence bound)" if budget.z else "")
                + f"; {NOTHING_WITHIN}"
            )
        return found
    found = next((t for t in study.get_trials(deepcopy=False) if t.number == trial), None)
    if found is None:
        raise AutoPruneError(f"--trial {trial}: expected a trial number below {len(study.trials)} or 'best'")
    return found


def default_export_path(study: optuna.Study, trial: FrozenTrial) -> Path:
    """``STUDY-trial-N.apk`` in the current folder, whatever name the study was stored under."""
    return Path(f"{file_stem(study.study_name)}-trial-{trial.number}.apk")


def export_trial(
    study: optuna.Study, trial: FrozenTrial, out: Path, info: StorageInfo, *, artifacts: Path | None = None
) -> Path:
    """Copy the trial's packed file to ``out``. The artifact folder is the caller's (default:
    beside the database), never one a study names; the artifact id must be a UUID."""
    artifact_id = check_artifact_id(trial.user_attrs.get("artifact_id"))
    if not artifact_id:
        raise AutoPruneError(f"trial {trial.number} is {trial.state.name.lower()} and has no packed file")
    folder = artifacts or artifact_dir(info)
    store = artifact_store(folder, create=False)
    try:
        download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(out))
    except (ArtifactNotFound, FileNotFoundError):
        raise AutoPruneError(
            f"the packed file of trial {trial.number} is not in {folder}: removed by the retention rule, "
            "or kept elsewhere (pass --artifacts DIR)"
        ) from None
    return out
