"""A search worker on a machine other processes keep busy: per-trial time against a quiet run.

Runs the default digits search (fresh study, `--trials N`) quiet, then beside `--busy K`
CPU-bound processes, for each environment variant, and reports the median trial time
(`trial_s`) and its ratio to the quiet run of the same variant.

    python bench/contention.py --trials 10 --busy 2
    python bench/contention.py --trials 20 --workers 4 --variants   # 4 separate commands, quiet
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

BUSY = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"
VARIANTS = {  # name -> environment for the search process
    "default": {},
    "omp-passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}


def run(trials: int, env: dict[str, str], busy: int, workers: int = 1) -> dict:
    """The default search to ``trials`` beside ``busy`` CPU hogs, by ``workers`` separately
    started commands (on a journal file when more than one, as on one machine)."""
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/s.db" if workers == 1 else f"journal:{tmp}/s.log"
            command = [
                sys.executable,
                "-m",
                "autoprune",
                "search",
                "--storage",
                url,
                "--trials",
                str(trials),
                "--quiet",
            ]
            started = time.perf_counter()
            procs = [
                subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **env}
                )
                for _ in range(workers)
            ]
            for p in procs:
                _, err = p.communicate()
                if p.returncode != 0:
                    raise SystemExit(f"search failed: {err.strip()[-500:]}")
            wall = time.perf_counter() - started
            storage = (
                url
                if workers == 1
                else optuna.storages.JournalStorage(
                    optuna.storages.journal.JournalFileBackend(f"{tmp}/s.log")
                )
            )
            study = optuna.load_study(study_name="digits-lenet5", storage=storage)
            times = [t.user_attrs["trial_s"] for t in study.trials if t.user_attrs.get("trial_s")]
    finally:
        for h in hogs:
            h.kill()
    return {
        "workers": workers,
        "wall_s": round(wall, 1),
        "trial_s_median": round(statistics.median(times), 3),
        "trials_done": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--workers", type=int, default=0, help="also run this many separate workers, quiet (0: skip)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/contention.json"))
    args = parser.parse_args()
    rows = []
    if args.workers:  # the machine's cores shared by separately started commands: wall time against one
        one, many = run(args.trials, {}, 0), run(args.trials, {}, 0, args.workers)
        row = {
            "variant": "default",
            "one_worker": one,
            "separate_workers": many,
            "wall_ratio": round(many["wall_s"] / one["wall_s"], 2),
            "trial_slowdown": round(many["trial_s_median"] / one["trial_s_median"], 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    for name in args.variants:
        quiet = run(args.trials, VARIANTS[name], 0)
        busy = run(args.trials, VARIANTS[name], args.busy)
        row = {
            "variant": name,
            "quiet": quiet,
            "busy": busy,
            "busy_processes": args.busy,
            "slowdown": round(busy["trial_s_median"] / quiet["trial_s_median"], 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2)
    )  # a run overwrites the file


if __name__ == "__main__":
    main()
