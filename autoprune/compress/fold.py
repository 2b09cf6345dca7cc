"""Batch norm folded into the convolution before it, an optional stage for the file you ship.

In inference a batch norm after a convolution is an affine map per channel,
``y = (z - mean) * gamma / sqrt(var + eps) + beta`` on the conv's output ``z``, so it folds
into the conv: each filter's weights scaled by ``s = gamma / sqrt(var + eps)`` and a bias
``(b - mean) * s + beta``. The packed file then keeps one float per channel where it kept four
(weight, bias, running mean and variance) and a counter: on a slim MobileNetV2 those were half
of the file. The stage runs after fine-tuning and before weight sharing, so the codebooks are
those of the folded weights and trained quantization tunes them; pruned weights stay zero. One
codebook per layer then covers filters scaled by different factors: at 3-4 bits that cost
MobileNetV2 0.4-6.3 points, where ``[pack] affine_norms`` (2 values a channel, the network
unchanged) cost none (BENCHMARKS.md, issue 27, session 22).

A batch norm folds only when it is called once, right on the output of a conv that nothing
else reads (found by tracing the network with torch.fx), and keeps running statistics. The
decoded network has no batch norm there: it infers the same, but trains on as a network
without it (fine-tune from your checkpoint, not from the shipped file). A recipe runs it with
a ``[fold]`` table; a search folds every trial with ``[space.stages.fold]``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.fx
from torch import nn

from autoprune.compress._layers import RecipeError, norm_affine
from autoprune.compress.stage import Run, SpaceLayers, Stage, register


@dataclass(frozen=True)
class FoldConfig:
    """Fold every batch norm that can be folded (the stage has nothing to tune)."""


@dataclass(frozen=True)
class FoldSpace:
    """The stage's table in a study spec, ``[space.stages.fold]``: every trial folds."""


class FoldedNorm(nn.Identity):
    """Where a batch norm was: it now lives in conv ``into``'s weights and bias."""

    def __init__(self, into: str) -> None:
        super().__init__()
        self.into = into


def foldable(model: nn.Module) -> dict[str, str]:
    """Each batch norm that can fold into its conv: {batch norm's name: conv's name}."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # any network a user brings; tracing fails in many ways
        raise RecipeError(
            f"fold: torch.fx cannot trace this network ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "leave the [fold] stage out"
        ) from None
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = {}
    for node in graph.nodes:
        norm = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(norm, nn.BatchNorm2d) or not norm.track_running_stats or len(node.args) != 1:
            continue
        source = node.args[0]
        conv = (
            modules.get(source.target)
            if isinstance(source, torch.fx.Node) and source.op == "call_module"
            else None
        )
        if (
            isinstance(conv, nn.Conv2d)
            and conv.out_channels == norm.num_features
            and len(source.users) == 1
            and calls[node.target] == calls[source.target] == 1
        ):
            pairs[node.target] = source.target
    return pairs


@torch.no_grad()
def fold_(model: nn.Module) -> dict[str, str]:
    """Fold every batch norm :func:`foldable` finds into its conv; returns the pairs folded."""
    pairs = foldable(model)
    for norm_name, conv_name in pairs.items():
        conv = cast(nn.Conv2d, model.get_submodule(conv_name))
        scale, shift = norm_affine(cast(nn.BatchNorm2d, model.get_submodule(norm_name)))  # (C,) each
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype))
        model.set_submodule(norm_name, FoldedNorm(conv_name))
    return pairs


@register
class Fold(Stage):
    name = "fold"
    config = FoldConfig
    order = 35  # after fine-tuning (which needs the batch norms), before weight sharing
    label = "batch norm folding"
    timing = "quantize_s"
    optional = True
    space = FoldSpace

    def apply_(self, model: nn.Module, config: FoldConfig, run: Run) -> None:
        fold_(model)

    def from_params(
        self, params: dict[str, Any], space: Any, layers: SpaceLayers, *, seed: int = 0
    ) -> FoldConfig | None:
        return FoldConfig() if self.space_of(space) is not None else None

    def record(self, model: nn.Module) -> dict[str, str] | None:
        folded = {name: m.into for name, m in model.named_modules() if isinstance(m, FoldedNorm)}
        return folded or None

    def rebuild_(self, model: nn.Module, record: Any) -> None:
        if not isinstance(record, dict):
            raise TypeError("the fold record should be a table of batch norm -> conv")
        modules = dict(model.named_modules())
        for norm_name, conv_name in record.items():
            norm, conv = modules.get(norm_name), modules.get(conv_name)
            if not isinstance(norm, nn.BatchNorm2d) or not isinstance(conv, nn.Conv2d):
                raise ValueError(
                    f"fold names {str(norm_name)[:80]!r} -> {str(conv_name)[:80]!r}, "
                    "not a batch norm and a conv of the model"
                )
            if conv.out_channels != norm.num_features:
                raise ValueError(f"fold: {norm_name} does not normalise {conv_name}'s channels")
            if conv.bias is None:  # on the meta device for a skeleton: nothing allocated
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device))
            model.set_submodule(norm_name, FoldedNorm(conv_name))
