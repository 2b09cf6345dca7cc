"""Numbers that arrive as data (a stored spec, an enqueued trial, a foreign study, a flag) are
bounded exactly as the same number in a spec file; a study read with ``--from`` is left
byte-identical; a crafted SQLite file is refused before it can hang a query."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.compress import CompressConfig, RecipeError
from autoprune.search.spec import SpecError, spec_from_dict, trusted_spec
from autoprune.train import TrainConfig
from tests.workspace import call, snapshot


@pytest.mark.parametrize("table, key, value", [
    ("final", "epochs", 10**12), ("final", "k", 2**63 - 1), ("final", "quant_epochs", 10**6),
    ("train", "epochs", 10**9), ("train", "batch_size", 10**9), ("study", "trials", 10**9),
    ("study", "latency_repeats", 10**9), ("space", "max_batches", 10**12),
])  # fmt: skip
def test_a_huge_number_in_a_spec_is_refused(table: str, key: str, value: int) -> None:
    with pytest.raises(SpecError, match=f"{key}={value} should be"):
        spec_from_dict({table: {key: value}})


def test_a_stored_spec_is_bounded_as_a_spec_file_is() -> None:
    stored = spec_from_dict({}).to_dict()
    stored["train"]["epochs"] = 10**9
    with pytest.raises(SpecError, match="study 'x' holds a spec autoprune cannot read.*epochs=1000000000"):
        trusted_spec(stored, study="x", storage="sqlite:///x.db")


def test_recipe_epochs_are_capped() -> None:
    with pytest.raises(RecipeError, match="epochs=1000000000"):
        CompressConfig.from_dict({"finetune": {"epochs": 10**9}})
    with pytest.raises(RecipeError, match="quantize epochs=1000000000"):
        CompressConfig.from_dict({"quantize": {"epochs": 10**9}})
    with pytest.raises(ValueError, match="epochs=1001"):
        TrainConfig(epochs=1001)


@pytest.mark.parametrize("args", [
    ["eval", "m.apk", "--latency-batch", "100000000"],
    ["compress", "--recipe", "ok.toml", "--latency-batch", "100000000"],
    ["train", "--epochs", "1000000000"],
    ["search", "tiny.toml", "--trials", "1000000000"],
    ["finalize", "-k", "1000000"],
])  # fmt: skip
def test_a_huge_number_on_the_command_line_is_one_line(
    args: list[str], workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    code, _, err = call(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "expected an integer in 1.." in err, err
    assert snapshot(workspace) == before


def own_copy(workspace: Path, folder: Path) -> str:
    folder.mkdir(exist_ok=True)
    shutil.copy(workspace / "study.db", folder / "study.db")
    return f"sqlite:///{folder / 'study.db'}"


def test_an_enqueued_trial_outside_the_space_fails_alone(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = own_copy(workspace, tmp_path)
    shutil.copytree(workspace / "artifacts", tmp_path / "artifacts")
    study = optuna.load_study(study_name="tiny", storage=url)
    done = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    study.enqueue_trial({"ratio_conv1": 5.0}, user_attrs={"source": "tpe"})  # a range of [0, 0.7]
    shutil.copy(workspace / "tiny.toml", tmp_path / "tiny.toml")
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    code, _, err = call(["search", "tiny.toml", "--storage", url, "--trials", str(done + 1), "--quiet"], capsys)
    assert code == 0, err
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "ratio_conv1=5.0 lies outside the search space (0.0..0.7)" in failed[0].user_attrs["fail_reason"]
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == done + 1
    assert time.perf_counter() - started < 300


def test_from_reads_a_foreign_study_without_writing_or_training(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    src_url = own_copy(workspace, source)
    with sqlite3.connect(source / "study.db") as conn:  # as if its base had never been measured
        conn.execute("DELETE FROM study_user_attributes WHERE key = 'base'")
    shutil.copy(workspace / "tiny.toml", tmp_path / "tiny.toml")
    monkeypatch.chdir(tmp_path)
    own = f"sqlite:///{tmp_path / 'own.db'}"
    code, _, err = call(["search", "tiny.toml", "--storage", own, "--study", "fresh", "--setup-only", "--quiet"], capsys)
    assert code == 0, err
    before = snapshot(source)
    code, _, err = call(["surrogate", "propose", "--storage", own, "--study", "fresh", "--from", f"tiny@{src_url}",
                         "-q"], capsys)  # fmt: skip
    assert len(err.strip().splitlines()) <= 1, err  # a refusal (too few trials) is fine; a write is not
    assert snapshot(source) == before and not (source / "artifacts").exists()

    # a foreign base with settings nobody here used: never trained with them
    study = optuna.load_study(study_name="tiny", storage=src_url)
    spec = study.user_attrs["spec"]
    spec["train"]["epochs"] = 7
    study.set_user_attr("spec", spec)
    before = snapshot(source)
    started = time.perf_counter()
    code, _, err = call(["surrogate", "propose", "--storage", own, "--study", "fresh", "--from", f"tiny@{src_url}",
                         "-q"], capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not in this machine's cache" in err, err
    assert time.perf_counter() - started < 60 and snapshot(source) == before


def test_a_sqlite_file_with_a_recursive_view_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evil.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE VIEW studies AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) "
                     "SELECT x AS study_id, 'x' AS study_name FROM r")  # fmt: skip
    before = snapshot(tmp_path)
    started = time.perf_counter()
    for args in (["trials"], ["report"], ["surrogate", "fit"]):
        code, _, err = call([*args, "--storage", f"sqlite:///{path}"], capsys)
        assert code == 2 and "holds a view ('studies') that Optuna never creates" in err, err
    code, _, err = call(["surrogate", "propose", "--storage", f"sqlite:///{tmp_path / 'own.db'}",
                         "--from", f"x@sqlite:///{path}"], capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - started < 30
    assert snapshot(tmp_path) == before
