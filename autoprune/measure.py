"""Measurement used by everything else: accuracy, parameters, MACs, bytes, latency.

Accuracies are percentages (0..100) so that an accuracy drop reads in percentage points.
"""

from __future__ import annotations

import io
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.data import AnySplit, DataSplits, ImageSplit, TaskSplit
from autoprune.device import current_device, describe, model_device, synchronize
from autoprune.errors import AutoPruneError, TaskError
from autoprune.runtime import checked_session, run_session

log = logging.getLogger(__name__)
EVAL_BYTES = 64 << 20  # input bytes of one evaluation batch, at most
# Images per evaluation batch. On a CPU a batch's activations should stay in cache: batches of
# 64-256 evaluated a pruned ResNet-20 and MobileNetV2 2-3x faster than batches of 1,024 (their
# 28x28 activations are 50 MB a layer at 1,024), and evaluating the 10,000 test images was most
# of a search trial's measuring (issue 27; BENCHMARKS.md). A GPU wants large batches.
EVAL_BATCH = {"cpu": 128, "gpu": 1024}


def accuracy(model: nn.Module, split: AnySplit, *, batch_size: int | None = None) -> float:
    """Top-1 accuracy on ``split`` in percent, with the model in eval mode; on a task's split,
    the task's own metric (its ``evaluate``), on the process's device."""
    if isinstance(split, TaskSplit):
        return _task_score(model, split)
    return 100.0 * int(correct(model, split, batch_size=batch_size).sum()) / max(len(split), 1)


def _task_score(model: nn.Module, split: TaskSplit) -> float:
    was_training, where = model.training, model_device(model)
    model.eval().to(current_device())
    try:
        with torch.inference_mode():
            return split.score(model)
    except AutoPruneError:
        raise
    except Exception as e:  # the user's evaluate: one line says how it failed
        raise TaskError(f"the task's evaluate({split.part!r}) raised {type(e).__name__}: {e}") from None
    finally:
        model.train(was_training).to(where)


@torch.inference_mode()
def correct(model: nn.Module, split: ImageSplit, *, batch_size: int | None = None) -> np.ndarray:
    """Per image of ``split``: whether the model's top-1 class is right (eval mode), computed
    on the process's device (:func:`autoprune.device.current_device`); the model is left
    where it was."""
    was_training, where, device = model.training, model_device(model), current_device()
    if batch_size is None:
        batch_size = EVAL_BATCH["cpu" if device.type == "cpu" else "gpu"]
    # at most EVAL_BYTES of input per batch: 1,024 images of 224x224 RGB would be 600 MB each,
    # and a streamed split keeps a few batches in flight
    batch_size = max(1, min(batch_size, EVAL_BYTES // (4 * math.prod(split.sample_shape))))
    model.eval().to(device)
    try:
        out = [(model(x.to(device)).argmax(1).cpu() == y).numpy() for x, y in split.batches(batch_size)]
    finally:
        model.train(was_training).to(where)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


@torch.inference_mode()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the conv and linear layers for one input of ``input_shape``."""
    return sum(layer_macs(model, input_shape).values())


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates of each conv and linear layer (by name) for one input of
    ``input_shape``; a layer called twice counts twice."""
    macs: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def count(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                per_output = (m.in_channels // m.groups) * kh * kw
            else:
                per_output = int(m.in_features)  # type: ignore[arg-type]  # nn.Linear's
            macs[name] = macs.get(name, 0) + out.numel() * per_output

        return count

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model's fp32 state_dict as ``torch.save`` writes it to a file."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Fix torch's intra-op thread count for a block; yields the count in force."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Latency:
    batch_size: int
    median_ms: float  # median wall time of one forward pass, on the fastest backend
    min_ms: float
    repeats: int  # runs timed (adaptive: see TOLERANCE)
    threads: int
    backend: str  # that backend: one of BACKENDS
    interval_ms: tuple[float, float] = (math.nan, math.nan)  # the median's 95% interval

    @classmethod
    def of(cls, times: list[float], batch_size: int, threads: int, backend: str) -> Latency:
        """The latency of these timed runs (ms)."""
        return cls(
            batch_size,
            statistics.median(times),
            min(times),
            len(times),
            threads,
            backend,
            median_interval(times),
        )


# Where a forward pass can run on a CPU. torch has two convolution paths: oneDNN, and its own
# (im2col + BLAS); oneDNN wins on big layers, but for the small layers of a pruned network its
# per-call cost dominates (0.59 ms vs 0.37 ms for LeNet-5 at batch 1 on 2 cores). ONNX Runtime
# runs the exported network with a few microseconds per operator, where eager PyTorch's fixed
# costs hide most of what filter pruning saves at batch 1. A deployment would pick the fastest
# way to run its network, so do we, and the record says which one it was. ONNX Runtime goes
# first: measured right after torch on 2 threads, it ran the pruned LeNet-5 a third slower
# (0.042 vs 0.032 ms), most likely while torch's OpenMP threads were still spinning.
BACKENDS = ("onnxruntime", "onednn", "native")


# Repeats are adaptive: timing stops once the median is known to within TOLERANCE (its
# distribution-free 95% interval, from the order statistics), after at least MIN_REPEATS runs,
# or when a plan has spent BUDGET_S seconds on one backend, whichever comes first, and at most
# the count asked for. A small network needs few runs to pin its median; a large one is not
# timed fifty times for nothing (a full-width MobileNetV2's compress spent 162 s timing: issue
# 17; BENCHMARKS.md has it before and after).
TOLERANCE = 0.05  # half-width of the median's 95% interval, relative to the median
MIN_REPEATS = 7
BUDGET_S = 2.0
# Measuring is bounded as a whole too, so that it stays a small part of a search trial on wide
# networks (issue 27): the backends share TOTAL_S seconds (each still gets MIN_REPEATS runs
# unless it loses the race), and a backend whose median after RACE_AFTER runs (one warm-up) is
# RACE times the fastest one's so far stops there: it cannot be the one deployed.
TOTAL_S = 3.0
RACE = 1.25
RACE_AFTER = 3
# Warm-up is bounded on its own, shorter: a couple of runs load the weights into cache and let
# ONNX Runtime allocate; ten 250 ms passes (a full-width MobileNetV2 at batch 64) add nothing.
WARMUP_S = 0.5


def median_interval(times: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median of ``times`` (order
    statistics n/2 -+ 0.98 sqrt(n)); the whole range for fewer than six values."""
    ordered = sorted(times)
    n = len(ordered)
    half = 0.98 * math.sqrt(n)
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half))
    return ordered[lo], ordered[hi]


def _time_runs(
    forward: Callable[[], Any],
    warmup: int,
    repeats: int,
    *,
    budget_s: float = BUDGET_S,
    beat: float = math.inf,
) -> list[float]:
    """Wall times in ms of ``forward``: up to ``repeats`` after ``warmup`` runs (both bounded
    in time), stopping early once the median is pinned (see TOLERANCE), once ``budget_s`` is
    spent, or once the median is RACE times ``beat`` (another backend's median: this one lost)."""
    deadline = time.perf_counter() + WARMUP_S
    for _ in range(warmup if math.isinf(beat) else 1):  # a challenger warms up once, then races
        forward()
        if time.perf_counter() > deadline:
            break
    deadline = time.perf_counter() + budget_s
    times: list[float] = []
    while len(times) < repeats:
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1000.0)
        if len(times) >= RACE_AFTER and statistics.median(times) > RACE * beat:
            break  # lost: it cannot be the fastest
        if len(times) >= MIN_REPEATS:
            lo, hi = median_interval(times)
            if hi - lo <= 2 * TOLERANCE * statistics.median(times) or time.perf_counter() > deadline:
                break
    return times


@contextmanager
def conv_backend(backend: str) -> Iterator[None]:
    """Run convolutions on oneDNN or on torch's native path for a block."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = backend == "onednn"  # type: ignore[assignment]  # a settable flag
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@dataclass(frozen=True)
class _Plan:
    """One latency to measure: a batch size and how many runs."""

    batch_size: int
    warmup: int
    repeats: int


def _latencies(
    model: nn.Module,
    input_shape: tuple[int, ...],
    plans: list[_Plan],
    *,
    threads: int | None,
    backends: tuple[str, ...],
) -> list[Latency]:
    """The fastest backend's latency for every plan. The network is exported to ONNX once for
    all plans (its batch axis is free), and each backend is timed on every plan before the
    next backend starts, so ONNX Runtime's session and threads end before torch is timed."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"backend={unknown[0]!r} should be one of {BACKENDS}")
    inputs = [torch.randn(p.batch_size, *input_shape) for p in plans]
    best: list[Latency | None] = [None] * len(plans)
    ends = time.perf_counter() + TOTAL_S  # the budget every backend and plan shares
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch_threads(threads) as used:
            for backend in backends:
                if backend == "onnxruntime":
                    session = checked_session(model, input_shape, threads=used)  # None: logged
                    if session is None:
                        continue
                    forwards = [partial(run_session, session, x.numpy()) for x in inputs]
                    del session  # only the forwards hold it: it ends with them, below
                else:
                    forwards = [partial(model, x) for x in inputs]
                with conv_backend(backend):
                    times = [
                        _time_runs(
                            f,
                            p.warmup,
                            p.repeats,
                            budget_s=min(BUDGET_S, max(0.0, ends - time.perf_counter())),
                            beat=b.median_ms if (b := best[i]) is not None else math.inf,
                        )
                        for i, (f, p) in enumerate(zip(forwards, plans))
                    ]
                del forwards
                for i, (p, t) in enumerate(zip(plans, times)):
                    result = Latency.of(t, p.batch_size, used, backend)
                    current = best[i]
                    if current is None or result.median_ms < current.median_ms:
                        best[i] = result
    finally:
        model.train(was_training)
    if best[0] is None:
        raise ValueError(f"none of backends={backends} can run {type(model).__name__}")
    return [b for b in best if b is not None]


def _device_latencies(
    model: nn.Module, input_shape: tuple[int, ...], plans: list[_Plan], device: torch.device
) -> list[Latency]:
    """Latency where the model will run, on a GPU (or MPS): the same adaptive repeats after
    warm-up, each run timed to the end of the device's work (``synchronize``), eager torch
    (backend ``torch-cuda``). The model is left where it was."""
    where, was_training = model_device(model), model.training
    model.eval().to(device)
    out = []
    try:
        with torch.inference_mode():
            for p in plans:
                x = torch.randn(p.batch_size, *input_shape, device=device)

                def forward(x: torch.Tensor = x) -> None:
                    model(x)
                    synchronize(device)

                t = _time_runs(forward, p.warmup, p.repeats)
                out.append(Latency.of(t, p.batch_size, torch.get_num_threads(), f"torch-{device.type}"))
    finally:
        model.train(was_training).to(where)
    return out


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = None,
    backends: tuple[str, ...] = BACKENDS,
) -> Latency:
    """CPU latency of one forward pass on ``threads`` threads (default: torch's count): the
    median of ``repeats`` timed runs after warm-up, on whichever of ``backends`` is fastest."""
    (latency,) = _latencies(
        model, input_shape, [_Plan(batch_size, warmup, repeats)], threads=threads, backends=backends
    )
    return latency


def session_latency(
    session: Any,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int = 1,
) -> Latency:
    """Latency of an ONNX Runtime session (a deployed file), timed as :func:`measure_latency`
    times a network: the median of up to ``repeats`` runs after warm-up."""
    x = np.random.default_rng(0).random((batch_size, *input_shape), dtype=np.float32)
    times = _time_runs(partial(run_session, session, x), warmup, repeats)
    return Latency.of(times, batch_size, threads, "onnxruntime")


# Timing shares the CPU with whatever else runs: two torch processes on these 2 cores made
# LeNet-5's batch-1 latency read 40-56 ms instead of 0.1 ms. Nothing here can prevent that, but
# every measurement records how busy the rest of the machine was, and warns from this much.
BUSY = 0.5  # cores


def cpu_sample() -> tuple[float, float, float] | None:
    """(wall seconds, CPU seconds the whole machine was busy, CPU seconds of this process), or
    None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as f:
            # user nice system idle iowait irq softirq steal, in clock ticks
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # steal counts: a neighbour VM
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system


def other_load(
    before: tuple[float, float, float] | None, after: tuple[float, float, float] | None
) -> float | None:
    """Cores other processes kept busy on average between two ``cpu_sample`` calls."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    elsewhere = (after[1] - before[1]) - (after[2] - before[2])
    return round(max(0.0, elsewhere / (after[0] - before[0])), 2)


@dataclass(frozen=True)
class Metrics:
    """One model measured on one dataset; the field names are the stable record names."""

    accuracy: float  # validation top-1, percent
    test_accuracy: float  # test top-1, percent (reported, never selected on)
    params: int
    nonzero_params: int
    macs: int
    dense_bytes: int
    latency_ms: float  # batch 1, median
    latency_ms_batch: float  # batch 64 (or the batch asked for), median
    threads: int
    backend: str  # where the batch-1 latency was measured: one of BACKENDS, or "not measured"
    other_load: float | None = None  # cores other processes kept busy while timing (None: unknown)
    latency_repeats: int | None = None  # batch-1 runs timed on that backend (adaptive)
    latency_interval: float | None = None  # half-width of the batch-1 median's 95% interval, relative
    device: str = "cpu"  # where accuracy and latency were measured: "cpu", "cuda:0 (NVIDIA H200)", ...
    latency_s: float | None = None  # seconds spent timing (bounded: TOTAL_S)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_stored(cls, stored: object) -> Metrics | None:
        """Metrics read back from a study or a cache file (data: checked); None when any field
        is missing or of the wrong type."""
        if not isinstance(stored, dict) or set(stored) - {f.name for f in fields(cls)}:
            return None
        for f in fields(cls):
            value = stored.get(f.name)
            if value is None and f.default is MISSING:
                return None
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (isinstance(value, str) if f.type == "str" else number):
                return None
        return cls(**stored)

    def summary(self) -> dict[str, Any]:
        """What a packed file records of the base it was made from: enough for a ratio and a drop."""
        timed = self.backend != "not measured"
        return {
            "accuracy": self.accuracy,
            "dense_bytes": self.dense_bytes,
            "macs": self.macs,
            "latency_ms": self.latency_ms if timed else None,
        }


def trial_latencies(
    model: nn.Module,
    shape: tuple[int, ...],
    *,
    repeats: int = 50,
    batch: int = 64,
    threads: int | None = None,
) -> tuple[Latency, Latency]:
    """The latencies a trial records, at batch 1 and ``batch``, on the fastest backend of this
    process's device (bounded in time as a whole: TOTAL_S)."""
    plans = [_Plan(1, 10, repeats), _Plan(batch, 3, max(5, repeats // 5))]
    device = current_device()
    if device.type == "cpu":
        single, batched = _latencies(model, shape, plans, threads=threads, backends=BACKENDS)
    else:
        single, batched = _device_latencies(model, shape, plans, device)
    return single, batched


def measure_model(
    model: nn.Module,
    splits: DataSplits,
    *,
    latency_repeats: int = 50,
    threads: int | None = None,
    latency: bool = True,
    latency_batch: int = 64,
) -> Metrics:
    """Measure everything about ``model`` that does not depend on how it is stored; with
    ``latency=False`` no timing is taken (the latencies are NaN: not measured)."""
    shape = splits.input_shape
    counted: dict[str, Any] = dict(
        accuracy=accuracy(model, splits.val),
        test_accuracy=accuracy(model, splits.test),
        params=count_params(model),
        nonzero_params=count_nonzero(model),
        macs=count_macs(model, shape),
        dense_bytes=dense_bytes(model),
    )
    if not latency:
        return Metrics(
            **counted,
            latency_ms=math.nan,
            latency_ms_batch=math.nan,
            threads=threads or torch.get_num_threads(),
            backend="not measured",
            device=describe(current_device()),
        )
    before, started = cpu_sample(), time.perf_counter()
    single, batch = trial_latencies(
        model, shape, repeats=latency_repeats, batch=latency_batch, threads=threads
    )
    device = current_device()
    load = other_load(before, cpu_sample())
    if load is not None and load >= BUSY:
        log.warning("other processes kept %.1f cores busy while timing: latency may read high", load)
    return Metrics(
        **counted,
        latency_ms=single.median_ms,
        latency_ms_batch=batch.median_ms,
        threads=single.threads,
        backend=single.backend,
        other_load=load,
        latency_repeats=single.repeats,
        latency_interval=round((single.interval_ms[1] - single.interval_ms[0]) / 2 / single.median_ms, 4),
        device=describe(device),
        latency_s=round(time.perf_counter() - started, 4),
    )
