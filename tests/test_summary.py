"""The search's closing summary tells the truth about the recipe: the best line shows the bound
it was judged on and the rule in words, the baselines are judged the same way beside it, and
when nothing is within it says what to do; the commands it prints run from where the user is."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import optuna
import pytest
from PIL import Image

from autoprune.cli._search import best_line
from autoprune.search.spec import load_spec
from autoprune.workflow import command_prefix
from tests.conftest import REPO, images
from tests.workspace import call, copy_study


def test_the_summary_judges_the_baselines_as_it_judges_the_best(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_study(workspace, tmp_path)
    monkeypatch.chdir(workspace)
    args = ["search", "tiny.toml", "--storage", url, "--quiet", "--max-acc-drop", "50"]
    code, out, err = call([*args, "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    names = sorted(b["recipe"] for b in r["baselines"])
    assert names == ["deep-compression-lenet5", "uniform-l1"]
    for b in r["baselines"]:  # the same rule as the best: drop + z * se against the budget
        assert b["judged_drop"] == pytest.approx(b["acc_drop"] + r["z"] * (b["acc_drop_se"] or 0.0))
        assert b["within"] == (b["judged_drop"] <= 50)
    code, out, err = call(args, capsys)
    assert code == 0, err
    assert "baselines, judged the same way:" in out and "deep-compression-lenet5: trial" in out
    best = next(line for line in out.splitlines() if line.startswith("best within 50.0 points"))
    if r["z"]:
        assert "upper bound: the drop + 1.28 standard errors" in best and "(bound " in best
    assert f"trial {r['best']['trial']}" in best and " test" in best
    assert "re-run the best at the full fine-tuning budget: " in out and " finalize tiny.toml" in out
    assert f" export --study {r['study']} --trial {r['best']['trial']}" in out


def test_nothing_within_says_what_to_do(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_study(workspace, tmp_path)
    monkeypatch.chdir(workspace)
    code, out, err = call(["search", "tiny.toml", "--storage", url, "--quiet", "--max-acc-drop", "0"], capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("no trial is within 0.0 points"))
    assert "run more trials" in line and "finalize" in line and "--max-acc-drop" in line
    code, _, err = call(["export", "--storage", url, "--trial", "best", "--max-acc-drop", "0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "run more trials" in err and "(--trial N)" in err


def test_the_printed_commands_run_from_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "autoprune"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a virtual environment that is not activated
    assert command_prefix() == os.path.join("venv", "bin", "autoprune")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # activated: the plain name is this one
    assert command_prefix() == "autoprune"
    script.unlink()  # no script beside this Python: the module
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert command_prefix() == f"{bin_dir / 'python'} -m autoprune"


NET = """
from torch import nn

def small(num_classes=10, in_channels=3, image_size=(16, 16)):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, num_classes),
    )
"""


def test_a_search_on_your_own_model_and_image_folder_through_flags_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = images(60, (16, 16, 3), 3)
    for i, (img, label) in enumerate(zip(x, y)):
        (tmp_path / "pics" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "pics" / f"c{label}" / f"{i}.png")
    (tmp_path / "nets.py").write_text(NET)
    recipes = [
        str(REPO / "studies" / "recipes" / f"{r}.toml")
        for r in ("deep-compression-lenet5", "deep-compression", "uniform-l1")
    ]
    (tmp_path / "lenet.toml").write_text(f"[study]\nbaselines = {json.dumps(recipes)}\nlatency_repeats = 3\n")
    monkeypatch.chdir(tmp_path)
    flags = ["lenet.toml", "--model", "nets.py:small", "--dataset", "imagefolder", "--data-dir", "pics"]
    flags += ["--train-epochs", "2"]
    storage = ["--storage", "sqlite:///own.db"]
    code, out, err = call(["search", *flags, *storage, "--trials", "3", "--quiet", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["study"] == "imagefolder-small" and r["states"]["COMPLETE"] >= 3
    # the LeNet recipe names layers this network lacks: left out, said so; Deep Compression by
    # layer position and uniform L1 fit any network and run
    assert sorted(b["recipe"] for b in r["baselines"]) == ["deep-compression", "uniform-l1"]
    assert "baseline recipe deep-compression-lenet5 is left out: unknown layer" in err
    code, out, err = call(["finalize", *flags, *storage, "-k", "1", "--quiet", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["study"] == "imagefolder-small"
    # eval of the user's file without the flags it needs names both at once
    code, out, err = call(
        ["export", *storage, "--trial", "best", "--max-acc-drop", "100", "--out", "own.apk"], capsys
    )
    assert code == 0, err
    code, out, err = call(["eval", "own.apk", "--no-latency"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs --model " in err and "nets.py:small and --data-dir (it was made from 'pics')" in err


def test_init_writes_a_spec_for_your_model_that_a_search_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(REPO / "studies" / "recipes", tmp_path / "studies" / "recipes")
    (tmp_path / "nets.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    flags = ["--model", "nets.py:small", "--dataset", "digits", "--epochs", "1"]
    code, out, err = call(
        ["init", "studies/own.toml", *flags, "--storage", "sqlite:///own.db", "--json"], capsys
    )
    assert code == 0, err
    r = json.loads(out)
    text = (tmp_path / "studies" / "own.toml").read_text()
    assert [layer["layer"] for layer in r["layers"]] == ["0", "3", "7"]  # the two convs and the classifier
    assert [layer["position"] for layer in r["layers"]] == ["first_conv", "conv", "output"]
    assert sum(layer["macs_share"] for layer in r["layers"]) == pytest.approx(1.0)
    for layer in r["layers"]:  # listed in the spec, for the user to read
        assert f"#   {layer['layer']} " in text
    assert 'baselines = ["recipes/deep-compression.toml", "recipes/uniform-l1.toml"]' in text
    assert 'structured = "per_layer"' in text  # two convs: a ratio each
    code, out, err = call(["search", "studies/own.toml", "--trials", "3", "--quiet", "--json"], capsys)
    assert code == 0, err
    searched = json.loads(out)
    assert searched["study"] == "digits-small" and searched["states"]["COMPLETE"] >= 3
    assert sorted(b["recipe"] for b in searched["baselines"]) == ["deep-compression", "uniform-l1"]
    code, _, err = call(["init", "studies/own.toml", *flags], capsys)  # never overwritten
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1


def test_init_ranks_many_convs_and_aligns_depthwise_networks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = call(["init", "r.toml", "--model", "resnet20", "--dataset", "digits"], capsys)
    assert code == 0, err
    assert 'structured = "ranked"  # one share of all 21 convs' in (tmp_path / "r.toml").read_text()
    assert load_spec(tmp_path / "r.toml").space.structured == "ranked"
    assert load_spec(tmp_path / "r.toml").space.ranked_start == 6  # a ladder of MAC reductions first
    assert load_spec(tmp_path / "r.toml").space.round_to == 1
    assert load_spec(tmp_path / "r.toml").space.reconstruct == 256  # said in the spec, refitted
    code, _, err = call(["init", "m.toml", "--model", "mobilenetv2", "--dataset", "digits"], capsys)
    assert code == 0, err
    assert load_spec(tmp_path / "m.toml").space.round_to == 8  # depthwise convs: aligned widths


def test_a_speed_floor_and_a_slower_best_are_said(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_study(workspace, tmp_path)
    monkeypatch.chdir(workspace)
    args = ["search", "tiny.toml", "--storage", url, "--quiet", "--max-acc-drop", "50"]
    code, out, err = call([*args, "--min-speedup", "1000", "--trials", "4", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["best"] is None and r["min_speedup"] == 1000
    study = optuna.load_study(study_name=r["study"], storage=url)
    added = study.trials[-1]  # the trial run under the floor: infeasible, and said why
    assert added.constraints["speedup"] == pytest.approx(1000 - added.user_attrs["speedup"])
    code, out, err = call([*args, "--min-speedup", "1000"], capsys)
    assert "no trial is within 50.0 points and at least 1000x faster yet" in out
    row = {"trial": 3, "compression_ratio": 9.0, "acc_drop": 0.5, "test_acc_drop": 0.4, "speedup": 0.8}
    line = best_line({"best": row, "max_acc_drop": 1.0, "selection": "point"})
    assert "slower than the base at batch 1 (0.80x: --min-speedup 1 asks for faster)" in line
    assert "slower" not in best_line({"best": {**row, "speedup": 1.3}, "max_acc_drop": 1.0})
