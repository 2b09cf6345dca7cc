"""Promotion instead of restart: a fine-tuning run stopped at an epoch's end and resumed gives the
very weights of one that never stopped, and a finalized search trial continues its own
fine-tuning, the batches it had counted once."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch

from autoprune.data import DataOptions, load_dataset
from autoprune.errors import AutoPruneError
from autoprune.models import ModelSpec, create_model
from autoprune.pipeline import Continuation
from autoprune.search import parse_storage
from autoprune.search.objective import STATE_ATTR
from autoprune.search.record import Source
from autoprune.train import TrainConfig, TrainState, fit, fit_resumable
from autoprune.workflow import finalize, search, search_spec


@pytest.mark.parametrize("augment", ["none", "crop-flip"])
def test_a_run_stopped_and_resumed_equals_one_that_never_stopped(augment: str, tmp_path: Path) -> None:
    splits = load_dataset("digits", val_fraction=0.3, seed=0, options=DataOptions(augment=augment))
    spec = ModelSpec("lenet5", splits.num_classes, 1, (8, 8))
    config = TrainConfig(epochs=3, lr=2e-3, max_batches=6)
    torch.manual_seed(0)
    start = create_model(spec).state_dict()

    whole = create_model(spec)
    whole.load_state_dict(start)
    history = fit(whole, splits, config, seed=5, progress=False)

    parts = create_model(spec)
    parts.load_state_dict(start)
    first, state = fit_resumable(parts, splits, config, seed=5, progress=False, until=1)
    assert state is not None and state.epoch == 1 and state.steps == 6
    path = tmp_path / "state.pt"  # through a file, as a promotion reads it
    Continuation(parts.state_dict(), state, state.steps).save(path)
    saved = Continuation.load(path)
    parts = create_model(spec)
    parts.load_state_dict(saved.weights)
    rest, state = fit_resumable(parts, splits, config, seed=5, progress=False, resume=saved.state)
    assert state.epoch == 3 and state.steps == 18
    assert first + rest == history
    for (name, a), b in zip(whole.state_dict().items(), parts.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_stored_state_that_is_not_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    torch.save(
        {"format": "autoprune-finetune-state/1", "weights": {"w": torch.zeros(1)}, "state": {"epoch": 1}},
        path,
    )
    with pytest.raises(AutoPruneError, match="unreadable"):
        Continuation.load(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(AutoPruneError, match="not a saved fine-tuning state"):
        Continuation.load(path)
    with pytest.raises(AutoPruneError):
        TrainState.from_dict({"epoch": 1})


SPEC = """
[study]
trials = 2
latency_repeats = 2
[model]
name = "lenet5"
[data]
name = "digits"
[train]
epochs = 2
[space]
ratio = [0.0, 0.3]
quality = [0.0, 1.0]
conv_bits = [6]
fc_bits = [5]
init = ["linear"]
finetune_epochs = [2]
quant_epochs = [1]
max_batches = 4
[final]
k = 1
slack = 100.0
epochs = {final_epochs}
quant_epochs = 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("final_epochs", [1, 3])
def test_a_finalized_trial_continues_its_own_fine_tuning(final_epochs: int, tmp_path: Path) -> None:
    spec_path = tmp_path / "promote.toml"
    spec_path.write_text(SPEC.format(final_epochs=final_epochs))
    url = f"sqlite:///{tmp_path / 'promote.db'}"
    spec, spec_dir = search_spec(spec_path, storage=url, name="promote")
    search(spec, parse_storage(url), spec_dir=spec_dir, progress=False)
    finalize(spec, parse_storage(url), progress=False)
    trials = {t.number: t for t in optuna.load_study(study_name="promote", storage=url).get_trials()}
    final = next(t for t in trials.values() if t.user_attrs.get("source") == Source.FINAL)
    parent = trials[final.user_attrs["parent"]]
    assert parent.user_attrs.get(STATE_ATTR), "the search trial kept its fine-tuning state"
    budget = final.user_attrs["budget"]
    assert budget["promoted"] and budget["batches_before"] == 2 * 4  # two capped epochs of 4 batches
    per_epoch = math.ceil(
        len(load_dataset("digits", val_fraction=0.1, seed=0).train) / 64
    )  # batches of 64, no cap
    full = final_epochs * per_epoch
    # counted once: what it had and what it continued add up to the full budget (rounded up per epoch)
    assert full <= budget["batches_before"] + budget["batches_continued"] < full + final_epochs
    if final_epochs == 1:  # the parent had 8 batches of the epoch: it went on for the rest
        assert budget["batches_continued"] == full - 8
    assert final.state == optuna.trial.TrialState.COMPLETE and final.user_attrs["accuracy"] > 0


@pytest.mark.slow
def test_a_state_that_is_not_the_trials_starts_the_final_trial_over(tmp_path: Path, caplog) -> None:
    spec_path = tmp_path / "promote.toml"
    spec_path.write_text(SPEC.format(final_epochs=1))
    url = f"sqlite:///{tmp_path / 'promote.db'}"
    spec, spec_dir = search_spec(spec_path, storage=url, name="promote")
    search(spec, parse_storage(url), spec_dir=spec_dir, progress=False)
    study = optuna.load_study(study_name="promote", storage=url)
    other = {
        **create_model(ModelSpec("lenet5", 10, 1, (8, 8))).state_dict(),
        "extra": torch.zeros(1),
    }  # not the trial's
    for i, t in enumerate(study.get_trials()):
        path = tmp_path / "artifacts" / t.user_attrs[STATE_ATTR]
        if i == 0:
            path.write_bytes(b"not a state")
        else:
            state = Continuation.load(path).state
            Continuation(other, state, 8).save(path)
    finalize(spec, parse_storage(url), progress=False)
    final = next(
        t
        for t in optuna.load_study(study_name="promote", storage=url).get_trials()
        if t.user_attrs.get("source") == Source.FINAL
    )
    assert final.state == optuna.trial.TrialState.COMPLETE
    assert "promoted" not in final.user_attrs["budget"]  # started over, at the full budget
    assert "fine-tuning state is not usable" in caplog.text


def test_a_new_schedule_starts_from_its_own_learning_rate() -> None:
    """A promotion continues from a run whose schedule ended at a learning rate of about zero:
    its own schedule starts again from its own rate, so the weights move as much as in a fresh
    run's first batches (with the old rate they would not move at all)."""
    splits = load_dataset("digits", val_fraction=0.3, seed=0)
    spec = ModelSpec("lenet5", splits.num_classes, 1, (8, 8))
    torch.manual_seed(0)
    model = create_model(spec)
    _, state = fit_resumable(model, splits, TrainConfig(epochs=1, lr=2e-3, max_batches=5), progress=False)
    assert state.optimizer["param_groups"][0]["lr"] < 1e-6  # the cosine ran to its end
    before = [p.detach().clone() for p in model.parameters()]
    fresh = create_model(spec)
    fresh.load_state_dict(model.state_dict())
    fit(fresh, splits, TrainConfig(epochs=1, lr=2e-3, max_batches=3), progress=False)
    fit_resumable(
        model,
        splits,
        TrainConfig(epochs=1, lr=2e-3, max_batches=3),
        progress=False,
        resume=state,
        new_schedule=True,
    )

    def moved(m: torch.nn.Module) -> float:
        return float(sum((p.detach() - b).abs().sum() for p, b in zip(m.parameters(), before)))

    assert moved(model) > 0.3 * moved(fresh) > 0


@pytest.mark.parametrize(
    "stored",
    [
        {"format": "autoprune-finetune-state/1", "weights": {}, "state": [], "batches": 1},
        {"format": "autoprune-finetune-state/1", "weights": {}, "batches": "x"},
    ],
)
def test_a_malformed_state_is_one_error(stored: dict, tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    torch.save(stored, path)
    with pytest.raises(AutoPruneError):
        Continuation.load(path)
