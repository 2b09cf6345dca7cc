"""Transfer: proposals for a study with none of its own trials, from other studies' histories.

The surrogate is fitted on the sources (other networks, other data: LeNet-5 on digits, and
LeNet-300-100 on Fashion-MNIST, searched here if missing), proposes K settings for a fresh
Fashion-MNIST LeNet-5 study that has run nothing yet, and the proposals are run for real. Their
best within the budget is set beside the searches of the sampler benchmark (same spec) after
10 and 30 trials, per sampler, median and per seed.

    python bench/transfer.py \\
        --sources sqlite:///bench/results/samplers-digits-lenet5-constrained.db:samplers-tpe-s0,... \\
        --samplers-db bench/results/samplers-fashion-lenet5-constrained.db --out bench/results/transfer.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_SPEC = HERE / "specs" / "fashion-lenet5-constrained.toml"
LENET300_SPEC = HERE / "specs" / "fashion-lenet300-constrained.toml"


def autoprune(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "autoprune", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"autoprune {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def best_within(trials: list, budget: float) -> float:
    ok = [
        t.user_attrs["compression_ratio"]
        for t in trials
        if t.state == TrialState.COMPLETE and t.user_attrs.get("acc_drop", 1e9) <= budget
    ]
    return max(ok, default=1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sources",
        required=True,
        help="comma-separated STUDY@URL of the studies to learn from (the LeNet-300 one is added)",
    )
    ap.add_argument(
        "--samplers-db", type=Path, required=True, help="the sampler benchmark's Fashion-MNIST database"
    )
    ap.add_argument("--samplers", default="tpe,gp,random,surrogate")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "transfer.json")
    args = ap.parse_args()
    db = f"sqlite:///{RESULTS / 'transfer.db'}"
    threads = ["--threads", str(args.threads)]
    started = time.perf_counter()
    autoprune("search", str(LENET300_SPEC), "--storage", db, "--study", "lenet300-fashion", "-q", *threads)
    sources = [s for s in args.sources.split(",") if s] + [f"lenet300-fashion@{db}"]
    autoprune("search", str(TARGET_SPEC), "--storage", db, "--study", "zero-shot", "--setup-only", "-q")
    from_args = [a for s in sources for a in ("--from", s)]
    proposed = json.loads(
        autoprune(
            "surrogate",
            "propose",
            "--storage",
            db,
            "--study",
            "zero-shot",
            *from_args,
            "-k",
            str(args.k),
            "--enqueue",
            "--json",
            "-q",
        )
    )
    autoprune(
        "search",
        str(TARGET_SPEC),
        "--storage",
        db,
        "--study",
        "zero-shot",
        "--trials",
        str(args.k),
        "-q",
        *threads,
    )
    wall = time.perf_counter() - started
    mine = optuna.load_study(study_name="zero-shot", storage=db).trials
    result = {
        "command": "python bench/transfer.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}",
        "sources": sources,
        "surrogate": proposed["surrogate"],
        "proposals": [
            {
                "predicted_acc_drop": p["predicted_acc_drop"],
                "spread": p["spread"],
                "upper": p["upper"],
                "compression_ratio": p["compression_ratio"],
                "feasible": p["feasible"],
            }
            for p in proposed["proposals"]
        ],
        "run": [
            {
                "trial": t.number,
                "acc_drop": t.user_attrs.get("acc_drop"),
                "test_acc_drop": t.user_attrs.get("test_acc_drop"),
                "compression_ratio": t.user_attrs.get("compression_ratio"),
            }
            for t in mine
        ],
        "wall_s": round(wall, 1),
        "budgets": {},
    }
    storage = f"sqlite:///{args.samplers_db}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    for budget in (1.0, 2.0):
        row = {"zero_shot": best_within(mine, budget)}
        for sampler in args.samplers.split(","):
            studies = [
                optuna.load_study(study_name=n, storage=storage)
                for n in names
                if n.startswith(f"samplers-{sampler}-s") and "compare" not in n
            ]
            for n in (10, 30):
                per_seed = [
                    best_within(sorted(s.trials, key=lambda t: t.number)[:n], budget) for s in studies
                ]
                row[f"{sampler}_after_{n}"] = {"median": float(np.median(per_seed)), "per_seed": per_seed}
        result["budgets"][str(budget)] = row
        print(
            f"budget {budget}: zero-shot best {row['zero_shot']:.1f}x; "
            + "; ".join(f"{k} median {v['median']:.1f}x" for k, v in row.items() if isinstance(v, dict))
        )
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
