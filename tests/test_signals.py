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

    optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")  # the dashboard shows a database, never makes one
    port = 18000 + (int(time.time()) % 1000)
    proc = subprocess.Popen([str(SCRIPT), "dashboard", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "optuna-dashboard on" in proc.stdout.readline()  # main() is running: the handler is in place
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None, "SIGUSR1 ended the command"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "thread 0x" in err and "File " in err  # faulthandler's dump of every thread
