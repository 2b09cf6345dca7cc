"""Bad input, as a careless or hostile user gives it: every case is refused with exit 2 and
exactly one line on stderr, no traceback, and leaves the storage and the folders unchanged.

Every case runs the real command line in-process (``autoprune.cli.main``) from a workspace
that holds a real study (SQLite, with its packed files), a packed file, recipes, data sets and
model factories. A snapshot of the workspace (every file's bytes, every SQLite database as a
dump) is taken before and after.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.workspace import call, snapshot

ST = ["--storage", "sqlite:///study.db"]
CASES = {
    # flags
    "train epochs 0": (["train", "--epochs", "0"], "--epochs"),
    "train epochs negative": (["train", "--epochs", "-3"], "expected an integer in 1..1000"),
    "train lr nan": (["train", "--lr", "nan"], "--lr"),
    "train lr inf": (["train", "--lr", "inf"], "--lr"),
    "train lr negative": (["train", "--lr", "-1"], "--lr"),
    "train batch size 0": (["train", "--batch-size", "0"], "--batch-size"),
    "train val fraction 1.5": (["train", "--val-fraction", "1.5"], "--val-fraction"),
    "train val fraction nan": (["train", "--val-fraction", "nan"], "--val-fraction"),
    "train threads 0": (["train", "--threads", "0"], "--threads"),
    "unknown flag": (["train", "--no-such-flag"], "unrecognized arguments"),
    "unknown model": (["train", "--model", "alexnet"], "valid models"),
    "unknown dataset": (["train", "--dataset", "imagenet"], "valid datasets"),
    "missing data dir": (
        ["train", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist"],
        "does not exist",
    ),
    "search budget nan": (["search", "tiny.toml", *ST, "--max-acc-drop", "nan"], "--max-acc-drop"),
    "search budget inf": (["search", "tiny.toml", *ST, "--max-acc-drop", "inf"], "--max-acc-drop"),
    "search budget negative": (["search", "tiny.toml", *ST, "--max-acc-drop", "-1"], "--max-acc-drop"),
    "search trials 0": (["search", "tiny.toml", *ST, "--trials", "0"], "--trials"),
    "search jobs 0": (["search", "tiny.toml", *ST, "--jobs", "0"], "--jobs"),
    "search sampler": (["search", "tiny.toml", *ST, "--sampler", "cmaes"], "--sampler"),
    "search objective": (["search", "tiny.toml", *ST, "--objectives", "speed"], "unknown objective 'speed'"),
    "study name ..": (["search", "tiny.toml", *ST, "--study", "../../x"], "study name"),
    "study name slash": (["search", "tiny.toml", *ST, "--study", "a/b"], "study name"),
    "study name NUL": (["search", "tiny.toml", *ST, "--study", "a\0b"], "study name"),
    "study name empty": (["search", "tiny.toml", *ST, "--study", ""], "study name"),
    "trials study name ..": (["trials", *ST, "--study", "../x"], "study name"),
    # specs
    "spec budget nan": (["search", "budget-nan.toml", *ST], "max_acc_drop=nan should be a finite number"),
    "spec budget inf": (["search", "budget-inf.toml", *ST], "should be a finite number"),
    "spec unknown key": (["search", "spec-unknown.toml", *ST], "unknown key study.trails"),
    "spec study name": (["search", "spec-name.toml", *ST], "study name '../../x'"),
    "spec missing": (["search", "nope.toml", *ST], "does not exist"),
    "spec not toml": (["search", "not-toml.toml", *ST], "is not valid TOML"),
    "spec jobs on sqlite": (["search", "tiny.toml", *ST, "--jobs", "2"], "cannot share SQLite"),
    "spec data missing, no db made": (
        ["search", "spec-no-data.toml", "--storage", "sqlite:///new.db"],
        "needs --data-dir",
    ),
    "spec factory raises, no db made": (
        ["search", "spec-boom.toml", "--storage", "sqlite:///new.db"],
        "raised ValueError",
    ),
    "spec bad baseline, no db made": (
        ["search", "spec-bad-baseline.toml", "--storage", "sqlite:///new.db"],
        "finite",
    ),
    "search other objectives": (
        ["search", "tiny.toml", *ST, "--objectives", "compression_ratio"],
        "optimises",
    ),
    "search read-only sqlite": (
        ["search", "tiny.toml", "--storage", "sqlite:///file:study.db?mode=ro&uri=true", "--trials", "9"],
        "readonly",
    ),
    # recipes
    "recipe lr inf": (
        ["compress", "--recipe", "lr-inf.toml", "--out", "x.apk"],
        "lr=inf should be a finite number",
    ),
    "recipe ratio nan": (["compress", "--recipe", "nan-ratio.toml", "--out", "x.apk"], "finite"),
    "recipe index bits 0": (["compress", "--recipe", "index-0.toml", "--out", "x.apk"], "conv_index_bits=0"),
    "recipe index bits 40": (
        ["compress", "--recipe", "index-40.toml", "--out", "x.apk"],
        "conv_index_bits=40",
    ),
    "recipe ratio 1.2": (["compress", "--recipe", "ratio-1.2.toml", "--out", "x.apk"], "default=1.2"),
    "recipe bits 20": (["compress", "--recipe", "bits-20.toml", "--out", "x.apk"], "conv_bits=20"),
    "recipe unknown key": (
        ["compress", "--recipe", "unknown-key.toml", "--out", "x.apk"],
        "unknown key structured.ratio",
    ),
    "recipe unknown layer": (
        ["compress", "--recipe", "unknown-layer.toml", "--out", "x.apk"],
        "unknown layer 'conv7'",
    ),
    "recipe not toml": (["compress", "--recipe", "not-toml.toml", "--out", "x.apk"], "is not valid TOML"),
    "recipe missing": (["compress", "--recipe", "nope.toml", "--out", "x.apk"], "does not exist"),
    "compress out is a folder": (["compress", "--recipe", "ok.toml", "--out", "folder"], "is a folder"),
    "compress out in a missing folder": (
        ["compress", "--recipe", "ok.toml", "--out", "/missing/x.apk"],
        "does not exist",
    ),
    # models, data and checkpoints
    "factory without parameters": (["train", "--model", "nets.py:noparams"], "no parameters"),
    "factory raises": (["train", "--model", "nets.py:boom"], "raised ValueError: nope"),
    "factory returns 5": (["train", "--model", "nets.py:five"], "not a torch.nn.Module"),
    "factory missing": (["train", "--model", "nets.py:nothing"], "no callable 'nothing'"),
    "factory file missing": (["train", "--model", "missing.py:f"], "does not exist"),
    "npz of strings": (["train", "--dataset", "npz", "--data-dir", "strings.npz"], "images must be numbers"),
    "npz float labels": (["train", "--dataset", "npz", "--data-dir", "floatlabels.npz"], "whole numbers"),
    "npz one class": (["train", "--dataset", "npz", "--data-dir", "oneclass.npz"], "only one class"),
    "imagefolder one class": (
        ["train", "--dataset", "imagefolder", "--data-dir", "oneclass"],
        "only one class",
    ),
    "train out is a folder": (["train", "--out", "folder"], "is a folder"),
    "train out under a file": (["train", "--out", "afile/base.pt"], "does not exist"),
    "corrupt checkpoint": (["train", "--checkpoint", "corrupt.pt"], "corrupt"),
    "missing checkpoint": (["train", "--checkpoint", "nope.pt"], "nope.pt"),
    # packed files
    "eval missing file": (["eval", "nope.apk"], "does not exist"),
    "eval garbage": (["eval", "garbage.apk"], "truncated"),
    "eval image size differs": (
        ["eval", "m.apk", "--dataset", "npz", "--data-dir", "rgb32.npz"],
        "1x8x8 images",
    ),
    "eval classes differ": (
        ["eval", "m.apk", "--dataset", "npz", "--data-dir", "gray8-3classes.npz"],
        "3 classes",
    ),
    "eval onnx into a folder": (["eval", "m.apk", "--onnx", "folder"], "is a folder"),
    "eval torchscript in a missing folder": (
        ["eval", "m.apk", "--torchscript", "/missing/x.pt"],
        "does not exist",
    ),
    "eval val fraction 0": (["eval", "m.apk", "--val-fraction", "0"], "--val-fraction"),
    "eval user factory not named": (["eval", "users.apk"], "--model nets.py:boom"),
    "eval oversize header": (["eval", "bomb.apk"], "corrupt"),
    "eval oversize model spec": (["eval", "classes.apk"], "num_classes"),
    "eval bad dtype": (["eval", "dtype.apk"], "dtype"),
    # storages
    "trials missing database": (["trials", "--storage", "sqlite:///missing/dir/x.db"], "no study database"),
    "trials missing database here": (["trials", "--storage", "sqlite:///x.db"], "no study database"),
    "dashboard missing database": (["dashboard", "--storage", "sqlite:///x.db"], "no study database"),
    "report missing database": (["report", "--storage", "sqlite:///x.db"], "no study database"),
    "report png is a file": (["report", *ST, "--png", "afile"], "is a file"),
    "trials not a journal": (["trials", "--storage", "journal:notjournal.log"], "not an Optuna journal"),
    "trials missing journal": (["trials", "--storage", "journal:nope.log"], "no study database"),
    "trials no such study": (["trials", *ST, "--study", "nosuch"], "no study 'nosuch'"),
    "trials says the file it read": (
        ["trials", "--storage", "sqlite:///study.db", "--study", "nosuch"],
        "/study.db)",
    ),
    "trials unsupported storage": (["trials", "--storage", "mysql://u@h/db"], "unsupported storage"),
    "trials unreachable postgres": (
        ["trials", "--storage", "postgresql://u:hunt@er2pw@127.0.0.1:1/db"],
        "postgresql://u:***@127.0.0.1:1/db",
    ),
    "export trial -1": (["export", *ST, "--trial", "-1"], "--trial"),
    "export trial abc": (["export", *ST, "--trial", "abc"], "--trial"),
    "export trial 99": (["export", *ST, "--trial", "99"], "below 3"),
    "export out is a folder": (["export", *ST, "--trial", "0", "--out", "folder"], "is a folder"),
    "export out in a missing folder": (
        ["export", *ST, "--trial", "0", "--out", "/missing/x.apk"],
        "does not exist",
    ),
    "export missing artifacts": (
        ["export", *ST, "--trial", "0", "--artifacts", "/nonexistent"],
        "does not exist",
    ),
    "dashboard port 70000": (["dashboard", *ST, "--port", "70000"], "--port"),
    "dashboard port 0": (["dashboard", *ST, "--port", "0"], "--port"),
    "surrogate too few trials": (["surrogate", "fit", *ST, "-q"], "trials"),
    "surrogate out is a folder": (["surrogate", "fit", *ST, "--out", "folder"], "is a folder"),
    "surrogate compare sizes": (["surrogate", "compare", *ST, "--at", "x"], "--at"),
    "surrogate compare threads 0": (["surrogate", "compare", *ST, "--threads", "0"], "--threads"),
    "surrogate budget nan": (["surrogate", "propose", *ST, "--max-acc-drop", "nan"], "--max-acc-drop"),
}


@pytest.mark.parametrize("args, needle", CASES.values(), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    args: list[str],
    needle: str,
    workspace: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(workspace)
    torch.set_num_threads(1)
    before = snapshot(workspace)
    code, out, err = call(args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and out == ""
    assert needle in lines[0], lines[0]
    assert "hunt" not in err and "er2pw" not in err
    assert snapshot(workspace) == before


def test_there_are_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60
