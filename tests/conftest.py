from __future__ import annotations

import functools
import gzip
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Base models trained by the tests go to a throw-away cache, never the user's.
os.environ.setdefault("AUTOPRUNE_CACHE", tempfile.mkdtemp(prefix="autoprune-test-cache-"))
REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m autoprune ARGS`` as a user would, capturing both streams."""
    return subprocess.run(
        [sys.executable, "-m", "autoprune", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def images(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable uint8 images: each class lights up its own band of rows."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    band = max(1, shape[0] // classes)
    for i, label in enumerate(y):
        x[i, label * band : (label + 1) * band] = 255
    return x, y.astype(np.int64)


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    x, y = images(120, (28, 28), 10)
    xt, yt = images(40, (28, 28), 10, seed=1)
    write_idx(tmp_path / "train-images-idx3-ubyte", x, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xt, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", yt, gz=False)
    return tmp_path


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    for i in range(1, 6):
        x, y = images(20, (32, 32, 3), 10, seed=i)
        batch = {b"data": x.transpose(0, 3, 1, 2).reshape(20, -1), b"labels": y.tolist()}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    x, y = images(20, (32, 32, 3), 10, seed=9)
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(20, -1), b"labels": y.tolist()})
    )
    names = [f"class{i}".encode() for i in range(10)]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return tmp_path


def write_npz(path: Path, shape: tuple[int, ...], n: int = 96, classes: int = 10) -> Path:
    x, y = images(n, shape, classes)
    xt, yt = images(n // 2, shape, classes, seed=1)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


@pytest.fixture
def npz28(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "gray28.npz", (28, 28))


@pytest.fixture
def npz32rgb(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "rgb32.npz", (32, 32, 3))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real study with packed files, recipes, data and factories, good and bad (tests/workspace.py)."""
    from tests.workspace import build_workspace

    return build_workspace(tmp_path_factory.mktemp("workspace"))


PG_URL = os.environ.get("AUTOPRUNE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
if worker := os.environ.get("PYTEST_XDIST_WORKER"):  # tests run two at a time: a database each
    PG_URL = f"{PG_URL}_{worker}"


@functools.cache
def postgres_reachable() -> bool:
    """Whether the test database answers (a worker's own database is made on first use)."""
    import sqlalchemy

    try:
        if os.environ.get("PYTEST_XDIST_WORKER"):
            server, db = PG_URL.rsplit("/", 1)
            admin = sqlalchemy.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                if not conn.execute(
                    sqlalchemy.text(f"SELECT 1 FROM pg_database WHERE datname = '{db}'")
                ).first():
                    conn.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
            admin.dispose()
        engine = sqlalchemy.create_engine(PG_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


STORAGE_KINDS = [
    "inmemory",
    "sqlite",
    "journal",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}"
        ),
    ),
]


@pytest.fixture(params=STORAGE_KINDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path):
    """An Optuna storage of each kind autoprune supports, as its own code opens it (Optuna's
    testing habit: library tests run over every storage mode). Yields (storage, info or None)."""
    import optuna

    from autoprune.search.storage import open_storage, parse_storage

    if request.param == "inmemory":
        yield optuna.storages.InMemoryStorage(), None
        return
    url = {
        "sqlite": f"sqlite:///{tmp_path / 'study.db'}",
        "journal": f"journal:{tmp_path / 'study.log'}",
        "postgresql": PG_URL,
    }[request.param]
    info = parse_storage(url)
    store = open_storage(info)
    before = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    yield store, info
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):
        if s.study_name not in before:  # leave the shared PostgreSQL database as it was
            optuna.delete_study(study_name=s.study_name, storage=store)
