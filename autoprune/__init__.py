"""autoprune: compress CNNs with the Deep Compression pipeline, tuned by an Optuna search."""

import os
import sys
import warnings

__version__ = "0.1.0"

# OpenMP threads that spin while they wait steal the CPU from other processes and from each
# other: beside two CPU-bound processes on 2 cores a search trial ran 5.2x slower with the
# default (active) policy and 2.1x with a passive one, at 14% on a quiet machine
# (bench/contention.py, BENCHMARKS.md). OpenMP reads the policy when torch loads it, so it is
# set here, before any autoprune module imports torch: the command and the Python API alike.
# A value the user set is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules:
        warnings.warn(
            "torch was imported before autoprune, so its OpenMP threads spin while they wait (slow on "
            "a shared machine); import autoprune first, or start Python with OMP_WAIT_POLICY=PASSIVE",
            stacklevel=2,
        )
