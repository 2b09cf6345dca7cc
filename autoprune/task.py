"""Loading your own task (``--task file.py:factory``): what it is and what it must have is in
:mod:`autoprune.data._task`. Like a model factory, a task is code you name yourself; a stored
study or a packed file never names one for autoprune to import."""

from __future__ import annotations

from typing import Any

import torch

from autoprune.data import DataSplits, TaskSplit
from autoprune.errors import AutoPruneError, TaskError
from autoprune.models import factory_source_hash, is_user_model, resolve_factory

NEEDS = ("finetune", "evaluate", "example_input")


def load_task(ref: str) -> DataSplits:
    """The task ``package.module:factory`` or ``path/to/file.py:factory`` names (the factory is
    called with no arguments), as the splits autoprune trains and evaluates through."""
    if not is_user_model(ref):
        raise TaskError(
            f"--task {ref!r} should name a factory: path/to/file.py:factory or package.module:factory"
        )
    try:
        task = resolve_factory(ref)()
    except AutoPruneError as e:
        raise TaskError(f"--task {ref}: {e}") from None
    except Exception as e:  # your code can fail in any way; one line says how
        raise TaskError(f"--task {ref} raised {type(e).__name__}: {e}") from None
    missing = [name for name in NEEDS if not callable(getattr(task, name, None))]
    if missing:
        raise TaskError(f"--task {ref} returned a {type(task).__name__} without {', '.join(missing)}")
    metric = getattr(task, "metric", "score")
    classes = getattr(task, "num_classes", 0)
    if not isinstance(metric, str) or not metric or not isinstance(classes, int) or classes < 0:
        raise TaskError(f"--task {ref}: metric should be a name and num_classes a whole number")
    example = _example(task, ref)
    shape = tuple(int(v) for v in example.shape[1:])
    sizes: Any = getattr(task, "sizes", {}) or {}
    parts = {part: TaskSplit(task, part, shape, int(sizes.get(part, 1))) for part in ("train", "val", "test")}
    return DataSplits(
        f"task {ref}",
        parts["train"],
        parts["val"],
        parts["test"],
        classes,
        (),
        (),
        task=task,
        metric=metric,
        source=f"{ref}:{factory_source_hash(ref)}",
    )


def _example(task: Any, ref: str) -> Any:

    try:
        example = task.example_input()
    except Exception as e:  # noqa: BLE001 - the user's code
        raise TaskError(f"--task {ref}: example_input() raised {type(e).__name__}: {e}") from None
    if not isinstance(example, torch.Tensor) or example.ndim < 2 or example.shape[0] != 1:
        raise TaskError(f"--task {ref}: example_input() should return one input batch of shape (1, ...)")
    return example
