"""The MLP surrogate: on synthetic histories from a known function (it must learn it and its
proposals must respect the budget under that function), and on a real study through the CLI
(too few trials, enqueued proposals run once and tagged, compare's table and JSON)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution as C
from optuna.distributions import FloatDistribution as F
from optuna.distributions import IntDistribution as I
from optuna.trial import TrialState

from autoprune.ops import hypervolume
from autoprune.surrogate import (
    TARGETS,
    Encoder,
    History,
    InverseThresholds,
    ProposeConfig,
    Surrogate,
    SurrogateError,
    SurrogateSampler,
    propose,
)
from tests.conftest import assert_one_line_error, run_cli
from tests.test_search import search, write_spec

LAYERS = ("conv1", "conv2", "fc1", "fc2")
DISTS = {
    "ratio_conv1": F(0.0, 0.7), "ratio_conv2": F(0.0, 0.7),
    **{f"quality_{l}": F(0.0, 2.5) for l in LAYERS},
    "conv_bits": I(4, 8), "fc_bits": I(2, 6), "init": C(["linear", "density", "forgy"]),
    "finetune_epochs": I(1, 3), "lr": F(3e-4, 3e-3, log=True),
}  # fmt: skip


def truth(p: dict) -> list[float]:
    """A known, smooth stand-in for a compression trial: (acc_drop, log ratio, latency)."""
    q = {l: p[f"quality_{l}"] / 2.5 for l in LAYERS}
    drop = (2.0 * p["ratio_conv2"] ** 2 + 0.8 * p["ratio_conv1"] + 1.5 * q["fc1"] ** 2 + 0.5 * q["conv2"]
            + 3.0 / p["fc_bits"] - 0.3 * p["finetune_epochs"] + (0.3 if p["init"] == "forgy" else 0.0))  # fmt: skip
    kept = (1 - p["ratio_conv1"]) * (1 - p["ratio_conv2"])
    log_ratio = (
        math.log(32 / (0.8 * p["fc_bits"] + 0.2 * p["conv_bits"]))
        + 1.2 * q["fc1"]
        + 0.3 * q["conv2"]
        - 0.4 * math.log(kept)
    )
    return [drop, log_ratio, 0.1 + kept]


def synthetic(n: int, seed: int = 0) -> History:
    enc = Encoder(DISTS)
    params = [enc.decode(r) for r in enc.sample(np.random.default_rng(seed), n)]
    return History(
        enc, np.array([enc.encode(p) for p in params]), np.array([truth(p) for p in params]), list(range(n))
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[Surrogate, History]:
    history = synthetic(100)
    return Surrogate(history.encoder).fit(history), history


def test_encoder_round_trips_every_kind_of_parameter() -> None:
    enc = Encoder(DISTS)
    for row in enc.sample(np.random.default_rng(1), 50):
        p = enc.decode(row)
        back = enc.decode(enc.encode(p))
        assert back.keys() == DISTS.keys()
        for name, d in DISTS.items():
            assert d._contains(d.to_internal_repr(p[name])), (name, p[name])
            assert (
                back[name] == pytest.approx(p[name]) if isinstance(p[name], float) else back[name] == p[name]
            )
    assert len(enc.columns) == 9 + 3 + 1  # ranges, one-hot init, lr


def test_the_surrogate_learns_a_known_function(fitted) -> None:
    surrogate, _ = fitted
    for target in TARGETS:
        assert surrogate.cv_[target].r2 >= 0.9, (target, surrogate.cv_[target])
    # held-out points it never saw, with a spread on every prediction
    fresh = synthetic(200, seed=7)
    pred = surrogate.predict(fresh.x)
    mean, spread = pred["acc_drop"]
    assert np.corrcoef(mean, fresh.target("acc_drop"))[0, 1] > 0.95
    assert (spread > 0).all()


@pytest.mark.parametrize("budget", [1.0, 2.0])
def test_proposals_respect_the_budget_under_the_known_function(fitted, budget: float) -> None:
    surrogate, history = fitted
    proposals = propose(surrogate, history, ProposeConfig(max_acc_drop=budget, k=5, seed=3))
    assert len(proposals) == 5 and all(p.feasible for p in proposals)
    true = [truth(p.params) for p in proposals]
    assert all(drop <= budget for drop, _, _ in true), [round(t[0], 3) for t in true]
    # and they compress: better than the median trial of the history within the same budget
    ok = history.target("acc_drop") <= budget
    assert min(r for _, r, _ in true) > np.median(history.target("log_compression_ratio")[ok])
    # distinct settings
    assert len({json.dumps(p.params, sort_keys=True) for p in proposals}) == 5


def test_latency_target_ranks_by_predicted_latency(fitted) -> None:
    surrogate, history = fitted
    proposals = propose(surrogate, history, ProposeConfig(max_acc_drop=2.0, target="latency", k=3))
    best_latency = min(history.target("latency_ms")[history.target("acc_drop") <= 2.0])
    assert all(truth(p.params)[2] <= best_latency + 0.05 for p in proposals)


def test_the_inverse_mlp_maps_a_budget_to_per_layer_thresholds(fitted) -> None:
    _, history = fitted
    descriptors = {
        l: np.array([4.0 - i * 0.5, i / 3, float(i < 2), 0.5, 0.2, 0.3]) for i, l in enumerate(LAYERS)
    }
    inverse = InverseThresholds().fit(history, descriptors)
    assert set(inverse.models_) == {"ratio", "quality"} and inverse.rows_ > 0
    loose, tight = inverse.thresholds(3.0, descriptors), inverse.thresholds(0.0, descriptors)
    assert set(loose) == {"ratio_conv1", "ratio_conv2", *(f"quality_{l}" for l in LAYERS)}
    assert all(0.0 <= v <= 1.0 for v in loose.values())
    # a looser budget allows more pruning overall
    assert sum(loose.values()) > sum(tight.values())


def test_too_few_trials_is_a_clear_message() -> None:
    history = synthetic(5)
    with pytest.raises(SurrogateError, match="at least 8 completed trials.*has 5"):
        Surrogate(history.encoder).fit(history)


def test_a_saved_surrogate_loads_back_and_checks_its_space(fitted, tmp_path: Path) -> None:
    surrogate, history = fitted
    path = tmp_path / "s.joblib"
    surrogate.save(path)
    back = Surrogate.load(path, history.encoder)
    np.testing.assert_array_equal(
        back.predict(history.x[:5])["acc_drop"][0], surrogate.predict(history.x[:5])["acc_drop"][0]
    )
    with pytest.raises(SurrogateError, match="another search space"):
        Surrogate.load(path, Encoder({"ratio": F(0.0, 0.5)}))
    (tmp_path / "junk").write_bytes(b"not a pickle")
    with pytest.raises(SurrogateError, match="not a saved surrogate"):
        Surrogate.load(tmp_path / "junk")


def test_hypervolume_in_drop_and_log_ratio() -> None:
    assert hypervolume([(0.0, 10.0)], 1.0) == pytest.approx(1.0)
    assert hypervolume([(0.5, 100.0)], 1.0) == pytest.approx(1.0)
    # two points: (0, 10) covers [0, 0.5) at 1, (0.5, 100) covers [0.5, 1) at 2
    assert hypervolume([(0.0, 10.0), (0.5, 100.0)], 1.0) == pytest.approx(1.5)
    assert hypervolume([(1.5, 1000.0)], 1.0) == 0.0  # outside the budget


def test_the_surrogate_sampler_proposes_once_it_has_enough_trials() -> None:
    sampler = SurrogateSampler(max_acc_drop=1.0, n_startup_trials=8, candidates=300, n_members=3, seed=0)
    calls = []
    original = sampler._propose
    sampler._propose = lambda *a: calls.append(1) or original(*a)  # type: ignore[method-assign]

    def objective(trial: optuna.Trial) -> float:
        p = {n: (trial.suggest_categorical(n, d.choices) if isinstance(d, C) else
                 trial.suggest_int(n, d.low, d.high) if isinstance(d, I) else
                 trial.suggest_float(n, d.low, d.high, log=d.log)) for n, d in DISTS.items()}  # fmt: skip
        drop, log_ratio, latency = truth(p)
        trial.set_user_attr("acc_drop", drop)
        trial.set_user_attr("compression_ratio", math.exp(log_ratio))
        trial.set_user_attr("latency_ms", latency)
        return log_ratio

    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=12)
    assert len(calls) == 4  # trials 8..11
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_the_sampler_steers_away_from_a_point_another_worker_is_running() -> None:
    rng = np.random.default_rng(3)
    study = optuna.create_study(direction="maximize")
    for row in Encoder(DISTS).sample(rng, 12):
        params = Encoder(DISTS).decode(row)
        drop, log_ratio, latency = truth(params)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=DISTS, value=log_ratio,
            user_attrs={"acc_drop": drop, "compression_ratio": math.exp(log_ratio), "latency_ms": latency}))  # fmt: skip

    def proposal(running: list[dict]) -> dict:
        sampler = SurrogateSampler(max_acc_drop=2.0, n_startup_trials=8, candidates=300, n_members=3, seed=0)
        return sampler._propose(DISTS, study.trials, running)

    alone = proposal([])
    assert proposal([]) == alone  # seeded: the same history gives the same point
    beside = proposal([alone])  # another worker is running exactly that point
    encoder = Encoder(DISTS)
    gap = np.linalg.norm(encoder.encode(beside) - encoder.encode(alone))
    assert gap > 0.1 * math.sqrt(len(encoder.columns))  # outside the penalty's reach


# ----------------------------------------------------------------------------- real study, CLI


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("surrogate")
    url = f"sqlite:///{tmp / 'study.db'}"
    spec = write_spec(tmp, trials=12, epochs=1, max_batches=3)  # 2 baselines lie outside the space
    done = search(str(spec), "--storage", url, "--study", "s")
    assert done.returncode == 0, done.stderr
    return url, tmp


@pytest.mark.slow
def test_fit_reports_cross_validated_error(small_study) -> None:
    url, tmp = small_study
    out = run_cli(
        "surrogate", "fit", "--storage", url, "--study", "s", "--out", str(tmp / "m.joblib"), "--json", "-q"
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(r["cv"]) == set(TARGETS) and r["trials_used"] >= 8
    assert all(math.isfinite(v["r2"]) and v["mae"] >= 0 for v in r["cv"].values())
    assert (tmp / "m.joblib").stat().st_size > 0
    text = run_cli("surrogate", "fit", "--storage", url, "--study", "s", "-q")
    assert "CV R^2" in text.stdout and "acc_drop" in text.stdout


@pytest.mark.slow
def test_too_few_trials_through_the_cli_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'few.db'}"
    spec = write_spec(tmp_path, trials=3, epochs=1, max_batches=2)
    assert search(str(spec), "--storage", url, "--study", "few").returncode == 0
    result = run_cli("surrogate", "propose", "--storage", url, "--study", "few", "-q")
    assert_one_line_error(result, "at least 8 completed trials")
    missing = run_cli("surrogate", "fit", "--storage", url, "--study", "nope", "-q")
    assert_one_line_error(missing, "nope")


@pytest.mark.slow
def test_enqueued_proposals_are_evaluated_once_and_tagged(small_study) -> None:
    url, tmp = small_study
    out = run_cli("surrogate", "propose", "--storage", url, "--study", "s", "-k", "2", "--enqueue",
                  "--surrogate", str(tmp / "m.joblib"), "--json", "-q")  # fmt: skip
    if out.returncode != 0 and "m.joblib" in out.stderr:  # fit test not run first (-k selection)
        out = run_cli(
            "surrogate", "propose", "--storage", url, "--study", "s", "-k", "2", "--enqueue", "--json", "-q"
        )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["enqueued"] == 2 and len(r["proposals"]) == 2
    study = optuna.load_study(study_name="s", storage=url)
    from autoprune.surrogate import Proposal
    from autoprune.workflow import enqueue

    again = [Proposal(params=p["params"], predicted=p["predicted"]) for p in r["proposals"]]
    assert enqueue(study, again) == 0  # already waiting: skipped
    spec = tmp / "tiny.toml"
    assert search(str(spec), "--storage", url, "--study", "s", "--trials", "14").returncode == 0
    assert search(str(spec), "--storage", url, "--study", "s", "--trials", "14").returncode == 0
    study = optuna.load_study(study_name="s", storage=url)
    tagged = [t for t in study.trials if t.user_attrs.get("source") == "surrogate"]
    assert len(tagged) == 2 and all(t.state == TrialState.COMPLETE for t in tagged)
    assert sorted(json.dumps(t.params, sort_keys=True) for t in tagged) == sorted(
        json.dumps(p["params"], sort_keys=True) for p in r["proposals"]
    )
    assert all("predicted_acc_drop" in t.user_attrs and "accuracy" in t.user_attrs for t in tagged)


@pytest.mark.slow
def test_compare_gives_a_table_json_png_and_a_note(small_study) -> None:
    url, tmp = small_study
    png = tmp / "cmp.png"
    out = run_cli("surrogate", "compare", "--storage", url, "--study", "s", "--at", "12", "-k", "2",
                  "--png", str(png), "--json", "-q")  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    (row,) = r["rows"]
    assert row["history"] == 12 and len(row["surrogate"]["proposals"]) == 2
    assert row["surrogate"]["trials"] == 14 and row["search_same_trials"]["trials"] == 12  # all it has
    assert all(p["acc_drop"] is not None for p in row["surrogate"]["proposals"])  # run for real
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    side = optuna.load_study(study_name=r["side_study"], storage=url)
    assert len(side.get_trials(states=(TrialState.COMPLETE,))) == 2
    study = optuna.load_study(study_name="s", storage=url)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert any("surrogate-compare" in str(v) for v in attrs.values())  # the dashboard figure
    assert any(k.startswith("dashboard:note") or "note" in k for k in attrs)
    # the same command again reuses the evaluated proposals
    table = run_cli("surrogate", "compare", "--storage", url, "--study", "s", "--at", "12", "-k", "2",
                    "--png", str(png), "-q")  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "search, full budget" in table.stdout and "history n" in table.stdout
    assert len(optuna.load_study(study_name=r["side_study"], storage=url).trials) == 2
