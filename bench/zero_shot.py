"""Proposals before the first trial against the search, on LeNet-5 / Fashion-MNIST (issue 25).

Per seed, two studies from the shipped spec (``studies/fashion-lenet5.toml``, its baselines
left out: only search trials count), at the spec's capped fine-tuning budget:

- ``zero-shot``: the sensitivity allocator's proposals alone (``study.warm_start``, one per
  budget multiple), no sampled trial; with ``--warm-trials`` the same study continues with the
  spec's sampler ("warm+search@N": the warm start's trials included in N);
- ``search@N``: the spec's sampler alone, its first N trials.

Every method picks on validation only (the highest compression ratio whose validation drop,
judged by the spec's rule, is within the budget); the pick's test drop is reported beside.
``wall_s`` sums the trials' own times (and the sensitivity analysis for the warm start).

    python bench/zero_shot.py --seeds 0 1 2 --at 10 30 --warm-trials 30

With ``--transfer-k K``, per seed also LeNet-300-100 (a network the LeNet-5 studies never saw):
its own zero-shot proposals, and K proposals of the residual surrogate fitted on this
benchmark's LeNet-5 studies alone, each run for real.

Raw rows go to ``bench/results/zero_shot.json`` as each seed finishes; the studies stay in
``--db``, so a stopped run resumes where it was.
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

from autoprune.measure import cpu_sample, other_load
from autoprune.search import Budget, TrialRecord, parse_storage
from autoprune.search.record import Source
from autoprune.search.setup import load_inputs
from autoprune.search.spec import load_spec
from autoprune.sensitivity import sensitivity_for
from autoprune.surrogate import ProposeConfig
from autoprune.workflow import enqueue, fit, open_sources, open_view, propose_for, search, search_spec

SPEC = Path("studies/fashion-lenet5.toml")
UNSEEN = Path("studies/fashion-lenet300.toml")  # the transfer target: a network the LeNet-5 studies never saw
SCALES = [1.0, 2.0, 4.0, 8.0, 16.0]  # the warm start's budgets: multiples of the study's 1 point


def records(study: optuna.Study) -> list[tuple[int, str, TrialRecord]]:
    """(number, source, record) of every completed trial, in order."""
    out = []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for t in sorted(complete, key=lambda t: t.number):
        if (r := TrialRecord.from_attrs(t.user_attrs)) is not None:
            out.append((t.number, str(t.user_attrs.get("source")), r))
    return out


def pick(rows: list[TrialRecord], budget: Budget) -> TrialRecord | None:
    within = [r for r in rows if budget.drop(r) <= budget.max_drop]
    return max(within, key=lambda r: r.compression_ratio, default=None)


def row(
    seed: int,
    method: str,
    budget: Budget,
    chosen: TrialRecord | None,
    trials: list[TrialRecord],
    extra_s: float = 0.0,
) -> dict:
    return {
        "model": "lenet5",
        "dataset": "fashion-mnist",
        "seed": seed,
        "method": method,
        "budget": budget.max_drop,
        "trials": len(trials),
        "val_drop": chosen and round(chosen.acc_drop, 3),
        "val_drop_judged": chosen and round(budget.drop(chosen), 3),
        "test_drop": chosen and chosen.test_acc_drop,
        "compression_ratio": chosen and round(chosen.compression_ratio, 2),
        "wall_s": round(extra_s + sum(r.trial_s or 0.0 for r in trials), 1),
        "best_val_drop_tried": round(min(budget.drop(r) for r in trials), 3) if trials else None,
    }


def run(
    seed: int, tag: str, db: Path, trials: int, spec: Path = SPEC, **overrides
) -> tuple[optuna.Study, Budget]:
    spec, spec_dir = search_spec(
        spec,
        storage=f"sqlite:///{db}",
        trials=trials,
        seed=seed,
        name=f"zero-shot-{tag}-s{seed}",
        baselines=[],
        **overrides,
    )
    info = parse_storage(spec.study.storage)
    search(spec, info, spec_dir=spec_dir, progress=False)
    return optuna.load_study(study_name=spec.study.name, storage=spec.study.storage), spec.study.budget


def seed_rows(seed: int, db: Path, at: list[int], warm_trials: int) -> list[dict]:
    inputs = load_inputs(load_spec(SPEC), progress=False)
    analysis, _ = sensitivity_for(inputs.base, inputs.splits, progress=False)
    out = []
    warm, budget = run(seed, "warm", db, len(SCALES), warm_start=SCALES)
    done = records(warm)
    proposals = [r for _, source, r in done if source == Source.SENSITIVITY]
    out.append(row(seed, "zero-shot", budget, pick(proposals, budget), proposals, analysis.seconds))
    for n in sorted(at):
        study, budget = run(seed, "search", db, n, warm_start=[])
        first = [r for _, _, r in records(study)][:n]
        out.append(row(seed, f"search@{n}", budget, pick(first, budget), first))
    if warm_trials > len(SCALES):
        warm, budget = run(seed, "warm", db, warm_trials, warm_start=SCALES)
        first = [r for _, _, r in records(warm)][:warm_trials]
        out.append(
            row(seed, f"warm+search@{warm_trials}", budget, pick(first, budget), first, analysis.seconds)
        )
    return out


def transfer_rows(seed: int, db: Path, k: int) -> list[dict]:
    """LeNet-300-100, unseen: (a) the allocator's proposals from its own probes; (b) the residual
    surrogate fitted on the LeNet-5 studies of this benchmark (none of its own trials), reading
    LeNet-300-100 through its own probes, proposing ``k``; each run for real, picked on validation."""
    url = f"sqlite:///{db}"
    inputs = load_inputs(load_spec(UNSEEN), progress=False)
    analysis, _ = sensitivity_for(inputs.base, inputs.splits, progress=False)
    study, budget = run(seed, "lenet300-warm", db, len(SCALES), spec=UNSEEN, warm_start=SCALES)
    own = [r for _, source, r in records(study) if source == Source.SENSITIVITY]
    out = [row(seed, "zero-shot", budget, pick(own, budget), own, analysis.seconds) | {"model": "lenet300"}]
    name = f"zero-shot-lenet300-transfer-s{seed}"
    spec, spec_dir = search_spec(
        UNSEEN, storage=url, trials=k, seed=seed, name=name, baselines=[], warm_start=[]
    )
    info = parse_storage(url)
    search(spec, info, spec_dir=spec_dir, progress=False, setup_only=True)
    view = open_view(name, info)
    if not view.study.get_trials(deepcopy=False):
        sources = open_sources(
            [f"zero-shot-{kind}-s{s}" for kind in ("search", "warm") for s in (0, 1, 2)], url
        )
        started = time.perf_counter()
        surrogate, joined = fit(view, [], seed=seed, sources=sources)
        config = ProposeConfig(max_acc_drop=budget.max_drop, k=k, seed=seed)
        enqueue(view.study, propose_for(view, surrogate, joined, config))
        view.study.set_user_attr("bench_model_s", time.perf_counter() - started)
    search(spec, info, spec_dir=spec_dir, progress=False)
    study = optuna.load_study(study_name=name, storage=url)
    done = [r for _, _, r in records(study)]
    model_s = float(study.user_attrs.get("bench_model_s", 0.0))
    method = "transfer (residual surrogate from LeNet-5)"
    out.append(
        row(seed, method, budget, pick(done, budget), done, model_s + analysis.seconds)
        | {"model": "lenet300"}
    )
    return out


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        rs = [r for r in rows if r["method"] == method and r["model"] == model]

        def med(key: str, rs: list[dict] = rs) -> float | None:
            values = [
                r[key] if r[key] is not None else (1.0 if key == "compression_ratio" else None) for r in rs
            ]
            values = [v for v in values if v is not None]
            return round(statistics.median(values), 3) if values else None

        found = sum(r["compression_ratio"] is not None for r in rs)
        out.append(
            {
                "model": model,
                "method": method,
                "seeds": len(rs),
                "found": found,
                **{k: med(k) for k in ("compression_ratio", "val_drop", "test_drop", "wall_s")},
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--at", type=int, nargs="+", default=[10, 30], help="search trial counts to compare at"
    )
    parser.add_argument(
        "--warm-trials", type=int, default=30, help="continue the warm start to N trials (0: not)"
    )
    parser.add_argument(
        "--transfer-k",
        type=int,
        default=0,
        help="also the transfer to LeNet-300-100 with K proposals (0: not)",
    )
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "zero_shot.db")
    parser.add_argument("--out", type=Path, default=Path("bench/results/zero_shot.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    rows: list[dict] = []
    started, sample = time.perf_counter(), cpu_sample()
    for seed in args.seeds:
        rows += seed_rows(seed, args.db, args.at, args.warm_trials)
        if args.transfer_k:
            rows += transfer_rows(seed, args.db, args.transfer_k)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "other_load": other_load(sample, cpu_sample()),
                    "elapsed_s": round(time.perf_counter() - started, 1),
                    "rows": rows,
                    "median": summarise(rows),
                },
                indent=2,
            )
        )
        print(json.dumps(summarise(rows), indent=1), flush=True)


if __name__ == "__main__":
    main()
