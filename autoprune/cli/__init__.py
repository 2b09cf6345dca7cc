"""The ``autoprune`` command: a thin layer over the library that prints and exits.

A known error (:class:`AutoPruneError`, a bad flag) is one line on stderr and exit code 2;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import optuna

from autoprune import __version__
from autoprune.cli import _compress, _report, _search, _surrogate, _train
from autoprune.cli._common import EXIT_USAGE, Parser
from autoprune.errors import AutoPruneError
from autoprune.workflow import (
    exit_if_storage_lost,
    resolve_device,
    use_device,
)


def build_parser() -> Parser:
    parser = Parser(
        prog="autoprune",
        description="Search for smaller, faster CNNs: L1 filter pruning, magnitude pruning, "
        "trained weight sharing and Huffman coding, tuned by Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (_train, _compress, _search, _surrogate, _report):
        module.register(sub)
    return parser


class _HeldWarnings(logging.Handler):
    """Keeps the warnings of a run and prints them once it succeeds, each kind once (the first
    of a warning repeated per trial, with how many more there were): a refusal stays one line,
    and a warning per trial does not break the progress bar into a line per trial."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.kinds: dict[str, list] = {}  # the message with its numbers masked -> [first message, count]

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip().splitlines()[0]
        kind = self.kinds.setdefault(re.sub(r"\d+(\.\d+)?", "#", message), [message, 0])
        kind[1] += 1

    def flush_to_stderr(self) -> None:
        for message, count in self.kinds.values():
            more = f" (and {count - 1} more like it)" if count > 1 else ""
            print(f"autoprune: warning: {message}{more}", file=sys.stderr)


@contextlib.contextmanager
def _routed_logs(held: _HeldWarnings, *, verbose: bool) -> Iterator[None]:
    """Every log record and warning (ours, Optuna's, Python's) goes to ``held``, or with
    --verbose to stderr as it happens; the logging setup is restored afterwards."""

    optuna.logging.disable_default_handler()  # Optuna's log joins ours: no traceback of its own
    optuna.logging.enable_propagation()
    handler: logging.Handler = held
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level, hook = root.level, threading.excepthook
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.addHandler(handler)
    logging.captureWarnings(True)
    # a background thread that dies (Optuna's heartbeat when the database goes away) is a log
    # line like any other, not a traceback printed over the command's one-line error
    threading.excepthook = _log_thread_exception
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.filterwarnings("ignore", module="torch_pruning")
            yield
    finally:
        threading.excepthook = hook
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(level)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:

    name = args.thread.name if args.thread else "a thread"
    exit_if_storage_lost(name, args.exc_value, f"autoprune {_COMMAND[0]}")
    logging.getLogger("autoprune").warning("%s stopped: %s: %s", name, args.exc_type.__name__, args.exc_value)


_COMMAND = ["autoprune"]  # the command running, for a line printed from another thread


def _finite(value: Any) -> Any:
    """JSON has no NaN: a number not measured (or infinite) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """The ``autoprune`` command: its exit code (0, 2 for an error, 130 when interrupted)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's clean-up ran
        return _interrupted("autoprune")


def _interrupted(command: str) -> int:
    _exit_130_whatever_comes()
    print(f"{command}: interrupted", file=sys.stderr)
    return 130


def _exit_130_whatever_comes() -> None:
    """No later Ctrl-C, nor one already caught, may turn exit 130 into a death by the signal.
    Under ``python -m`` CPython kills itself with SIGINT at exit when it has marked a
    KeyboardInterrupt unhandled, and it marks one that ends code run through ``PyRun_String``
    (as libraries run some) even when we catch it further out: a second Ctrl-C landing there
    did so about once in 100. Every ``PyRun_*`` call clears that mark, so one with nothing to
    run does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctypes.pythonapi.PyRun_SimpleString(b"")


def _run(argv: Sequence[str] | None) -> int:
    if hasattr(signal, "SIGUSR1") and sys.__stderr__ is not None:
        # `kill -USR1 PID` prints every thread's stack to the real stderr, whatever started us
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    held = _HeldWarnings()
    _COMMAND[0] = args.command
    try:
        with _routed_logs(held, verbose=args.verbose), _on_device(args):
            result = args.run(args)
    except AutoPruneError as e:
        code = getattr(e, "exit_code", EXIT_USAGE)
        if code == 130:  # stopped by Ctrl-C
            _exit_130_whatever_comes()
        print(f"autoprune {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return code
    except OSError as e:  # a path given cannot be read or written: permissions, a missing folder, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"autoprune {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return _interrupted(f"autoprune {args.command}")
    held.flush_to_stderr()
    try:
        print(
            json.dumps(_finite(result), indent=2) if getattr(args, "json", False) else args.format(result),
            flush=True,
        )
    except BrokenPipeError:  # `autoprune trials | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


def _on_device(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The command's work on the device it was given (``--device``; checked when parsed)."""
    if getattr(args, "device", None) is None:
        return contextlib.nullcontext()

    return use_device(resolve_device(args.device))


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
