"""Running a study: create or resume it, enqueue the baselines, run workers until the study
holds N finished trials, and summarise the Pareto front."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import logging.handlers
import multiprocessing
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # Windows: no lock file, one worker per SQLite or journal file
    fcntl = None  # type: ignore[assignment]

from autoprune._compat import heartbeat_age, heartbeat_backend, heartbeat_interval, rdb_backend, trial_id
from autoprune.compress import CompressConfig, load_recipe
from autoprune.compress.recipe import check_layers
from autoprune.data import load_dataset
from autoprune.device import current_device, resolve_device, set_device, use_device
from autoprune.errors import AutoPruneError
from autoprune.measure import Metrics, measure_model
from autoprune.models import ModelSpec, create_model, load_checkpoint
from autoprune.search.objective import (
    FINAL,
    Objective,
    SearchContext,
    enforce_retention,
    remove_orphans,
    store_recipe,
)
from autoprune.search.propose import SOURCE, Allocator, enqueue_proposals, proposal_budgets
from autoprune.search.samplers import SamplerFactory, make_sampler, sampler_factory, sampler_name
from autoprune.search.space import SpaceLayers, distributions, recipe_params
from autoprune.search.spec import StudySpec, check_task, record, spec_from_dict
from autoprune.search.stop import stop_on_signals, stop_requested
from autoprune.search.storage import (
    StorageError,
    StorageInfo,
    artifact_dir,
    artifact_store,
    exit_if_storage_lost,
    open_storage,
    parse_storage,
    storage_errors,
    watched,
)
from autoprune.sensitivity import sensitivity_for
from autoprune.task import load_task
from autoprune.train import train_base

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
Hook = Callable[[optuna.Study, SearchContext], None]  # called after a trial finishes (the study's figures)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if len(spec.study.objectives) > 1 or spec.study.pruner == "none":
        return optuna.pruners.NopPruner()  # intermediate values need a single objective
    if spec.study.pruner == "hyperband":
        top = max(spec.space.finetune_epochs) + max(spec.space.quant_epochs)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(top, 2))
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


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
        load_recipe(folder / path if not Path(path).is_absolute() else path)
        for path in (spec.study.baselines if spec_dir is not None else ())
    )
    for recipe in recipes:
        check_layers(recipe, model)
    if spec.model.checkpoint:
        base = load_checkpoint(model, spec.model.checkpoint).eval()
    else:
        base = train_base(
            model_spec, splits, spec.train, seed=d.seed, progress=progress, cached_only=cached_only
        ).model
    return Inputs(splits, model_spec, base, recipes)


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


class StudyLock:
    """One command at a time, across processes and machines, for what must happen once: the
    baselines queued, a lost trial retried, a stale trial failed and retried, and the check
    that the study still needs a trial together with that trial's creation (so N workers
    finish exactly N trials). A PostgreSQL advisory lock, or a lock file beside a SQLite or
    journal file; the kernel or the server releases either when its holder dies. A no-op in
    memory."""

    def __init__(self, storage: BaseStorage, name: str) -> None:
        self.key = (
            int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") & 0x7FFFFFFFFFFFFFFF
        )
        self.engine = getattr(storage, "engine", None) if isinstance(storage, RDBStorage) else None
        path = getattr(storage, "path", None) or (
            self.engine.url.database if self.engine is not None else None
        )
        self.path = (
            f"{path}.autoprune-lock" if path and path != ":memory:" and fcntl else None
        )  # not ".lock": the journal's
        if self.engine is not None and self.engine.dialect.name != "postgresql":
            self.engine = None
        self._held: Any = None

    def acquire(self) -> None:
        if self._held is not None:
            return
        if self.engine is not None:
            conn = self.engine.connect()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self._held = conn
        elif self.path is not None:
            f = open(self.path, "a")  # noqa: SIM115 (held open: the lock lives as long as the file)
            fcntl.flock(f, fcntl.LOCK_EX)
            self._held = f
        else:
            self._held = True

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None or held is True:
            return
        if self.engine is not None:
            try:
                held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                held.commit()
            finally:
                held.close()
        else:
            held.close()  # closing the file drops the flock

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def enqueue_baselines(study: optuna.Study, ctx: SearchContext, recipes: tuple[CompressConfig, ...]) -> int:
    """The manual recipes as the study's first trials, once per study (``source=baseline``).

    A baseline whose only trials failed (interrupted, or its worker lost) is queued again, once;
    one that failed twice is left with a warning naming why: the recipe itself fails."""
    if not recipes:
        return 0
    dists = distributions(ctx.spec.space, ctx.layers)
    with StudyLock(ctx.storage, ctx.spec.study.name):
        baselines = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("source") == "baseline"]
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
                params, user_attrs={"source": "baseline", "recipe_name": recipe.name}, skip_if_exists=False
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
        if any(t.user_attrs.get("source") == SOURCE for t in study.get_trials(deepcopy=False)):
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


def fail_orphaned_trials(study: optuna.Study) -> int:
    """Fail (and retry) trials of workers that died before their first heartbeat.

    Optuna's stale check on an RDB storage only looks at trials that have a heartbeat row; a
    worker killed in the moment between creating its trial and recording the first beat would
    leave that trial RUNNING forever, and a study that waits for it would never finish. (Our
    journal storage's stale check covers such trials itself.)
    """
    storage = rdb_backend(study)
    if storage is None or storage.get_heartbeat_interval() is None:
        return 0
    grace = storage.grace_period or 2 * (storage.get_heartbeat_interval() or 1)
    now = datetime.datetime.now()
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.datetime_start is None or (now - t.datetime_start).total_seconds() <= grace:
            continue
        if heartbeat_age(storage, t) is not None:
            continue  # Optuna's own stale check handles it
        try:
            if storage.set_trial_state_values(trial_id(t), state=TrialState.FAIL):
                failed += 1
                retry = storage.get_heartbeat_stale_trial_callback()
                if retry is not None:
                    retry(study, storage.get_trial(trial_id(t)))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return failed


def retry_lost_trials(study: optuna.Study) -> int:
    """Retry failed trials that nobody retried: a search interrupted by Ctrl-C leaves its trial
    FAIL, and so does a worker killed between failing a stale trial and queueing its retry
    (Optuna's ``fail_stale_trials`` is not atomic). A trial that failed by itself
    (``fail_reason``: a diverged fine-tune) is not retried, nor one retried ``MAX_RETRY``
    times. Call it under the :class:`StudyLock`, which stale checks hold too."""
    retry = getattr(heartbeat_backend(study), "get_heartbeat_stale_trial_callback", lambda: None)()
    if retry is None:
        return 0
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}  # every retry's ancestors
    lost = [
        t
        for t in trials
        if t.state == TrialState.FAIL and t.number not in retried and "fail_reason" not in t.user_attrs
    ]
    for t in lost:
        retry(study, t)  # Optuna's retry callback: a copy, WAITING, up to its max_retry
    return len(lost)


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) search trials; the final stage's re-runs do not count toward N."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if t.user_attrs.get("source") != FINAL
    ]
    done = sum(t.state in FINISHED for t in trials)
    return done, len(trials) - done


def work(
    study: optuna.Study,
    objective: Objective,
    target: int,
    *,
    bar: tqdm | None = None,
    on_trial: Hook | None = None,
) -> None:
    """Run trials until the study holds ``target`` finished (complete or pruned) trials;
    ``on_trial(study, context)`` after each (the figures the study shows)."""
    keep = objective.ctx.spec.study.keep_artifacts
    heartbeat = heartbeat_backend(study)
    waited: set[int] = set()

    def after(study: optuna.Study, trial: FrozenTrial) -> None:
        enforce_retention(study, objective.ctx.artifacts, keep)
        if bar is not None:
            bar.n = counts(study)[0]
            bar.set_postfix(last=f"#{trial.number} {trial.state.name.lower()}")  # refreshes
        if on_trial is not None:
            on_trial(study, objective.ctx)

    lock = StudyLock(objective.ctx.storage, study.study_name)

    def run(trial: optuna.Trial) -> float | tuple[float, ...]:
        lock.release()  # the trial exists: let the other workers count it
        return objective(trial)

    while True:
        if stop_requested():
            raise KeyboardInterrupt
        with lock:
            if heartbeat:
                fail_orphaned_trials(study)
                with warnings.catch_warnings():  # "experimental" since Optuna 2.9; we rely on it knowingly
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            done, running = counts(study)
            if done >= target:
                return
            if done + running < target:
                # Optuna fails stale trials again and creates the trial, still under the lock
                study.optimize(run, n_trials=1, callbacks=[after], gc_after_trial=False)
                continue
        if heartbeat:  # the last trials run elsewhere; take over if they die
            _say_waiting(study, heartbeat, waited, bar)
        time.sleep(1.0)


def _say_waiting(study: optuna.Study, storage: BaseStorage, said: set[int], bar: tqdm | None) -> None:
    """Once per trial: the last trials run elsewhere, and one of them has gone quiet."""
    interval = heartbeat_interval(storage) or 1
    grace = getattr(storage, "grace_period", None) or 2 * interval
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = heartbeat_age(storage, t)
        if t.number in said or age is None or age <= 2 * interval:
            continue
        said.add(t.number)
        if bar is not None and not bar.disable:
            tqdm.write(
                f"waiting up to {max(0, grace - age):.0f} s for trial {t.number}, last heard from "
                f"{age:.0f} s ago, to be retried",
                file=sys.stderr,
            )


@dataclass(frozen=True)
class WorkerArgs:
    spec: dict[str, Any]
    storage_url: str
    target: int
    threads: int
    logs: Any  # a multiprocessing queue: the worker's log records, relayed to the parent's logging
    # Pickled by reference: unpickling it in the worker imports the module that registered the
    # sampler (autoprune.surrogate, say) before the spec is read.
    sampler: SamplerFactory
    gpu: str | None = None  # the one GPU this worker sees (its CUDA_VISIBLE_DEVICES), if any
    task: str | None = None  # your own task, as named on the command line


def _worker_main(args: WorkerArgs) -> None:
    """One worker process: its own storage connection and thread share. An error is one line
    on stderr and the exit code (the parent reports how many workers stopped), never a
    traceback; a heartbeat that meets a lost database ends the worker at once."""
    stop_on_signals()
    threading.excepthook = _worker_thread_hook
    torch.set_num_threads(args.threads)
    _relay_logs_to(args.logs)
    warnings.filterwarnings("ignore", module="torch_pruning")
    spec = spec_from_dict(args.spec)
    info = parse_storage(args.storage_url)
    try:
        device = resolve_device(spec.study.device)
        set_device("cuda:0" if args.gpu is not None and device.type == "cuda" else device)  # its one GPU
        with storage_errors(info):
            storage = open_storage(
                info,
                heartbeat_interval=spec.study.heartbeat_interval,
                grace_period=spec.study.grace_period,
                timeout=spec.study.db_timeout,
            )
            study = open_study(spec, storage, task=args.task)
            ctx = prepare(
                spec,
                study,
                storage,
                info,
                progress=False,
                inputs=load_inputs(spec, progress=False, task=args.task),
            )
            with watched(info, interval=spec.study.heartbeat_interval, timeout=spec.study.db_timeout):
                work(study, Objective(ctx, sampler_name=sampler_name(study.sampler)), args.target)
    except KeyboardInterrupt:
        pass
    except AutoPruneError as e:
        print(f"autoprune search: worker {os.getpid()}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(getattr(e, "exit_code", 2))


def _relay_logs_to(queue: Any) -> None:
    """A worker's warnings (ours, Optuna's, Python's) go to the parent, which holds them as its
    own: printed once after the command succeeds, never over its one-line error."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    handler = logging.handlers.QueueHandler(queue)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)


class _Relay(logging.Handler):
    """The parent's end of the workers' log queue: each record goes to the root logger's
    handlers here (the CLI's held warnings), whatever the library's own loggers do."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


def worker_gpus(spec: StudySpec, jobs: int) -> list[str | None]:
    """The GPU each of ``jobs`` workers sees: the spec's ``devices`` in turn, else, when the
    search runs on CUDA, every GPU of the machine in turn; None: the worker's environment as is."""
    gpus = list(spec.study.devices)
    if not gpus and current_device().type == "cuda":
        gpus = list(range(torch.cuda.device_count()))
    return [str(gpus[i % len(gpus)]) if gpus else None for i in range(jobs)]


@contextlib.contextmanager
def _visible_gpu(gpu: str | None) -> Iterator[None]:
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        yield
    finally:
        if gpu is not None:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before


def _worker_thread_hook(args: threading.ExceptHookArgs) -> None:
    exit_if_storage_lost(
        args.thread.name if args.thread else "", args.exc_value, f"autoprune search: worker {os.getpid()}"
    )
    threading.__excepthook__(args)


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
        heartbeat_interval=spec.study.heartbeat_interval,
        grace_period=spec.study.grace_period,
        timeout=spec.study.db_timeout,
    )
    study = open_study(spec, storage, task=task, metric=inputs.splits.metric)
    ctx = prepare(spec, study, storage, info, progress=progress, inputs=inputs)
    remove_orphans(storage, artifact_dir(info, spec.study.artifacts), older_than=2 * spec.study.grace_period)
    with StudyLock(storage, spec.study.name):
        retry_lost_trials(study)
    enqueue_baselines(study, ctx, inputs.baselines)
    enqueue_warm_start(study, ctx, progress=progress)
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
            with watched(info, interval=spec.study.heartbeat_interval, timeout=spec.study.db_timeout):
                work(
                    study,
                    Objective(ctx, sampler_name=sampler_name(study.sampler)),
                    target,
                    bar=bar,
                    on_trial=on_trial,
                )
        else:  # each worker watches the storage; this process only waits for them
            _run_workers(
                spec, info, jobs, target, bar, study, threads, on_trial and (lambda s: on_trial(s, ctx)), task
            )
    finally:
        torch.set_num_threads(before)
        bar.close()
    if on_trial is not None:
        on_trial(study, ctx)
    return study


def _run_workers(
    spec: StudySpec,
    info: StorageInfo,
    jobs: int,
    target: int,
    bar: tqdm,
    study: optuna.Study,
    threads: int | None,
    on_trial: Callable[[optuna.Study], None] | None = None,
    task: str | None = None,
) -> None:
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    sampler = sampler_factory(spec.study.sampler)
    context = multiprocessing.get_context("spawn")
    logs = context.Queue()
    gpus = worker_gpus(spec, jobs)
    workers = [
        context.Process(
            target=_worker_main,
            args=(WorkerArgs(spec.to_dict(), info.url, target, threads, logs, sampler, gpu, task),),
        )
        for gpu in gpus
    ]
    relay = logging.handlers.QueueListener(logs, _Relay())
    relay.start()
    for w, gpu in zip(workers, gpus):
        with _visible_gpu(gpu):  # in the worker's environment before CUDA starts there
            w.start()
    try:
        while any(w.is_alive() for w in workers):
            done = counts(study)[0]
            if on_trial is not None and done != bar.n:
                on_trial(study)
            bar.n = done
            bar.refresh()
            time.sleep(1.0)
    finally:
        for w in workers:
            w.join()
        relay.stop()
    bar.n = counts(study)[0]
    if stop_requested():
        raise KeyboardInterrupt
    failed = [w.exitcode for w in workers if w.exitcode not in (0, None)]
    if failed and counts(study)[0] < target:
        raise AutoPruneError(f"{len(failed)} of {jobs} workers stopped with an error (exit codes {failed})")
