"""A compression stage as a unit: what one step of the pipeline declares, in one module.

A stage is a config dataclass and a handler (torchao's ``quantize_(model, config)`` shape): the
handler's in-place :meth:`Stage.apply_`, the search parameters it adds to a study's space (plain
:class:`Param` values: the search turns them into Optuna distributions), how a trial's values
become its config, and what it writes into a packed file when it changes the network's
architecture (:meth:`Stage.record`, :meth:`Stage.rebuild_`). Its share of the size model is its
own ``apply_`` replayed without training (:attr:`Stage.trains` stages are skipped there).

Stages register in :data:`STAGES` and run in their :attr:`Stage.order`; a
:class:`~autoprune.compress.recipe.CompressConfig` holds one config per stage it runs. Adding a
stage is one new module registered here and imported by ``autoprune/compress/__init__.py``:
``autoprune/compress/lowrank.py`` is the worked example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from autoprune.compress._layers import conv_layers, output_layer, weight_layers
from autoprune.registry import Registry


@dataclass(frozen=True)
class Param:
    """One search parameter a stage adds: a range (``low``..``high``, integers or a log scale)
    or a choice among ``choices``."""

    name: str  # the trial's parameter name
    low: float = 0.0
    high: float = 0.0
    integer: bool = False
    log: bool = False
    choices: tuple[Any, ...] = ()
    # a training budget (epochs, learning rate) rather than what is removed or coded: the space
    # lists these after every stage's other parameters
    training: bool = False


def ranged(name: str, values: Sequence[Any], *, integer: bool = False, log: bool = False) -> list[Param]:
    """The parameter for a spec's ``[low, high]`` pair; none for one value (fixed, not sampled)."""
    if len(values) != 2:
        return []
    return [Param(name, values[0], values[1], integer=integer, log=log)]


def value(params: dict[str, Any], name: str, values: Sequence[Any]) -> Any:
    """A trial's value of ``name``, or the spec's fixed value when it is not sampled."""
    return params[name] if name in params else values[0]


def per_layer_params(mode: str, name: str, values: Sequence[Any], layers: Sequence[str]) -> list[Param]:
    """A setting searched per layer (``name_<layer>``), once for all (``name``), or not ("off")."""
    if mode == "per_layer":
        return [p for layer in layers for p in ranged(f"{name}_{layer}", values)]
    return ranged(name, values) if mode == "global" and layers else []


def per_layer_values(
    params: dict[str, Any], mode: str, name: str, values: Sequence[Any], layers: Sequence[str]
) -> dict[str, Any]:
    """Per layer, the trial's value of a setting :func:`per_layer_params` declared."""
    if mode == "off":
        return {}
    return {n: value(params, f"{name}_{n}" if mode == "per_layer" else name, values) for n in layers}


@dataclass(frozen=True)
class SpaceLayers:
    """The layers a search space has per-layer parameters for."""

    conv: tuple[str, ...]  # conv layers whose filters may be removed
    weights: tuple[str, ...]  # conv and linear layers for magnitude pruning

    @classmethod
    def of(cls, model: nn.Module) -> SpaceLayers:
        out = output_layer(model)
        convs = [
            n
            for n, m in conv_layers(model).items()
            if n != out and not (m.groups > 1 and m.groups == m.in_channels)
        ]
        return cls(tuple(convs), tuple(weight_layers(model)))


@dataclass
class Run:
    """What the stages of one compression run share as it goes. A run without ``splits`` is a
    replay: no stage trains (the size model's, and a continuation's network rebuilt)."""

    config: Any  # the whole CompressConfig: a stage may read another's settings
    example: torch.Tensor  # (1, C, H, W) zeros, to trace the network's graph
    splits: Any = None  # DataSplits to fine-tune and evaluate on; None in a replay
    seed: int = 0
    callbacks: Sequence[Any] = ()  # EpochCallback: validation accuracy after every training epoch
    progress: bool = False
    out: Path | None = None  # where the packed file goes
    spec: Any = None  # the ModelSpec the packed file records
    meta: dict[str, Any] | None = None
    resume: Any = None  # a Continuation: fine-tuning picks up where it stopped
    keep: Path | None = None  # where fine-tuning saves its end state
    teacher: nn.Module | None = None  # the network before compression, which fine-tuning may distill
    # filled in by the stages
    epochs: int = 0  # training epochs reported so far: a later stage's epoch e is epochs + e
    train_s: float = 0.0  # seconds spent training, whichever stage trained
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # weights held at zero
    bits: dict[str, int] = field(default_factory=dict)  # per layer: shared-value width
    norms: list[Any] = field(default_factory=list)  # LayerNorms of the filter pruning
    report: Any = None  # the PackReport of the file written

    @property
    def training(self) -> bool:
        return self.splits is not None


class Stage:
    """One step of the compression pipeline. Subclasses set the class attributes and override
    what they need; the defaults are a stage with no search parameters and no trace in the
    packed file beyond its weights."""

    name: ClassVar[str]  # the recipe's table, the spec's [space.stages.<name>], the file's record
    config: ClassVar[type]  # its frozen config dataclass
    order: ClassVar[int]  # place in the pipeline (filter pruning 10 ... coding 50)
    label: ClassVar[str]  # what the progress line says while it runs
    timing: ClassVar[str]  # the metric its wall time adds to (prune_s, quantize_s, ...)
    optional: ClassVar[bool] = False  # runs only when a recipe or a space names it
    reshapes: ClassVar[bool] = False  # changes the architecture (replayed to rebuild a network)
    trains: ClassVar[bool] = False  # trains the network (not replayed by the size model)
    space: ClassVar[type | None] = None  # an optional stage's [space.stages.<name>] table

    def default(self) -> Any:
        return self.config()

    def apply_(self, model: nn.Module, config: Any, run: Run) -> None:
        raise NotImplementedError

    def params(self, space: Any, layers: SpaceLayers) -> list[Param]:
        """The search parameters ``space`` (the spec's [space] section) gives this stage."""
        return []

    def from_params(
        self, params: dict[str, Any], space: Any, layers: SpaceLayers, *, seed: int = 0
    ) -> Any | None:
        """The stage's config for a trial's ``params`` (None: the stage does not run)."""
        return None if self.optional else self.default()

    def to_params(self, config: Any, names: Sequence[str], base: nn.Module) -> dict[str, Any]:
        """A recipe's config as values of the search parameters ``names`` (what it can say)."""
        return {}

    def check(self, config: Any, model: nn.Module) -> None:
        """Fail fast, before any training, on a config the model cannot take (a layer it lacks)."""

    def fit(self, config: Any, model: nn.Module) -> Any:
        """``config`` checked against ``model`` and said in its layers' names (what a recipe says
        by layer position, given to the layers at those positions)."""
        self.check(config, model)
        return config

    def record(self, model: nn.Module) -> Any | None:
        """What a packed file must hold to rebuild ``model``'s architecture (None: nothing)."""
        return None

    def rebuild_(self, model: nn.Module, record: Any) -> None:
        """Give a freshly built ``model`` the architecture :meth:`record` described. The record
        is data from a file: check it, and raise ValueError or TypeError on anything amiss."""
        raise ValueError(f"stage {self.name!r} records nothing in a packed file")

    def space_of(self, space: Any) -> Any | None:
        """An optional stage's own table of ``space`` (None: the space does not search it)."""
        return space.stage(self.name) if self.optional else None


STAGES: Registry[Stage] = Registry("stage")
_BY_CONFIG: dict[type, Stage] = {}  # a config's type -> its stage: stage_of is a lookup, on hot paths


def register(stage: type[Stage]) -> type[Stage]:
    """Add a stage class to :data:`STAGES` (a class decorator)."""
    instance = stage()
    STAGES.register(stage.name)(instance)
    _BY_CONFIG[stage.config] = instance
    return stage


def ordered_stages() -> list[Stage]:
    """Every registered stage, in the order the pipeline runs them."""
    return sorted((STAGES.get(name) for name in STAGES), key=lambda s: s.order)


def stage_of(config: Any) -> Stage:
    """The stage whose config ``config`` is."""
    stage = _BY_CONFIG.get(type(config))
    if stage is None:
        raise TypeError(f"{type(config).__name__} is no compression stage's config")
    return stage
