"""Running a study: create or resume it, enqueue the baselines, run workers until the study
holds N finished trials, and summarise the Pareto front."""

from __future__ import annotations

from pathlib import Path

import optuna
import torch
from tqdm.auto import tqdm

from autoprune.device import resolve_device, use_device
from autoprune.search.objective import (
    Objective,
    remove_orphans,
)
from autoprune.search.recovery import StudyLock, retry_lost_trials
from autoprune.search.samplers import sampler_name
from autoprune.search.setup import (
    enqueue_baselines,
    enqueue_ranked_start,
    enqueue_warm_start,
    load_inputs,
    open_study,
    prepare,
)
from autoprune.search.spec import StudySpec
from autoprune.search.storage import (
    StorageError,
    StorageInfo,
    artifact_dir,
    open_storage,
    watched,
)
from autoprune.search.workers import Hook, counts, run_workers, work


def run_search(
    spec: StudySpec,
    info: StorageInfo,
    *,
    jobs: int = 1,
    threads: int | None = None,
    progress: bool = True,
    spec_dir: Path = Path("."),
    setup_only: bool = False,
    on_trial: Hook | None = None,
    task: str | None = None,
) -> optuna.Study:
    """Run (or resume) the study until it holds ``spec.study.trials`` finished trials; with
    ``setup_only``, stop once the study, the cached base model and the baselines are in place.

    Everything that can refuse the search (workers on SQLite, a device that is not there, the
    data, the model, the baseline recipes) is checked before the storage is opened: a refused
    search leaves none. Trials run on ``spec.study.device``; ``--jobs`` workers on CUDA take
    one GPU each (``spec.study.devices``, else every GPU in turn). ``task``: your own training
    loop and metric (``file.py:factory``) in place of the spec's data."""
    device = resolve_device(spec.study.device)
    with use_device(device):
        return _run_search(
            spec,
            info,
            jobs=jobs,
            threads=threads,
            progress=progress,
            spec_dir=spec_dir,
            setup_only=setup_only,
            on_trial=on_trial,
            task=task,
        )


def _run_search(
    spec: StudySpec,
    info: StorageInfo,
    *,
    jobs: int,
    threads: int | None,
    progress: bool,
    spec_dir: Path,
    setup_only: bool,
    on_trial: Hook | None,
    task: str | None,
) -> optuna.Study:
    if jobs > 1 and not info.parallel_ok:
        raise StorageError(
            f"--jobs {jobs} cannot share SQLite ({info.safe_url}): parallel workers lock it; "
            "use --storage postgresql://USER@HOST/DB or --storage journal:PATH"
        )
    inputs = load_inputs(spec, progress=progress, spec_dir=spec_dir, task=task)
    storage = open_storage(
        info,
        liveness=spec.study.liveness,
    )
    study = open_study(spec, storage, task=task, metric=inputs.splits.metric)
    ctx = prepare(spec, study, storage, info, progress=progress, inputs=inputs)
    remove_orphans(storage, artifact_dir(info, spec.study.artifacts), older_than=2 * spec.study.grace_period)
    with StudyLock(storage, spec.study.name):
        retry_lost_trials(study)
    enqueue_baselines(study, ctx, inputs.baselines)
    enqueue_warm_start(study, ctx, progress=progress)
    enqueue_ranked_start(study, ctx)
    if setup_only:
        return study
    target = spec.study.trials
    bar = tqdm(
        total=target,
        initial=counts(study)[0],
        desc=f"search {spec.study.name}",
        unit="trial",
        disable=not progress,
    )
    before = torch.get_num_threads()
    try:
        if jobs == 1:
            torch.set_num_threads(threads or before)
            with watched(info, spec.study.liveness):
                work(
                    study,
                    Objective(ctx, sampler_name=sampler_name(study.sampler)),
                    target,
                    bar=bar,
                    on_trial=on_trial,
                )
        else:  # each worker watches the storage; this process only waits for them
            run_workers(
                spec, info, jobs, target, bar, study, threads, on_trial and (lambda s: on_trial(s, ctx)), task
            )
    finally:
        torch.set_num_threads(before)
        bar.close()
    if on_trial is not None:
        on_trial(study, ctx)
    return study
