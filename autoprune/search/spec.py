"""Study specs: everything a search needs, read from ``studies/*.toml`` and checked strictly.

A spec names the model, the dataset, the base training, the search space, the objectives, the
budget, the sampler, the pruner and the storage. Command-line flags override the spec; the spec
overrides the defaults here. An unknown key, a wrong type or an empty range is one line naming
the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.study import StudyDirection

from autoprune._config import build_config, read_toml
from autoprune.compress import STAGES
from autoprune.compress.structured import CRITERIA
from autoprune.data import DataOptions
from autoprune.device import DEVICES
from autoprune.errors import AutoPruneError, DataError
from autoprune.limits import MAX_EPOCHS, MAX_RECONSTRUCT_IMAGES, MAX_TRIALS, RECONSTRUCT_IMAGES
from autoprune.models import is_user_model
from autoprune.names import bad_study_name
from autoprune.ops.kmeans import INITS
from autoprune.search.record import OBJECTIVES, Budget, best_field
from autoprune.search.samplers import PRUNERS, list_samplers
from autoprune.search.storage import (
    DB_TIMEOUT,
    DEFAULT_STORAGE,
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    Liveness,
    parse_storage,
)
from autoprune.train import TrainConfig


class SpecError(AutoPruneError):
    """A study spec with an unknown key, a wrong type or an impossible value."""


@dataclass(frozen=True)
class ModelSection:
    name: str = "lenet5"  # built-in name or module:factory / file.py:factory
    checkpoint: str = ""  # a trained state_dict; empty: train (and cache) the base


@dataclass(frozen=True)
class DataSection:
    name: str = "digits"
    data_dir: str = ""
    val_fraction: float = 0.1
    seed: int = 0
    image_size: list[int] = field(
        default_factory=list
    )  # [H, W] of an image folder (empty: its most common size)
    in_memory: str = "auto"  # "auto" (decoded under 1 GB), "yes", or "no": streamed from the files per batch
    augment: str = "none"  # training batches: "none" or "crop-flip" (random crop, padding 4, horizontal flip)
    workers: int = 2  # decoding processes when streamed

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise SpecError(f"data.val_fraction={self.val_fraction} should be in (0, 1)")
        try:
            _ = self.options  # parsed here, so that a bad option fails when the spec is read
        except DataError as e:
            raise SpecError(f"data.{e}") from None

    @property
    def options(self) -> DataOptions:
        size = tuple(self.image_size) if self.image_size else None
        if size is not None and len(size) != 2:
            raise DataError(f"image_size={self.image_size} should be [height, width]")
        return DataOptions(size, self.in_memory, self.augment, self.workers)


@dataclass(frozen=True)
class SpaceSection:
    """The search space. A [low, high] pair is a range, one value fixes the parameter, a list
    of names (init) is a choice."""

    # filter pruning: "per_layer" (a ratio per conv), "global" (one ratio for every conv),
    # "ranked" (one share of all filters, ranked across the network) or "off"
    structured: str = "per_layer"
    ratio: list[float] = field(default_factory=lambda: [0.0, 0.7])
    round_to: int = 1  # kept filters rounded to a multiple of this (8: aligned for vector units)
    # which filters go: "l1" (each filter's own L1 norm, Li et al.), "l2", or "group" (L1 of every
    # weight the channel's removal takes: filters, batch norm, next layers' inputs; Torch-Pruning's)
    criterion: str = "l1"
    # a ranked search's first trials: shares whose MAC reductions are evenly spaced (in log) up to
    # the largest share's, so that a short search sees the whole curve (0: the sampler's own)
    ranked_start: int = 0
    # training images on which the layers after removed filters are refitted to the base's
    # outputs by least squares before fine-tuning (0: not refitted)
    reconstruct: int = RECONSTRUCT_IMAGES
    magnitude: str = "per_layer"  # magnitude-pruning quality: "per_layer", "global" or "off"
    quality: list[float] = field(default_factory=lambda: [0.0, 2.5])  # threshold = quality * std
    quantize: bool = True  # weight sharing in every trial (false: weights stay float32, no bits searched)
    conv_bits: list[int] = field(default_factory=lambda: [4, 8])
    fc_bits: list[int] = field(default_factory=lambda: [2, 6])
    init: list[str] = field(default_factory=lambda: ["linear", "density", "forgy"])
    finetune_epochs: list[int] = field(default_factory=lambda: [1, 3])
    lr: list[float] = field(default_factory=lambda: [1e-4, 3e-3])  # sampled on a log scale
    quant_epochs: list[int] = field(default_factory=lambda: [1])
    max_batches: int = 0  # cap on batches per fine-tuning epoch (0: whole epochs)
    distill: float = 0.0  # fine-tuning's weight of distillation from the base (0: labels only)
    # optional stages searched too, each with its own table: [space.stages.lowrank] rank = [0.1, 1.0]
    stages: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> Any | None:
        """The table of optional stage ``name`` (its space dataclass), None when not searched."""
        if name not in self.stages:
            return None
        stage = STAGES.get(name)
        if not stage.optional or stage.space is None:
            raise SpecError(
                f"space.stages.{name}: stage {name!r} is always run; its space is [space]'s own keys"
            )
        return build_config(stage.space, self.stages[name], error=SpecError, prefix=f"space.stages.{name}.")

    def __post_init__(self) -> None:
        for name in self.stages:
            if name not in STAGES:
                raise SpecError(f"space.stages.{str(name)[:50]}: no such stage; stages: {', '.join(STAGES)}")
            self.stage(name)  # checked now, not at the first trial
        if self.structured not in ("per_layer", "global", "ranked", "off"):
            raise SpecError(
                f"space.structured={self.structured!r} should be 'per_layer', 'global', 'ranked' or 'off'"
            )
        if self.magnitude not in ("per_layer", "global", "off"):
            raise SpecError(f"space.magnitude={self.magnitude!r} should be 'per_layer', 'global' or 'off'")
        if self.criterion not in CRITERIA:
            raise SpecError(f"space.criterion={self.criterion!r} should be one of {', '.join(CRITERIA)}")
        _range("space.ratio", self.ratio, 0.0, 0.95)
        _range("space.quality", self.quality, 0.0, 10.0)
        _range("space.conv_bits", self.conv_bits, 1, 16)
        _range("space.fc_bits", self.fc_bits, 1, 16)
        _range("space.finetune_epochs", self.finetune_epochs, 0, 1000)
        _range("space.lr", self.lr, 1e-8, 10.0)
        _range("space.quant_epochs", self.quant_epochs, 0, 1000)
        if not self.init or any(i not in INITS for i in self.init) or len(set(self.init)) != len(self.init):
            raise SpecError(f"space.init={self.init} should be distinct names among {', '.join(INITS)}")
        if not 1 <= self.round_to <= 1024:
            raise SpecError(f"space.round_to={self.round_to} should be in 1..1024")
        if not 0 <= self.reconstruct <= MAX_RECONSTRUCT_IMAGES:
            raise SpecError(
                f"space.reconstruct={self.reconstruct} should be in "
                f"0..{MAX_RECONSTRUCT_IMAGES} (training images)"
            )
        if not 0 <= self.ranked_start <= 64:
            raise SpecError(f"space.ranked_start={self.ranked_start} should be in 0..64 (trials)")
        if self.ranked_start and self.structured != "ranked":
            raise SpecError(f'space.ranked_start={self.ranked_start} needs structured = "ranked"')
        if not 0 <= self.distill <= 1:
            raise SpecError(f"space.distill={self.distill} should be a weight in [0, 1]")
        if not 0 <= self.max_batches <= 10**7:
            raise SpecError(f"space.max_batches={self.max_batches} should be in 0..10000000")


@dataclass(frozen=True)
class FinalSection:
    """The final stage (``autoprune finalize``): the best trials re-run at the full fine-tuning
    budget, no batch cap, beside the baselines run the same way."""

    k: int = 3  # best trials within the budget to finalize (plus the front's knee and every baseline)
    epochs: int = 4  # fine-tuning epochs of a finalized search trial (the shipped recipes use 4)
    quant_epochs: int = 1  # trained-quantization epochs
    # Points added to the budget when choosing the trials to finalize: a capped fine-tune
    # overstates the drop that the full budget reaches. The finalized trials are judged on the
    # budget itself.
    slack: float = 0.0
    # A finalized search trial continues its own fine-tuning (saved at the end of the capped
    # trial) up to the full budget, the batches it had counted once, instead of starting over.
    promote: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 100:
            raise SpecError(f"final.k={self.k} should be in 1..100")
        for key in ("epochs", "quant_epochs"):
            if not 0 <= getattr(self, key) <= MAX_EPOCHS:
                raise SpecError(f"final.{key}={getattr(self, key)} should be in 0..{MAX_EPOCHS}")
        if not (0 <= self.slack <= 100 and math.isfinite(self.slack)):
            raise SpecError(f"final.slack={self.slack} should be a number of points in [0, 100]")


@dataclass(frozen=True)
class StudySection:
    name: str = ""  # default: the spec file's name
    storage: str = DEFAULT_STORAGE
    artifacts: str = ""  # default: an "artifacts" folder beside a SQLite/journal file, else studies/artifacts
    keep_artifacts: int = 200  # packed files kept; beyond it, those off the Pareto front go first
    trials: int = 30  # run until the study holds this many finished trials
    sampler: str = "tpe"
    pruner: str = "median"  # single objective only
    seed: int = 0
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "packed_bytes"])
    max_acc_drop: float = 1.0  # the accuracy budget, in points of validation accuracy
    min_speedup: float = 0.0  # and the measured batch-1 speed-up a trial must reach (0: none)
    selection: str = "upper"  # "upper": judge the drop's upper confidence bound; "point": the drop itself
    confidence: float = 0.9  # of the one-sided upper bound
    baselines: list[str] = field(default_factory=list)  # recipe files (relative to the spec) run first
    # The sensitivity allocator's proposals (autoprune.search.propose) as the first trials, one
    # per budget: these multiples of max_acc_drop of summed predicted drop (probed without
    # fine-tuning, so larger multiples are the ones fine-tuning brings within). Empty: none.
    warm_start: list[float] = field(default_factory=list)
    warm_start_cost: str = (
        "auto"  # what they minimise: "packed_bytes", "macs", or "auto" (from the objectives)
    )
    latency_repeats: int = 30
    heartbeat_interval: int = HEARTBEAT_INTERVAL  # seconds between a running trial's heartbeats (RDB storage)
    grace_period: int = GRACE_PERIOD  # a trial silent this long was lost with its worker: failed and retried
    db_timeout: int = DB_TIMEOUT  # seconds before an unreachable or silent PostgreSQL server is an error
    device: str = "auto"  # where trials train, evaluate and time: auto (CUDA if any), cpu, cuda, cuda:N, mps
    devices: list[int] = field(default_factory=list)  # GPUs for --jobs workers, one each in turn (empty: all)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", self.device):
            raise SpecError(f"study.device={self.device!r} should be one of {', '.join(DEVICES)}")
        if len(self.devices) > 1024 or any(not 0 <= d < 1024 for d in self.devices):
            raise SpecError(f"study.devices={self.devices} should be GPU indices (0, 1, ...)")
        if self.name and bad_study_name(self.name):
            raise SpecError(
                f"{bad_study_name(self.name)} (it names files); pick one with --study or study.name"
            )
        for o in self.objectives:
            if o not in OBJECTIVES:
                raise SpecError(f"study.objectives: unknown objective {o!r}; valid: {', '.join(OBJECTIVES)}")
        if not 1 <= len(self.objectives) <= 2 or len(set(self.objectives)) != len(self.objectives):
            raise SpecError(f"study.objectives={self.objectives} should be one or two distinct objectives")
        if self.sampler not in list_samplers():
            raise SpecError(f"study.sampler={self.sampler!r} should be one of {', '.join(list_samplers())}")
        if self.pruner not in PRUNERS:
            raise SpecError(f"study.pruner={self.pruner!r} should be one of {', '.join(PRUNERS)}")
        if not 1 <= self.trials <= MAX_TRIALS:
            raise SpecError(f"study.trials={self.trials} should be in 1..{MAX_TRIALS}")
        if not 1 <= self.heartbeat_interval < self.grace_period <= 86400:
            raise SpecError(
                f"study.heartbeat_interval={self.heartbeat_interval} should be >= 1 and below "
                f"study.grace_period={self.grace_period} (at most 86400)"
            )
        if not 1 <= self.db_timeout <= 3600:
            raise SpecError(f"study.db_timeout={self.db_timeout} should be in 1..3600 seconds")
        for key, high in (("keep_artifacts", 10**6), ("latency_repeats", 10_000)):
            if not 1 <= getattr(self, key) <= high:
                raise SpecError(f"study.{key}={getattr(self, key)} should be in 1..{high}")
        if not (self.max_acc_drop >= 0 and math.isfinite(self.max_acc_drop)):
            raise SpecError(f"study.max_acc_drop={self.max_acc_drop} should be a finite number >= 0")
        if not 0 <= self.min_speedup <= 1000:
            raise SpecError(f"study.min_speedup={self.min_speedup} should be in 0..1000 (0: no speed asked)")
        if len(self.warm_start) > 64 or not all(0 < m <= 1000 and math.isfinite(m) for m in self.warm_start):
            raise SpecError(f"study.warm_start={self.warm_start} should be at most 64 multiples in (0, 1000]")
        if self.warm_start_cost not in ("auto", "packed_bytes", "macs"):
            raise SpecError(
                f"study.warm_start_cost={self.warm_start_cost!r} should be 'auto', 'packed_bytes' or 'macs'"
            )
        if self.selection not in ("upper", "point"):
            raise SpecError(f"study.selection={self.selection!r} should be 'upper' or 'point'")
        if not 0.5 <= self.confidence < 1:
            raise SpecError(f"study.confidence={self.confidence} should be in [0.5, 1)")

    @property
    def budget(self) -> Budget:
        return Budget.of(self.max_acc_drop, self.selection, self.confidence, self.min_speedup)

    @property
    def liveness(self) -> Liveness:
        """The storage's heartbeat, grace period and database timeout, as one value."""
        return Liveness(self.heartbeat_interval, self.grace_period, self.db_timeout)

    @property
    def allocation_cost(self) -> str:
        """What the warm start's proposals minimise: MACs when the study searches on MACs or
        latency (MACs are the allocator's proxy for latency) and not on size, else the packed size."""
        if self.warm_start_cost != "auto":
            return self.warm_start_cost
        speed = best_field(self.objectives) != "compression_ratio"  # on latency or MACs
        return "macs" if speed and "packed_bytes" not in self.objectives else "packed_bytes"


@dataclass(frozen=True)
class StudySpec:
    study: StudySection = field(default_factory=StudySection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig = field(default_factory=TrainConfig)  # base training, when no checkpoint (cached)
    space: SpaceSection = field(default_factory=SpaceSection)
    final: FinalSection = field(default_factory=FinalSection)

    def __post_init__(self) -> None:
        if self.train.epochs < 1:
            raise SpecError(f"train.epochs={self.train.epochs} should be >= 1")
        if self.train.distill:
            raise SpecError(
                "train.distill: the base learns from its labels; distillation is fine-tuning's "
                "(space.distill, or a recipe's [finetune] distill)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_study(self, **changes: Any) -> StudySpec:
        """The spec with the study section's ``changes`` (a None value: not given, kept)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, study=dataclasses.replace(self.study, **given)) if given else self

    @property
    def directions(self) -> list[StudyDirection]:
        return [OBJECTIVES[o] for o in self.study.objectives]


def spec_from_dict(data: dict[str, Any], *, default_name: str = "autoprune") -> StudySpec:
    spec = build_config(StudySpec, data, error=SpecError)
    return spec if spec.study.name else spec.with_study(name=default_name)


def record(spec: StudySpec) -> dict[str, Any]:
    """The spec as stored in a study: the storage URL without its password (or query)."""
    d = spec.to_dict()
    d["study"]["storage"] = parse_storage(spec.study.storage).public_url
    return d


def trusted_spec(
    stored: dict[str, Any],
    *,
    study: str,
    storage: str,
    model: str | None = None,
    checkpoint: str | None = None,
    data_dir: str | None = None,
    artifacts: str | None = None,
) -> StudySpec:
    """A spec read back from a study, with the code and the paths it names taken from the
    caller: stored data never makes autoprune import code or choose a file or folder. Anyone
    who can write to a shared database can write a spec; only the command line is trusted."""
    try:
        spec = spec_from_dict(stored)
    except SpecError as e:
        raise SpecError(f"study {study!r} holds a spec autoprune cannot read: {e}") from None
    m, d = spec.model, spec.data
    if is_user_model(m.name) and model is None:
        raise SpecError(
            f"study {study!r} was made with your own model factory {m.name!r}; autoprune imports code "
            f"named by a stored study only when you name it too: pass --model {m.name}"
        )
    if m.checkpoint and checkpoint is None:
        raise SpecError(
            f"study {study!r} was made from the checkpoint {m.checkpoint!r}: pass --checkpoint yourself"
        )
    if d.data_dir and data_dir is None:
        raise SpecError(f"study {study!r} was made from data in {d.data_dir!r}: pass --data-dir yourself")
    if model is not None and not is_user_model(model) and model != m.name:
        raise SpecError(f"study {study!r} searched model {m.name!r}, not {model!r}")
    return dataclasses.replace(
        spec,
        model=dataclasses.replace(m, name=model or m.name, checkpoint=checkpoint or ""),
        data=dataclasses.replace(d, data_dir=data_dir or ""),
        study=dataclasses.replace(spec.study, name=study, storage=storage, artifacts=artifacts or ""),
    )


def check_task(study: Any, task: str | None) -> None:
    """A study searched with your own task is read back only with a task named by you (its
    stored name is a note, never imported); a study without one takes none."""
    stored = study.user_attrs.get("task")
    if stored is not None and task is None:
        raise SpecError(
            f"study {study.study_name!r} was searched with your own "
            f"task {str(stored)[:200]!r}; autoprune imports "
            f"code named by a stored study only when you name it too: pass --task {str(stored)[:200]}"
        )
    if stored is None and task is not None:
        raise SpecError(
            f"study {study.study_name!r} was searched on its spec's data, not with a task: drop --task"
        )


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    data = read_toml(path, "study spec", SpecError)
    try:
        return spec_from_dict(data, default_name=path.stem)
    except SpecError as e:
        raise SpecError(f"study spec {path}: {e}") from None


def _range(key: str, values: list, low: float, high: float) -> None:
    if len(values) not in (1, 2):
        raise SpecError(f"{key}={values} should be one value (fixed) or a [low, high] range")
    if len(values) == 2 and not values[0] < values[1]:
        raise SpecError(f"{key}={values} is an empty range (low must be below high; one value fixes it)")
    if not all(low <= v <= high for v in values):
        raise SpecError(f"{key}={values} should lie within [{low}, {high}]")
