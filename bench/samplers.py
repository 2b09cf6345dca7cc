"""Samplers at equal budgets: best feasible compression ratio versus trials, over seeds.

Runs `autoprune search` once per (sampler, seed) on one spec, each in its own study of one
SQLite file (re-running resumes: finished studies are not repeated), then summarises the best
compression ratio within the accuracy budget (validation) after every trial: mean and spread
over the seeds, as JSON and a PNG. With --at, it also compares the surrogate sampler with each
other sampler at those trial counts (--against NAME: that one instead): a paired Wilcoxon
signed-rank test over the seeds. A sampler named NAME-warm is NAME after the sensitivity
allocator's proposals (``autoprune search --warm-start``, issue 25).

With --jobs N, N searches run side by side (give each one --threads 1); the base model is
trained once first. SQLite is for one writer: pass --storage postgresql://... with --jobs.

    python bench/samplers.py                      # tpe random nsga2 gp surrogate, seeds 0 1 2
    python bench/samplers.py --samplers tpe,gp --seeds 0
    python bench/samplers.py --spec bench/specs/digits-lenet5-constrained.toml --trials 50 \
        --samplers tpe,gp,random,surrogate --seeds 0,1,2,3,4,5,6,7,8,9 --at 20,30,50
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

HERE = Path(__file__).resolve().parent
SPEC = HERE / "specs" / "fashion-lenet5-samplers.toml"
RESULTS = HERE / "results"


# a NAME-warm sampler: NAME after the sensitivity allocator's proposals at these multiples
WARM = "1,2,3,4,6,8,12,16"


def run(
    sampler: str, seed: int, trials: int, spec: Path, storage: str, threads: int | None, *extra: str
) -> float:
    started = time.perf_counter()
    if sampler.endswith("-warm"):
        extra = ("--warm-start", WARM, *extra)
    cmd = [
        sys.executable,
        "-m",
        "autoprune",
        "search",
        str(spec),
        "--sampler",
        sampler.removesuffix("-warm"),
        "--seed",
        str(seed),
        "--study",
        f"samplers-{sampler}-s{seed}",
        "--storage",
        storage,
        "--trials",
        str(trials),
        "-q",
        *extra,
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


def best_curve(study: optuna.Study, budget: float, trials: int) -> list[float]:
    """Best compression ratio with acc_drop <= budget after each of the first ``trials`` trials
    (finished ones, in order); 1.0 until a feasible one exists."""
    done = [
        t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    best, curve = 1.0, []
    for t in sorted(done, key=lambda t: t.number)[:trials]:
        a = t.user_attrs
        if t.state == TrialState.COMPLETE and a.get("acc_drop") is not None and a["acc_drop"] <= budget:
            best = max(best, a["compression_ratio"])
        curve.append(best)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samplers", default="tpe,random,nsga2,gp,surrogate")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--budgets", default="1.0,2.0", help="accuracy budgets in points, comma-separated")
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--out", type=Path, help="results path without suffix (default: results/samplers-SPEC)")
    ap.add_argument("--at", default="", help="trial counts for the paired Wilcoxon test, comma-separated")
    ap.add_argument(
        "--against", default="surrogate", help="the sampler the Wilcoxon test sets against each other one"
    )
    ap.add_argument("--threads", type=int, help="torch threads per search (default: torch's own)")
    ap.add_argument("--summary-only", action="store_true", help="summarise the stored studies; run nothing")
    ap.add_argument("--jobs", type=int, default=1, help="searches run side by side (default: 1)")
    ap.add_argument("--storage", help="study storage (default: sqlite:///OUT.db)")
    args = ap.parse_args()
    args.out = args.out or RESULTS / f"samplers-{args.spec.stem}"
    storage = args.storage or f"sqlite:///{args.out.with_suffix('.db')}"
    samplers, seeds = args.samplers.split(","), [int(s) for s in args.seeds.split(",")]
    wall: dict[str, dict[int, float]] = {}  # seconds per sampler and seed (parallel jobs end in any order)
    if not args.summary_only:
        if args.jobs > 1:  # the first study's set-up trains the base model, once, before the others need it
            run(samplers[0], seeds[0], args.trials, args.spec, storage, args.threads, "--setup-only")

        def one(sampler: str, seed: int) -> None:
            print(f"{sampler} seed {seed} ...", flush=True)
            wall.setdefault(sampler, {})[seed] = run(
                sampler, seed, args.trials, args.spec, storage, args.threads
            )

        with ThreadPoolExecutor(args.jobs) as pool:
            for job in [pool.submit(one, sampler, seed) for seed in seeds for sampler in samplers]:
                job.result()

    budgets = [float(b) for b in args.budgets.split(",")]
    result: dict = {
        "command": "python bench/samplers.py " + " ".join(sys.argv[1:]),
        "spec": str(args.spec.resolve().relative_to(HERE.parent)),
        "trials": args.trials,
        "seeds": seeds,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "budgets": {},
    }
    studies = {
        (sampler, seed): optuna.load_study(study_name=f"samplers-{sampler}-s{seed}", storage=storage)
        for sampler in samplers
        for seed in seeds
    }
    curves = {}
    for budget in budgets:
        rows = result["budgets"][str(budget)] = {}
        for sampler in samplers:
            c = curves[budget, sampler] = np.array(
                [best_curve(studies[sampler, seed], budget, args.trials) for seed in seeds]
            )
            rows[sampler] = {
                "mean": c.mean(axis=0).round(2).tolist(),
                "std": c.std(axis=0).round(2).tolist(),
                "final_per_seed": c[:, -1].round(2).tolist(),
            }
    if args.at and args.against in samplers:
        result["wilcoxon"] = paired_tests(
            curves, budgets, samplers, [int(n) for n in args.at.split(",")], args.against
        )
    for sampler in samplers:
        trial_s = [
            t.user_attrs.get("trial_s", math.nan)
            for seed in seeds
            for t in studies[sampler, seed].trials
            if t.state == TrialState.COMPLETE
        ]
        result.setdefault("median_trial_s", {})[sampler] = round(float(np.nanmedian(trial_s)), 2)
    result["wall_s_this_run"] = {k: [round(v[seed], 1) for seed in seeds] for k, v in wall.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    for budget, rows in result["budgets"].items():
        for name, r in rows.items():
            print(
                f"budget {budget}: {name:10s} best ratio after {args.trials} trials "
                f"{r['mean'][-1]:6.2f} +- {r['std'][-1]:5.2f}  per seed {r['final_per_seed']}"
            )
    for r in result.get("wilcoxon", []):
        print(
            f"budget {r['budget']} after {r['trials']}: "
            f"{r['sampler']} {r['sampler_median']:.1f}x vs {r['other']} "
            f"{r['other_median']:.1f}x (median), {r['wins']}/{r['ties']}/{r['losses']} w/t/l, "
            f"p = {r['p']}: {r['verdict']}"
        )


def paired_tests(
    curves: dict, budgets: list[float], samplers: list[str], at: list[int], against: str
) -> list[dict]:
    """The sampler ``against`` names against each other one, per budget and trial count: the best ratio
    per seed side by side, wins/ties/losses and a two-sided paired Wilcoxon signed-rank test
    (zero differences split between the ranks; every pair tied: p = 1)."""
    from scipy.stats import wilcoxon

    rows = []
    for budget in budgets:
        for n in at:
            mine = curves[budget, against][:, n - 1]
            for other in samplers:
                if other == against:
                    continue
                theirs = curves[budget, other][:, n - 1]
                diff = mine - theirs
                p = 1.0 if not np.any(diff) else float(wilcoxon(mine, theirs, zero_method="zsplit").pvalue)
                rows.append(
                    {
                        "budget": budget,
                        "trials": n,
                        "sampler": against,
                        "other": other,
                        "sampler_median": float(np.median(mine)),
                        "other_median": float(np.median(theirs)),
                        "sampler_mean": float(mine.mean()),
                        "other_mean": float(theirs.mean()),
                        "wins": int((diff > 0).sum()),
                        "ties": int((diff == 0).sum()),
                        "losses": int((diff < 0).sum()),
                        "p": round(p, 4),
                        "verdict": "equal"
                        if p >= 0.05
                        else "better"
                        if np.median(diff) > 0 or diff.mean() > 0
                        else "worse",
                    }
                )
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = result["budgets"]
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4.5), squeeze=False)
    for ax, (budget, rows) in zip(axes[0], budgets.items()):
        for name, r in rows.items():
            mean, std = np.array(r["mean"]), np.array(r["std"])
            x = np.arange(1, len(mean) + 1)
            ax.plot(x, mean, label=name, linewidth=2.2 if name == "surrogate" else 1.2)
            ax.fill_between(x, mean - std, mean + std, alpha=0.12)
        ax.set_xlabel("finished trials")
        ax.set_ylabel(f"best compression ratio, validation drop <= {budget} pt")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{result['spec']}: samplers at equal budgets (mean +- std over seeds {result['seeds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
