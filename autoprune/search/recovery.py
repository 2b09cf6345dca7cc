"""What keeps a study whole when workers die: the lock that lets one process prepare a study,
trials left running by a killed process failed, and failed trials retried."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

try:
    import fcntl
except ImportError:  # Windows: no lock file, one worker per SQLite or journal file
    fcntl = None  # type: ignore[assignment]

from autoprune._compat import heartbeat_age, heartbeat_backend, rdb_backend, trial_id


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
