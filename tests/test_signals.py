"""Signals reach the installed command as the README says."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "autoprune"


@pytest.mark.slow
@pytest.mark.skipif(not SCRIPT.is_file(), reason=f"no installed console script at {SCRIPT}")
def test_kill_usr1_prints_the_stacks_of_the_console_script_and_it_goes_on(tmp_path: Path) -> None:
    import optuna

    optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}"
    )  # the dashboard shows a database, never makes one
    port = 18000 + (int(time.time()) % 1000)
    proc = subprocess.Popen(
        [str(SCRIPT), "dashboard", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "optuna-dashboard on" in proc.stdout.readline()  # main() is running: the handler is in place
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None, "SIGUSR1 ended the command"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "thread 0x" in err and "File " in err  # faulthandler's dump of every thread


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_during_base_training_stops_at_the_next_batch_with_exit_130(
    signals: int, tmp_path: Path
) -> None:
    """A base of 1000 epochs (minutes): one Ctrl-C stops it at the end of the running batch;
    two, 0.3 s apart, as well; either way a clean exit 130, never a death by SIGINT."""
    spec = tmp_path / "long.toml"
    spec.write_text("[study]\ntrials = 1\nlatency_repeats = 3\n[train]\nepochs = 1000\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoprune",
            "search",
            str(spec),
            "--storage",
            f"sqlite:///{tmp_path / 's.db'}",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        err = b""
        while b"train lenet5" not in err and proc.poll() is None:  # tqdm's bar: training has begun
            err += proc.stderr.read1(4096)
        assert b"train lenet5" in err, err
        proc.send_signal(signal.SIGINT)
        if signals == 2:
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, tail = proc.communicate(timeout=60)
        rest = tail.decode(errors="replace")
        stopped_in = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, rest[-2000:])
    assert "interrupted" in rest and "Traceback" not in rest
    assert stopped_in < 15, stopped_in  # not the rest of 1000 epochs


@pytest.mark.parametrize(
    "stop",
    ["raise KeyboardInterrupt", "raise Interrupted('stopped')"],
    ids=["a KeyboardInterrupt", "a command's exit 130"],
)
def test_a_ctrl_c_caught_after_it_ended_embedded_code_still_exits_130(stop: str, tmp_path: Path) -> None:
    """CPython marks a KeyboardInterrupt that ends code run through PyRun_String unhandled,
    though it is caught further out, and under ``python -m`` kills itself with SIGINT at exit
    (a second Ctrl-C landing in a library's embedded code did so once in about 100 double
    Ctrl-Cs): the command exits 130 all the same."""
    (tmp_path / "stopped_twice.py").write_text(f"""
import argparse, ctypes, sys
from unittest import mock
from autoprune import cli
from autoprune.workflow._search import Interrupted

def run(args):
    ctypes.pythonapi.PyRun_SimpleString(b"raise KeyboardInterrupt")  # embedded code, interrupted
    {stop}

args = argparse.Namespace(command="search", verbose=0, run=run)
with mock.patch.object(cli, "build_parser", return_value=mock.Mock(parse_args=lambda argv: args)):
    sys.exit(cli.main([]))
""")
    proc = subprocess.run(
        [sys.executable, "-m", "stopped_twice"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
