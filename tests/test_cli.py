"""The command line as a user meets it: help, JSON output, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoprune.cli import build_parser, main
from autoprune.cli._common import latency_text
from autoprune.models import ModelSpec, create_model
from autoprune.runtime import ort_session
from tests.conftest import assert_one_line_error, run_cli


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_describes_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for name in subcommands():
        assert name in top
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "usage: autoprune " + name in text and "--" in text
        nested = ["fit", "propose", "compare"] if name == "surrogate" else []
        for sub in nested:
            assert sub in text
            with pytest.raises(SystemExit) as e:
                main([name, sub, "--help"])
            assert e.value.code == 0
            sub_text = capsys.readouterr().out
            assert f"usage: autoprune {name} {sub}" in sub_text and "--json" in sub_text
        if name not in ("dashboard", "surrogate"):  # every command that reports results can print JSON
            assert "--json" in text


@pytest.mark.slow
def test_train_json_is_one_document_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "base.pt"
    r = run_cli("train", "--epochs", "2", "--json", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"] == "lenet5" and doc["dataset"] == "digits"
    assert 0 <= doc["test_accuracy"] <= 100 and doc["params"] == 131_080
    assert doc["latency_ms"] > 0 and doc["threads"] >= 1
    assert set(torch.load(out, weights_only=True)) == set(
        create_model(ModelSpec("lenet5", 10, 1, (8, 8))).state_dict()
    )


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2() -> None:
    """The installed command, in its own process: one line, exit 2, no traceback. Every other
    bad input is checked in-process, much faster, by tests/test_bad_input.py's table."""
    assert_one_line_error(run_cli("train", "--model", "alexnet"), "valid models: lenet300, lenet5")


def test_checkpoint_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    other = tmp_path / "other.pt"
    torch.save(create_model(ModelSpec("lenet300", 10, 1, (8, 8))).state_dict(), other)
    for path, needle in [(corrupt, "corrupt"), (other, "does not match")]:
        code = main(["train", "--quiet", "--checkpoint", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0]


def test_bad_factories_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.py").write_text(
        "def boom():\n    raise ValueError('nope')\n\ndef five():\n    return 5\n"
    )
    for factory, needle in [("boom", "raised ValueError: nope"), ("five", "not a torch.nn.Module")]:
        code = main(["train", "--quiet", "--model", f"{tmp_path / 'net.py'}:{factory}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0]


@pytest.mark.slow
def test_a_traceback_never_reaches_the_user_for_a_corrupt_checkpoint(tmp_path: Path) -> None:
    corrupt = tmp_path / "c.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    assert_one_line_error(run_cli("train", "--checkpoint", str(corrupt)), "corrupt")


RECIPE = """
name = "tiny"
[structured]
default = 0.25
[unstructured]
mode = "sparsity"
default = 0.5
[finetune]
epochs = 1
max_batches = 5
[quantize]
conv_bits = 6
fc_bits = 4
epochs = 1
"""


def test_compress_then_eval_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.toml").write_text(RECIPE)
    out = tmp_path / "m.apk"
    code = main(
        [
            "compress",
            "--recipe",
            str(tmp_path / "r.toml"),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--quiet",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["packed_bytes"] == out.stat().st_size
    assert doc["compression_ratio"] == pytest.approx(doc["base"]["dense_bytes"] / doc["packed_bytes"])
    assert {layer["layer"] for layer in doc["layers"]} == {"conv1", "conv2", "fc1", "fc2"}
    assert doc["norms"][0]["layer"] == "conv1" and doc["norms"][0]["removed"] == 5

    code = main(
        [
            "eval",
            str(out),
            "--json",
            "--torchscript",
            str(tmp_path / "m.ts"),
            "--onnx",
            str(tmp_path / "m.onnx"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    ev = json.loads(captured.out)
    assert ev["dataset"] == "digits"  # recorded in the file
    assert ev["accuracy"] == pytest.approx(doc["accuracy"])  # the same decoded model, the same split
    assert ev["packed_bytes"] == doc["packed_bytes"] and (tmp_path / "m.ts").is_file()
    assert ev["onnx"] == str(tmp_path / "m.onnx") and ort_session(ev["onnx"]) is not None

    assert main(["eval", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bits/index" in text and "huffman saves" in text


@pytest.mark.parametrize(
    "body, needle",
    [
        ("[structured]\ndefault = 1.2\n", "structured ratio for default=1.2 should be in [0, 1)"),
        ("[quantize]\nconv_bits = 20\n", "quantize bits for conv_bits=20 should be an integer in 1..16"),
        ("[quantize]\ninit = 'random'\n", "quantize init='random' should be one of linear, density, forgy"),
        ("[unstructured.layers]\nconv7 = 0.5\n", "unknown layer 'conv7' in unstructured.layers"),
        ("[structured]\nratio = 0.5\n", "unknown key structured.ratio"),
        ("this is not toml", "is not valid TOML"),
    ],
)
def test_bad_recipes_are_one_line(
    body: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.toml").write_text(body)
    code = main(
        ["compress", "--recipe", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "x.apk"), "--quiet"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "x.apk").exists()


@pytest.mark.slow
def test_eval_of_a_corrupt_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.apk").write_bytes(b"APRUNE\x01garbage")
    assert_one_line_error(run_cli("eval", str(tmp_path / "bad.apk")), "truncated")


def test_a_latency_timed_on_a_busy_machine_is_flagged() -> None:
    r = {"latency_ms": 0.0412, "latency_ms_batch": 1.3, "threads": 2, "backend": "onnxruntime"}
    quiet = "0.041 ms at batch 1, 1.300 ms at batch 64 (2 threads, onnxruntime)"
    assert (
        latency_text(r)
        == latency_text({**r, "other_load": 0.1})
        == latency_text({**r, "other_load": None})
        == quiet
    )
    assert (
        latency_text({**r, "other_load": 1.2})
        == quiet[:-1] + "; other processes kept 1.2 cores busy: may read high)"
    )


def test_the_trials_table_marks_latencies_timed_on_a_busy_machine() -> None:
    from autoprune.cli._search import format_trials

    row = {
        "trial": 0,
        "state": "COMPLETE",
        "accuracy": 95.0,
        "acc_drop": 0.5,
        "packed_bytes": 2048,
        "compression_ratio": 30.0,
        "latency_ms": 0.031,
        "recipe": None,
        "source": "TPESampler",
    }
    quiet = format_trials({"study": "s", "storage": "sqlite://", "trials": [{**row, "other_load": 0.1}]})
    assert "0.031 " in quiet and "*" not in quiet
    busy = format_trials(
        {"study": "s", "storage": "sqlite://", "trials": [row, {**row, "trial": 1, "other_load": 1.4}]}
    )
    assert "0.031*" in busy and busy.count("0.031*") == 1 and "may read high" in busy


@pytest.mark.slow
def test_an_output_path_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    r = run_cli("train", "--epochs", "1", "--quiet", "--out", str(tmp_path / "afile" / "base.pt"))
    assert_one_line_error(r, str(tmp_path / "afile"))  # the path, and why the system refused it


def test_a_warning_before_an_error_never_makes_two_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    import autoprune.cli._train as train_cli
    from autoprune.errors import DataError

    def busy_then_refused(*args, **kwargs):
        logging.getLogger("autoprune.measure").warning("other processes kept %.1f cores busy", 1.2)
        raise DataError("the data is bad")

    monkeypatch.setattr(train_cli, "train", busy_then_refused)
    assert main(["train", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autoprune train: error: the data is bad"]


def test_warnings_print_once_per_kind_after_success(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from autoprune.cli import _HeldWarnings

    held = _HeldWarnings()
    log = logging.getLogger("autoprune.test")
    log.addHandler(held)
    try:
        for load in (1.2, 1.1, 1.4):
            log.warning("other processes kept %.1f cores busy", load)
        log.warning("%s", "something else")  # how Python's warnings arrive: all under one template
        log.warning("%s", "and another thing")
    finally:
        log.removeHandler(held)
    held.flush_to_stderr()
    assert capsys.readouterr().err.splitlines() == [
        "autoprune: warning: other processes kept 1.2 cores busy (and 2 more like it)",
        "autoprune: warning: something else",
        "autoprune: warning: and another thing",
    ]


def test_a_dying_background_thread_never_adds_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    import autoprune.cli._train as train_cli
    from autoprune.errors import DataError

    def heartbeat_dies_then_refused(*args, **kwargs):
        def beat() -> None:
            raise ConnectionError("server closed the connection")

        t = threading.Thread(target=beat, name="heartbeat")
        t.start()
        t.join()
        raise DataError("storage went away")

    monkeypatch.setattr(train_cli, "train", heartbeat_dies_then_refused)
    before = threading.excepthook
    assert main(["train", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["autoprune train: error: storage went away"]
    assert threading.excepthook is before  # restored after the command


# What OpenMP's policy is at the moment torch is first imported (OpenMP reads it then, once).
SPY = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Spy())
import {module}
print(seen[0])
"""


@pytest.mark.parametrize("module", ["autoprune.cli", "autoprune.pipeline", "autoprune.workflow"])
@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_user_says_otherwise(
    module: str, given: str | None, expected: str
) -> None:
    """The command and the Python API alike: set before torch loads OpenMP, the user's value kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (
        {"OMP_WAIT_POLICY": given} if given else {}
    )
    out = subprocess.run(
        [sys.executable, "-c", SPY.format(module=module)], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == expected


def test_torch_imported_first_is_told_how_to_wait_passively() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run(
        [sys.executable, "-c", "import torch, autoprune"], capture_output=True, text=True, env=env, check=True
    )
    assert "import autoprune first" in r.stderr and "OMP_WAIT_POLICY=PASSIVE" in r.stderr


def test_compress_no_latency_takes_no_timing_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import autoprune.measure as measure

    timed = []
    real = measure._latencies

    def spy(model, shape, plans, **kwargs):
        timed.append([p.batch_size for p in plans])
        return real(model, shape, plans, **kwargs)

    monkeypatch.setattr(measure, "_latencies", spy)
    (tmp_path / "r.toml").write_text(RECIPE)
    args = [
        "compress",
        "--recipe",
        str(tmp_path / "r.toml"),
        "--out",
        str(tmp_path / "m.apk"),
        "--epochs",
        "2",
        "--quiet",
    ]
    assert main([*args, "--no-latency", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert timed == []  # neither the base nor the result was timed
    assert doc["latency_ms"] is None and doc["speedup"] is None and doc["base"]["latency_ms"] is None
    assert doc["accuracy"] > 0 and doc["macs"] > 0 and doc["mac_ratio"] > 1
    assert main([*args, "--no-latency"]) == 0
    text = capsys.readouterr().out
    assert "not measured (--no-latency)" in text and "nan" not in text
    assert main(["eval", str(tmp_path / "m.apk"), "--no-latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] is None and timed == []
    assert main([*args, "--latency-batch", "16", "--json"]) == 0
    assert timed == [[1, 16], [1, 16]]  # base and result, at batch 1 and the batch asked for
    capsys.readouterr()
    assert main([*args, "--latency-batch", "16"]) == 0
    text = capsys.readouterr().out
    assert "at batch 16" in text and "median of" in text  # how many runs the median came from
    assert timed == [[1, 16], [1, 16], [1, 16]]  # the base's measurement came with the base, from the cache


def test_the_base_is_measured_once_per_setting_and_kept_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r.toml").write_text(RECIPE)
    args = [
        "compress",
        "--recipe",
        str(tmp_path / "r.toml"),
        "--out",
        str(tmp_path / "m.apk"),
        "--epochs",
        "3",
        "--quiet",
        "--json",
        "--latency-batch",
        "8",
        "--seed",
        "11",
    ]  # a base of its own
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)["base"]
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)["base"]
    assert not first["from_cache"] and second["from_cache"]
    assert {k: v for k, v in first.items() if k != "from_cache"} == {
        k: v for k, v in second.items() if k != "from_cache"
    }
    assert main([*args, "--latency-batch", "4"]) == 0  # another setting: measured again
    assert not json.loads(capsys.readouterr().out)["base"]["from_cache"]
