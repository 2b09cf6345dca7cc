"""The final stage: the best trials and every baseline re-run at the full budget, in the same
study, linked to their parents, resumable, and outside the search's trial count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from autoprune.search.workers import counts
from tests.workspace import call


@pytest.mark.slow
def test_finalize_refines_the_best_trials_and_the_baselines(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(workspace / "study.db", tmp_path / "study.db")
    shutil.copytree(workspace / "artifacts", tmp_path / "artifacts")
    shutil.copy(workspace / "tiny.toml", tmp_path / "tiny.toml")
    monkeypatch.chdir(tmp_path)
    args = [
        "finalize",
        "tiny.toml",
        "--storage",
        "sqlite:///study.db",
        "-k",
        "1",
        "--max-acc-drop",
        "90",
        "-q",
    ]
    code, out, err = call([*args, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    study = optuna.load_study(study_name="tiny", storage="sqlite:///study.db")
    finals = [t for t in study.trials if t.user_attrs.get("source") == "final"]
    baselines = {t.number for t in study.trials if t.user_attrs.get("source") == "baseline"}
    assert baselines <= {t.user_attrs["parent"] for t in finals} and len(finals) >= len(baselines) + 1
    for t in finals:
        parent = study.trials[t.user_attrs["parent"]]
        assert t.state == optuna.trial.TrialState.COMPLETE and t.params == parent.params
        assert "artifact_id" in t.user_attrs and "test_acc_drop" in t.user_attrs
        if parent.user_attrs.get("source") != "baseline":  # the spec's [final] budget, no batch cap
            budget = t.user_attrs["budget"]  # promoted: its capped fine-tuning continued, counted once
            assert {k: budget[k] for k in ("epochs", "max_batches", "quant_epochs")} == {
                "epochs": 4,
                "max_batches": None,
                "quant_epochs": 1,
            }
            assert budget["promoted"] and budget["batches_before"] > 0 and budget["batches_continued"] > 0
        else:  # the recipe's own budget, no cap
            assert (
                t.user_attrs["budget"]["max_batches"] is None
                and t.user_attrs["recipe_name"] == parent.user_attrs["recipe_name"]
            )
    assert {r["parent"]["trial"] for r in doc["rows"]} == {t.user_attrs["parent"] for t in finals}
    assert counts(study)[0] == 3  # the search's own count is untouched
    code, out, _ = call(args, capsys)  # again: nothing left to run, the same table
    assert code == 0 and "val drop" in out and "final" in out
    assert len(
        [
            t
            for t in optuna.load_study(study_name="tiny", storage="sqlite:///study.db").trials
            if t.user_attrs.get("source") == "final"
        ]
    ) == len(finals)


@pytest.mark.slow
def test_an_interrupted_baseline_is_queued_again_once(workspace: Path, tmp_path: Path) -> None:
    from autoprune.search import open_storage, parse_storage
    from autoprune.search.setup import enqueue_baselines, load_inputs, open_study, prepare
    from autoprune.workflow import search_spec

    shutil.copy(workspace / "study.db", tmp_path / "study.db")
    spec, spec_dir = search_spec(workspace / "tiny.toml", storage=f"sqlite:///{tmp_path / 'study.db'}")
    info = parse_storage(spec.study.storage)
    storage = open_storage(info)
    study = optuna.load_study(study_name="tiny", storage=storage)
    inputs = load_inputs(spec, progress=False, spec_dir=spec_dir)
    ctx = prepare(spec, study, storage, info, progress=False, inputs=inputs)
    assert enqueue_baselines(study, ctx, inputs.baselines) == 0  # both COMPLETE: nothing to do

    fresh = open_study(spec.with_study(name="interrupted"), storage)
    ctx = prepare(spec, fresh, storage, info, progress=False, inputs=inputs)
    assert enqueue_baselines(fresh, ctx, inputs.baselines) == 2
    for _ in range(2):  # Ctrl-C during each baseline: both FAIL
        trial = fresh.ask()
        fresh.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert enqueue_baselines(fresh, ctx, inputs.baselines) == 2  # queued again
    assert enqueue_baselines(fresh, ctx, inputs.baselines) == 0  # once: they are waiting
    for _ in range(2):
        fresh.tell(fresh.ask(), state=optuna.trial.TrialState.FAIL)
    assert enqueue_baselines(fresh, ctx, inputs.baselines) == 0  # failed twice: the recipe itself fails
