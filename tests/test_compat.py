"""Pins on the other libraries' private internals autoprune relies on (autoprune/_compat.py),
so an upgrade that moves one fails here, by name, rather than somewhere in a search."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autoprune._compat import (
    HeartbeatJournalStorage,
    heartbeat_age,
    heartbeat_backend,
    onnx_log_to_stderr,
    order_dashboard_figures,
    rdb_backend,
    set_study_system_attr,
    study_system_attr,
    trial_id,
)
from autoprune.search.space import holds
from autoprune.search.storage import Liveness, open_storage, parse_storage


def test_optuna_internals_still_where_autoprune_reaches(tmp_path: Path) -> None:
    storage = open_storage(
        parse_storage(f"sqlite:///{tmp_path / 's.db'}"),
        liveness=Liveness(heartbeat_interval=1, grace_period=2),
    )
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    backend = rdb_backend(optuna.load_study(study_name=study.study_name, storage=storage))
    assert isinstance(backend, optuna.storages.RDBStorage)
    assert backend.get_trial(trial_id(frozen)).number == trial.number
    assert heartbeat_age(backend, frozen) is None
    backend.record_heartbeat(trial_id(frozen))
    assert 0 <= heartbeat_age(backend, frozen) < 60  # the database's clock against its own beat
    assert heartbeat_backend(study) is not None
    assert rdb_backend(optuna.create_study()) is None  # in memory
    assert heartbeat_backend(optuna.create_study()) is None
    set_study_system_attr(study, "autoprune:x", {"a": [1, 2]})
    again = optuna.load_study(study_name=study.study_name, storage=storage)
    assert study_system_attr(again, "autoprune:x") == {"a": [1, 2]} and study_system_attr(again, "y") is None
    assert "autoprune:x" not in again.user_attrs  # out of the dashboard's attribute table


def test_a_journal_storage_has_heartbeats_and_fails_a_silent_trial_as_stale(tmp_path: Path) -> None:
    storage = open_storage(
        parse_storage(f"journal:{tmp_path / 'j.log'}"),
        liveness=Liveness(heartbeat_interval=1, grace_period=2),
    )
    assert isinstance(storage, HeartbeatJournalStorage)
    study = optuna.create_study(storage=storage)
    assert heartbeat_backend(study) is storage
    beating, silent = study.ask(), study.ask()
    storage.record_heartbeat(beating._trial_id)
    assert heartbeat_age(storage, study.trials[0]) < 1 and heartbeat_age(storage, study.trials[1]) is None
    time.sleep(2.5)
    storage.record_heartbeat(beating._trial_id)  # still alive
    optuna.storages.fail_stale_trials(study)  # Optuna's own check, as on an RDB storage
    states = [t.state for t in study.trials]
    assert states == [
        TrialState.RUNNING,
        TrialState.FAIL,
        TrialState.WAITING,
    ]  # the silent one failed and retried
    assert study.trials[2].system_attrs["failed_trial"] == silent.number
    study.tell(beating, 1.0)
    storage.record_heartbeat(beating._trial_id)  # a beat racing the end is harmless


def test_optuna_dashboard_still_lists_figures_where_autoprune_orders_them() -> None:
    import optuna_dashboard._custom_plot_data as plots

    attrs = {f"dashboard:plot_data:{name}:0": "{}" for name in ("progress", "bytes", "summary", "mine")}
    assert sorted(plots.list_graph_object_ids(attrs)) == ["bytes", "mine", "progress", "summary"]
    order_dashboard_figures(["summary", "bytes"])
    order_dashboard_figures(["summary", "bytes"])  # once: not wrapped twice
    assert plots.list_graph_object_ids(attrs) == ["summary", "bytes", "mine", "progress"]
    assert list(plots.get_plotly_graph_objects(attrs)) == ["summary", "bytes", "mine", "progress"]


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


def test_an_os_exit_after_releasing_resources_leaves_no_leaked_semaphore() -> None:
    import subprocess
    import sys

    script = (
        "import multiprocessing, os\n"
        "from autoprune._compat import release_process_resources\n"
        "q = multiprocessing.get_context('spawn').Queue()\n"
        "release = {release}\n"
        "if release: release_process_resources()\n"
        "os._exit(2)\n"
    )
    leaked = subprocess.run(
        [sys.executable, "-c", script.format(release=False)], capture_output=True, text=True
    )
    clean = subprocess.run(
        [sys.executable, "-c", script.format(release=True)], capture_output=True, text=True
    )
    assert "leaked semaphore" in leaked.stderr  # what the line after ours looked like
    assert clean.returncode == 2 and "leaked semaphore" not in clean.stderr, clean.stderr
