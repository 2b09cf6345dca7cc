"""Pins on the other libraries' private internals autoprune relies on (autoprune/_compat.py),
so an upgrade that moves one fails here, by name, rather than somewhere in a search."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autoprune._compat import has_heartbeat, onnx_log_to_stderr, rdb_backend, trial_id
from autoprune.search.space import holds
from autoprune.search.storage import open_storage, parse_storage


def test_optuna_internals_still_where_autoprune_reaches(tmp_path: Path) -> None:
    storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 's.db'}"), heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    backend = rdb_backend(optuna.load_study(study_name=study.study_name, storage=storage))
    assert isinstance(backend, optuna.storages.RDBStorage)
    assert backend.get_trial(trial_id(frozen)).number == trial.number
    assert not has_heartbeat(backend, frozen)
    backend.record_heartbeat(trial_id(frozen))
    assert has_heartbeat(backend, frozen)
    assert rdb_backend(optuna.create_study()) is None  # in memory


def test_torch_onnx_log_switch_still_exists() -> None:
    onnx_log_to_stderr()  # raises AttributeError if torch removed the private switch
    assert callable(torch._C._jit_set_onnx_log_output_stream)


@pytest.mark.parametrize(
    "dist, inside, outside",
    [
        (FloatDistribution(0.0, 0.7), [0.0, 0.35, 0.7], [-0.1, 0.71]),
        (FloatDistribution(1e-4, 3e-3, log=True), [1e-4, 1e-3], [1e-5, 0.01]),
        (FloatDistribution(0.0, 1.0, step=0.25), [0.0, 0.5, 1.0], [0.3]),
        (IntDistribution(4, 8), [4, 6, 8], [3, 9, 4.5, True]),
        (CategoricalDistribution(["linear", "forgy"]), ["forgy"], ["density"]),
    ],
)
def test_holds_agrees_with_optuna_on_what_a_distribution_contains(dist, inside, outside) -> None:
    for v in inside:
        assert holds(dist, v) and dist._contains(dist.to_internal_repr(v))
    for v in outside:
        assert not holds(dist, v)
