"""Stopping cleanly on Ctrl-C or ``kill``.

The first signal is remembered and takes effect at a safe point: the end of a training batch
(base training, or a trial's fine-tuning: the running trial is failed, never left RUNNING) or
of a trial. A second signal raises at once. Raising on the first signal could land inside the
storage layer's locks, which once left a process hung.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
from typing import Any

_stop = threading.Event()


def _request_stop(signum: int, frame: Any) -> None:
    if _stop.is_set():  # the second Ctrl-C: stop now
        raise KeyboardInterrupt
    _stop.set()
    if multiprocessing.parent_process() is None:  # workers get the signal too: say it once
        print(
            "stopping at the next safe point (end of a training batch or trial); Ctrl-C again to stop now",
            file=sys.stderr,
            flush=True,
        )


def stop_requested() -> bool:
    return _stop.is_set()


def stop_on_signals() -> None:
    """Install the handlers for SIGINT and SIGTERM (a shell may start a background job with
    SIGINT ignored, hence SIGINT is set explicitly)."""
    _stop.clear()
    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
