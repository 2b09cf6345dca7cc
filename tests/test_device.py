"""Devices: the CPU named explicitly runs a search, its final stage and an export; a device that
is not there is one line before any work; workers given GPUs each see only their own; the CUDA
paths run where a GPU is (and are skipped, with the reason, elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import torch

from autoprune.data import load_dataset
from autoprune.device import DeviceError, current_device, resolve_device, use_device
from autoprune.measure import measure_model
from autoprune.models import ModelSpec
from autoprune.search.spec import spec_from_dict
from autoprune.search.workers import worker_gpus
from autoprune.train import TrainConfig, fit, train_base
from tests.conftest import REPO
from tests.workspace import call, snapshot

SPEC = f"""
[study]
trials = 3
latency_repeats = 3
baselines = ["{REPO}/studies/recipes/uniform-l1.toml"]
{{extra}}
[train]
epochs = 1
[space]
finetune_epochs = [1]
max_batches = 3
[final]
k = 1
epochs = 1
"""
CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine (CI has none)"
)


def test_devices_resolve_or_say_what_is_there() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="should be one of auto, cpu, cuda, cuda:N, mps"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="'cuda:99' is not available here; this machine has"):
        resolve_device("cuda:99")


def test_an_explicit_cpu_runs_search_finalize_and_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SPEC.format(extra=""))
    url = f"sqlite:///{tmp_path / 's.db'}"
    for args in (
        ["search", "s.toml", "--device", "cpu"],
        ["finalize", "s.toml", "--device", "cpu"],
        ["export", "--trial", "0", "--out", "t0.apk"],
    ):
        code, _, err = call(
            [*args, "--storage", url, "--quiet"] if args[0] != "export" else [*args, "--storage", url], capsys
        )
        assert code == 0, (args, err)
    trials = optuna.load_study(study_name="s", storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert trials and {t.user_attrs["device"] for t in trials} == {"cpu"}
    assert any(t.user_attrs.get("source") == "final" for t in trials)
    assert (tmp_path / "t0.apk").stat().st_size > 0
    assert current_device() == torch.device("cpu")  # the command's device ended with it


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the refusal needs one without")
@pytest.mark.parametrize(
    "args",
    [
        ["search", "--device", "cuda"],
        ["search", "s.toml"],
        ["finalize", "s.toml"],
        ["train", "--device", "cuda:0"],
        ["compress", "--recipe", "r.toml", "--out", "x.apk", "--device", "cuda"],
        ["surrogate", "fit", "--device", "cuda"],
    ],
)
def test_a_device_that_is_not_there_is_one_line_and_nothing_is_made(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SPEC.format(extra='device = "cuda"'))
    (tmp_path / "r.toml").write_text("[structured]\ndefault = 0.25\n")
    before = snapshot(tmp_path)
    code, _, err = call(
        [*args, "--storage", f"sqlite:///{tmp_path / 'new.db'}"]
        if args[0] != "train" and args[0] != "compress"
        else args,
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is not available here" in err and "no CUDA device" in err
    assert snapshot(tmp_path) == before


def test_each_worker_sees_only_its_own_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On the CPU, through the environment each worker reports in its trials: with --devices
    3,5 and two workers, every trial ran in a worker that saw one of them, and only it."""
    spec = spec_from_dict({"study": {"devices": [3, 5]}})
    assert worker_gpus(spec, 3) == ["3", "5", "3"]
    assert worker_gpus(spec_from_dict({}), 2) == [None, None]  # CPU, no --devices: environments as they are
    (tmp_path / "s.toml").write_text(SPEC.format(extra="trials = 4").replace("trials = 3\n", ""))
    url = f"journal:{tmp_path / 's.log'}"
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    code, _, err = call(
        [
            "search",
            str(tmp_path / "s.toml"),
            "--storage",
            url,
            "--jobs",
            "2",
            "--devices",
            "3,5",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    from autoprune.search.storage import open_storage, parse_storage

    study = optuna.load_study(study_name="s", storage=open_storage(parse_storage(url), create=False))
    seen = [
        t.user_attrs.get("cuda_visible_devices") for t in study.get_trials() if t.user_attrs.get("source")
    ]
    assert seen and set(seen) <= {"3", "5"}, seen
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before  # the parent's own environment is untouched


def test_fit_leaves_the_model_on_the_cpu_and_mixed_precision_trains() -> None:
    splits = load_dataset("digits")
    base = train_base(
        ModelSpec("lenet5", 10, 1, (8, 8)), splits, TrainConfig(epochs=1, max_batches=2), progress=False
    )
    history = fit(base.model, splits, TrainConfig(epochs=2, max_batches=5, amp="bf16"), progress=False)
    assert len(history) == 2 and all(0 <= h <= 100 for h in history)
    assert {p.device.type for p in base.model.parameters()} == {"cpu"}
    with pytest.raises(ValueError, match="amp='fp8' should be one of off, bf16, fp16"):
        TrainConfig(amp="fp8")


@CUDA
def test_training_evaluation_and_latency_run_on_cuda_and_the_base_loads_on_the_cpu() -> None:
    splits = load_dataset("digits")
    spec = ModelSpec("lenet5", 10, 1, (8, 8))
    with use_device("cuda"):
        base = train_base(
            spec, splits, TrainConfig(epochs=2, amp="bf16"), seed=11, use_cache=False, progress=False
        )
        metrics = measure_model(base.model, splits, latency_repeats=10)
    assert metrics.device.startswith("cuda:0") and metrics.backend == "torch-cuda" and metrics.latency_ms > 0
    assert metrics.accuracy > 50
    state = torch.load(base.path, map_location="cpu", weights_only=True)
    assert {t.device.type for t in state.values()} == {"cpu"}
    with use_device("cpu"):
        again = train_base(spec, splits, TrainConfig(epochs=2, amp="bf16"), seed=11, progress=False)
    assert again.cached  # the cache key does not depend on the device


@CUDA
def test_a_search_on_cuda_records_its_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.toml").write_text(SPEC.format(extra=""))
    url = f"sqlite:///{tmp_path / 's.db'}"
    code, _, err = call(
        ["search", str(tmp_path / "s.toml"), "--storage", url, "--device", "cuda", "--quiet"], capsys
    )
    assert code == 0, err
    trials = optuna.load_study(study_name="s", storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert trials and all(t.user_attrs["device"].startswith("cuda:") for t in trials)
    assert all(t.user_attrs["backend"] == "torch-cuda" for t in trials)
