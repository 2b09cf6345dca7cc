"""Your own training loop and metric: a task stands where autoprune's data and top-1 accuracy
would. autoprune never sees the task's data; it asks the task to fine-tune a network for a
budget it chooses and to score a network on the validation or test split.

A task is any object with (``examples/own_loop.py`` is one):

- ``metric``: the metric's name, shown wherever autoprune would say "accuracy" (str);
- ``num_classes``: passed to a built-in model's factory (your own factory may ignore it);
- ``example_input()``: one input batch, (1, C, H, W), for tracing, MACs and latency;
- ``finetune(model, budget, report)``: train ``model`` in place for ``budget.epochs`` epochs
  (each at most ``budget.max_batches`` batches when that is not None), at about ``budget.lr``,
  seeded by ``budget.seed``; call ``report(epoch, value)`` after each epoch with the validation
  metric (Optuna's pruner and the dashboard read it). Use a ``torch.optim`` optimizer: after
  each of its steps autoprune puts pruned weights back to zero;
- ``evaluate(model, split)``: the metric on ``"val"`` or ``"test"``, higher is better, in the
  units the budget (``max_acc_drop``) is given in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from autoprune.errors import DataError


@dataclass(frozen=True)
class FinetuneBudget:
    """What autoprune asks of one fine-tuning run of a task."""

    epochs: int
    max_batches: int | None  # per epoch; None: whole epochs
    lr: float  # the run's learning rate (the trial's, or the recipe's)
    batch_size: int
    seed: int


@dataclass(frozen=True, eq=False)
class TaskSplit:
    """A split that only the task can read: its name, for ``task.evaluate``."""

    task: Any
    part: str  # "train", "val" or "test"
    shape: tuple[int, ...]  # one example's (C, H, W)
    size: int = 1  # examples, where the task says (``sizes``); 1 when it does not

    def __len__(self) -> int:
        return self.size

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise DataError("a task's data is its own: autoprune asks the task to train and evaluate")

    def fingerprint(self, digest: Any) -> None:
        digest.update(f"task split {self.part}".encode())

    def score(self, model: torch.nn.Module) -> float:
        value = self.task.evaluate(model, self.part)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"the task's evaluate returned {type(value).__name__}, not a number") from None
