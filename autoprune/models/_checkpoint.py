"""Loading a user's checkpoint safely (``weights_only=True``) with one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprune.errors import CheckpointError


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict (or ``{"state_dict": ...}``) from ``path`` into ``model`` in place."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load on arbitrary bytes fails in many ways; all mean "corrupt"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file ({first[:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"checkpoint {path} is not a state_dict (a dict of tensors)")
    expected = model.state_dict()
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
