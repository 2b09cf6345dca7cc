"""The workers: each runs trials until the study holds its target, in this process or in
worker processes (threads and GPUs split between them) whose log records are relayed here."""

from __future__ import annotations

import contextlib
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
from typing import Any

import optuna
import torch
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from autoprune._compat import heartbeat_age, heartbeat_backend, heartbeat_interval
from autoprune.device import current_device, resolve_device, set_device
from autoprune.errors import AutoPruneError
from autoprune.search.objective import (
    Objective,
    SearchContext,
    enforce_retention,
)
from autoprune.search.record import Source
from autoprune.search.recovery import StudyLock, fail_orphaned_trials
from autoprune.search.samplers import SamplerFactory, sampler_factory, sampler_name
from autoprune.search.setup import load_inputs, open_study, prepare
from autoprune.search.spec import StudySpec, spec_from_dict
from autoprune.search.stop import stop_on_signals, stop_requested
from autoprune.search.storage import (
    StorageInfo,
    exit_if_storage_lost,
    open_storage,
    parse_storage,
    storage_errors,
    watched,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
Hook = Callable[[optuna.Study, SearchContext], None]  # called after a trial finishes (the study's figures)


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) search trials; the final stage's re-runs do not count toward N."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if t.user_attrs.get("source") != Source.FINAL
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
    thread_lock_for_bars()
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
                liveness=spec.study.liveness,
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
            with watched(info, spec.study.liveness):
                work(study, Objective(ctx, sampler_name=sampler_name(study.sampler)), args.target)
    except KeyboardInterrupt:
        pass
    except AutoPruneError as e:
        print(f"autoprune search: worker {os.getpid()}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(getattr(e, "exit_code", 2))


def thread_lock_for_bars() -> None:
    """A worker draws no bars, so tqdm's lock need not be its default, a named semaphore made at
    the first bar (in a spawned process, registered with the resource tracker). Made while the
    heartbeat thread exits the process, that one leaked, and the tracker's warning followed the
    worker's one error line."""
    tqdm.set_lock(threading.RLock())


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


def run_workers(
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
