"""The seed paper's form of the surrogate: one small network shared by every layer.

It reads one layer's row (the layer, what the trial does to it, the fine-tuning; see
:mod:`autoprune.surrogate._layers`) and returns that layer's share of the trial's accuracy
drop; the shares of a trial's layers are summed, with one bias for the whole network. Since
every layer of every network is described the same way, the same weights apply to a layer it
has seen in another study (transfer). An ensemble of such networks, each fitted on a
bootstrap sample of the trials, gives every prediction a spread.

With ``residual`` (the default) the networks learn only what the additive sensitivity prior
misses: the prediction is ``alpha * prior + network``, ``alpha`` fitted by least squares shrunk
toward 1 (two pseudo-trials' weight), so that with no trial at all the prediction is the prior
the allocator used, and each trial teaches the correction where layers interact and where
fine-tuning recovers what the probes lost.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.surrogate._layers import DROP_SCALE, FEATURES, PRIOR_COLUMNS, Encoded, prior_drop


class SharedLayerNet(nn.Module):
    """``members`` independent networks f(layer row) -> that layer's contribution, held as
    stacked weights so that one pass runs them all (each on its own sample of trials); a
    trial's prediction is its layers' contributions summed, plus a bias."""

    def __init__(self, members: int, features: int, hidden: int = 32):
        super().__init__()
        self.weights = nn.ParameterList()
        for fan_in, fan_out in ((features, hidden), (hidden, hidden), (hidden, 1)):
            bound = 1 / fan_in**0.5  # nn.Linear's initialisation, per member
            self.weights.append(nn.Parameter(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound)))
            self.weights.append(nn.Parameter(torch.empty(members, 1, 1, fan_out).uniform_(-bound, bound)))
        self.bias = nn.Parameter(torch.zeros(members, 1))

    def contributions(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(members, n, layers, features), (members, n, layers) -> (members, n, layers)."""
        w1, b1, w2, b2, w3, b3 = self.weights
        h = nn.functional.silu(torch.einsum("mnlf,mfh->mnlh", x, w1) + b1)
        h = nn.functional.silu(torch.einsum("mnlh,mhk->mnlk", h, w2) + b2)
        return (torch.einsum("mnlh,mho->mnlo", h, w3) + b3).squeeze(-1) * mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.contributions(x, mask).sum(dim=2) + self.bias  # (members, n)


@dataclass
class LayerwiseEnsemble:
    """``n_members`` shared-layer networks, each on a bootstrap sample of the trials; the
    prediction is their mean, the spread their standard deviation. Inputs are standardised
    over the real layer rows, the target scaled by its spread; the loss is Huber's, so that a
    few collapsed trials (drops of 80 points) do not drown the budget's region."""

    n_members: int = 5
    hidden: int = 32
    steps: int = 500
    lr: float = 5e-3
    weight_decay: float = 1e-2  # measured on held-out histories: bench/surrogate_cv.py, BENCHMARKS.md
    bootstrap: bool = True
    random_state: int = 0
    residual: bool = True  # learn the correction to the additive sensitivity prior, not the drop itself
    alpha_: float = 1.0  # the prior's fitted weight
    mean_: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]  # set by fit
    scale_: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]  # set by fit
    y_scale_: float = 1.0
    net_: SharedLayerNet | None = field(default=None, repr=False)

    def _prior(self, data: Encoded) -> np.ndarray:
        return self.alpha_ * prior_drop(data.x, data.mask) if self.residual else np.zeros(len(data))

    def fit(self, data: Encoded, y: np.ndarray) -> LayerwiseEnsemble:
        y = np.asarray(y, dtype=float)
        if self.residual:
            p = prior_drop(data.x, data.mask)
            shrink = 2 * float(np.mean(p**2)) if len(p) else 0.0
            self.alpha_ = float((p @ y + shrink) / (p @ p + shrink)) if p @ p + shrink > 0 else 1.0
            y = y - self.alpha_ * p
        if len(y) == 0:  # no trial: the prior alone
            self.net_ = None
            return self
        rows = data.x[data.mask]
        self.mean_ = rows.mean(axis=0)
        self.scale_ = np.where(rows.std(axis=0) > 1e-6, rows.std(axis=0), 1.0)
        self.y_scale_ = float(np.std(y)) or 1.0
        x, mask = self._tensors(data)
        target = torch.as_tensor(np.asarray(y, dtype=np.float32) / self.y_scale_)
        rng = np.random.default_rng(self.random_state)
        n = len(y)
        picks = torch.as_tensor(
            np.stack(
                [rng.integers(n, size=n) if self.bootstrap else np.arange(n) for _ in range(self.n_members)]
            )
        )  # (members, n)
        torch.manual_seed(self.random_state)
        self.net_ = SharedLayerNet(self.n_members, x.shape[-1], self.hidden)
        optimizer = torch.optim.Adam(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        xs, masks, targets = x[picks], mask[picks], target[picks]  # each member its own sample
        for _ in range(self.steps):
            optimizer.zero_grad()
            # the members' losses are summed: each member's gradient is its own loss's
            loss = (
                nn.functional.huber_loss(self.net_(xs, masks), targets, delta=1.0, reduction="none")
                .mean(1)
                .sum()
            )
            loss.backward()
            optimizer.step()
        self.net_.eval()
        return self

    def _tensors(self, data: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        x = (data.x - self.mean_) / self.scale_
        return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(data.mask, dtype=torch.float32)

    def _all(self, data: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """The data as every member reads it: (members, n, layers, features), (members, n, layers)."""
        x, mask = self._tensors(data)
        return x.expand(self.n_members, *x.shape), mask.expand(self.n_members, *mask.shape)

    @torch.no_grad()
    def predict_dist(self, data: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (standard deviation over the members) for every row."""
        prior = self._prior(data)
        if self.net_ is None:
            return prior, np.zeros(len(data))
        p = self.net_(*self._all(data)).numpy() * self.y_scale_
        return prior + p.mean(axis=0), p.std(axis=0)

    def predict(self, data: Encoded) -> np.ndarray:
        return self.predict_dist(data)[0]

    @torch.no_grad()
    def contributions(self, data: Encoded) -> np.ndarray:
        """(n, layers): each layer's share of the prediction (its prior damage and the network's
        correction), averaged over the members."""
        from_prior = (
            self.alpha_ * data.x[..., PRIOR_COLUMNS].sum(-1) * data.mask * DROP_SCALE
            if self.residual
            else 0.0
        )
        if self.net_ is None:
            return np.asarray(from_prior) * np.ones(data.mask.shape)
        return from_prior + self.net_.contributions(*self._all(data)).mean(0).numpy() * self.y_scale_

    def state(self) -> dict[str, Any]:
        """Everything it is, as tensors and numbers (saved with torch.save, loaded with
        weights_only=True: never a pickle of code)."""
        return {
            "config": {
                k: getattr(self, k)
                for k in (
                    "n_members",
                    "hidden",
                    "steps",
                    "lr",
                    "weight_decay",
                    "bootstrap",
                    "random_state",
                    "residual",
                    "alpha_",
                )
            },
            "features": list(FEATURES),
            "mean": torch.as_tensor(self.mean_),
            "scale": torch.as_tensor(self.scale_),
            "y_scale": self.y_scale_,
            "net": self.net_.state_dict() if self.net_ is not None else {},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LayerwiseEnsemble:
        if list(state["features"]) != list(FEATURES):
            raise ValueError("it was saved by an autoprune that describes layers differently")
        model = cls(**state["config"])
        model.mean_, model.scale_ = state["mean"].numpy(), state["scale"].numpy()
        model.y_scale_ = float(state["y_scale"])
        if state["net"]:
            model.net_ = SharedLayerNet(model.n_members, len(FEATURES), model.hidden)
            model.net_.load_state_dict(state["net"])
            model.net_.eval()
        return model


def to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
