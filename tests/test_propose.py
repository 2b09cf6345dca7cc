"""Proposals before the first trial: the allocator's program is exact on additive problems,
coupled layers move as one knob, the residual surrogate with no trial is the allocator's prior,
and a warm start's trials are queued first with their source."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autoprune.compress import weight_layers
from autoprune.compress.size import SizeModel
from autoprune.models import ModelSpec, create_model
from autoprune.ops.allocate import allocate
from autoprune.search import parse_storage
from autoprune.search.propose import Allocator
from autoprune.search.record import Source
from autoprune.search.spec import SpaceSection
from autoprune.sensitivity import BITS, QUALITIES, RATIOS, LayerSensitivity, Sensitivity, filters_removable
from autoprune.surrogate import LayerView, LayerwiseEnsemble, prior_drop
from autoprune.workflow import search, search_spec
from tests.conftest import REPO, run_cli

# ---------------------------------------------------------------------------- the program


def brute_force(costs: list[np.ndarray], damages: list[np.ndarray], budget: float) -> float | None:
    best = None
    for choice in itertools.product(*(range(len(c)) for c in costs)):
        if sum(d[i] for d, i in zip(damages, choice)) <= budget + 1e-9:
            cost = sum(c[i] for c, i in zip(costs, choice))
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_allocator_returns_the_optimum_of_an_additive_problem(seed: int) -> None:
    rng = np.random.default_rng(seed)
    knobs = int(rng.integers(2, 6))
    costs = [rng.uniform(0, 100, size=int(rng.integers(2, 6))) for _ in range(knobs)]
    damages = [rng.uniform(0, 3, size=len(c)) for c in costs]
    budget = float(rng.uniform(0, 6))
    chosen = allocate(costs, damages, budget)
    optimum = brute_force(costs, damages, budget)
    if optimum is None:
        assert chosen is None
        return
    assert chosen is not None and len(chosen) == knobs
    assert sum(d[i] for d, i in zip(damages, chosen)) <= budget + 1e-9
    assert sum(c[i] for c, i in zip(costs, chosen)) == pytest.approx(optimum)


def test_the_allocator_spends_the_budget_where_it_buys_the_most() -> None:
    # knob 0 saves 50 for 1 point, knob 1 saves 10 for 1 point: one point buys knob 0
    costs = [np.array([100.0, 50.0]), np.array([100.0, 90.0])]
    damages = [np.array([0.0, 1.0]), np.array([0.0, 1.0])]
    assert allocate(costs, damages, 1.0) == [1, 0]
    assert allocate(costs, damages, 2.0) == [1, 1]
    assert allocate(costs, [d + 1 for d in damages], 1.0) is None  # even doing nothing costs 2 points


def test_the_allocator_refuses_a_malformed_problem() -> None:
    with pytest.raises(ValueError):
        allocate([np.array([1.0, 2.0])], [np.array([0.0])], 1.0)
    with pytest.raises(ValueError):
        allocate([np.array([np.nan])], [np.array([0.0])], 1.0)


# ---------------------------------------------------------------------------- a network with coupled layers

SPEC = ModelSpec("resnet20", 10, 3, (16, 16))


def made_up_sensitivity(base: torch.nn.Module, sizes: SizeModel) -> Sensitivity:
    """Probes with known shapes: every layer loses more the deeper its pruning, each at its own
    rate (a residual stage's convs, probed as one group, alike)."""
    layers = weight_layers(base)
    removable = filters_removable(base)
    out = []
    for i, (name, module) in enumerate(layers.items()):
        rate = 1.0 + (i % 4)
        out.append(
            LayerSensitivity(
                layer=name,
                kind="conv" if module.weight.dim() == 4 else "fc",
                params=module.weight.numel(),
                depth=i / (len(layers) - 1),
                norms=(1.0, 0.5),
                filters=name in removable,
                ratio_acc=tuple(90 - rate * 4 * r**2 for r in RATIOS) if name in removable else (),
                quality_acc=tuple(90 - rate * 0.3 * q**2 for q in QUALITIES),
                quality_sparsity=tuple(min(0.99, q / 3) for q in QUALITIES),
                bits_acc=tuple(90 - rate * 0.5 / b for b in BITS),
            )
        )
    return Sensitivity(90.0, tuple(out))


@pytest.fixture(scope="module")
def residual_net():
    torch.manual_seed(0)
    base = create_model(SPEC).eval()
    sizes = SizeModel(base, SPEC)
    return base, sizes, made_up_sensitivity(base, sizes)


def test_coupled_layers_are_one_knob_and_take_one_ratio(residual_net) -> None:
    base, sizes, sensitivity = residual_net
    space = SpaceSection(ratio=[0.0, 0.5], quality=[0.0, 2.0], conv_bits=[4, 6], fc_bits=[3, 5])
    allocator = Allocator(base, SPEC, space, sensitivity, sizes=sizes)
    parts = sizes.coupled(allocator.layers.conv)
    assert any(len(p) > 2 for p in parts), parts  # a residual stage: its stem and its blocks' second convs
    structured = [k for k in allocator.knobs if k.params[0].startswith("ratio_")]
    assert [list(k.params) for k in structured] == [[f"ratio_{n}" for n in p] for p in parts]
    proposals = allocator.propose([2.0, 8.0, 32.0])
    assert proposals and proposals[-1].packed_bytes < proposals[0].packed_bytes
    for p in proposals:
        assert p.predicted_drop <= p.budget + 1e-9
        for part in parts:
            assert len({p.params[f"ratio_{n}"] for n in part}) == 1, (part, p.params)
    assert any(p.params[f"ratio_{parts[0][0]}"] > 0 for p in proposals)


def test_a_ranked_space_gets_one_structured_knob_and_proposes_shares(residual_net) -> None:
    base, sizes, sensitivity = residual_net
    space = SpaceSection(
        structured="ranked", ratio=[0.0, 0.5], quality=[0.0, 2.0], conv_bits=[4, 6], fc_bits=[3, 5]
    )
    allocator = Allocator(base, SPEC, space, sensitivity, sizes=sizes)
    assert [k.params for k in allocator.knobs if "ratio" in k.params[0]] == [("ranked_ratio",)]
    proposals = allocator.propose([2.0, 32.0])
    assert proposals and all(0.0 <= p.params["ranked_ratio"] <= 0.5 for p in proposals)
    assert any(p.params["ranked_ratio"] > 0 for p in proposals)


def test_the_residual_surrogate_with_no_trial_is_the_allocators_prior(residual_net) -> None:
    base, sizes, sensitivity = residual_net
    space = SpaceSection(ratio=[0.0, 0.5], quality=[0.0, 2.0], conv_bits=[4, 6], fc_bits=[3, 5])
    allocator = Allocator(base, SPEC, space, sensitivity, sizes=sizes)
    proposals = allocator.propose([1.0, 4.0, 16.0])
    view = LayerView(
        base, SPEC, sensitivity, train_batches=10, dense_bytes=allocator.dense_bytes, sizes=sizes
    )
    data = view.encode([allocator.config(p.params) for p in proposals])
    predicted = [p.predicted_drop for p in proposals]
    assert prior_drop(data.x, data.mask) == pytest.approx(predicted, abs=1e-3)
    empty = LayerwiseEnsemble(n_members=2).fit(data.take(np.arange(0)), np.zeros(0))
    mean, spread = empty.predict_dist(data)
    assert mean == pytest.approx(predicted, abs=1e-3) and (spread == 0).all()
    # with trials it learns the correction: a drop that is always half the prior is learnt as such
    rows = view.encode([allocator.config(p.params) for p in allocator.propose(list(np.linspace(0.5, 30, 8)))])
    half = prior_drop(rows.x, rows.mask) / 2
    fitted = LayerwiseEnsemble(n_members=2, steps=200).fit(rows, half)
    n = len(half)  # least squares 0.5, shrunk toward 1 by two pseudo-trials' weight
    assert fitted.alpha_ == pytest.approx((0.5 * n + 2) / (n + 2), abs=1e-3)
    assert np.abs(fitted.predict(rows) - half).max() < 0.25 * half.max()


# ---------------------------------------------------------------------------- a warm-started study


@pytest.mark.slow
def test_a_warm_start_queues_its_proposals_first_with_their_source(tmp_path: Path) -> None:
    spec_path = tmp_path / "warm.toml"
    spec_path.write_text("""
[study]
trials = 3
warm_start = [1, 16]
latency_repeats = 2
[model]
name = "lenet5"
[data]
name = "digits"
[train]
epochs = 2
[space]
ratio = [0.0, 0.5]
quality = [0.0, 1.5]
conv_bits = [4, 6]
fc_bits = [3, 5]
finetune_epochs = [1]
quant_epochs = [0]
max_batches = 2
""")
    url = f"sqlite:///{tmp_path / 'warm.db'}"
    spec, spec_dir = search_spec(spec_path, storage=url, name="warm")
    search(spec, parse_storage(url), spec_dir=spec_dir, progress=False)
    trials = sorted(optuna.load_study(study_name="warm", storage=url).get_trials(), key=lambda t: t.number)
    sources = [t.user_attrs.get("source") for t in trials]
    assert (
        len(trials) == 3
        and sources[:2] == [Source.SENSITIVITY, Source.SENSITIVITY]
        and sources[2] != Source.SENSITIVITY
    ), sources
    assert [t.user_attrs["proposal_budget"] for t in trials[:2]] == [1.0, 16.0]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert trials[0].params != trials[1].params
    # resumed, the study does not queue them again
    spec = spec.with_study(trials=4)
    search(spec, parse_storage(url), spec_dir=spec_dir, progress=False)
    trials = optuna.load_study(study_name="warm", storage=url).get_trials()
    assert len(trials) == 4 and sum(t.user_attrs.get("source") == Source.SENSITIVITY for t in trials) == 2


@pytest.mark.slow
def test_zero_shot_proposals_from_the_command_line(tmp_path: Path) -> None:
    spec = REPO / "studies" / "digits-lenet5.toml"
    url = f"sqlite:///{tmp_path / 'zs.db'}"
    setup = run_cli("search", "--quiet", str(spec), "--storage", url, "--study", "zs", "--setup-only")
    assert setup.returncode == 0, setup.stderr
    out = run_cli(
        "surrogate",
        "propose",
        "--zero-shot",
        "--scales",
        "1,4",
        "--storage",
        url,
        "--study",
        "zs",
        "--quiet",
        "--json",
        "--enqueue",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["budgets"] == [1.0, 4.0] and 1 <= len(result["proposals"]) <= 2 and result["enqueued"]
    waiting = optuna.load_study(study_name="zs", storage=url).get_trials(
        states=(optuna.trial.TrialState.WAITING,)
    )
    assert {t.user_attrs["source"] for t in waiting if "proposal_budget" in t.user_attrs} == {
        Source.SENSITIVITY.value
    }
    text = run_cli("surrogate", "propose", "--zero-shot", "--storage", url, "--study", "zs", "--quiet")
    assert text.returncode == 0 and "prior drop" in text.stdout, text.stderr
    bad = run_cli("surrogate", "propose", "--zero-shot", "--scales", "0,x", "--storage", url, "--study", "zs")
    assert bad.returncode != 0 and "--scales" in bad.stderr and "Traceback" not in bad.stderr


def test_kendall_tau_and_top_five_hit_read_the_ranking() -> None:
    from autoprune.surrogate import CVScore

    truth = np.arange(10.0)
    same = CVScore(1.0, 0.0, 5, truth, truth * 3)  # any increasing map ranks alike
    assert same.kendall_tau == pytest.approx(1.0) and same.top_hit(5) == 1.0
    reversed_ = CVScore(0.0, 1.0, 5, truth, -truth)
    assert reversed_.kendall_tau == pytest.approx(-1.0) and reversed_.top_hit(5) == 0.0
    swapped = truth.copy()
    swapped[[4, 5]] = swapped[[5, 4]]  # the 5th and 6th best swapped: one of the five missed
    assert CVScore(0.9, 0.1, 5, truth, swapped).top_hit(5) == 0.8
