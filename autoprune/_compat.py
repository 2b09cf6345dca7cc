"""Every use of another library's private internals, in one place.

Optuna, torch and multiprocessing offer no public way to do these; each is pinned by a test
(tests/test_compat.py) that fails loudly when an upgrade moves it, and pyproject.toml bounds
the versions. Nothing else in autoprune reaches into ``_private`` names of Optuna or torch.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing.util
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import optuna_dashboard._custom_plot_data as dashboard_plots
import sqlalchemy
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

BEAT_ATTR = "autoprune:heartbeat"  # a journal trial's last heartbeat, seconds since the epoch


def rdb_backend(study: optuna.Study) -> RDBStorage | None:
    """The study's RDB storage under Optuna's caching wrapper, or None for other storages."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)  # optuna.storages._CachedStorage wraps RDBStorage
    return storage if isinstance(storage, RDBStorage) else None


def trial_id(trial: FrozenTrial) -> int:
    """The storage's id of a trial (storage methods take it; FrozenTrial keeps it private)."""
    return trial._trial_id


def study_system_attrs(study: optuna.Study) -> dict[str, object]:
    """The study's system attributes (where optuna-dashboard keeps its figures and notes too:
    out of the dashboard's attribute tables)."""
    return study._storage.get_study_system_attrs(study._study_id)


def study_system_attr(study: optuna.Study, key: str) -> object:
    """One system attribute of the study, or None."""
    return study_system_attrs(study).get(key)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def set_trial_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: object) -> None:
    """A user attribute on a trial a sampler holds as a FrozenTrial (samplers get no Trial)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def heartbeat_backend(study: optuna.Study) -> BaseStorage | None:
    """The study's storage when it records heartbeats (RDB, or our journal), else None."""
    storage = study._storage
    return storage if is_heartbeat_enabled(storage) else None


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """Seconds between a running trial's heartbeats; None when the storage records none."""
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


def heartbeat_age(storage: BaseStorage, trial: FrozenTrial) -> float | None:
    """Seconds since the trial's last heartbeat (by the database's clock, as Optuna's stale
    check reads it), or None if it never sent one."""
    if isinstance(storage, HeartbeatJournalStorage):
        beat = trial.system_attrs.get(BEAT_ATTR)  # a retry inherits its failed parent's: not its own
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return time.time() - beat if isinstance(beat, (int, float)) and beat >= started else None
    rdb = getattr(storage, "_backend", storage)
    if not isinstance(rdb, RDBStorage):
        return None
    with rdb.engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        beat = conn.execute(
            sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :id"),
            {"id": trial_id(trial)},
        ).scalar()
    if beat is None or now is None:
        return None
    if isinstance(beat, str):  # SQLite hands back text
        beat = datetime.datetime.fromisoformat(beat)
    return (now.replace(tzinfo=None) - beat.replace(tzinfo=None)).total_seconds()


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage with Optuna's heartbeat, which only RDB storages have: a running
    trial appends its beat to the log every ``heartbeat_interval`` seconds, and a trial silent
    for ``grace_period`` (or never heard from, that long after it started) is stale, so
    ``optuna.storages.fail_stale_trials`` fails and retries it as on PostgreSQL."""

    def __init__(
        self,
        path: str,
        *,
        heartbeat_interval: int,
        grace_period: int,
        stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        super().__init__(JournalFileBackend(path))
        self.path = path
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        # finished (or failed as stale by another worker) while beating
        with contextlib.suppress(UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, BEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            silent = heartbeat_age(self, t)  # None: no beat since it started (it never beat yet)
            if silent is None:
                silent = time.time() - (t.datetime_start or datetime.datetime.now()).timestamp()
            if silent > self.grace_period:
                stale.append(trial_id(t))
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_trial_callback


def order_dashboard_figures(order: Sequence[str]) -> None:
    """Make optuna-dashboard list a study's plotly figures with the ids in ``order`` first, in
    that order, the others after them by name: it lists them in the order of a Python set,
    which changes with every process (string hashes are salted), and shows them so."""
    listed = dashboard_plots.list_graph_object_ids
    if getattr(listed, "ordered", False):
        return
    rank = {graph_id: i for i, graph_id in enumerate(order)}

    def ordered(system_attrs: dict[str, Any]) -> list[str]:
        return sorted(listed(system_attrs), key=lambda i: (rank.get(i, len(rank)), i))

    ordered.ordered = True  # type: ignore[attr-defined]  # patched once per process
    dashboard_plots.list_graph_object_ids = ordered


def onnx_log_to_stderr() -> None:
    """Send torch's ONNX exporter log to stderr (a failed export prints the whole graph)."""
    torch._C._jit_set_onnx_log_output_stream("stderr")


def release_process_resources() -> None:
    """Before ``os._exit``: unlink the semaphores this process created (a ``--jobs`` log queue's),
    as a normal exit would; without it multiprocessing's resource tracker prints a warning about
    leaked semaphores after our one line. Runs only the finalizers of priority 0 and above, which
    never wait (a queue's feeder-thread join has -5)."""

    multiprocessing.util._run_finalizers(0)  # type: ignore[attr-defined]  # private, no stub
