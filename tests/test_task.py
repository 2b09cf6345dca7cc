"""Your own training loop and metric (a task): searched, finalized, exported and reported with
its metric's name; pruned weights held at zero through its own optimiser; a task named by a
stored study is never imported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from autoprune.compress.unstructured import mask_holder
from autoprune.errors import ConfigError, TaskError
from autoprune.models import ModelSpec, create_model
from autoprune.search.setup import load_inputs
from autoprune.search.spec import SpecError, spec_from_dict
from autoprune.task import load_task
from autoprune.train import TrainConfig, fit
from tests.conftest import REPO
from tests.workspace import call

EXAMPLE = REPO / "examples" / "own_loop.py"
SPEC = f"""
[study]
name = "own"
trials = 3
baselines = ["{REPO}/studies/recipes/uniform-l1.toml"]
max_acc_drop = 5.0
selection = "point"
latency_repeats = 3
[train]
epochs = 3
[space]
finetune_epochs = [1]
max_batches = 3
[final]
k = 1
epochs = 1
"""


def test_the_example_task_loads_with_its_metric() -> None:
    splits = load_task(f"{EXAMPLE}:task")
    assert splits.metric == "macro-F1" and splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert len(splits.train) > 1000 and splits.fingerprint == load_task(f"{EXAMPLE}:task").fingerprint


@pytest.mark.parametrize(
    "body, needle",
    [
        ("def task():\n    return object()\n", "without finetune, evaluate, example_input"),
        ("def task():\n    raise RuntimeError('no data')\n", "raised RuntimeError: no data"),
        ("task = 3\n", "has no callable 'task'"),
    ],
)
def test_a_task_that_cannot_serve_is_one_line(body: str, needle: str, tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text(body)
    with pytest.raises(TaskError, match=needle):
        load_task(f"{tmp_path / 't.py'}:task")


def test_pruned_weights_stay_zero_through_the_tasks_own_optimiser() -> None:
    splits = load_task(f"{EXAMPLE}:task")
    torch.manual_seed(0)
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    with torch.no_grad():
        model.conv1.weight[::2] = 0
    masks = {"conv1": model.conv1.weight != 0}
    seen = []
    history = fit(
        model,
        splits,
        TrainConfig(epochs=2, max_batches=3, lr=1e-3),
        after_step=mask_holder(model, masks),
        callbacks=[lambda e, v: seen.append(e)],
        progress=False,
    )
    assert len(history) == 2 and seen == [1, 2]  # what the loop reported reached the callbacks
    assert (
        torch.count_nonzero(model.conv1.weight[::2]) == 0
        and torch.count_nonzero(model.conv1.weight[1::2]) > 0
    )


def test_distillation_is_refused_for_a_tasks_own_loop() -> None:
    splits = load_task(f"{EXAMPLE}:task")
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    with pytest.raises(ConfigError, match="your task's finetune trains its own way"):
        fit(
            model,
            splits,
            TrainConfig(epochs=1, distill=0.5),
            teacher=create_model(ModelSpec("lenet5", 10, 1, (8, 8))),
            progress=False,
        )


def test_a_search_with_distillation_and_a_task_is_refused_before_it_starts() -> None:
    with pytest.raises(SpecError, match="space.distill: your task's finetune trains its own way"):
        load_inputs(spec_from_dict({"space": {"distill": 0.5}}), progress=False, task=f"{EXAMPLE}:task")


@pytest.mark.slow
def test_a_task_runs_search_finalize_export_and_report_under_its_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own.toml").write_text(SPEC)
    task = f"{EXAMPLE}:task"
    url = f"sqlite:///{tmp_path / 'own.db'}"
    code, out, err = call(["search", "own.toml", "--task", task, "--storage", url, "--quiet"], capsys)
    assert code == 0, err
    assert "val macro-F1" in out and "macro-F1  val drop" in out
    code, out, err = call(["finalize", "own.toml", "--task", task, "--storage", url, "--quiet"], capsys)
    assert code == 0 and "points of macro-F1" in out, err
    code, out, err = call(["trials", "--storage", url, "--json"], capsys)
    assert code == 0 and json.loads(out)["metric"] == "macro-F1"
    code, out, err = call(["export", "--storage", url, "--trial", "0", "--out", "t0.apk"], capsys)
    assert code == 0 and "macro-F1 drop" in out, err
    code, out, err = call(["report", "--storage", url, "--task", task, "--quiet"], capsys)
    assert code == 0, err
    assert "points of validation macro-F1" in (tmp_path / "own-report.html").read_text()


def test_a_task_named_by_a_stored_study_is_never_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        f"exec(open({str(EXAMPLE)!r}).read())\n"
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    study.set_user_attr("spec", {})
    study.set_user_attr("task", f"{evil}:task")
    monkeypatch.chdir(tmp_path)
    for args in (["report"], ["surrogate", "fit"], ["sensitivity"]):
        code, _, err = call([*args, "--storage", url, "-q"], capsys)
        assert code == 2 and f"pass --task {evil}:task" in err, err
    assert not marker.exists()
    shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)
