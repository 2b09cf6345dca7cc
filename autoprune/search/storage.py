"""Where a study lives: SQLite (default), PostgreSQL (many workers), or a journal file.

Every way of failing to reach a database is one line that never shows the password.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sqlite3
import sys
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from autoprune._compat import HeartbeatJournalStorage, release_process_resources
from autoprune.errors import AutoPruneError

DEFAULT_STORAGE = "sqlite:///studies/autoprune.db"  # relative to the current folder
HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
DB_TIMEOUT = 30  # seconds before an unreachable or silent PostgreSQL server is an error
SCHEMA_ATTEMPTS = 5
GRACE_PERIOD = 30  # a trial silent this long belongs to a dead worker: failed and retried
MAX_RETRY = 3


class StorageError(AutoPruneError):
    """A storage URL that is malformed, or a database that cannot be reached."""


@dataclass(frozen=True)
class StorageInfo:
    url: str  # as the user gave it (password included: never print or store this)
    kind: str  # "sqlite", "postgresql", "journal"
    safe_url: str  # for messages: password hidden
    public_url: str = ""  # for the record: no password and no query (where credentials may hide)

    @property
    def parallel_ok(self) -> bool:
        return self.kind != "sqlite"

    @property
    def path(self) -> Path | None:
        """The SQLite or journal file; None for a server or an in-memory database."""
        if self.kind == "journal":
            return Path(self.url)
        database = sqlalchemy.engine.make_url(self.url).database if self.kind == "sqlite" else None
        if not database or database == ":memory:":
            return None
        return Path(database.removeprefix("file:").partition("?")[0])

    @property
    def where(self) -> str:
        """For messages: the URL, and the file it resolves to from here (a relative default
        read from another folder is a different file)."""
        path = self.path
        return (
            f"{self.safe_url} ({path.resolve()})"
            if path is not None and not path.is_absolute()
            else self.safe_url
        )


def parse_storage(url: str) -> StorageInfo:
    """Classify a ``--storage`` value: sqlite:///..., postgresql://..., journal:PATH or *.log."""
    if url.startswith("journal:") or url.endswith((".log", ".journal", ".jsonl")):
        path = url.removeprefix("journal:").removeprefix("//")
        return StorageInfo(path, "journal", f"journal:{path}", f"journal:{path}")
    url = _quote_password(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(
            f"cannot parse storage URL {mask_url(url)!r}; use sqlite:///PATH.db, "
            "postgresql://USER@HOST/DB or journal:PATH"
        ) from None
    hidden = {k: "***" if "pass" in k.lower() else v for k, v in parsed.query.items()}
    safe = parsed.set(query=hidden).render_as_string(hide_password=True)
    public = sqlalchemy.engine.URL.create(
        parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database
    ).render_as_string()
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return StorageInfo(url, "sqlite", url, url)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # we ship psycopg 3, not psycopg2
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return StorageInfo(url, "postgresql", safe, public)
    raise StorageError(
        f"unsupported storage {safe!r}; use sqlite:///PATH.db, postgresql://... or journal:PATH"
    )


def _quote_password(url: str) -> str:
    """``user:p@ss@host`` means the password ``p@ss``: percent-encode it for the URL parser."""
    scheme, sep, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    if not sep or rest.count("@") < 2 or ":" not in userinfo:
        return url
    user, _, password = userinfo.partition(":")
    return f"{scheme}://{user}:{urllib.parse.quote(password, safe='')}@{hostpart}"


def mask_url(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ***, even one with a raw @."""
    return re.sub(r"(://[^:/@\s]*:)\S*@", r"\1***@", text)


@dataclass(frozen=True)
class Liveness:
    """How the storage tells a dead worker or server from a slow one: the spec's ``[study]``
    settings of the same names, in one place."""

    heartbeat_interval: int = HEARTBEAT_INTERVAL  # seconds between a running trial's heartbeats
    grace_period: int = GRACE_PERIOD  # a trial silent this long belongs to a dead worker
    timeout: int = DB_TIMEOUT  # seconds before an unreachable or silent PostgreSQL server is an error


def open_storage(
    info: StorageInfo,
    *,
    create: bool = True,
    read_only: bool = False,
    liveness: Liveness | None = None,
) -> BaseStorage:
    """Open the storage (``create``: and create it if needed); heartbeats with retry on RDB
    storages. A command that only reads passes ``create=False``: it never makes a database;
    ``read_only``: the connection cannot write either (a study someone else owns, ``--from``)."""
    liveness = liveness or Liveness()
    heartbeat_interval, grace_period = liveness.heartbeat_interval, liveness.grace_period
    path = info.path
    if path is not None:
        if (not create or read_only) and not path.is_file():
            raise StorageError(
                f"no study database at {path.resolve()} ({info.safe_url}); run 'autoprune search' "
                "first, or point --storage at the database"
            )
        if create and not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        if info.kind == "sqlite" and path.is_file():
            check_sqlite_schema(path)
    if info.kind == "journal":
        assert path is not None  # a journal is a file
        try:
            if path.is_file() and not _looks_like_journal(path):
                raise ValueError
            with warnings.catch_warnings():  # the retry callback is "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
            storage = HeartbeatJournalStorage(
                str(path),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                stale_trial_callback=retry,
            )
            optuna.get_all_study_summaries(storage, include_best_trial=False)  # reads the whole log
            return storage
        except OSError as e:
            raise StorageError(f"cannot open journal file {path}: {e.strerror}") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise StorageError(f"{path} is not an Optuna journal file") from None
    engine_kwargs: dict[str, Any] | None = None
    if info.kind == "postgresql":
        connect_args: dict[str, Any] = _pg_timeouts(liveness.timeout)
        if read_only:
            connect_args["options"] = "-c default_transaction_read_only=on"
        engine_kwargs = {"pool_pre_ping": True, "connect_args": connect_args}
    elif read_only and path is not None:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        engine_kwargs = {"creator": lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats and their retry are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    info.url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                    skip_table_creation=not create or read_only,
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Workers started together on an empty database race to create the schema; the
            # loser sees a duplicate type or table: the winner's schema is there a moment later.
            if not create or attempt == SCHEMA_ATTEMPTS - 1:
                raise StorageError(f"cannot open storage {info.safe_url}: {_reason(e, info)}") from None
            time.sleep(random.uniform(0.2, 1.0))
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError, TypeError) as e:
            # TypeError: the driver on a database it cannot read (SQL_ASCII text comes back as bytes)
            raise StorageError(f"cannot open storage {info.safe_url}: {_reason(e, info)}") from None
    raise AssertionError("unreachable")


def check_sqlite_schema(path: Path) -> None:
    """Refuse a SQLite file that holds views or triggers: Optuna creates neither, and a crafted
    one (a recursive view in place of a table) would hang every query that touches it."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            extra = conn.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger') LIMIT 1"
            ).fetchone()
    except sqlite3.Error as e:
        raise StorageError(f"{path} is not a readable SQLite study database: {e}") from None
    if extra is not None:
        raise StorageError(
            f"{path} holds a {extra[0]} ({extra[1]!r}) that Optuna never creates: not "
            "a study database autoprune reads"
        )


def _pg_timeouts(timeout: int) -> dict[str, int]:
    """libpq settings so that an unreachable or silently dead server is an error within about
    ``timeout`` seconds instead of a hang. A command that loses its server meets it up to three
    times in a row (a query in flight, the pool's ping, a new connection), so each wait is a
    third: connect timeout, TCP keepalives, unacknowledged data."""
    third = max(2, timeout // 3)  # libpq's connect_timeout floor is 2 s
    return {
        "connect_timeout": third,
        "keepalives": 1,
        "keepalives_idle": max(1, third // 2),
        "keepalives_interval": 1,
        "keepalives_count": max(1, third // 2),
        "tcp_user_timeout": third * 1000,
    }


def _looks_like_journal(path: Path) -> bool:
    """An Optuna journal is JSON lines, each an operation with an ``op_code``; Optuna itself
    skips a bad last line (a write in progress), so a file of one foreign line would read as
    an empty journal."""
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    if not first:
        return True
    record = json.loads(first)
    return isinstance(record, dict) and "op_code" in record


def _reason(e: BaseException, info: StorageInfo) -> str:
    """The database's own words: Optuna wraps them in a generic message, the driver's are below."""
    while (cause := e.__cause__ or e.__context__) is not None and not hasattr(e, "orig"):
        e = cause
    reason = str(getattr(e, "orig", None) or e).strip().splitlines()
    return mask_url((reason[0] if reason else type(e).__name__).replace(info.url, info.safe_url))[:200]


_ACTIVE: list[StorageInfo] = []  # the storages commands use now (storage_errors), innermost last


@contextlib.contextmanager
def storage_errors(info: StorageInfo) -> Iterator[None]:
    """A database that refuses a read or write mid-command (read-only, dropped, unreachable)
    becomes one line naming the storage, password masked."""
    _ACTIVE.append(info)
    try:
        yield
    except AutoPruneError:
        raise  # already one line (its context may hold the database's error: it was said)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        raise StorageError(f"storage {info.safe_url} failed: {_reason(e, info)}") from None
    except Exception as e:
        # Optuna can fail on its own follow-up error while a database disappears (Optuna 5:
        # UnboundLocalError 'updated_state' after a failed commit); the database's is the cause.
        cause = _database_cause(e)
        if cause is None:
            raise
        raise StorageError(f"storage {info.safe_url} failed: {_reason(cause, info)}") from None
    finally:
        _ACTIVE.pop()


@contextlib.contextmanager
def watched(info: StorageInfo, liveness: Liveness) -> Iterator[None]:
    """While the block runs, a thread pings a PostgreSQL server every heartbeat interval on a
    connection of its own, with the libpq timeouts of :func:`_pg_timeouts`. Optuna's heartbeat
    runs only during a trial; between trials the main thread meets a silent server in several
    calls in a row (a query, Optuna's fallback query, the pool's ping, a reconnect: 17 s seen
    for a 5 s timeout). The watch meets it within a third of its timeout whatever the command
    is doing, and its thread, named as a heartbeat, ends the process with the one line of
    :func:`exit_if_storage_lost` (through the command's thread hook)."""
    if info.kind != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(
        info.url, pool_size=1, max_overflow=0, connect_args=_pg_timeouts(liveness.timeout)
    )
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(liveness.heartbeat_interval):
            try:
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))
            except Exception:
                if (
                    stop.is_set()
                ):  # the command ended (on its own storage error, say) mid-ping: its line is said
                    return
                raise

    thread = threading.Thread(target=watch, name="autoprune-heartbeat-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        engine.dispose(close=False)  # a ping in flight finishes (or fails) on its own connection


def exit_if_storage_lost(thread_name: str, e: BaseException | None, prefix: str) -> None:
    """For a thread hook: a heartbeat thread that met a silent or lost database (it meets one
    first, within a third of ``study.db_timeout``) ends the process with one line naming the
    storage in use, exit 2. Nothing more can be recorded, and the trial in flight is left for
    another worker's heartbeat check to fail and retry; the main thread would only meet the
    same timeouts."""
    cause = _database_cause(e) if e is not None and "heartbeat" in thread_name else None
    if cause is not None and _ACTIVE:
        info = _ACTIVE[-1]
        print(
            f"{prefix}: error: storage {info.safe_url} failed: {_reason(cause, info)}",
            file=sys.stderr,
            flush=True,
        )
        release_process_resources()
        os._exit(2)


def _database_cause(error: BaseException) -> BaseException | None:
    """The database error somewhere in ``error``'s chain of causes, if any."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def check_artifact_id(artifact_id: object) -> str:
    """An artifact id read from a study is a UUID, never a path."""
    try:
        return (
            str(uuid.UUID(str(artifact_id)))
            if isinstance(artifact_id, str) and "/" not in artifact_id
            else ""
        )
    except ValueError:
        return ""


def artifact_dir(info: StorageInfo, configured: str | Path = "") -> Path:
    """The artifact folder: as configured (by the user, never by stored data), else beside the
    SQLite or journal file."""
    if configured:
        return Path(configured)
    if info.path is not None:
        return info.path.parent / "artifacts"
    return Path("studies") / "artifacts"


def artifact_store(path: Path, *, create: bool = True) -> FileSystemArtifactStore:
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise StorageError(
            f"artifact folder {path} does not exist; pass --artifacts DIR if the search kept them elsewhere"
        )
    return FileSystemArtifactStore(str(path))


def resolve_study_name(storage: BaseStorage, name: str | None, safe_url: str) -> str:
    """The study to read: the one named, or the only one in the storage."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is not None:
        if name not in names:
            raise StorageError(f"no study {name!r} in {safe_url}; studies: {', '.join(names) or '(none)'}")
        return name
    if not names:
        raise StorageError(
            f"{safe_url} holds no study yet; run 'autoprune search' first (or check --storage)"
        )
    if len(names) != 1:
        raise StorageError(
            f"{safe_url} holds {len(names)} studies; pick one with --study ({', '.join(names)})"
        )
    return names[0]
