"""Proposals before the first trial: every layer's setting chosen from its sensitivity probes.

The field's practice (HAWQ-V3, AIMET's ratio selection, Sony MCT): each layer's damage is
probed alone, without fine-tuning (:mod:`autoprune.sensitivity`); the damages are taken to add
up; an integer program (:func:`autoprune.ops.allocate.allocate`) then picks every layer's
setting to make the network smallest (or cheapest in MACs) with the summed damage within a
budget, in well under a second. Layers torch-pruning couples (a residual stage's convs) are one
knob. The additive model is a prior, not a promise: probes without fine-tuning overstate the
damage a fine-tuned trial keeps, and layers interact, so proposals are made for several
budgets around the asked one and run as a study's first trials (``source = "sensitivity"``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from autoprune.compress import CompressConfig, weight_layers
from autoprune.compress.size import SizeModel
from autoprune.models import ModelSpec
from autoprune.ops.allocate import allocate
from autoprune.search.record import Source
from autoprune.search.space import SpaceLayers, config_from_params, distributions, holds
from autoprune.search.spec import SpaceSection
from autoprune.sensitivity import Sensitivity

RATIO_STEP = 0.05  # the options of a filter ratio: its range in these steps
QUALITY_STEP = 0.125  # ... of a magnitude quality
COSTS = ("packed_bytes", "macs")  # what the allocator can minimise


@dataclass(frozen=True)
class Knob:
    """Space parameters that take one value together, its options and their predicted damage."""

    params: tuple[str, ...]
    values: tuple[float, ...]
    damage: np.ndarray  # points lost at each value, probed without fine-tuning


@dataclass(frozen=True)
class SensitivityProposal:
    params: dict[str, Any]  # values of the study's space parameters
    budget: float  # the summed predicted drop it was allocated under
    predicted_drop: float  # the additive prior's drop (points, no fine-tuning)
    packed_bytes: int  # computed by the size model
    macs: int  # computed from the channels kept
    compression_ratio: float  # dense fp32 bytes / packed_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": round(self.budget, 4),
            "predicted_acc_drop": round(self.predicted_drop, 4),
            "packed_bytes": self.packed_bytes,
            "macs": self.macs,
            "compression_ratio": round(self.compression_ratio, 3),
            "params": self.params,
        }


class Allocator:
    """The proposals for one base network and search space from its sensitivity analysis."""

    def __init__(
        self,
        base: nn.Module,
        spec: ModelSpec,
        space: SpaceSection,
        sensitivity: Sensitivity,
        *,
        sizes: SizeModel | None = None,
    ):
        self.space = space
        self.sensitivity = sensitivity
        self.layers = SpaceLayers.of(base)
        self.dists = distributions(space, self.layers)
        self.sizes = sizes or SizeModel(base, spec)
        self.positions = _positions(base, (spec.in_channels, *spec.image_size))
        self.dense_bytes = sum(p.numel() * p.element_size() for p in base.state_dict().values())
        self.knobs = self._structured_knobs() + self._magnitude_knobs()

    # ------------------------------------------------------------------ the model of damage

    def _structured_knobs(self) -> list[Knob]:
        s, space = self.sensitivity, self.space
        values = _grid(space.ratio, RATIO_STEP)
        parts = self.sizes.coupled(self.layers.conv)
        # a probe of any conv of a coupled part prunes the whole part: its first conv's stands for it
        damage = [np.array([s.damage_at_ratio(part[0], v) for v in values]) for part in parts]
        if space.structured == "per_layer" and "ratio_" + (parts[0][0] if parts else "") in self.dists:
            return [Knob(tuple(f"ratio_{n}" for n in part), values, d) for part, d in zip(parts, damage)]
        if space.structured == "global" and "ratio" in self.dists:
            return [Knob(("ratio",), values, np.sum(damage, axis=0))]
        if space.structured == "ranked" and "ranked_ratio" in self.dists:  # as if every layer lost that share
            return [Knob(("ranked_ratio",), values, np.sum(damage, axis=0))]
        return []

    def _magnitude_knobs(self) -> list[Knob]:
        s, space = self.sensitivity, self.space
        values = _grid(space.quality, QUALITY_STEP)
        damage = {n: np.array([s.damage_at_quality(n, v) for v in values]) for n in self.layers.weights}
        if space.magnitude == "per_layer" and all(f"quality_{n}" in self.dists for n in damage):
            return [Knob((f"quality_{n}",), values, d) for n, d in damage.items()]
        if space.magnitude == "global" and "quality" in self.dists:
            return [Knob(("quality",), values, np.sum(list(damage.values()), axis=0))]
        return []

    def bits_damage(self, conv_bits: int, fc_bits: int) -> float:
        s = self.sensitivity
        return sum(s.damage_at_bits(x.layer, conv_bits if x.kind == "conv" else fc_bits) for x in s.layers)

    # ------------------------------------------------------------------ the model of cost

    def cost(self, config: CompressConfig, what: str) -> int:
        """Packed bytes (the size model) or MACs (the channels kept) of ``config``."""
        if what == "packed_bytes":
            return self.sizes.estimate(config)
        layers = self.sizes.layers(config)
        return int(sum(self.positions[x.layer] * x.weights for x in layers))

    def config(self, params: dict[str, Any]) -> CompressConfig:
        return config_from_params(params, self.space, self.layers)

    # ------------------------------------------------------------------ proposals

    def propose(self, budgets: list[float], *, minimise: str = "packed_bytes") -> list[SensitivityProposal]:
        """For each budget (points of summed predicted drop), the allocation that minimises
        ``minimise`` within it, over every weight-sharing setting of the space; duplicates and
        budgets nothing fits are left out."""
        if minimise not in COSTS:
            raise ValueError(f"minimise={minimise!r} should be one of {', '.join(COSTS)}")
        out: list[SensitivityProposal] = []
        costs = {bits: self._costs(*bits, minimise) for bits in self._bits()}  # the same for every budget
        for budget in budgets:
            best: SensitivityProposal | None = None
            for (conv_bits, fc_bits), cost in costs.items():
                proposal = self._allocate(budget, conv_bits, fc_bits, cost)
                if proposal is not None and (
                    best is None or _cost(proposal, minimise) < _cost(best, minimise)
                ):
                    best = proposal
            if best is not None and all(best.params != p.params for p in out):
                out.append(best)
        return out

    def _bits(self) -> list[tuple[int, int]]:
        ranges = [
            range(v[0], v[-1] + 1) if f in self.dists else [v[0]]
            for f, v in (("conv_bits", self.space.conv_bits), ("fc_bits", self.space.fc_bits))
        ]
        return [(conv, fc) for conv, fc in itertools.product(*ranges)]

    def _costs(self, conv_bits: int, fc_bits: int, minimise: str) -> list[np.ndarray]:
        """Each knob's cost at each of its values, the others untouched: the additive model."""
        fixed = self._fixed(conv_bits, fc_bits)
        start = self.cost(self.config(fixed), minimise)
        return [
            np.array(
                [
                    self.cost(self.config({**fixed, **dict.fromkeys(knob.params, v)}), minimise) - start
                    for v in knob.values
                ],
                dtype=float,
            )
            for knob in self.knobs
        ]

    def _allocate(
        self, budget: float, conv_bits: int, fc_bits: int, costs: list[np.ndarray]
    ) -> SensitivityProposal | None:
        fixed = self._fixed(conv_bits, fc_bits)
        left = budget - self.bits_damage(conv_bits, fc_bits)
        if left < 0:
            return None
        chosen = allocate(costs, [k.damage for k in self.knobs], left)
        if chosen is None:
            return None
        params = dict(fixed)
        for knob, i in zip(self.knobs, chosen):
            params.update(dict.fromkeys(knob.params, knob.values[i]))
        params = {k: v for k, v in params.items() if k in self.dists and holds(self.dists[k], v)}
        config = self.config(params)
        size = self.cost(config, "packed_bytes")
        drop = self.bits_damage(conv_bits, fc_bits) + sum(
            float(k.damage[i]) for k, i in zip(self.knobs, chosen)
        )
        return SensitivityProposal(
            params, budget, drop, size, self.cost(config, "macs"), self.dense_bytes / max(size, 1)
        )

    def _fixed(self, conv_bits: int, fc_bits: int) -> dict[str, Any]:
        """The parameters the allocator does not choose: the bits given, and the fine-tuning at
        its most generous (every epoch of its range, the middle learning rate, linear init)."""
        d = self.dists
        params: dict[str, Any] = {"conv_bits": conv_bits, "fc_bits": fc_bits}
        params.update(
            {k: _middle(d[k], k) for k in ("finetune_epochs", "lr", "quant_epochs", "init") if k in d}
        )
        params.update({k: 0.0 for k in d if k.startswith(("ratio", "quality")) and holds(d[k], 0.0)})
        params.update({k: _low(d[k]) for k in d if k.startswith(("ratio", "quality")) and k not in params})
        return params


def _cost(p: SensitivityProposal, what: str) -> int:
    return p.packed_bytes if what == "packed_bytes" else p.macs


def _grid(bounds: list[float], step: float) -> tuple[float, ...]:
    """A range's values in ``step``s from its low end, its high end included."""
    low, high = bounds[0], bounds[-1]
    n = int(math.floor((high - low) / step + 1e-9))
    return tuple(sorted({round(low + i * step, 6) for i in range(n + 1)} | {high}))


def _low(dist: BaseDistribution) -> Any:
    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low  # type: ignore[attr-defined]


def _middle(dist: BaseDistribution, name: str) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return "linear" if "linear" in dist.choices else dist.choices[0]
    if name == "lr":  # sampled on a log scale: its geometric middle
        return float(math.sqrt(dist.low * dist.high))  # type: ignore[attr-defined]
    return dist.high  # type: ignore[attr-defined]


def _positions(base: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Per weight layer, how many times each of its weights is used for one input (output
    positions: H x W of a conv's output, 1 for a linear layer on a vector)."""
    layers = weight_layers(base)
    names = {m: n for n, m in layers.items()}
    out: dict[str, int] = {}

    def hook(m: nn.Module, _inp: Any, y: torch.Tensor) -> None:
        assert isinstance(m, (nn.Conv2d, nn.Linear))
        channels = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        out[names[m]] = y.numel() // channels

    handles = [m.register_forward_hook(hook) for m in layers.values()]
    try:
        with torch.no_grad():
            base.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return {n: out.get(n, 0) for n in layers}


def enqueue_proposals(study: optuna.Study, proposals: list[SensitivityProposal]) -> int:
    """The proposals as waiting trials (``source=sensitivity``, with the budget each was
    allocated under and its predicted drop); a search runs them before sampling. One already
    waiting is skipped; returns how many were added."""

    def waiting() -> int:
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))

    before = waiting()
    for p in proposals:
        study.enqueue_trial(
            p.params,
            user_attrs={
                "source": Source.SENSITIVITY.value,
                "proposal_budget": p.budget,
                "predicted_acc_drop": p.predicted_drop,
            },
            skip_if_exists=True,
        )
    return waiting() - before


def proposal_budgets(max_acc_drop: float, scales: list[float]) -> list[float]:
    """The budgets of a warm start: multiples of the study's (a budget of 0 asks for 0.5 point)."""
    return [s * (max_acc_drop or 0.5) for s in scales]
