"""Fuzz the packed-file reader, the main input autoprune takes from others (issue 23).

Real packed files (one per built-in model below, made with the uniform recipe on digits) are
mutated (tests/fuzz_packed.py: byte damage with and without a valid checksum again, rewritten
header values) and each mutant is loaded. Every one must load to a network with the recorded
shapes or be refused with one PackError line; anything else is counted as a failure with its
exception. Peak memory (ru_maxrss) is recorded.

    python bench/fuzz_packed.py --count 100000 --out bench/results/fuzz_packed.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fuzz_packed import check, mutant  # noqa: E402

MODELS = ("lenet5", "lenet300", "resnet20", "mobilenetv2")


def seeds(folder: Path) -> dict[str, bytes]:
    """A real packed file per model: the uniform recipe on digits, two epochs of base training."""
    out = {}
    for model in MODELS:
        path = folder / f"{model}.apk"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "autoprune",
                "compress",
                "--recipe",
                str(REPO / "studies/recipes/uniform-l1.toml"),
                "--model",
                model,
                "--epochs",
                "2",
                "--out",
                str(path),
                "--no-latency",
                "--quiet",
                "--json",
                "--threads",
                "1",
            ],
            check=True,
            capture_output=True,
        )
        out[model] = path.read_bytes()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000, help="mutants in all (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/fuzz_packed.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        real = seeds(Path(tmp))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rng = np.random.default_rng(args.seed)
        outcomes: Counter[str] = Counter()
        failures: list[dict[str, str]] = []
        path = Path(tmp) / "mutant.apk"
        names = sorted(real)
        for i in range(args.count):
            model = names[i % len(names)]
            path.write_bytes(mutant(real[model], rng))
            try:
                outcomes[f"{model}:{check(path)}"] += 1
            except Exception as e:  # noqa: BLE001 - what the fuzz is for: count it, keep the file's story
                outcomes[f"{model}:failed"] += 1
                if len(failures) < 20:
                    failures.append(
                        {
                            "model": model,
                            "i": str(i),
                            "error": f"{type(e).__name__}: {e}"[:300],
                            "where": traceback.format_exc().splitlines()[-3][:200],
                        }
                    )
            if (i + 1) % 10_000 == 0 or i + 1 == args.count:
                result = {
                    "command": " ".join(sys.argv),
                    "mutants": i + 1,
                    "outcomes": dict(sorted(outcomes.items())),
                    "failed": sum(v for k, v in outcomes.items() if k.endswith(":failed")),
                    "failures": failures,
                    "seed_file_bytes": {m: len(b) for m, b in real.items()},
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
                    "seconds": round(time.perf_counter() - started, 1),
                }
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")
                print(
                    f"{i + 1} mutants, {result['failed']} failed, peak RSS {result['peak_rss_mb']:.0f} MB, "
                    f"{result['seconds']:.0f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
