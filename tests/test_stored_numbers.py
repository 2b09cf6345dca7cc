"""Numbers that arrive as data (a stored spec, an enqueued trial, a foreign study, a flag) are
bounded exactly as the same number in a spec file; a study read with ``--from`` is left
byte-identical; a crafted SQLite file is refused before it can hang a query."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import optuna
import plotly.io
import pytest
from optuna.trial import TrialState

from autoprune.compress import CompressConfig, RecipeError
from autoprune.search.spec import SpecError, spec_from_dict, trusted_spec
from autoprune.train import TrainConfig
from tests.workspace import call, copy_study, snapshot


@pytest.mark.parametrize(
    "table, key, value",
    [
        ("final", "epochs", 10**12),
        ("final", "k", 2**63 - 1),
        ("final", "quant_epochs", 10**6),
        ("train", "epochs", 10**9),
        ("train", "batch_size", 10**9),
        ("study", "trials", 10**9),
        ("study", "latency_repeats", 10**9),
        ("space", "max_batches", 10**12),
        ("space", "distill", 10.0**9),
        ("space", "reconstruct", 10**9),
    ],
)
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
    with pytest.raises(RecipeError, match="temperature=1e"):
        CompressConfig.from_dict({"finetune": {"temperature": 1e300}})
    with pytest.raises(RecipeError, match="reconstruct=1000000000 should be"):
        CompressConfig.from_dict({"structured": {"reconstruct": 10**9}})


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "m.apk", "--latency-batch", "100000000"],
        ["compress", "--recipe", "ok.toml", "--latency-batch", "100000000"],
        ["train", "--epochs", "1000000000"],
        ["search", "tiny.toml", "--trials", "1000000000"],
        ["finalize", "-k", "1000000"],
    ],
)
def test_a_huge_number_on_the_command_line_is_one_line(
    args: list[str], workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    code, _, err = call(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "expected an integer in 1.." in err, err
    assert snapshot(workspace) == before


def test_an_enqueued_trial_outside_the_space_fails_alone(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_study(workspace, tmp_path)
    study = optuna.load_study(study_name="tiny", storage=url)
    done = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    study.enqueue_trial({"ratio_conv1": 5.0}, user_attrs={"source": "tpe"})  # a range of [0, 0.7]
    shutil.copy(workspace / "tiny.toml", tmp_path / "tiny.toml")
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    code, _, err = call(
        ["search", "tiny.toml", "--storage", url, "--trials", str(done + 1), "--quiet"], capsys
    )
    assert code == 0, err
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert (
        len(failed) == 1
        and "ratio_conv1=5.0 lies outside the search space (0.0..0.7)" in failed[0].user_attrs["fail_reason"]
    )
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == done + 1
    assert time.perf_counter() - started < 300


def test_from_reads_a_foreign_study_without_writing_or_training(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    src_url = copy_study(workspace, source, artifacts=False)
    with sqlite3.connect(source / "study.db") as conn:  # as if its base had never been measured
        conn.execute("DELETE FROM study_user_attributes WHERE key = 'base'")
    shutil.copy(workspace / "tiny.toml", tmp_path / "tiny.toml")
    monkeypatch.chdir(tmp_path)
    own = f"sqlite:///{tmp_path / 'own.db'}"
    code, _, err = call(
        ["search", "tiny.toml", "--storage", own, "--study", "fresh", "--setup-only", "--quiet"], capsys
    )
    assert code == 0, err
    before = snapshot(source)
    code, _, err = call(
        ["surrogate", "propose", "--storage", own, "--study", "fresh", "--from", f"tiny@{src_url}", "-q"],
        capsys,
    )
    assert len(err.strip().splitlines()) <= 1, err  # a refusal (too few trials) is fine; a write is not
    assert snapshot(source) == before and not (source / "artifacts").exists()

    # a foreign base with settings nobody here used: never trained with them
    study = optuna.load_study(study_name="tiny", storage=src_url)
    spec = study.user_attrs["spec"]
    spec["train"]["epochs"] = 7
    study.set_user_attr("spec", spec)
    before = snapshot(source)
    started = time.perf_counter()
    code, _, err = call(
        ["surrogate", "propose", "--storage", own, "--study", "fresh", "--from", f"tiny@{src_url}", "-q"],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not in this machine's cache" in err, err
    assert time.perf_counter() - started < 60 and snapshot(source) == before


def test_a_sqlite_file_with_a_recursive_view_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evil.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE VIEW studies AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) "
            "SELECT x AS study_id, 'x' AS study_name FROM r"
        )
    before = snapshot(tmp_path)
    started = time.perf_counter()
    for args in (["trials"], ["report"], ["surrogate", "fit"]):
        code, _, err = call([*args, "--storage", f"sqlite:///{path}"], capsys)
        assert code == 2 and "holds a view ('studies') that Optuna never creates" in err, err
    code, _, err = call(
        [
            "surrogate",
            "propose",
            "--storage",
            f"sqlite:///{tmp_path / 'own.db'}",
            "--from",
            f"x@sqlite:///{path}",
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - started < 30
    assert snapshot(tmp_path) == before


def set_trial_attr(db: Path, number: int, key: str, value: object) -> None:
    """What a hostile writer of a shared database does: rows edited directly."""
    import json

    with sqlite3.connect(db) as conn:
        (trial_id,) = conn.execute("SELECT trial_id FROM trials WHERE number = ?", (number,)).fetchone()
        conn.execute("DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = ?", (trial_id, key))
        conn.execute(
            "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
            (trial_id, key, json.dumps(value)),
        )


def test_malformed_stored_values_are_skipped_or_one_line(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoprune._compat import set_study_system_attr
    from autoprune.workflow import SENSITIVITY_ATTR

    url = copy_study(workspace, tmp_path)
    shutil.copy(workspace / "tiny.toml", tmp_path / "tiny.toml")
    study = optuna.load_study(study_name="tiny", storage=url)
    db = tmp_path / "study.db"
    set_trial_attr(db, 1, "compression_ratio", "x")
    set_trial_attr(db, 1, "source", "final")
    set_trial_attr(db, 1, "parent", [1])  # unhashable: it once ended finalize in a traceback
    trials = study.get_trials()
    study.set_user_attr("base", {"accuracy": "high", "dense_bytes": [1]})
    layer = {
        "name": r"$\frac{$",
        "kind": "conv",
        "filters": 2,
        "params": 10,
        "norms": [1.0, 2.0],
        "ratio_drop": [0.0] * 8,
        "quality_drop": [0.0] * 8,
    }
    set_study_system_attr(study, SENSITIVITY_ATTR, {"base_accuracy": 90.0, "layers": [layer]})
    queued = len(trials)
    study.enqueue_trial(trials[0].params, user_attrs={"source": "final", "parent": 2**70})
    monkeypatch.chdir(tmp_path)
    for args in (
        ["trials", "--json"],
        ["trials"],
        ["report", "--png", "figs"],
        ["finalize", "tiny.toml", "-k", "1", "--quiet"],
    ):
        code, _, err = call([*args, "--storage", url], capsys)
        assert "Traceback" not in err and code in (0, 2), (args, err)
        assert code == 0 or len(err.strip().splitlines()) == 1, (args, err)
    failed = (
        optuna.load_study(study_name="tiny", storage=url).trials[queued].user_attrs.get("fail_reason", "")
    )
    assert failed.startswith("names no earlier trial as its parent"), failed


def test_stored_text_reaches_the_note_escaped(workspace: Path, tmp_path: Path) -> None:
    import re

    from autoprune.search.report import study_budget
    from autoprune.workflow import summary_note
    from autoprune.workflow._report import markdown_html

    url = copy_study(workspace, tmp_path, artifacts=False)
    study = optuna.load_study(study_name="tiny", storage=url)
    evil = "<img src=x onerror=alert(1)> **bold** | cell"
    for t in study.get_trials():
        if t.user_attrs.get("recipe_name"):
            set_trial_attr(tmp_path / "study.db", t.number, "recipe_name", evil)
    study = optuna.load_study(study_name="tiny", storage=url)
    note = summary_note(study, study_budget(study))
    assert "img src" in note and not re.search(r"(?<!\\)[<>]", note), note
    page = markdown_html(note)
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt; **bold** | cell" in page


@pytest.mark.parametrize(
    "args",
    [
        ["surrogate", "compare", "--at", "0"],
        ["surrogate", "compare", "--at", "-5"],
        ["surrogate", "compare", "--at", "2,x"],
        ["report", "--png", "/proc/nope/figs", "--out", "r.html"],
    ],
)
def test_a_refusal_leaves_storage_and_outputs_as_they_were(
    args: list[str],
    workspace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = copy_study(workspace, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = call(
        [*args, "--storage", url, "-q"] if args[0] == "surrogate" else [*args, "--storage", url], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before
    assert optuna.get_all_study_summaries(url, include_best_trial=False)[0].study_name == "tiny"
    assert len(optuna.get_all_study_summaries(url, include_best_trial=False)) == 1  # no side study


def test_report_png_without_a_browser_is_one_line_and_writes_nothing(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_study(workspace, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-browser"))
    code, _, err = call(["report", "--storage", url, "--png", "figs", "--out", "r.html"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "needs Chrome or Chromium" in err and "apt-get install chromium" in err
    assert not (tmp_path / "r.html").exists() and not any((tmp_path / "figs").iterdir())


@pytest.mark.parametrize("drops", [1, 2])
def test_report_png_draws_a_figure_kaleido_dropped_again_or_says_which(
    drops: int,
    workspace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kaleido returns a figure's render failure instead of raising it (seen as a missing
    summary.png on a busy machine): the report draws what is missing once more, and names what
    is still missing in one line rather than list a file it did not write."""
    url = copy_study(workspace, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BROWSER_PATH", shutil.which("true") or "/bin/true")
    calls = []

    def write_images(figures, paths, **kwargs) -> None:  # the first figure fails `drops` times
        calls.append([Path(p).name for p in paths])
        for i, path in enumerate(paths):
            if not (i == 0 and len(calls) <= drops):
                Path(path).write_bytes(b"\x89PNG")

    monkeypatch.setattr(plotly.io, "write_images", write_images)
    (tmp_path / "figs").mkdir()
    code, out, err = call(["report", "--storage", url, "--png", "figs", "--out", "r.html", "--json"], capsys)
    first = calls[0][0]
    assert len(calls) == 2 and calls[1] == [first]  # only the missing figure, drawn again
    if drops == 1:
        assert code == 0, err
        assert all(Path(p).is_file() for p in json.loads(out)["png"])
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"did not draw {first.removesuffix('.png')}, twice" in err
        assert not (tmp_path / "r.html").exists()
