"""Where a study lives: SQLite (default), PostgreSQL (many workers), or a journal file.

Every way of failing to reach a database is one line that never shows the password.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from autoprune.errors import AutoPruneError

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 30  # a trial silent this long belongs to a dead worker: failed and retried
MAX_RETRY = 3


class StorageError(AutoPruneError):
    """A storage URL that is malformed, or a database that cannot be reached."""


@dataclass(frozen=True)
class StorageInfo:
    url: str  # as the user gave it (password included: never print this)
    kind: str  # "sqlite", "postgresql", "journal"
    safe_url: str  # for messages: password hidden

    @property
    def parallel_ok(self) -> bool:
        return self.kind != "sqlite"


def parse_storage(url: str) -> StorageInfo:
    """Classify a ``--storage`` value: sqlite:///..., postgresql://..., journal:PATH or *.log."""
    if url.startswith("journal:") or url.endswith((".log", ".journal", ".jsonl")):
        path = url.removeprefix("journal:").removeprefix("//")
        return StorageInfo(path, "journal", f"journal:{path}")
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(
            f"cannot parse storage URL {_mask(url)!r}; use sqlite:///PATH.db, "
            "postgresql://USER@HOST/DB or journal:PATH"
        ) from None
    safe = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return StorageInfo(url, "sqlite", safe)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # we ship psycopg 3, not psycopg2
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return StorageInfo(url, "postgresql", safe)
    raise StorageError(f"unsupported storage {safe!r}; use sqlite:///PATH.db, postgresql://... or journal:PATH")


def _mask(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(
    info: StorageInfo, *, heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD
) -> BaseStorage:
    """Open (and create if needed) the storage; heartbeats with retry on RDB storages."""
    if info.kind == "journal":
        path = Path(info.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise StorageError(f"cannot open journal file {path}: {e.strerror}") from None
    if info.kind == "sqlite":
        database = sqlalchemy.engine.make_url(info.url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats and their retry are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                info.url,
                engine_kwargs={"pool_pre_ping": True} if info.kind == "postgresql" else None,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        reason = reason.replace(info.url, info.safe_url)
        raise StorageError(f"cannot open storage {info.safe_url}: {_mask(reason)[:200]}") from None


def artifact_dir(info: StorageInfo, configured: str = "") -> Path:
    """The artifact folder: as configured, else beside the SQLite or journal file."""
    if configured:
        return Path(configured)
    if info.kind == "sqlite":
        database = sqlalchemy.engine.make_url(info.url).database or ""
        if database and database != ":memory:":
            return Path(database).parent / "artifacts"
    if info.kind == "journal":
        return Path(info.url).parent / "artifacts"
    return Path("studies") / "artifacts"


def artifact_store(path: Path) -> FileSystemArtifactStore:
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def resolve_study_name(storage: BaseStorage, name: str | None, safe_url: str) -> str:
    """The study to read: the one named, or the only one in the storage."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is not None:
        if name not in names:
            raise StorageError(f"no study {name!r} in {safe_url}; studies: {', '.join(names) or '(none)'}")
        return name
    if not names:
        raise StorageError(f"{safe_url} holds no study yet; run 'autoprune search' first (or check --storage)")
    if len(names) != 1:
        raise StorageError(f"{safe_url} holds {len(names)} studies; pick one with --study ({', '.join(names)})")
    return names[0]
