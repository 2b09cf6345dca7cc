"""The headline: the search, finalized at full budget, against the hand-tuned recipes at the
same budget, on Fashion-MNIST, on held-out test accuracy.

For each model and seed: run the shipped study (``studies/fashion-<model>.toml``) for
``--trials`` trials, then the final stage (``autoprune finalize``: the best ``--k`` trials
within the budget, the front's knee and every baseline recipe, re-run with the spec's full
fine-tuning budget). The search picks on the validation split only; for each budget (0.5 and
1.0 points) the pick is the finalized search trial with the highest compression ratio whose
validation drop (judged by the spec's rule) is within it, and its test drop is reported
beside; a third pick matches each recipe's own judged validation drop ("search at RECIPE's
accuracy"). The recipes are the finalized baselines. For LeNet-5, ``--latency-trials`` adds a
search on (accuracy, latency_ms), finalized the same way, against the uniform L1 recipe.

    python bench/search_vs_recipe.py --models lenet5 lenet300 --seeds 0 1 2 --trials 20

Raw rows go to ``bench/results/search_vs_recipe.json``; the studies stay in ``--db``, so a
stopped run resumes where it was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch

from autoprune.search import Budget, TrialRecord, parse_storage
from autoprune.search.setup import load_inputs
from autoprune.workflow import finalize, search, search_spec

BUDGETS = (0.5, 1.0)


def finals(study: optuna.Study) -> list[tuple[str, TrialRecord]]:
    """Each completed final-stage trial as (method, record): the recipe's name or "search"."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("source") == "final" and (r := TrialRecord.from_attrs(t.user_attrs)):
            out.append((t.user_attrs.get("recipe_name") or "search", r))
    return out


def pick(records: list[TrialRecord], budget: Budget, value: str) -> TrialRecord | None:
    """The best record by ``value`` among those within the budget on validation."""
    within = [r for r in records if budget.drop(r) <= budget.max_drop]
    return max(within, key=lambda r: getattr(r, value), default=None)


def row(model: str, method: str, seed: int, budget: float | None, r: TrialRecord | None, **extra) -> dict:
    fields = {
        "val_drop": None,
        "val_drop_se": None,
        "test_drop": None,
        "compression_ratio": None,
        "speedup": None,
    }
    if r is not None:
        fields = {
            "val_drop": r.acc_drop,
            "val_drop_se": r.acc_drop_se,
            "test_drop": r.test_acc_drop,
            "compression_ratio": r.compression_ratio,
            "speedup": r.speedup,
            "latency_ms": r.latency_ms,
            "other_load": r.other_load,
        }
    return {"model": model, "method": method, "seed": seed, "budget": budget, **fields, **extra}


def run_one(
    spec_path: Path,
    db: Path,
    *,
    seed: int,
    trials: int,
    k: int,
    objectives: list[str] | None = None,
    tag: str = "",
) -> tuple[optuna.Study, Budget, dict]:
    name = f"{spec_path.stem}{tag}-s{seed}"
    overrides = {"objectives": objectives} if objectives else {}
    spec, spec_dir = search_spec(
        spec_path, storage=f"sqlite:///{db}", trials=trials, seed=seed, name=name, **overrides
    )
    info = parse_storage(spec.study.storage)
    started = time.perf_counter()
    search(spec, info, spec_dir=spec_dir, progress=False)
    searched = time.perf_counter()
    finalize(spec, info, k=k, progress=False)
    done = time.perf_counter()
    study = optuna.load_study(study_name=name, storage=spec.study.storage)
    timing = {
        "trials": trials,
        "search_s": round(searched - started, 1),
        "final_s": round(done - searched, 1),
        "wall_s": round(done - started, 1),
    }
    return study, spec.study.budget, timing


def compression_rows(model: str, spec_path: Path, db: Path, seed: int, trials: int, k: int) -> list[dict]:
    study, budget, timing = run_one(spec_path, db, seed=seed, trials=trials, k=k)
    done = finals(study)
    rows = []
    for method in sorted({m for m, _ in done} - {"search"}):
        r = next(r for m, r in done if m == method)
        rows.append(row(model, method, seed, None, r, trials=0, wall_s=r.trial_s))
    searched = [r for m, r in done if m == "search"]
    for max_drop in BUDGETS:
        chosen = pick(searched, Budget(max_drop, budget.z), "compression_ratio")
        rows.append(row(model, "search", seed, max_drop, chosen, **timing))
    rows += at_recipe_accuracy(model, seed, done, budget, "compression_ratio", timing)
    return rows


def at_recipe_accuracy(
    model: str, seed: int, done: list, budget: Budget, value: str, timing: dict, suffix: str = ""
) -> list[dict]:
    """The search's pick at each recipe's own accuracy: the best finalized search trial whose
    validation drop, judged by the study's rule, is no larger than the recipe's (selection on
    validation only; the test drops of both are then compared)."""
    rows = []
    for method, recipe in done:
        if method == "search":
            continue
        level = budget.drop(recipe)
        chosen = pick([r for m, r in done if m == "search"], Budget(level, budget.z), value)
        rows.append(
            row(model, f"search at {method}'s accuracy{suffix}", seed, round(level, 3), chosen, **timing)
        )
    return rows


def latency_rows(spec_path: Path, db: Path, seed: int, trials: int, k: int) -> list[dict]:
    study, budget, timing = run_one(
        spec_path, db, seed=seed, trials=trials, k=k, objectives=["accuracy", "latency_ms"], tag="-latency"
    )
    done = finals(study)
    rows = [
        row("lenet5", f"{m} (latency)", seed, None, r, trials=0, wall_s=r.trial_s)
        for m, r in done
        if m != "search"
    ]
    chosen = pick([r for m, r in done if m == "search"], Budget(1.0, budget.z), "speedup")
    rows.append(row("lenet5", "search (latency)", seed, 1.0, chosen, **timing))
    rows += at_recipe_accuracy("lenet5", seed, done, budget, "speedup", timing, suffix=" (latency)")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Median over seeds of each (model, method, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # "at the recipe's accuracy" is one level per seed: grouped over seeds all the same
        level = None if r["method"].startswith("search at ") else r["budget"]
        groups.setdefault((r["model"], r["method"], level), []).append(r)
    out = []
    for (model, method, budget), rs in groups.items():

        def med(key: str) -> float | None:
            values = [r[key] for r in rs if r[key] is not None]
            return round(statistics.median(values), 3) if values else None

        found = sum(r["compression_ratio"] is not None for r in rs)  # seeds whose search found a trial within
        out.append(
            {
                "model": model,
                "method": method,
                "budget": budget,
                "seeds": len(rs),
                "found": found,
                **{
                    key: med(key)
                    for key in ("val_drop", "test_drop", "compression_ratio", "speedup", "wall_s")
                },
            }
        )
    return out


def figure(db: Path, path: Path) -> None:
    """Every finalized trial in ``db``: compression ratio against test drop, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    storage = f"sqlite:///{db}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    models = [m for m in ("lenet5", "lenet300") if any(n.startswith(f"fashion-{m}-s") for n in names)]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    style = {
        "search": ("o", "tab:blue"),
        "deep-compression": ("s", "tab:red"),
        "uniform-l1": ("^", "tab:green"),
    }
    for ax, model in zip(axes[0], models):
        seen = set()
        for name in (n for n in names if n.startswith(f"fashion-{model}-s")):
            for method, r in finals(optuna.load_study(study_name=name, storage=storage)):
                key = next(k for k in style if method.startswith(k))
                marker, color = style[key]
                ax.scatter(
                    r.compression_ratio,
                    r.test_acc_drop,
                    marker=marker,
                    color=color,
                    label=None if key in seen else ("search, finalized" if key == "search" else key),
                )
                seen.add(key)
        for level in BUDGETS:
            ax.axhline(level, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("compression ratio (packed file vs dense fp32)")
        ax.set_ylabel("test accuracy drop (points)")
        ax.set_title(f"{model} on Fashion-MNIST: every finalized trial, all seeds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["lenet5", "lenet300"], choices=["lenet5", "lenet300"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=20, help="search trials per seed")
    parser.add_argument("--k", type=int, help="best trials to finalize (default: the spec's final.k)")
    parser.add_argument(
        "--latency-trials", type=int, default=20, help="LeNet-5 latency search, first seed only (0: skip)"
    )
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "search_vs_recipe.db")
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_vs_recipe.json"))
    parser.add_argument("--figure", type=Path, help="only draw the finalized trials in --db to this PNG")
    args = parser.parse_args()
    if args.figure:
        figure(args.db, args.figure)
        return
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    rows: list[dict] = []

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "rows": rows,
                    "median": summarise(rows),
                },
                indent=2,
            )
        )

    for model in args.models:
        spec_path = Path(f"studies/fashion-{model}.toml")
        load_inputs(
            search_spec(spec_path)[0], progress=False
        )  # the base, trained once (cached) and not timed
        for seed in args.seeds:
            rows += compression_rows(model, spec_path, args.db, seed, args.trials, args.k)
            print(json.dumps(rows[-1]), flush=True)
            save()
        if model == "lenet5" and args.latency_trials:
            rows += latency_rows(spec_path, args.db, args.seeds[0], args.latency_trials, args.k)
            print(json.dumps(rows[-1]), flush=True)
            save()
    for line in summarise(rows):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
