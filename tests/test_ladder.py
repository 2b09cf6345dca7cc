"""A ranked search's first trials spread over the MAC reductions its share reaches
(``space.ranked_start``)."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import optuna
import pytest
import torch

from autoprune.compress.structured import FilterPruneConfig, prune_filters_
from autoprune.measure import count_macs
from autoprune.models import ModelSpec, create_model
from autoprune.search import parse_storage
from autoprune.search.ladder import ladder_shares
from autoprune.search.record import Source
from autoprune.search.spec import SpaceSection, SpecError
from autoprune.workflow import search, search_spec


def reduction(model: torch.nn.Module, config: FilterPruneConfig, share: float) -> float:
    example = torch.zeros(1, 1, 8, 8)
    pruned = copy.deepcopy(model).eval()
    prune_filters_(pruned, dataclasses.replace(config, default=share), example)
    return count_macs(model, (1, 8, 8)) / count_macs(pruned, (1, 8, 8))


@pytest.mark.parametrize("round_to", [1, 8])
def test_the_shares_step_evenly_in_mac_reduction_and_are_the_smallest_that_reach_it(round_to: int) -> None:
    torch.manual_seed(0)
    model = create_model(ModelSpec("resnet20", in_channels=1, num_classes=10, image_size=(8, 8))).eval()
    config = FilterPruneConfig(ranking="global", criterion="group", round_to=round_to)
    pairs = ladder_shares(model, config, torch.zeros(1, 1, 8, 8), (0.0, 0.6), 5)
    shares, reductions = [s for s, _ in pairs], [r for _, r in pairs]
    top = reduction(model, config, 0.6)
    assert shares == sorted(shares) and reductions == sorted(set(reductions)) and reductions[-1] == top
    for share, r in pairs:  # what each share measures, and a step below it reaches less
        assert reduction(model, config, share) == r
        assert reduction(model, config, share - 0.6 / 256) < r
    if round_to == 1:  # fine widths: every step of the ladder is one trial, at or just past it
        targets = [math.exp(math.log(top) * k / 5) for k in range(1, 6)]
        assert len(pairs) == 5 and all(t * (1 - 1e-9) <= r < t * 1.15 for t, r in zip(targets, reductions)), (
            pairs
        )


def test_ranked_start_needs_a_ranked_space() -> None:
    with pytest.raises(SpecError, match="ranked_start"):
        SpaceSection(structured="per_layer", ranked_start=4)
    with pytest.raises(SpecError, match="ranked_start"):
        SpaceSection(structured="ranked", ranked_start=65)


def test_a_ranked_search_runs_its_ladder_first_and_once(tmp_path: Path) -> None:
    spec_path = tmp_path / "ladder.toml"
    spec_path.write_text("""
[study]
trials = 4
objectives = ["accuracy", "macs"]
latency_repeats = 2
[model]
name = "resnet20"
[data]
name = "digits"
[train]
epochs = 1
[space]
structured = "ranked"
ranked_start = 3
ratio = [0.0, 0.6]
reconstruct = 0
magnitude = "off"
quantize = false
finetune_epochs = [1]
max_batches = 2
""")
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    spec, spec_dir = search_spec(spec_path, storage=url, name="ladder")
    search(spec, parse_storage(url), spec_dir=spec_dir, progress=False)
    study = optuna.load_study(study_name="ladder", storage=url)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    ladder = [t for t in trials if t.user_attrs.get("source") == Source.LADDER]
    assert [t.number for t in ladder] == list(range(len(ladder))) and 2 <= len(ladder) <= 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # each ladder trial measured the reduction its share was chosen for
    base = study.user_attrs["base"]["macs"]
    for t in ladder:
        assert t.user_attrs["ladder_macs_ratio"] == pytest.approx(base / t.user_attrs["macs"], rel=1e-6)
    # resumed, the study does not queue them again
    search(spec.with_study(trials=5), parse_storage(url), spec_dir=spec_dir, progress=False)
    trials = optuna.load_study(study_name="ladder", storage=url).get_trials()
    assert len(trials) == 5 and sum(t.user_attrs.get("source") == Source.LADDER for t in trials) == len(
        ladder
    )
