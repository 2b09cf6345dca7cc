"""The shared-layer surrogate: on synthetic histories with a known per-layer cost (it must
recover that cost, and transfer it to a deeper network), proposals that must respect the
budget under a known function, the sampler, saving without pickles, and on real studies
through the CLI (too few trials, enqueued proposals run once and tagged, compare's table,
JSON and figure, proposals for a study with no trials from another study's history)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from autoprune.data import load_dataset
from autoprune.measure import dense_bytes
from autoprune.models import ModelSpec, create_model
from autoprune.search.space import SpaceLayers, suggest
from autoprune.search.spec import SpaceSection
from autoprune.sensitivity import analyse
from autoprune.surrogate import (
    FEATURES,
    Encoded,
    History,
    LayerView,
    LayerwiseEnsemble,
    ModelSpace,
    ProposeConfig,
    Surrogate,
    SurrogateError,
    SurrogateSampler,
    propose,
)
from tests.conftest import assert_one_line_error, run_cli
from tests.test_search import search, write_spec

F = {name: i for i, name in enumerate(FEATURES)}


def layer_cost(x: np.ndarray) -> np.ndarray:
    """A known cost per layer row: filters removed hurt in proportion to the layer's
    sensitivity, zeroed weights hurt past a knee, fine-tuning pays some of it back."""
    return (
        8.0 * x[..., F["filters_removed"]] ** 2 * (0.5 + x[..., F["drop_f50"]])
        + 6.0 * np.maximum(x[..., F["sparsity"]] - 0.6, 0.0) ** 2 * (1 + x[..., F["drop_q15"]])
        - 0.3 * x[..., F["log10_batches"]]
    )


def synthetic(n: int, layers: int, seed: int) -> tuple[Encoded, np.ndarray]:
    """``n`` trials of a ``layers``-deep network: random rows, the known cost summed."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, layers, len(FEATURES))).astype(np.float32)
    x[:, :, F["drop_f50"]] = rng.random(layers)  # a property of each layer, the same in every trial
    x[:, :, F["drop_q15"]] = rng.random(layers)
    x[:, :, F["log10_batches"]] = rng.random((n, 1))  # one fine-tuning per trial
    y = layer_cost(x).sum(axis=1) + rng.normal(0, 0.05, n)
    return Encoded(x, np.ones((n, layers), dtype=bool), np.ones(n)), y


def test_the_shared_network_recovers_a_known_per_layer_cost() -> None:
    data, y = synthetic(300, 4, seed=0)
    model = LayerwiseEnsemble(steps=800).fit(data, y)
    fresh, truth = synthetic(200, 4, seed=1)
    mean, spread = model.predict_dist(fresh)
    assert np.corrcoef(mean, truth)[0, 1] > 0.95
    assert (spread > 0).all()
    # each layer's share, not only their sum: up to the one constant the bias can trade
    shares = model.contributions(fresh)
    true = layer_cost(fresh.x)
    offset = np.mean(shares - true)
    assert np.corrcoef(shares.ravel(), true.ravel())[0, 1] > 0.9
    assert np.abs(shares - true - offset).mean() < 0.25 * np.abs(true).mean()


def test_one_network_serves_a_deeper_network_it_never_saw() -> None:
    shallow, y = synthetic(300, 3, seed=2)
    padded = Encoded.join([shallow, synthetic(1, 6, seed=3)[0]])  # rows of two depths in one batch
    assert padded.x.shape[1] == 6 and padded.mask[:300, 3:].sum() == 0
    model = LayerwiseEnsemble(steps=800).fit(shallow, y)
    deep, truth = synthetic(200, 6, seed=4)
    assert np.corrcoef(model.predict(deep), truth)[0, 1] > 0.9


@pytest.fixture(scope="module")
def toy() -> ModelSpace:
    """LeNet-5 on digits, untrained (sizes and sensitivity are real; no training needed)."""
    splits = load_dataset("digits", val_fraction=0.3, seed=0)
    spec = ModelSpec("lenet5", 10, 1, (8, 8))
    torch.manual_seed(0)
    base = create_model(spec).eval()
    view = LayerView(
        base, spec, analyse(base, splits, progress=False), train_batches=20, dense_bytes=dense_bytes(base)
    )
    return ModelSpace("toy", view, SpaceSection(), SpaceLayers.of(base))


def truth(model: ModelSpace, params: dict) -> float:
    """A known drop of a candidate, from what its config does to each layer."""
    return float(layer_cost(model.view.encode([model.config(params)]).x[0]).sum())


def toy_history(model: ModelSpace, n: int, seed: int = 0) -> History:
    rng = np.random.default_rng(seed)
    params = [model.encoder.decode(r) for r in model.encoder.sample(rng, n)]
    data = model.view.encode([model.config(p) for p in params])
    drops = np.array([float(layer_cost(x).sum()) for x in data.x])
    return History(data, drops, np.full(n, np.nan), data.ratio, list(range(n)), ["toy"] * n, params)


@pytest.fixture(scope="module")
def fitted(toy: ModelSpace) -> tuple[Surrogate, History]:
    history = toy_history(toy, 80)
    return Surrogate(seed=0).fit(history), history


def test_the_surrogate_learns_the_drop_and_reports_its_error(fitted) -> None:
    surrogate, history = fitted
    assert surrogate.cv_["acc_drop"].r2 > 0.8, surrogate.cv_["acc_drop"]
    assert "latency_ms" not in surrogate.models_  # not searched on: not learnt
    assert surrogate.report()["trials_used"] == 80 and surrogate.report()["studies"] == ["toy"]


@pytest.mark.parametrize("budget", [1.0, 2.0])
def test_proposals_respect_the_budget_under_the_known_function(
    toy: ModelSpace, fitted, budget: float
) -> None:
    surrogate, history = fitted
    proposals = propose(surrogate, toy, ProposeConfig(max_acc_drop=budget, k=4, candidates=600, seed=3))
    assert len(proposals) == 4 and all(p.feasible for p in proposals)
    assert all(truth(toy, p.params) <= budget + 0.2 for p in proposals), [
        truth(toy, p.params) for p in proposals
    ]
    # they compress: beyond the median trial of the history within the same budget
    ok = history.drop <= budget
    assert min(p.ratio for p in proposals) > np.median(history.ratio[ok])
    # the ratio is computed, not predicted: the size model's own answer
    p = proposals[0]
    assert p.ratio == pytest.approx(toy.view.dense_bytes / toy.view.sizes.estimate(toy.config(p.params)))
    assert len({json.dumps(p.params, sort_keys=True) for p in proposals}) == 4  # distinct


def test_a_saved_surrogate_loads_back_without_pickles(fitted, toy: ModelSpace, tmp_path: Path) -> None:
    surrogate, history = fitted
    path = tmp_path / "s.pt"
    surrogate.save(path)
    back = Surrogate.load(path)
    np.testing.assert_allclose(
        back.predict(history.data)["acc_drop"][0], surrogate.predict(history.data)["acc_drop"][0]
    )
    assert back.cv_["acc_drop"].r2 == surrogate.cv_["acc_drop"].r2
    (tmp_path / "junk").write_bytes(b"not a surrogate")
    with pytest.raises(SurrogateError, match="not a saved surrogate"):
        Surrogate.load(tmp_path / "junk")
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "autoprune-surrogate/2", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SurrogateError):
        Surrogate.load(tmp_path / "evil.pt")
    assert not marker.exists()  # read with weights_only: the pickle's code never ran


def test_too_few_trials_is_a_clear_message(toy: ModelSpace) -> None:
    with pytest.raises(SurrogateError, match="at least 8 completed trials.*it has 5.*--from"):
        Surrogate().fit(toy_history(toy, 5))


def sampled_study(toy: ModelSpace, sampler: SurrogateSampler, n: int) -> optuna.Study:
    dists = toy.dists

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, dists)
        data = toy.view.encode([toy.config(params)])
        trial.set_user_attr("acc_drop", float(layer_cost(data.x[0]).sum()))
        trial.set_user_attr("compression_ratio", float(data.ratio[0]))
        return float(data.ratio[0])

    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=n)
    return study


def test_the_sampler_proposes_once_it_has_enough_trials_and_says_what_it_expects(toy: ModelSpace) -> None:
    sampler = SurrogateSampler(
        max_acc_drop=2.0, n_startup_trials=8, candidates=200, n_members=3, seed=0, model=toy
    )
    study = sampled_study(toy, sampler, 11)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    proposed = [t for t in study.trials if t.user_attrs.get("proposer") == "surrogate"]
    assert [t.number for t in proposed] == [8, 9, 10]
    for t in proposed:
        expected = t.user_attrs["predicted_compression_ratio"]
        assert expected == pytest.approx(t.user_attrs["compression_ratio"])  # computed, so exact
        assert (
            math.isfinite(t.user_attrs["predicted_acc_drop"])
            and t.user_attrs["predicted_acc_drop_spread"] >= 0
        )


def test_the_sampler_steers_away_from_a_point_another_worker_is_running(toy: ModelSpace) -> None:
    history = toy_history(toy, 12, seed=3)

    def proposal(running: list[dict]) -> dict:
        sampler = SurrogateSampler(
            max_acc_drop=2.0, n_startup_trials=8, candidates=200, n_members=3, seed=0, model=toy
        )
        return sampler._propose(history, running)[0]

    alone = proposal([])
    assert proposal([]) == alone  # seeded: the same history gives the same point
    beside = proposal([alone])  # another worker is running exactly that point
    encoder = toy.encoder
    gap = np.linalg.norm(encoder.encode(beside) - encoder.encode(alone))
    assert gap > 0.1 * math.sqrt(len(encoder.columns))  # outside the penalty's reach


# ----------------------------------------------------------------------------- real study, CLI


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("surrogate")
    url = f"sqlite:///{tmp / 'study.db'}"
    spec = write_spec(tmp, trials=12, epochs=1, max_batches=3)
    done = search(str(spec), "--storage", url, "--study", "s")
    assert done.returncode == 0, done.stderr
    return url, tmp


@pytest.mark.slow
def test_fit_reports_cross_validated_error_and_the_size_error(small_study) -> None:
    url, tmp = small_study
    out = run_cli(
        "surrogate", "fit", "--storage", url, "--study", "s", "--out", str(tmp / "m.pt"), "--json", "-q"
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(r["cv"]) == {"acc_drop"} and r["trials_used"] == 12 and r["left_out"] == {}  # baselines too
    assert math.isfinite(r["cv"]["acc_drop"]["r2"]) and r["cv"]["acc_drop"]["mae"] >= 0
    assert -1 <= r["cv"]["acc_drop"]["kendall_tau"] <= 1 and 0 <= r["cv"]["acc_drop"]["top5_hit"] <= 1
    assert 0 <= r["size_error"] < 0.05  # computed sizes against the trials' own packed files
    assert Surrogate.load(tmp / "m.pt").rows_ == 12
    text = run_cli("surrogate", "fit", "--storage", url, "--study", "s", "-q")
    assert "CV R^2" in text.stdout and "Kendall tau" in text.stdout and "computed, not learnt" in text.stdout


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
    out = run_cli(
        "surrogate", "propose", "--storage", url, "--study", "s", "-k", "2", "--enqueue", "--json", "-q"
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["enqueued"] == 2 and len(r["proposals"]) == 2
    p = r["proposals"][0]
    assert p["upper"] == pytest.approx(p["predicted_acc_drop"] + r["kappa"] * p["spread"] + p["cv_margin"])
    assert p["feasible"] == (p["upper"] <= r["max_acc_drop"])
    text = run_cli("surrogate", "propose", "--storage", url, "--study", "s", "-k", "2", "-q")
    assert max(len(line) for line in text.stdout.splitlines()) <= 100, text.stdout  # fits a terminal
    assert "upper = drop + 1 x spread + margin" in text.stdout
    study = optuna.load_study(study_name="s", storage=url)
    from autoprune.surrogate import Proposal
    from autoprune.workflow import enqueue

    again = [
        Proposal(
            params=p["params"],
            drop=0.0,
            spread=0.0,
            margin=0.0,
            kappa=1.0,
            ratio=1.0,
            latency_ms=None,
            budget=1.0,
            proposer="random",
        )
        for p in r["proposals"]
    ]
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
    assert all({"predicted_acc_drop", "proposer", "accuracy"} <= set(t.user_attrs) for t in tagged)


@pytest.mark.slow
def test_compare_gives_a_table_json_and_a_figure_with_both_series(small_study) -> None:
    url, tmp = small_study
    png = tmp / "cmp.png"
    out = run_cli(
        "surrogate",
        "compare",
        "--storage",
        url,
        "--study",
        "s",
        "--at",
        "12",
        "-k",
        "2",
        "--png",
        str(png),
        "--json",
        "-q",
    )
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
    figure = json.loads(
        "".join(v for k, v in sorted(attrs.items()) if "surrogate-compare" in k and isinstance(v, str))
    )
    names = [trace["name"] for trace in figure["data"]]
    assert names == ["surrogate: n history + k proposals", "search after n + k trials"]  # both series
    assert figure["layout"]["xaxis"]["tickvals"] == [12]  # integer history sizes
    assert any(k.startswith("dashboard:note") or "note" in k for k in attrs)
    # the same command again reuses the evaluated proposals
    table = run_cli(
        "surrogate",
        "compare",
        "--storage",
        url,
        "--study",
        "s",
        "--at",
        "12",
        "-k",
        "2",
        "--png",
        str(png),
        "-q",
    )
    assert table.returncode == 0, table.stderr
    assert "search, full budget" in table.stdout and "history n" in table.stdout
    assert len(optuna.load_study(study_name=r["side_study"], storage=url).trials) == 2


def test_the_compare_figure_says_none_within_budget_for_each_series_apart(tmp_path: Path) -> None:
    from autoprune.workflow._figures import compare_plotly, compare_png

    none = {"best_ratio": None, "trials": 15}
    result = {
        "study": "s",
        "max_acc_drop": 1.0,
        "search_full": {"best_ratio": 28.6, "trials": 30},
        "rows": [
            {"history": 10, "surrogate": none, "search_same_trials": none},
            {"history": 20, "surrogate": {"best_ratio": 12.0}, "search_same_trials": none},
        ],
    }
    figure = compare_plotly(result)
    surrogate, search = figure.data
    assert (
        surrogate.text == ("surrogate: none within budget", "")
        and search.text == ("search: none within budget",) * 2
    )
    assert surrogate.y == (1.0, 12.0) and surrogate.marker.symbol == ("circle-open", "circle")
    assert surrogate.marker.size != search.marker.size  # one inside the other, both seen
    assert compare_png(result, tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_study_with_no_trials_gets_proposals_from_another_studys_history(
    small_study, tmp_path: Path
) -> None:
    url, tmp = small_study
    other = tmp_path / "lenet300.toml"
    other.write_text(
        (tmp / "tiny.toml")
        .read_text()
        .replace('name = "lenet5"', 'name = "lenet300"')
        .replace("baselines = [", "baselines = [] # [")
    )
    setup = search(str(other), "--storage", url, "--study", "fresh", "--setup-only")
    assert setup.returncode == 0, setup.stderr
    alone = run_cli("surrogate", "propose", "--storage", url, "--study", "fresh", "-q")
    assert_one_line_error(alone, "it has 0", "--from")
    out = run_cli(
        "surrogate", "propose", "--storage", url, "--study", "fresh", "--from", "s", "-k", "3", "--json", "-q"
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert len(r["proposals"]) == 3 and r["surrogate"]["studies"] == ["s"]
    fresh = optuna.load_study(study_name="fresh", storage=url)
    assert all(set(p["params"]) == set(r["proposals"][0]["params"]) for p in r["proposals"])
    assert not any(k.startswith("ratio_conv") for k in r["proposals"][0]["params"])  # lenet300's own space
    assert len(fresh.trials) == 0
