"""Where one search trial's time goes: training, evaluation, and everything else.

    python bench/trial_overhead.py [--spec studies/fashion-lenet5.toml] [--trials 5]

Runs sampled trials (no baselines) of a study in a temporary SQLite database. Each trial is
timed from outside ``study.optimize``, so "everything else" holds the copy of the base model,
both pruning stages, k-means, packing and decoding, the user-attribute writes and the
artifact upload: total - fine-tuning (all training) - evaluation (accuracy and latency).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch

from autoprune.search.objective import Objective
from autoprune.search.setup import open_study, prepare
from autoprune.search.spec import load_spec
from autoprune.search.storage import open_storage, parse_storage


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=Path("studies/fashion-lenet5.toml"))
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/trial_overhead.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(args.spec)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        study_cfg = dataclasses.replace(spec.study, storage=f"sqlite:///{tmp}/bench.db", baselines=[])
        spec = dataclasses.replace(spec, study=study_cfg)
        info = parse_storage(spec.study.storage)
        storage = open_storage(info)
        study = open_study(spec, storage)
        ctx = prepare(spec, study, storage, info, progress=False)
        objective = Objective(ctx, sampler_name="TPESampler")
        for _ in range(args.trials):
            start = time.perf_counter()
            study.optimize(objective, n_trials=1)
            total = time.perf_counter() - start
            a = study.trials[-1].user_attrs
            other = total - a["finetune_s"] - a["eval_s"]
            rows.append(
                {
                    "trial": study.trials[-1].number,
                    "total_s": total,
                    "training_s": a["finetune_s"],
                    "evaluation_s": a["eval_s"],
                    "other_s": other,
                    "other_share": other / total,
                    "prune_s": a["prune_s"],
                    "quantize_s": a["quantize_s"],
                    "pack_s": a["pack_s"],
                    "storage_and_rest_s": other - a["prune_s"] - a["quantize_s"] - a["pack_s"],
                }
            )
            r = rows[-1]
            print(
                f"trial {r['trial']}: total {total:.2f} s = training {r['training_s']:.2f} + evaluation "
                f"{r['evaluation_s']:.2f} + other {other:.2f} ({100 * r['other_share']:.1f}%: prune "
                f"{r['prune_s']:.3f}, k-means {r['quantize_s']:.3f}, pack+decode {r['pack_s']:.3f}, "
                f"storage/copy {r['storage_and_rest_s']:.3f})",
                flush=True,
            )
    share = statistics.median(r["other_share"] for r in rows)
    print(f"median share of everything else: {100 * share:.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "spec": str(args.spec),
                "median_other_share": share,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
