"""Library-level study logic over every storage kind (in-memory, SQLite, journal, and
PostgreSQL when reachable), without subprocesses: the record as stored and read back, the
budget rule on stored trials, retention's refusal of a path-like artifact id, study lookup."""

from __future__ import annotations

import uuid

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autoprune.errors import AutoPruneError
from autoprune.search import best_trial, pareto_front, resolve_study_name, study_budget, trial_row
from autoprune.search.objective import STATE_ATTR, enforce_retention
from autoprune.search.record import Budget, TrialRecord, best_field, goal, names, speed_objectives
from autoprune.search.setup import open_study
from autoprune.search.spec import SpecError, StudySpec, record


def metrics(acc: float, drop: float, ratio: float) -> dict:
    return {
        "accuracy": acc,
        "test_accuracy": acc - 0.5,
        "acc_drop": drop,
        "test_acc_drop": drop + 0.5,
        "params": 100,
        "nonzero_params": 50,
        "macs": 1000,
        "dense_bytes": 4000,
        "packed_bytes": int(40_000 / ratio),
        "compression_ratio": ratio,
        "latency_ms": 0.1,
        "latency_ms_batch": 1.0,
        "speedup": 1.5,
        "source": "test",
        "trial_s": float("nan"),
    }


def add(study: optuna.Study, acc: float, drop: float, ratio: float, **attrs) -> None:
    rec = TrialRecord.from_metrics(metrics(acc, drop, ratio))
    study.add_trial(
        create_trial(
            params={"x": ratio / 100},
            distributions={"x": FloatDistribution(0, 1)},
            values=[rec.accuracy, rec.packed_bytes],
            user_attrs={**rec.to_user_attrs(), **attrs},
        )
    )


@pytest.fixture
def study(storage) -> optuna.Study:
    store, _ = storage
    spec = StudySpec().with_study(name=f"t-{uuid.uuid4().hex[:8]}", max_acc_drop=1.5)
    return open_study(spec, store)


def test_the_record_round_trips_through_the_storage(study: optuna.Study) -> None:
    add(study, 95.0, 0.5, 20.0)
    stored = study.trials[0].user_attrs
    assert set(names()) <= set(stored)
    assert stored["trial_s"] is None  # non-finite is stored as null
    rec = TrialRecord.from_attrs(stored)
    assert rec is not None and rec.test_acc_drop == 1.0 and rec.compression_ratio == 20.0
    row = trial_row(study.trials[0])
    assert row["test_acc_drop"] == 1.0 and row["params"] == {"x": 0.2}


def test_the_budget_rule_on_stored_trials(study: optuna.Study) -> None:
    add(study, 95.0, 0.5, 20.0)
    add(study, 94.0, 1.4, 40.0)
    add(study, 90.0, 5.0, 90.0)
    add(study, 96.0, 0.1, 10.0)
    assert study_budget(study).max_drop == 1.5  # the stored spec's
    assert best_trial(study, Budget(1.5)).number == 1
    assert best_trial(study, Budget(0.6)).number == 0
    assert best_trial(study, Budget(0.01)) is None
    records = [TrialRecord.from_attrs(t.user_attrs) for t in study.trials]
    assert Budget(1.5).best(records, lambda r: r.compression_ratio) == 1
    assert Budget(1.5).best(records, lambda r: -r.compression_ratio) == 3  # any value, same rule
    assert Budget(0.01).best(records, lambda r: r.compression_ratio) is None
    assert [Budget(1.5).within(r) for r in records] == [True, True, False, True]
    assert [Budget(1.5).within(t.user_attrs) for t in study.trials] == [True, True, False, True]
    assert {t.number for t in pareto_front(study)} == {0, 1, 2, 3}  # accuracy vs bytes: all trade off
    add(study, 89.0, 6.0, 80.0)  # worse than trial 2 on both
    assert 4 not in {t.number for t in pareto_front(study)}


def test_a_speed_floor_joins_the_budget(study: optuna.Study) -> None:
    """``min_speedup``: a trial within the accuracy budget but slower than asked is not within."""
    add(study, 94.0, 1.4, 40.0, speedup=0.9)  # the largest ratio, slower than the base
    add(study, 95.0, 0.5, 20.0)  # 1.5x faster
    fast = Budget(1.5, min_speedup=1.2)
    assert best_trial(study, Budget(1.5)).number == 0 and best_trial(study, fast).number == 1
    assert [fast.within(t.user_attrs) for t in study.trials] == [False, True]
    records = [TrialRecord.from_attrs(t.user_attrs) for t in study.trials]
    assert fast.best(records, lambda r: r.compression_ratio) == 1
    assert Budget(1.5, min_speedup=2.0).best(records, lambda r: r.compression_ratio) is None
    assert not fast.within({**study.trials[1].user_attrs, "speedup": None})  # not measured: not shown fast
    with pytest.raises(SpecError, match="study.min_speedup=-1"):
        StudySpec().with_study(min_speedup=-1)


def test_the_stored_spec_keeps_no_password(study: optuna.Study) -> None:
    spec = StudySpec().with_study(storage="postgresql://u:hunter2@db.example/x")
    assert record(spec)["study"]["storage"] == "postgresql://u@db.example/x"
    assert "hunter2" not in str(study.user_attrs)


def test_retention_never_removes_a_path_named_by_a_study(study: optuna.Study, tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "artifacts").mkdir()
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    dropped, kept = str(uuid.uuid4()), str(uuid.uuid4())
    for artifact_id in (dropped, kept):
        (tmp_path / "artifacts" / artifact_id).write_bytes(b"packed")
    add(study, 90.0, 0.5, 10.0, artifact_id="../victim")  # off the front: retention would remove it
    add(study, 89.0, 0.5, 9.0, artifact_id=dropped)  # off the front too
    add(study, 95.0, 0.5, 30.0, artifact_id=kept)  # the front, and the most recent
    assert enforce_retention(study, store, keep=1) == 1
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "artifacts" / dropped).exists() and (tmp_path / "artifacts" / kept).exists()


def test_retention_keeps_fine_tuning_states_of_the_front_and_the_most_recent_only(
    study: optuna.Study, tmp_path
) -> None:
    (tmp_path / "artifacts").mkdir()
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    states = []
    for acc, ratio in [(96.0, 30.0), (89.0, 9.0), (88.0, 8.0), (87.0, 7.0)]:  # 0: the front
        packed, state = str(uuid.uuid4()), str(uuid.uuid4())
        for artifact_id in (packed, state):
            (tmp_path / "artifacts" / artifact_id).write_bytes(b"x")
        add(study, acc, 0.5, ratio, artifact_id=packed, **{STATE_ATTR: state})
        states.append(state)
    assert enforce_retention(study, store, keep=10, keep_states=1) == 0  # every packed file kept
    kept = [(tmp_path / "artifacts" / s).exists() for s in states]
    assert kept == [True, False, False, True]  # the front's and the most recent trial's states


def test_study_lookup(storage) -> None:
    store, info = storage
    name = f"only-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=store)
    safe = info.safe_url if info else "memory"
    assert resolve_study_name(store, name, safe) == name
    with pytest.raises(AutoPruneError, match="no study 'nope'"):
        resolve_study_name(store, "nope", safe)
    if info is None or info.kind != "postgresql":  # a shared server may hold other studies
        assert resolve_study_name(store, None, safe) == name


def test_the_paired_standard_error_on_a_known_case() -> None:
    from autoprune.ops import paired_drop

    # 200 images: both right on 150, both wrong on 30, only the base right on 15, only the new on 5
    base = [True] * 150 + [False] * 30 + [True] * 15 + [False] * 5
    new = [True] * 150 + [False] * 30 + [False] * 15 + [True] * 5
    p = paired_drop(base, new)
    assert (p.lost, p.gained, p.n) == (15, 5, 200)
    assert p.drop == pytest.approx(5.0)  # 100 * (15 - 5) / 200
    mean = 10 / 200
    assert p.se == pytest.approx(100 * ((21 / 200 - mean**2) / 200) ** 0.5)  # 20 disagreements + 1 pseudo
    same = paired_drop([True, False] * 50, [True, False] * 50)
    assert same.drop == 0 and same.se == pytest.approx(100 * (1 / 100 / 100) ** 0.5)  # one image's worth
    with pytest.raises(ValueError):
        paired_drop([True], [True, False])


def test_best_the_constraint_and_the_surrogate_judge_drops_by_one_rule(
    study: optuna.Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    import autoprune.search.record as record_module
    from autoprune.compress import CompressConfig
    from autoprune.surrogate import Encoded, history_from_trials

    class AnySpace:  # every trial is a config; the surrogate's features are beside the point here
        name = "t"

        class view:  # noqa: N801
            @staticmethod
            def encode(configs: list) -> Encoded:
                return Encoded(
                    np.zeros((len(configs), 1, 1)), np.ones((len(configs), 1), bool), np.ones(len(configs))
                )

        @staticmethod
        def trial_config(trial: object, recipes: object) -> CompressConfig:
            return CompressConfig()

    add(study, 95.0, 0.9, 20.0, acc_drop_se=0.2)  # 0.9 + 1.28 * 0.2 = 1.16: within 1 only by its point
    add(study, 96.0, 0.3, 10.0, acc_drop_se=0.1)
    upper = Budget.of(1.0, "upper", 0.9)
    assert upper.z == pytest.approx(1.2816, abs=1e-4)
    assert best_trial(study, Budget.of(1.0, "point")).number == 0
    assert best_trial(study, upper).number == 1
    history = history_from_trials(study.trials, AnySpace, upper)
    assert history.drop == pytest.approx([0.9 + upper.z * 0.2, 0.3 + upper.z * 0.1])
    # every consumer goes through the one function: change it and all of them follow
    monkeypatch.setattr(record_module, "judged_drop", lambda drop, se, z: 0.0)
    assert best_trial(study, upper).number == 0
    assert list(history_from_trials(study.trials, AnySpace, upper).drop) == [0, 0]
    assert (
        upper.drop(TrialRecord.from_attrs(study.trials[0].user_attrs)) == 0.0
    )  # what the objective's constraint uses


def test_orphaned_packed_files_are_removed_and_nothing_else(study: optuna.Study, storage, tmp_path) -> None:
    import os
    import time

    from autoprune.search.objective import remove_orphans

    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    kept, orphan, failed, fresh = (str(uuid.uuid4()) for _ in range(4))
    for name in (kept, orphan, failed, fresh, "notes.txt"):
        (store_dir / name).write_bytes(b"x")
        if name != fresh:
            os.utime(store_dir / name, (time.time() - 3600, time.time() - 3600))
    add(study, 95.0, 0.5, 20.0, artifact_id=kept)
    trial = study.ask()  # uploaded, then its worker failed it
    trial.set_user_attr("artifact_id", failed)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert remove_orphans(storage[0], store_dir, older_than=600) == 2
    assert sorted(p.name for p in store_dir.iterdir()) == sorted([kept, fresh, "notes.txt"])


def test_the_final_stage_picks_on_a_ladder_of_budgets(study: optuna.Study) -> None:
    from autoprune.workflow._final import parents

    for drop, ratio in [
        (0.4, 20.0),
        (0.9, 30.0),
        (1.8, 50.0),
        (2.2, 70.0),
        (2.5, 75.0),
        (2.9, 80.0),
        (6.0, 99.0),
    ]:
        add(study, 98.0 - drop, drop, ratio)  # trials 0..6
    point = Budget(1.0)  # judged on the drop itself
    # the best within 1, 2 and 3 points (1, 2, 5), not the three highest ratios within 3 (3, 4, 5);
    # 3: the knee
    assert [t.number for t in parents(study, point, k=3, slack=2.0)] == [1, 2, 3, 5]
    assert [t.number for t in parents(study, point, k=3)] == [0, 1, 3]  # no slack: the best within 1 point


def test_best_on_a_latency_study_is_the_fastest_within_the_budget(storage) -> None:
    from autoprune.workflow._final import parents

    store, _ = storage
    spec = StudySpec().with_study(name=f"lat-{uuid.uuid4().hex[:8]}", objectives=["accuracy", "latency_ms"])
    study = open_study(spec, store)
    add(study, 95.0, 0.5, 40.0, speedup=1.2)  # the smallest, not the fastest
    add(study, 95.0, 0.6, 10.0, speedup=2.5)  # the fastest within the budget
    add(study, 90.0, 5.0, 5.0, speedup=4.0)  # faster still, far outside it
    assert best_trial(study, Budget(1.0)).number == 1
    assert [t.number for t in parents(study, Budget(1.0), k=1)] == [1]
    size = open_study(
        spec.with_study(name=f"size-{uuid.uuid4().hex[:8]}", objectives=["accuracy", "packed_bytes"]), store
    )
    add(size, 95.0, 0.5, 40.0, speedup=1.2)
    add(size, 95.0, 0.6, 10.0, speedup=2.5)
    assert best_trial(size, Budget(1.0)).number == 0


def test_workers_started_apart_never_draw_the_same_trial_and_one_worker_replays(storage) -> None:
    store, _ = storage

    def draws(studies: list[optuna.Study], n: int) -> list[tuple]:
        """``n`` trials asked round-robin of the workers' studies, none told (all running)."""
        out = []
        for i in range(n):
            trial = studies[i % len(studies)].ask()
            out.append((trial.suggest_float("x", 0, 1), trial.suggest_int("y", 0, 10**6)))
        return out

    spec = StudySpec().with_study(name=f"w-{uuid.uuid4().hex[:8]}", seed=7)
    workers = [open_study(spec, store) for _ in range(4)]  # four commands, one seed, one fresh study
    together = draws(workers, 12)
    assert len(set(together)) == 12
    again = draws([open_study(spec.with_study(name=f"r-{uuid.uuid4().hex[:8]}"), store)], 12)
    assert again == together  # trial N's draws depend on the seed and N only
    other = draws([open_study(spec.with_study(name=f"o-{uuid.uuid4().hex[:8]}", seed=8), store)], 12)
    assert not set(other) & set(together)


def test_a_failed_trial_nobody_retried_is_retried_once_at_the_next_start(storage) -> None:
    from autoprune.search.recovery import retry_lost_trials

    store, info = storage
    study = open_study(StudySpec().with_study(name=f"lost-{uuid.uuid4().hex[:8]}"), store)

    def failed(**attrs) -> int:
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, state=TrialState.FAIL)
        return trial.number

    lost = failed()  # marked stale by a worker killed before it queued the retry
    diverged = failed(fail_reason="fine-tuning diverged")  # failed by itself: not retried
    if info is None:  # in memory: no heartbeats, nothing to retry
        assert retry_lost_trials(study) == 0
        return
    assert retry_lost_trials(study) == 1
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == lost
    assert retry.params == study.trials[lost].params and diverged not in retry.system_attrs["retry_history"]
    assert retry_lost_trials(study) == 0  # once
    # a retry that failed in turn is retried from itself, not from its first ancestor again
    trial = study.ask()
    assert trial.number == retry.number
    study.tell(trial, state=TrialState.FAIL)
    assert retry_lost_trials(study) == 1
    assert study.trials[-1].system_attrs["retry_history"] == [lost, retry.number]
    assert retry_lost_trials(study) == 0


def test_each_objective_carries_its_best_rule() -> None:
    """What "best within the budget" maximises comes from the objectives' field metadata: the
    speed-up on latency, the fewest MACs on MACs, the compression ratio otherwise."""
    fast = TrialRecord.from_attrs(dict(metrics(95.0, 0.5, 5.0), speedup=3.0, macs=10))
    small = TrialRecord.from_attrs(dict(metrics(95.0, 0.5, 50.0), speedup=1.0, macs=50))
    assert best_field(["accuracy", "latency_ms"]) == "speedup"
    assert best_field(["accuracy", "macs"]) == "-macs" and best_field(["macs", "latency_ms"]) == "speedup"
    assert best_field(["accuracy", "packed_bytes"]) == best_field(None) == "compression_ratio"
    by_speed, by_macs, by_size = (goal(o) for o in (["latency_ms"], ["macs"], ["packed_bytes"]))
    assert (
        by_speed(fast) > by_speed(small) and by_macs(fast) > by_macs(small) and by_size(small) > by_size(fast)
    )
    assert speed_objectives(["accuracy", "latency_ms"]) == ["latency_ms"] and not speed_objectives(["macs"])
