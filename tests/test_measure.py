from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoprune import runtime
from autoprune.data import load_dataset
from autoprune.measure import (
    BACKENDS,
    accuracy,
    count_macs,
    count_nonzero,
    count_params,
    cpu_sample,
    dense_bytes,
    measure_latency,
    measure_model,
    median_interval,
    other_load,
)
from autoprune.models import ModelSpec, create_model


def test_lenet5_macs_by_hand() -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (28, 28)))
    conv1 = 24 * 24 * 20 * 1 * 25
    conv2 = 8 * 8 * 50 * 20 * 25
    fc = 800 * 500 + 500 * 10
    assert count_macs(model, (1, 28, 28)) == conv1 + conv2 + fc


def test_depthwise_macs_count_groups() -> None:
    model = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_macs(model, (8, 4, 4)) == 4 * 4 * 8 * 1 * 9


def test_nonzero_and_params() -> None:
    model = nn.Linear(10, 4)
    with torch.no_grad():
        model.weight[:2] = 0
    assert count_params(model) == 44
    assert count_nonzero(model) == 44 - 20 - int((model.bias == 0).sum())


def test_dense_bytes_is_the_size_of_the_saved_file(tmp_path: Path) -> None:
    model = create_model(ModelSpec("lenet300", 10, 1, (28, 28)))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    size = dense_bytes(model)
    # the same archive; only the record names inside the zip follow the file's name
    assert abs(size - (tmp_path / "m.pt").stat().st_size) < 512
    assert 4 * count_params(model) <= size < 4 * count_params(model) * 1.01


def test_accuracy_of_a_perfect_and_a_constant_model() -> None:
    s = load_dataset("digits")

    class Oracle(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # looks the answer up by identity of the input row: perfect on the test split
            match = (x.flatten(1)[:, None] == s.test.x.flatten(1)[None]).all(-1).float().argmax(1)
            return nn.functional.one_hot(s.test.y[match], 10).float()

    assert accuracy(Oracle(), s.test, batch_size=100) == 100.0
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10.0) == 3)
    expected = 100.0 * int((s.test.y == 3).sum()) / len(s.test)
    assert accuracy(constant, s.test) == expected


def test_latency_is_a_median_with_threads_recorded() -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lat = measure_latency(model, (1, 8, 8), batch_size=4, warmup=2, repeats=7, threads=1)
        assert torch.get_num_threads() == 2  # the measurement's thread count does not leak out
    finally:
        torch.set_num_threads(before)
    assert lat.threads == 1 and lat.repeats == 7 and lat.batch_size == 4
    assert 0 < lat.min_ms <= lat.median_ms


def test_measure_model_reports_every_field() -> None:
    s = load_dataset("digits")
    m = measure_model(create_model(ModelSpec("lenet5", 10, 1, (8, 8))), s, latency_repeats=5)
    d = m.to_dict()
    assert set(d) == {
        "accuracy",
        "test_accuracy",
        "params",
        "nonzero_params",
        "macs",
        "dense_bytes",
        "latency_ms",
        "latency_ms_batch",
        "threads",
        "backend",
        "other_load",
        "latency_repeats",
        "latency_interval",
        "device",
        "latency_s",
    }
    assert d["device"] == "cpu" and 0 < d["latency_s"] < 10  # the timing's own cost, bounded
    assert m.params == 131_080 and m.latency_ms > 0 and m.latency_ms_batch > 0
    assert 1 <= m.latency_repeats <= 5 and m.latency_interval >= 0  # the choices are recorded


def test_timing_stops_once_the_median_is_pinned_and_runs_on_when_it_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import autoprune.measure as measure

    clock = {"t": 0.0}
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock["t"])

    def steady() -> None:  # every run takes 1 ms: the median is known after the minimum
        clock["t"] += 0.001

    assert len(measure._time_runs(steady, warmup=3, repeats=100)) == measure.MIN_REPEATS
    rng = np.random.default_rng(0)

    def noisy() -> None:  # runs spread over a factor of ten: the interval stays wide
        clock["t"] += float(rng.uniform(0.0001, 0.001))

    times = measure._time_runs(noisy, warmup=3, repeats=60)
    assert len(times) == 60  # ran to the count asked for: never pinned to 5%
    lo, hi = measure.median_interval(times)
    assert lo <= float(np.median(times)) <= hi and (hi - lo) / 2 > measure.TOLERANCE * float(np.median(times))

    def slow() -> None:  # a second a run: the time budget ends it
        clock["t"] += 1.0 + float(rng.uniform(0, 0.5))

    assert len(measure._time_runs(slow, warmup=1, repeats=100)) <= measure.MIN_REPEATS
    calls = {"n": 0}

    def counted() -> None:  # 0.2 s a run: warm-up stops after its own budget, timing runs on
        calls["n"] += 1
        clock["t"] += 0.2

    times = measure._time_runs(counted, warmup=10, repeats=100)
    assert calls["n"] - len(times) == math.ceil(measure.WARMUP_S / 0.2 + 1e-9) < 10


def test_a_backend_that_loses_the_race_stops_and_the_backends_share_a_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import autoprune.measure as measure

    clock = {"t": 0.0}
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock["t"])
    rng = np.random.default_rng(0)

    def noisy_slow() -> None:  # 2-4 ms a run, spread wide: alone it would run to the count asked
        clock["t"] += float(rng.uniform(0.002, 0.004))

    alone = measure._time_runs(noisy_slow, warmup=3, repeats=60)
    raced = measure._time_runs(noisy_slow, warmup=3, repeats=60, beat=1.0)  # the leader: 1 ms
    assert len(alone) > measure.MIN_REPEATS and len(raced) == measure.RACE_AFTER
    close = measure._time_runs(noisy_slow, warmup=3, repeats=60, beat=2.9)  # a close race runs on
    assert len(close) >= measure.MIN_REPEATS
    spent = measure._time_runs(noisy_slow, warmup=3, repeats=10_000, budget_s=0.05)  # the shared budget
    assert measure.MIN_REPEATS <= len(spent) <= 0.05 / 0.002 + 1


def test_the_median_interval_holds_the_median_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        sample = rng.exponential(1.0, size=25)  # skewed, as timings are; true median ln 2
        lo, hi = median_interval(list(sample))
        covered += lo <= np.log(2) <= hi
    assert 0.9 <= covered / 400 <= 0.995


def test_every_backend_times_the_model_and_the_fastest_is_reported() -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    each = {b: measure_latency(model, (1, 8, 8), repeats=5, threads=1, backends=(b,)) for b in BACKENDS}
    assert all(lat.backend == b and lat.median_ms > 0 for b, lat in each.items())
    best = measure_latency(model, (1, 8, 8), repeats=5, threads=1)
    assert best.backend in BACKENDS and best.threads == 1
    assert model.training  # training mode given back


class _Eigen(nn.Module):
    """An operator ONNX has no export for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x[..., :4, :4]).real.flatten(1)


class _CallCounter(nn.Module):
    """Exports, but the exported graph froze a Python number that changes on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1) * self.calls


@pytest.mark.parametrize(
    "model, message", [(_Eigen(), "cannot export _Eigen"), (_CallCounter(), "outputs differ")]
)
def test_a_model_onnxruntime_cannot_run_faithfully_is_timed_in_torch(model, message, caplog, capfd) -> None:
    with caplog.at_level(logging.WARNING, logger="autoprune.runtime"):
        lat = measure_latency(model, (1, 4, 4), repeats=3, threads=1)
    assert lat.backend in ("onednn", "native")
    assert message in caplog.text
    assert capfd.readouterr().out == ""  # the exporter's graph dump stays off stdout
    with pytest.raises(ValueError, match="none of backends"):
        measure_latency(model, (1, 4, 4), repeats=3, backends=("onnxruntime",))


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="other_load reads Linux's /proc/stat")
def test_other_load_sees_a_busy_process_and_not_our_own_work() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        before = cpu_sample()
        time.sleep(0.5)
        busy = other_load(before, cpu_sample())
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.7  # one core, give or take the scheduler
    before = cpu_sample()
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:  # our own busy loop is not "other"
        pass
    assert other_load(before, cpu_sample()) < busy


def test_a_graph_onnxruntime_cannot_load_is_timed_in_torch(monkeypatch, caplog) -> None:
    def no_kernel(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation")

    monkeypatch.setattr(runtime, "ort_session", no_kernel)
    with caplog.at_level(logging.WARNING, logger="autoprune.runtime"):
        lat = measure_latency(
            create_model(ModelSpec("lenet5", 10, 1, (8, 8))), (1, 8, 8), repeats=3, threads=1
        )
    assert lat.backend in ("onednn", "native")
    assert "ONNX Runtime cannot run LeNet5 ([ONNXRuntimeError] : 9 : NOT_IMPLEMENTED" in caplog.text
