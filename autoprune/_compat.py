"""Every use of another library's private internals, in one place.

Optuna and torch offer no public way to do these; each is pinned by a test
(tests/test_compat.py) that fails loudly when an upgrade moves it, and pyproject.toml bounds
the versions. Nothing else in autoprune reaches into ``_private`` names of Optuna or torch.
"""

from __future__ import annotations

import optuna
import sqlalchemy
import torch
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial


def rdb_backend(study: optuna.Study) -> RDBStorage | None:
    """The study's RDB storage under Optuna's caching wrapper, or None for other storages."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)  # optuna.storages._CachedStorage wraps RDBStorage
    return storage if isinstance(storage, RDBStorage) else None


def trial_id(trial: FrozenTrial) -> int:
    """The storage's id of a trial (storage methods take it; FrozenTrial keeps it private)."""
    return trial._trial_id


def has_heartbeat(storage: RDBStorage, trial: FrozenTrial) -> bool:
    """Whether the trial ever sent a heartbeat: Optuna's stale check sees only those trials."""
    with storage.engine.connect() as conn:
        row = conn.execute(
            sqlalchemy.text("SELECT 1 FROM trial_heartbeats WHERE trial_id = :id"), {"id": trial_id(trial)}
        ).first()
    return row is not None


def onnx_log_to_stderr() -> None:
    """Send torch's ONNX exporter log to stderr (a failed export prints the whole graph)."""
    torch._C._jit_set_onnx_log_output_stream("stderr")
