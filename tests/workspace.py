"""A workspace that holds what a careless or hostile user brings: a real study, packed files
(some crafted), recipes, data sets and model factories. Shared by the bad-input and the
security tests (the ``workspace`` fixture in conftest builds it once per session)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autoprune.cli import main
from tests.conftest import REPO, write_npz

SPEC = f"""
[study]
trials = 3
latency_repeats = 3
baselines = ["{REPO}/studies/recipes/deep-compression-lenet5.toml", "{REPO}/studies/recipes/uniform-l1.toml"]
[train]
epochs = 2
[space]
finetune_epochs = [1]
max_batches = 3
"""
RECIPE = """
name = "ok"
[structured]
default = 0.25
[finetune]
epochs = 1
max_batches = 2
"""
FACTORIES = """
import torch
from torch import nn

def noparams(num_classes=10, in_channels=1, image_size=(8, 8)):
    return nn.Sequential(nn.Flatten(), nn.Identity())

def boom(**kwargs):
    raise ValueError("nope")

def five(**kwargs):
    return 5
"""


def call(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as e:  # argparse refuses a flag by exiting
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_study(workspace: Path, folder: Path, *, artifacts: bool = True) -> str:
    """The workspace's study (and its packed files) copied into ``folder``: its storage URL."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(workspace / "study.db", folder / "study.db")
    if artifacts:
        shutil.copytree(workspace / "artifacts", folder / "artifacts")
    return f"sqlite:///{folder / 'study.db'}"


def snapshot(root: Path) -> dict[str, str]:
    """Every file's content under ``root`` (a SQLite database as its SQL dump), every folder."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir():
            state[key] = "dir"
        elif path.suffix == ".db":
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                state[key] = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
        else:
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def rewrite_header(src: Path, dst: Path, change) -> Path:
    """A packed file with its header changed by ``change(header)``, checksum made valid again:
    what a crafted file looks like."""
    data = src.read_bytes()
    (length,) = struct.unpack_from("<I", data, 7)
    header = json.loads(zlib.decompress(data[11 : 11 + length]))
    change(header)
    packed = zlib.compress(json.dumps(header).encode())
    body = data[:7] + struct.pack("<I", len(packed)) + packed + data[11 + length : -4]
    dst.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    return dst


def build_workspace(root: Path) -> Path:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        (root / "tiny.toml").write_text(SPEC)
        assert main(["search", "tiny.toml", "--storage", "sqlite:///study.db", "--quiet", "--json"]) == 0
        assert (
            main(["export", "--storage", "sqlite:///study.db", "--trial", "0", "--out", "m.apk", "--json"])
            == 0
        )
    finally:
        os.chdir(cwd)
    (root / "ok.toml").write_text(RECIPE)
    (root / "nets.py").write_text(FACTORIES)
    (root / "folder").mkdir()
    (root / "afile").write_text("a file, not a folder")
    (root / "notjournal.log").write_text("this is not an optuna journal\n")
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    (root / "garbage.apk").write_bytes(b"APRUNE\x01garbage")
    write_npz(root / "rgb32.npz", (32, 32, 3))
    write_npz(root / "gray8-3classes.npz", (8, 8), classes=3)
    x = np.zeros((20, 8, 8), np.uint8)
    np.savez(
        root / "strings.npz",
        x_train=np.array(["a"] * 20),
        y_train=np.arange(20) % 2,
        x_test=x,
        y_test=np.arange(20) % 2,
    )
    np.savez(
        root / "floatlabels.npz", x_train=x, y_train=np.linspace(0, 1.5, 20), x_test=x, y_test=np.zeros(20)
    )
    np.savez(
        root / "oneclass.npz",
        x_train=x,
        y_train=np.zeros(20, np.int64),
        x_test=x,
        y_test=np.zeros(20, np.int64),
    )
    for i in range(4):
        (root / "oneclass" / "cat").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / "oneclass" / "cat" / f"{i}.png")
    for name, body in {
        "lr-inf.toml": "[finetune]\nlr = inf\n",
        "nan-ratio.toml": "[structured]\ndefault = nan\n",
        "index-0.toml": "[pack]\nconv_index_bits = 0\n",
        "index-40.toml": "[pack]\nconv_index_bits = 40\n",
        "ratio-1.2.toml": "[structured]\ndefault = 1.2\n",
        "bits-20.toml": "[quantize]\nconv_bits = 20\n",
        "unknown-key.toml": "[structured]\nratio = 0.5\n",
        "unknown-layer.toml": "[unstructured.layers]\nconv7 = 0.5\n",
        "not-toml.toml": "this is not toml",
        "budget-nan.toml": "[study]\nmax_acc_drop = nan\n",
        "budget-inf.toml": "[study]\nmax_acc_drop = inf\n",
        "spec-unknown.toml": "[study]\ntrails = 3\n",
        "spec-name.toml": '[study]\nname = "../../x"\n',
        "spec-no-data.toml": '[data]\nname = "npz"\n',
        "spec-boom.toml": '[model]\nname = "nets.py:boom"\n',
        "spec-bad-baseline.toml": '[study]\nbaselines = ["lr-inf.toml"]\n',
    }.items():
        (root / name).write_text(body)
    # a header that declares a 10^11-element tensor (373 GiB) in a file of a few KB
    rewrite_header(
        root / "m.apk", root / "bomb.apk", lambda h: h["tensors"][0].update(shape=[100_000, 1_000_000])
    )
    rewrite_header(root / "m.apk", root / "classes.apk", lambda h: h["model"].update(num_classes=10**9))
    rewrite_header(root / "m.apk", root / "dtype.apk", lambda h: h["tensors"][0].update(dtype="object"))
    rewrite_header(root / "m.apk", root / "users.apk", lambda h: h["model"].update(name="nets.py:boom"))
    return root
