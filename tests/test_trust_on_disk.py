"""What autoprune reads or writes on disk beside the user's own files: the cache (which others
may share) and dataset files (which may come from anywhere). A planted symlink is never
followed, a foreign or world-writable cache folder is refused, a swapped cache file is noticed,
and a crafted CIFAR-10 batch never runs code."""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.cache import SHARED_ENV, CacheError, cache_folder, write_atomic
from autoprune.data import load_dataset
from autoprune.errors import DataError
from autoprune.models import ModelSpec
from autoprune.sensitivity import sensitivity_for
from autoprune.train import TrainConfig, train_base

SPEC = ModelSpec("lenet5", 10, 1, (8, 8))
CONFIG = TrainConfig(epochs=1, max_batches=2)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(root))
    monkeypatch.delenv(SHARED_ENV, raising=False)
    return root


@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("digits")


def test_cache_folders_are_made_private(cache: Path, digits: object) -> None:
    base = train_base(SPEC, digits, CONFIG, progress=False)
    for folder in (cache, cache / "base"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert base.path.parent == cache / "base"
    assert json.loads(base.path.with_suffix(".json").read_text())["sha"]


def test_a_cache_writable_by_others_is_refused_unless_declared_shared(
    cache: Path, digits: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(CacheError, match="writable by others"):
        train_base(SPEC, digits, CONFIG, progress=False)
    assert not (cache / "base").exists()
    monkeypatch.setenv(SHARED_ENV, "1")
    assert train_base(SPEC, digits, CONFIG, progress=False).path.is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_owned_by_another_user_is_refused(cache: Path, digits: object) -> None:
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)  # nobody
    with pytest.raises(CacheError, match="belongs to another user"):
        train_base(SPEC, digits, CONFIG, progress=False)


def test_a_symlink_planted_at_any_cache_path_is_never_followed(
    cache: Path, digits: object, tmp_path: Path
) -> None:
    """The old temporaries had predictable names (``<key>.<pid>.tmp``); plant links at those,
    at the final names and at every name a mkstemp would not pick: the victim stays as it was."""
    first = train_base(SPEC, digits, CONFIG, use_cache=False, progress=False)
    victim = tmp_path / "victim"
    victim.write_text("root-only secret")
    folder = first.path.parent
    for p in list(folder.iterdir()):
        p.unlink()
    names = [first.path, first.path.with_suffix(".json"), first.path.with_suffix(".metrics.json")]
    names += [n.with_suffix(f".{os.getpid()}.tmp") for n in names]
    for name in set(names):
        name.symlink_to(victim)
    again = train_base(SPEC, digits, CONFIG, use_cache=False, progress=False)  # writes over the links
    assert victim.read_text() == "root-only secret"
    assert not again.path.is_symlink() and again.path.stat().st_size > 1000
    # a link at a name that is read: refused, never followed
    again.path.unlink()
    again.path.symlink_to(victim)
    with pytest.raises(CacheError, match="delete it"):
        train_base(SPEC, digits, CONFIG, progress=False)
    # the sensitivity cache: a link at its final name is replaced, not written through
    writes = write_atomic(folder / "x.json", b"{}")
    assert writes and victim.read_text() == "root-only secret"


def test_a_swapped_cached_base_is_noticed(cache: Path, digits: object) -> None:
    base = train_base(SPEC, digits, CONFIG, progress=False)
    zeros = {k: torch.zeros_like(v) for k, v in base.model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(zeros, buffer)
    base.path.write_bytes(buffer.getvalue())  # a valid state_dict, not the one written
    with pytest.raises(CacheError, match=f"{base.path.name}.*delete it"):
        train_base(SPEC, digits, CONFIG, progress=False)


def test_a_planted_pickle_in_the_cache_is_one_line_naming_the_entry(
    cache: Path, digits: object, tmp_path: Path
) -> None:
    base = train_base(SPEC, digits, CONFIG, progress=False)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.write_text, (marker, "ran"))

    planted = pickle.dumps({"w": Evil()})
    base.path.write_bytes(planted)
    meta_path = base.path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["sha"] = __import__("autoprune.cache", fromlist=["digest"]).digest(
        planted
    )  # the writer fixed the hash too
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=f"{base.path.name} cannot be loaded.*delete it"):
        train_base(SPEC, digits, CONFIG, progress=False)
    assert not marker.exists()


def test_the_sensitivity_cache_is_private_too(cache: Path, digits: object) -> None:
    model = train_base(SPEC, digits, CONFIG, progress=False).model
    folder = cache_folder("sensitivity")
    folder.chmod(0o777)
    with pytest.raises(CacheError, match="writable by others"):
        sensitivity_for(model, digits, progress=False)


# ---- CIFAR-10 batches: read with an unpickler that can build only what a batch holds --------


def real_batch(n: int = 20, seed: int = 0, protocol: int = 2) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(batch, protocol=protocol)


def cifar_folder(folder: Path, first: bytes, protocol: int = 2) -> Path:
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(first)
    for i in range(2, 6):
        (folder / f"data_batch_{i}").write_bytes(real_batch(seed=i, protocol=protocol))
    (folder / "test_batch").write_bytes(real_batch(seed=9, protocol=protocol))
    names = [f"c{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_real_format_cifar_batch_still_loads(tmp_path: Path, protocol: int) -> None:
    folder = cifar_folder(tmp_path / "cifar", real_batch(protocol=protocol), protocol)
    splits = load_dataset("cifar10", data_dir=folder)
    assert splits.input_shape == (3, 32, 32) and splits.classes == tuple(f"c{i}" for i in range(10))


@pytest.mark.parametrize("where", ["data_batch_1", "batches.meta"])
def test_a_crafted_cifar_batch_never_runs_code(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    crafted = pickle.dumps({b"data": Evil(), b"labels": [0], b"label_names": Evil()}, protocol=2)
    folder = cifar_folder(tmp_path / "cifar", real_batch())
    (folder / where).write_bytes(crafted)
    with pytest.raises(DataError, match="never does"):
        load_dataset("cifar10", data_dir=folder)
    assert not marker.exists()
