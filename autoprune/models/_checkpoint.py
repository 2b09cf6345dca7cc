"""Loading a user's checkpoint safely (``weights_only=True``) with one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import CheckpointError

log = logging.getLogger(__name__)

# Where training scripts keep the weights in a checkpoint that holds more (epoch, optimiser):
# Lightning and timm "state_dict", PyTorch's tutorial "model_state_dict", torchvision's recipes "model".
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model")


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict from ``path`` into ``model`` in place: the file's own dict of tensors,
    or the one under a :data:`WEIGHT_KEYS` entry; keys saved through a wrapper (``module.`` of
    DataParallel, ``_orig_mod.`` of ``torch.compile``, a Lightning module's attribute) are read
    under that prefix when they then match the model's exactly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load on arbitrary bytes fails in many ways; all mean "corrupt"
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects (a whole model?), which autoprune "
                "never unpickles: save model.state_dict() instead"
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file ({first[:160]})") from None
    expected = model.state_dict()
    state = _unwrapped(_weights(stored, path), expected, path)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} "
                f"in the file, {tuple(expected[k].shape)} in the model)"
            )
        raise CheckpointError(f"checkpoint {path} does not match this model: {'; '.join(parts)}")
    model.load_state_dict(state)
    return model


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _weights(stored: Any, path: Path) -> dict[str, torch.Tensor]:
    """The dict of tensors in a loaded checkpoint: itself, or its first :data:`WEIGHT_KEYS` entry."""
    if _is_state_dict(stored):
        return stored
    if isinstance(stored, dict):
        for key in WEIGHT_KEYS:
            if _is_state_dict(stored.get(key)):
                return stored[key]
        keys = ", ".join(repr(k)[:40] for k in list(stored)[:8]) + (", ..." if len(stored) > 8 else "")
        raise CheckpointError(
            f"checkpoint {path} is not a state_dict: a dict of {keys}, and none of "
            f"{', '.join(WEIGHT_KEYS)} holds one (save model.state_dict(), or put it under 'state_dict')"
        )
    raise CheckpointError(f"checkpoint {path} is not a state_dict (a dict of tensors)")


def _unwrapped(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """``state``'s keys under the one prefix that makes them exactly the model's (a wrapper's
    ``module.``, ``_orig_mod.``, ``model.``, in any nesting); else ``state`` as it is."""
    if set(state) == set(expected) or not expected:
        return state
    first = next(iter(expected))
    prefixes = {k[: -len(first)] for k in state if k.endswith("." + first)}
    for prefix in sorted(prefixes, key=len):
        inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if set(inner) == set(expected):
            log.info("checkpoint %s: the model's weights are those under %r", path, prefix)
            return inner
    return state
