"""The trial record: every metric a completed trial carries, written once.

A trial's user attributes are this dataclass's fields under their own names, so Optuna, the
dashboard, the surrogate and the CLI all read the same record. A field with an objective
direction in its metadata can be searched on (``study.objectives``). Adding a metric is a
field here and the line that computes it in :mod:`autoprune.pipeline`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from statistics import NormalDist
from typing import Any

from optuna.study import StudyDirection

from autoprune.ops.pareto import best_within


class Source(str, Enum):
    """Where a trial's settings came from (its ``source`` user attribute), besides a sampler's
    own class name for the trials it sampled."""

    BASELINE = "baseline"  # a hand-tuned recipe, run as it is written
    FINAL = "final"  # a trial re-run at the full budget (``autoprune finalize``)
    SURROGATE = "surrogate"  # proposed by the surrogate (``surrogate propose --enqueue``)
    SENSITIVITY = "sensitivity"  # proposed by the sensitivity allocator (the warm start)
    LADDER = "ladder"  # a ranked share at an even step of MAC reduction (``space.ranked_start``)


def _objective(
    direction: str, *, best: str = "compression_ratio", rank: int = 0, speed: bool = False
) -> dict[str, Any]:
    """A searchable field's rules: its Optuna ``direction``; ``best``, the field "best within the
    budget" maximises when the study searches on it ("-macs": the fewest), the objective of the
    highest ``rank`` deciding; ``speed``: a measure of speed, which the surrogate learns beside
    the drop (when measured), the warm start minimises through MACs, and the figures plot."""
    return {"direction": direction, "best": best, "rank": rank, "speed": speed}


@dataclass(frozen=True)
class TrialRecord:
    accuracy: float = field(metadata=_objective("maximize"))  # validation top-1, percent
    test_accuracy: float  # held-out test top-1, percent: reported, never selected on
    acc_drop: float  # base validation accuracy minus accuracy, in points
    params: int  # parameters left after filter pruning
    nonzero_params: int
    macs: int = field(metadata=_objective("minimize", best="-macs", rank=1))
    dense_bytes: int  # the pruned network's fp32 state_dict
    packed_bytes: int = field(metadata=_objective("minimize"))  # the packed file on disk
    compression_ratio: float = field(metadata=_objective("maximize"))  # base dense bytes / packed bytes
    # batch 1, median after warm-up
    latency_ms: float = field(metadata=_objective("minimize", best="speedup", rank=2, speed=True))
    latency_ms_batch: float  # batch 64
    speedup: float  # base latency / latency
    source: str = ""  # a Source value, or the class name of the sampler that sampled it
    test_acc_drop: float | None = None  # base test accuracy minus test_accuracy: reported beside acc_drop
    acc_drop_se: float | None = None  # standard error of acc_drop, paired on the validation images
    prune_s: float | None = None
    finetune_s: float | None = None
    quantize_s: float | None = None
    pack_s: float | None = None
    eval_s: float | None = None  # measuring: accuracy (validation and test), MACs and latency
    latency_s: float | None = None  # the part of eval_s spent timing
    trial_s: float | None = None
    backend: str | None = None  # where latency_ms was measured (onnxruntime, torch-onednn, ...)
    threads: int | None = None
    other_load: float | None = None  # cores other processes kept busy while timing
    device: str | None = None  # where it was fine-tuned, evaluated and timed ("cpu", "cuda:0 (NVIDIA H200)")

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], **extra: Any) -> TrialRecord:
        """The record of a compression run's metrics (other keys are ignored)."""
        values = {**metrics, **extra}
        return cls(**{name: values[name] for name in names() if name in values})

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord | None:
        """The record stored in a trial's user attributes; None when a required metric is missing
        (a failed, pruned or foreign trial) or a value is not of its field's type (stored data:
        anyone who can write to the database can write a string where a number belongs)."""
        values = {}
        for f in dataclasses.fields(cls):
            value = attrs.get(f.name)
            if value is None and f.default is dataclasses.MISSING:
                return None
            if value is not None:
                if not _fits(value, str(f.type)):
                    return None
                values[f.name] = value
        return cls(**values)

    def to_user_attrs(self) -> dict[str, Any]:
        """As stored: a non-finite number (a diverged latency, say) becomes None (JSON has no NaN)."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in dataclasses.asdict(self).items()
        }


def stored(attrs: Mapping[str, Any], name: str) -> Any:
    """The record's field ``name`` as stored in a trial's attributes; None when it is missing
    or not of its field's type."""
    value = attrs.get(name)
    return value if value is not None and _fits(value, _TYPES[name]) else None


def _fits(value: Any, annotation: str) -> bool:
    """Whether a stored value is of the annotated type (``float``, ``int | None``, ``str``)."""
    if isinstance(value, bool):
        return False
    if annotation.startswith("str"):
        return isinstance(value, str)
    if annotation.startswith("int"):
        return isinstance(value, int) and abs(value) < 2**63
    return isinstance(value, (int, float)) and (not isinstance(value, int) or abs(value) < 2**63)


def names(*wanted: str) -> tuple[str, ...]:
    """The record's field names, or ``wanted`` checked against them (a renamed field fails at
    import, not silently at read time)."""
    all_names = tuple(f.name for f in dataclasses.fields(TrialRecord))
    missing = [w for w in wanted if w not in all_names]
    if missing:
        raise KeyError(f"the trial record has no field {missing[0]!r}")
    return wanted or all_names


@dataclass(frozen=True)
class Budget:
    """The accuracy budget and how a trial's drop is judged against it, written once.

    A trial is within the budget when ``acc_drop + z * acc_drop_se <= max_drop``: z = 0 judges
    the point estimate ("point" selection); "upper" selection judges the one-sided upper
    confidence bound, so that picking the best of many noisy estimates does not pick the
    luckiest. A record without ``acc_drop_se`` (made before it existed) is judged on its point.
    """

    max_drop: float  # points of validation accuracy
    z: float = 0.0
    min_speedup: float = 0.0  # measured batch-1 speed-up a trial must reach too (0: none asked)

    @classmethod
    def of(
        cls, max_drop: float, selection: str = "point", confidence: float = 0.9, min_speedup: float = 0.0
    ) -> Budget:
        return cls(max_drop, NormalDist().inv_cdf(confidence) if selection == "upper" else 0.0, min_speedup)

    def drop(self, record: TrialRecord) -> float:
        """The drop as the budget judges it."""
        return judged_drop(record.acc_drop, record.acc_drop_se, self.z)

    def judged(self, attrs: Mapping[str, Any]) -> float | None:
        """The judged drop of a trial's user attributes, or None without an accuracy drop."""
        drop = attrs.get("acc_drop")
        return None if drop is None else judged_drop(drop, attrs.get("acc_drop_se"), self.z)

    def fast_enough(self, trial: TrialRecord | Mapping[str, Any]) -> bool:
        """Whether a trial reaches ``min_speedup`` (always, when none is asked)."""
        if not self.min_speedup:
            return True
        speedup = trial.speedup if isinstance(trial, TrialRecord) else trial.get("speedup")
        return isinstance(speedup, (int, float)) and math.isfinite(speedup) and speedup >= self.min_speedup

    def within(self, trial: TrialRecord | Mapping[str, Any]) -> bool:
        """Whether a trial (its record or its user attributes) is within the budget, as judged,
        and fast enough."""
        judged = self.drop(trial) if isinstance(trial, TrialRecord) else self.judged(trial)
        return judged is not None and judged <= self.max_drop and self.fast_enough(trial)

    def best(self, records: Sequence[TrialRecord], value: Callable[[TrialRecord], float]) -> int | None:
        """Index of the record of highest ``value`` among those within the budget (the first,
        on a tie), or None when none is."""
        drops = [self.drop(r) if self.fast_enough(r) else math.inf for r in records]
        return best_within([value(r) for r in records], drops, self.max_drop)


def judged_drop(drop: float, se: float | None, z: float) -> float:
    """The one rule: a drop plus z standard errors (none recorded: the point estimate)."""
    return drop + z * (se or 0.0)


RULES: dict[str, Mapping[str, Any]] = {
    f.name: f.metadata for f in dataclasses.fields(TrialRecord) if "direction" in f.metadata
}  # the searchable fields' rules (:func:`_objective`), by name
OBJECTIVES: dict[str, StudyDirection] = {
    name: StudyDirection[rule["direction"].upper()] for name, rule in RULES.items()
}


def best_field(objectives: Sequence[str] | None) -> str:
    """The record field "best within the budget" maximises for a study on ``objectives``: the
    measured speed-up for a search on latency, fewer MACs ("-macs") for one on MACs, the
    compression ratio otherwise (each objective's ``best``, the highest ``rank`` deciding)."""
    known = [RULES[o] for o in objectives or () if o in RULES]
    return max(known, key=lambda rule: rule["rank"])["best"] if known else "compression_ratio"


def speed_objectives(objectives: Sequence[str] | None) -> list[str]:
    """The objectives that measure speed (the surrogate learns them, the figures plot them)."""
    return [o for o in objectives or () if RULES.get(o, {}).get("speed")]


def goal(objectives: Sequence[str] | None) -> Callable[[TrialRecord], float]:
    """What "best" maximises among the trials within the budget (see :func:`best_field`)."""
    name = best_field(objectives)
    sign, name = (-1.0, name[1:]) if name.startswith("-") else (1.0, name)
    return lambda r: sign * getattr(r, name)


_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrialRecord)}
