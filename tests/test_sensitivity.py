"""Layer sensitivity: a layer whose pruning destroys accuracy shows it, a layer with spare filters
shows none, the analysis is cached per base model, and a stored one is checked as data."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data import load_dataset
from autoprune.errors import AutoPruneError
from autoprune.sensitivity import QUALITIES, RATIOS, Sensitivity, analyse, cache_key, sensitivity_for
from autoprune.train import TrainConfig, fit


class TwoConvs(nn.Module):
    """8x8 digits: ``spare`` has 16 filters, half of them dead (all zero, so pruned first at no
    cost); ``fragile`` has 4, every one of them needed."""

    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Conv2d(1, 16, 3, padding=1)
        self.fragile = nn.Conv2d(16, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fragile(F.relu(self.spare(x))))
        return self.fc(torch.flatten(F.max_pool2d(x, 2), 1))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, object]:
    splits = load_dataset("digits", val_fraction=0.3, seed=0)
    torch.manual_seed(0)
    model = TwoConvs()
    fit(model, splits, TrainConfig(epochs=8, lr=3e-3), seed=0, progress=False)
    with torch.no_grad():  # the dead half of ``spare``, and what reads it
        model.spare.weight[8:] = 0
        model.spare.bias[8:] = 0
        model.fragile.weight[:, 8:] = 0
    return model.eval(), splits


def test_a_fragile_layer_shows_its_drop_and_a_spare_one_shows_none(trained: tuple) -> None:
    model, splits = trained
    s = analyse(model, splits, progress=False)
    assert s.base_accuracy > 85
    assert [x.layer for x in s.layers] == ["spare", "fragile", "fc"]
    spare, fragile, fc = s.layers
    assert spare.filters and fragile.filters and not fc.filters  # the output layer keeps its classes
    assert len(spare.ratio_acc) == len(RATIOS) and fc.ratio_acc == ()
    assert len(fc.quality_acc) == len(QUALITIES)
    # removing the dead half (lowest L1 norm: zero) changes nothing at all
    assert s.drop_at_ratio("spare", 0.5) == pytest.approx(0.0, abs=1e-9)
    assert spare.norms[8:] == (0.0,) * 8 and spare.norms[0] == 1.0
    # half of the fragile layer's four filters: a large loss, far beyond the spare layer's
    assert s.drop_at_ratio("fragile", 0.5) > 10
    assert s.drop_at_ratio("fragile", 0.9) >= s.drop_at_ratio("fragile", 0.3)
    # magnitude pruning past most of the weights destroys any layer; the curve says so
    assert s.drop_at_quality("fragile", 3.0) > 20
    assert fragile.quality_sparsity[-1] > 0.9 and all(0 <= v <= 1 for v in fragile.quality_sparsity)
    # interpolation: between the measured points, and zero at zero
    assert s.drop_at_ratio("fragile", 0.0) == 0.0 and s.drop_at_quality("fc", 0.0) == 0.0
    mid = s.drop_at_ratio("fragile", 0.45)
    lo, hi = sorted((s.drop_at_ratio("fragile", 0.4), s.drop_at_ratio("fragile", 0.5)))
    assert lo <= mid <= hi
    # the network itself is untouched by the analysis
    assert model.spare.out_channels == 16 and model.fragile.out_channels == 4


def test_the_analysis_is_cached_per_base_model_and_round_trips(trained: tuple) -> None:
    model, splits = trained
    first, cached = sensitivity_for(model, splits, progress=False)
    again, cached_again = sensitivity_for(model, splits, progress=False)
    assert again.to_dict() == first.to_dict() and cached_again
    assert Sensitivity.from_dict(json.loads(json.dumps(first.to_dict()))).to_dict() == first.to_dict()
    other = TwoConvs()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.fc.bias += 0.01  # another base model: another key
    assert cache_key(other, splits) != cache_key(model, splits) == first.key


@pytest.mark.parametrize(
    "broken",
    [
        {"version": 99},
        {"layers": [{"layer": "x"}]},
        {"base_accuracy": "nan"},
        {"layers": "x"},
        {"qualities": [1.0]},
    ],
)
def test_a_stored_analysis_is_checked_as_data(trained: tuple, broken: dict) -> None:
    model, splits = trained
    good = sensitivity_for(model, splits, progress=False)[0].to_dict()
    with pytest.raises(AutoPruneError):
        Sensitivity.from_dict({**good, **broken})
