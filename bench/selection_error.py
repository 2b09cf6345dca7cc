"""How often "within the budget" on the validation split fails on the test split.

Runs a search (a spec, a validation fraction, a seed), then judges every completed trial by
both selection rules: the point estimate of the validation drop, and its one-sided upper
confidence bound (paired standard error). For each rule: how many trials are called within
the budget, how many of those exceed it on the test split by more than one point, and the
validation and test drop of the trial reported as best.

    python bench/selection_error.py --spec studies/digits-lenet5.toml --val-fraction 0.1 0.3 --seeds 0 1 2
    python bench/selection_error.py --judge-db /tmp/search_vs_recipe.db --budgets 1 2 3 \
        --out bench/results/selection_error_fashion_budgets.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch

from autoprune.search import Budget, TrialRecord, best_trial, parse_storage
from autoprune.workflow import search, search_spec

RULES = {"point": ("point", 0.9), "upper90": ("upper", 0.9), "upper95": ("upper", 0.95)}


def judge(study: optuna.Study, budget: Budget) -> dict:
    records = [r for t in study.get_trials(deepcopy=False) if (r := TrialRecord.from_attrs(t.user_attrs))]
    called = [r for r in records if budget.drop(r) <= budget.max_drop]
    wrong = [r for r in called if r.test_acc_drop is not None and r.test_acc_drop > budget.max_drop + 1.0]
    best = best_trial(study, budget)
    rec = TrialRecord.from_attrs(best.user_attrs) if best else None
    return {
        "called_within": len(called),
        "exceed_on_test_by_1": len(wrong),
        "best_trial": best.number if best else None,
        "best_ratio": rec.compression_ratio if rec else None,
        "best_val_drop": rec.acc_drop if rec else None,
        "best_test_drop": rec.test_acc_drop if rec else None,
    }


def judge_stored(db: Path, budgets: list[float], out: Path) -> None:
    """Count, per study prefix (the model's studies over seeds), budget and rule, the search
    trials called within the budget, those over it on test, and those over by more than 1."""
    storage = f"sqlite:///{db}"
    groups: dict[str, list[TrialRecord]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if "-latency" in summary.study_name:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        records = [
            r
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("source") != "final" and (r := TrialRecord.from_attrs(t.user_attrs))
        ]
        groups.setdefault(summary.study_name.rsplit("-s", 1)[0], []).extend(records)
    rows = []
    for (name, records), max_drop, (rule, (selection, confidence)) in itertools.product(
        groups.items(), budgets, RULES.items()
    ):
        budget = Budget.of(max_drop, selection, confidence)
        called = [r for r in records if budget.drop(r) <= max_drop]
        row = {
            "studies": name,
            "budget": max_drop,
            "rule": rule,
            "trials": len(records),
            "called_within": len(called),
            "over_budget_on_test": sum(r.test_acc_drop > max_drop for r in called),
            "exceed_on_test_by_1": sum(r.test_acc_drop > max_drop + 1 for r in called),
            "worst_test_drop": max((r.test_acc_drop for r in called), default=None),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.write_text(json.dumps({"db": str(db), "rows": rows}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=Path("studies/digits-lenet5.toml"))
    parser.add_argument("--val-fraction", type=float, nargs="+", default=[0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--trials", type=int)
    parser.add_argument(
        "--budgets", type=float, nargs="+", help="judge at these budgets (default: the spec's)"
    )
    parser.add_argument(
        "--keep", type=Path, help="keep the studies in this SQLite file (default: a temporary one)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/selection_error.json"))
    parser.add_argument(
        "--judge-db",
        type=Path,
        help="run nothing: judge the search trials of every study in this SQLite file",
    )
    args = parser.parse_args()
    if args.judge_db:
        judge_stored(args.judge_db, args.budgets or [1.0], args.out)
        return
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in args.val_fraction:
            for seed in args.seeds:
                db = args.keep or Path(tmp) / "s.db"
                spec, spec_dir = search_spec(
                    args.spec,
                    storage=f"sqlite:///{db}",
                    trials=args.trials,
                    seed=seed,
                    name=f"{args.spec.stem}-v{fraction}-s{seed}",
                )
                spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, val_fraction=fraction))
                started = time.perf_counter()
                summary = search(spec, parse_storage(spec.study.storage), spec_dir=spec_dir, progress=False)
                study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
                for max_drop, (rule, (selection, confidence)) in itertools.product(
                    args.budgets or [spec.study.max_acc_drop], RULES.items()
                ):
                    budget = Budget.of(max_drop, selection, confidence)
                    row = {
                        "spec": args.spec.stem,
                        "val_fraction": fraction,
                        "seed": seed,
                        "budget": max_drop,
                        "rule": rule,
                        "trials": len(study.trials),
                        "wall_s": round(time.perf_counter() - started, 1),
                        "base_val_accuracy": summary["base"]["accuracy"],
                        **judge(study, budget),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    machine = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
