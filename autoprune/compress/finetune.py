"""Fine-tuning with the pruned weights held at zero (Deep Compression's retraining), as a stage.

Magnitude pruning's later steps happen here: a gradual schedule of ``unstructured.steps``
splits the fine-tuning epochs, pruning again before each part. A run can keep its end state
(:class:`Continuation`) and a later run continue from it instead of starting over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.compress._layers import weight_layers
from autoprune.compress.stage import Param, Run, SpaceLayers, Stage, ranged, register, value
from autoprune.compress.unstructured import mask_holder, prune_magnitude_
from autoprune.errors import AutoPruneError
from autoprune.train import EpochCallback, TrainConfig, TrainState, fit_resumable

CONTINUATION_FORMAT = "autoprune-finetune-state/1"


@dataclass(frozen=True)
class Continuation:
    """A run's fine-tuning where it stopped, to continue it (a capped search trial promoted to
    the full budget): the fine-tuned network's weights (its architecture is its base pruned by
    the same config again), the training state, and the batches it had."""

    weights: dict[str, torch.Tensor]
    state: TrainState
    batches: int

    def save(self, path: str | Path) -> None:
        torch.save(
            {
                "format": CONTINUATION_FORMAT,
                "weights": self.weights,
                "state": self.state.to_dict(),
                "batches": self.batches,
            },
            path,
        )

    def mismatch(self, shapes: dict[str, tuple[int, ...]]) -> str:
        """What keeps these weights from the network whose tensors have ``shapes`` ("" if nothing)."""
        mine = {k: tuple(v.shape) for k, v in self.weights.items()}
        if mine.keys() != shapes.keys():
            return f"its tensors are not the network's ({len(mine)} against {len(shapes)})"
        wrong = next((k for k in shapes if mine[k] != shapes[k]), None)
        return f"{wrong} is {mine[wrong]}, the network's {shapes[wrong]}" if wrong else ""

    @staticmethod
    def load(path: str | Path) -> Continuation:
        """A saved continuation (data: read with ``weights_only=True`` and checked)."""
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds on a file that is not one of ours
            raise AutoPruneError(f"{path} is not a saved fine-tuning state ({type(e).__name__})") from None
        if (
            not isinstance(d, dict)
            or d.get("format") != CONTINUATION_FORMAT
            or not isinstance(d.get("weights"), dict)
        ):
            raise AutoPruneError(f"{path} is not a saved fine-tuning state (expected {CONTINUATION_FORMAT})")
        if not all(isinstance(t, torch.Tensor) for t in d["weights"].values()):
            raise AutoPruneError(f"{path} is not a saved fine-tuning state (a weight is not a tensor)")
        try:
            return Continuation(d["weights"], TrainState.from_dict(d["state"]), int(d["batches"]))
        except (KeyError, TypeError, ValueError) as e:
            raise AutoPruneError(f"{path} is not a saved fine-tuning state ({e})") from None


@register
class FineTune(Stage):
    name = "finetune"
    config = TrainConfig
    order = 30
    label = "fine-tuning"
    timing = "finetune_s"
    trains = True

    def default(self) -> TrainConfig:
        return TrainConfig(epochs=2)  # after pruning, masks held

    def apply_(self, model: nn.Module, config: TrainConfig, run: Run) -> None:
        if not run.training:
            return
        u = run.config.unstructured
        steps = u.steps_over(config.epochs)
        state, had = None, run.resume.batches if run.resume is not None else 0
        if run.resume is not None:  # a promotion: the trial's own network, its fine-tuning continued
            try:
                model.load_state_dict(run.resume.weights)
            except RuntimeError:
                raise AutoPruneError(
                    "the saved fine-tuning state does not fit this network as pruned"
                ) from None
            run.masks = {name: layer.weight != 0 for name, layer in weight_layers(model).items()}
            _, state = fit_resumable(
                model,
                run.splits,
                config,
                seed=run.seed,
                callbacks=run.callbacks,
                after_step=mask_holder(model, run.masks),
                progress=run.progress,
                desc="fine-tune (continued)",
                resume=run.resume.state,
                new_schedule=True,
                teacher=run.teacher,
            )
            run.epochs, had = config.epochs, had + (state.steps if state else 0)
        for step, epochs in enumerate(_split(config.epochs, steps) if run.resume is None else [], start=1):
            if step > 1:  # gradual pruning: the next step on the fine-tuned weights
                run.masks = prune_magnitude_(model, u.at_step(step, steps))
            _, state = fit_resumable(
                model,
                run.splits,
                dataclasses.replace(config, epochs=epochs),
                seed=run.seed + step - 1,
                callbacks=counted_from(run.epochs, run.callbacks),
                after_step=mask_holder(model, run.masks),
                progress=run.progress,
                desc="fine-tune",
                teacher=run.teacher,
            )
            run.epochs, had = run.epochs + epochs, had + (state.steps if state else 0)
        if run.keep is not None and state is not None:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            Continuation(weights, state, had).save(run.keep)

    def params(self, space: Any, layers: SpaceLayers) -> list[Param]:
        training = [
            *ranged("finetune_epochs", space.finetune_epochs, integer=True),
            *ranged("lr", space.lr, log=True),
        ]
        return [dataclasses.replace(p, training=True) for p in training]

    def from_params(
        self, params: dict[str, Any], space: Any, layers: SpaceLayers, *, seed: int = 0
    ) -> TrainConfig:
        return TrainConfig(
            epochs=value(params, "finetune_epochs", space.finetune_epochs),
            lr=value(params, "lr", space.lr),
            max_batches=space.max_batches or None,
            distill=space.distill,
        )

    def to_params(self, config: TrainConfig, names: Sequence[str], base: nn.Module) -> dict[str, Any]:
        return {n: v for n, v in (("finetune_epochs", config.epochs), ("lr", config.lr)) if n in names}


def counted_from(offset: int, callbacks: Sequence[EpochCallback]) -> list[EpochCallback]:
    """The callbacks, told epoch ``offset + e`` for a later stage's epoch ``e``."""

    def shifted(callback: EpochCallback) -> EpochCallback:
        return lambda epoch, acc: callback(offset + epoch, acc)

    return [shifted(cb) for cb in callbacks]


def _split(epochs: int, steps: int) -> list[int]:
    """``epochs`` fine-tuning epochs over ``steps`` pruning steps, the extra ones first."""
    if epochs <= 0:
        return []
    return [epochs // steps + (i < epochs % steps) for i in range(steps)]
