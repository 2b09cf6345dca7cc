"""Compression stages as units: the registry, the pipeline's loop, the search space the stages
declare, and the optional low-rank stage (autoprune/compress/lowrank.py) that proves a new
stage needs only its own module."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.compress import (
    STAGES,
    CompressConfig,
    FilterPruneConfig,
    PackError,
    load_packed,
    ordered_stages,
    save_packed,
    weight_layers,
)
from autoprune.compress.lowrank import Factorised, LowRankConfig, factorise_
from autoprune.compress.size import SizeModel
from autoprune.data import load_dataset
from autoprune.limits import RECONSTRUCT_IMAGES
from autoprune.measure import measure_model
from autoprune.models import ModelSpec, create_model
from autoprune.pipeline import compress, pruned_shapes
from autoprune.search.space import (
    SpaceLayers,
    baseline_config,
    config_from_params,
    distributions,
    recipe_params,
)
from autoprune.search.spec import SpaceSection, SpecError, spec_from_dict
from autoprune.train import TrainConfig, train_base
from tests.test_size import TOLERANCE
from tests.workspace import rewrite_header

SPEC = ModelSpec("lenet5", 10, 1, (8, 8))  # fc1: 200 -> 500, fc2 (the classifier): 500 -> 10


@pytest.fixture(scope="module")
def digits_base():
    splits = load_dataset("digits")
    base = train_base(SPEC, splits, TrainConfig(epochs=3), progress=False)
    return splits, base.model, measure_model(base.model, splits, latency_repeats=3, latency=False)


def test_the_stages_run_in_their_declared_order_and_the_built_ins_are_in_every_config() -> None:
    names = [stage.name for stage in ordered_stages()]
    assert names == ["structured", "lowrank", "unstructured", "finetune", "fold", "quantize", "pack"]
    assert set(names) == set(STAGES)
    config = CompressConfig()
    assert [stage.name for stage, _ in config.items()] == [
        "structured",
        "unstructured",
        "finetune",
        "quantize",
        "pack",
    ]
    with_lowrank = config.replace(LowRankConfig(rank=0.3))
    assert [stage.name for stage, _ in with_lowrank.items()][1] == "lowrank"
    assert CompressConfig.from_dict(with_lowrank.to_dict()) == with_lowrank
    assert "lowrank" not in config.to_dict()  # an optional stage not asked for leaves no table


def test_a_stage_twice_is_refused() -> None:
    with pytest.raises(Exception, match="runs each stage once"):
        CompressConfig.of(LowRankConfig(), LowRankConfig(rank=0.5))


@torch.no_grad()
def test_factorising_a_layer_of_that_rank_keeps_its_outputs_and_saves_exactly_the_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(60, 40), nn.ReLU(), nn.Linear(40, 10))
    low = torch.randn(40, 8) @ torch.randn(8, 60)  # a weight of rank 8
    model[0].weight.copy_(low)
    x = torch.randn(5, 60)
    before, params = model(x), sum(p.numel() for p in model.parameters())
    ranks = factorise_(model, LowRankConfig(rank=8 / 40))
    assert ranks == {"0": 8} and isinstance(model[0], Factorised)
    assert torch.allclose(model(x), before, atol=1e-4)
    assert params - sum(p.numel() for p in model.parameters()) == 60 * 40 - 8 * (60 + 40)
    assert isinstance(model[2], nn.Linear)  # the classifier stays whole


def test_a_rank_that_saves_nothing_leaves_the_layer_whole() -> None:
    model = nn.Sequential(nn.Linear(60, 40), nn.ReLU(), nn.Linear(40, 10))
    assert factorise_(model, LowRankConfig(rank=1.0)) == {}  # 40 * 100 > 60 * 40
    assert isinstance(model[0], nn.Linear)


def test_a_recipe_with_the_stage_packs_a_file_that_decodes_to_the_same_network(
    digits_base, tmp_path: Path
) -> None:
    splits, base, base_metrics = digits_base
    config = CompressConfig.from_dict(
        {
            "structured": {"default": 0.25},
            "lowrank": {"rank": 0.2},
            "unstructured": {"mode": "sparsity", "default": 0.5},
            "finetune": {"epochs": 1, "max_batches": 4},
            "quantize": {"conv_bits": 6, "fc_bits": 5, "epochs": 1},
        }
    )
    out = tmp_path / "lowrank.apk"
    result = compress(
        base, SPEC, splits, config, out, base_metrics=base_metrics, progress=False, latency=False
    )
    decoded, header = load_packed(out)
    # a continuation's network is rebuilt with the factorisation too
    shapes = pruned_shapes(base, config, splits.input_shape)
    assert "fc1.weight" not in shapes
    rank, n_in = shapes["fc1.0.weight"]  # fc1's inputs after filter pruning of conv2
    assert n_in < 200 and rank == math.ceil(0.2 * n_in)
    assert header["stages"] == {"lowrank": {"fc1": rank}}
    assert isinstance(decoded.get_submodule("fc1"), Factorised)
    x = splits.test.x[:32]
    assert torch.equal(decoded(x), result.model(x))
    layers = weight_layers(decoded)
    assert {"fc1.0", "fc1.1"} <= set(layers) and "fc1" not in layers
    # magnitude pruning and weight sharing reached the factors, which took fc1's settings
    assert all(len(torch.unique(layers[n].weight)) <= 1 << 5 for n in ("fc1.0", "fc1.1"))
    assert float((layers["fc1.0"].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert result.metrics["packed_bytes"] == out.stat().st_size
    # the size model replays the stage: its estimate holds against the trained file
    estimate = SizeModel(base, SPEC).estimate(config)
    assert abs(estimate / out.stat().st_size - 1) <= TOLERANCE, (estimate, out.stat().st_size)


@pytest.mark.parametrize("structured", ["ranked", "per_layer", "global"])
def test_the_space_refits_every_trial_after_pruning_unless_told_not_to(structured: str) -> None:
    layers = SpaceLayers.of(create_model(SPEC))
    params = {"ranked_ratio": 0.4, "ratio": 0.4, **{f"ratio_{n}": 0.4 for n in layers.conv}}
    for images in (RECONSTRUCT_IMAGES, 0, 64):
        space = SpaceSection(structured=structured, reconstruct=images)
        assert config_from_params(params, space, layers).structured.reconstruct == images
    for bad in (-1, 10_001):
        with pytest.raises(SpecError, match=f"space.reconstruct={bad} should be in 0..10000"):
            SpaceSection(reconstruct=bad)


@pytest.mark.parametrize(
    "stages, message",
    [
        ({"lowrank": {"fc1": 10**9}}, "rank 1000000000 of fc1 should be an integer in 1..200"),
        ({"lowrank": {"conv1": 3}}, "not a linear layer"),
        ({"lowrank": {"nowhere": 3}}, "cannot rebuild"),
        ({"lowrank": [1, 2]}, "table of layer ranks"),
        ({"plugin": {}}, "stage 'plugin' this autoprune does not have"),
    ],
)
def test_a_file_whose_stage_record_lies_is_one_pack_error(stages, message: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(SPEC)
    factorise_(model, LowRankConfig(rank=0.1))
    path = tmp_path / "m.apk"
    save_packed(model, SPEC, path)
    assert load_packed(path)[1]["stages"] == {"lowrank": {"fc1": 20}}
    rewrite_header(path, path, lambda h: h.update(stages=stages))
    with pytest.raises(PackError, match=message) as e:
        load_packed(path)
    assert "\n" not in str(e.value)


def test_the_space_asks_the_stages_and_lists_training_budgets_last() -> None:
    model = create_model(SPEC)
    layers = SpaceLayers.of(model)
    space = SpaceSection()
    names = list(distributions(space, layers))
    assert names == [
        "ratio_conv1",
        "ratio_conv2",
        "quality_conv1",
        "quality_conv2",
        "quality_fc1",
        "quality_fc2",
        "conv_bits",
        "fc_bits",
        "init",
        "finetune_epochs",
        "lr",
    ]  # quant_epochs = [1] is fixed, not sampled; no optional stage is searched unless asked
    searched = SpaceSection(stages={"lowrank": {"rank": [0.1, 0.6]}})
    dists = distributions(searched, layers)
    assert list(dists)[2] == "lowrank_rank" and dists["lowrank_rank"].low == 0.1
    params = {name: d.high if hasattr(d, "high") else d.choices[0] for name, d in dists.items()}
    config = config_from_params(params, searched, layers)
    assert config.get("lowrank") == LowRankConfig(rank=0.6)
    assert config_from_params(params, space, layers).get("lowrank") is None
    assert recipe_params(config, dists, model)["lowrank_rank"] == 0.6
    fixed = SpaceSection(stages={"lowrank": {"rank": [0.3]}})
    assert "lowrank_rank" not in distributions(fixed, layers)
    assert config_from_params({}, fixed, layers, seed=0).get("lowrank") == LowRankConfig(rank=0.3)


def test_the_spaces_distillation_weight_reaches_every_trials_fine_tuning() -> None:
    layers = SpaceLayers.of(create_model(SPEC))
    space = SpaceSection(distill=0.5)
    assert "distill" not in distributions(space, layers)  # a setting, not a searched parameter
    params = {
        name: d.low if hasattr(d, "low") else d.choices[0] for name, d in distributions(space, layers).items()
    }
    assert config_from_params(params, space, layers).finetune.distill == 0.5
    assert config_from_params(params, SpaceSection(), layers).finetune.distill == 0.0
    with pytest.raises(SpecError, match="space.distill"):
        SpaceSection(distill=2.0)
    with pytest.raises(SpecError, match="train.distill: the base learns from its labels"):
        spec_from_dict({"train": {"distill": 0.5}})


def test_a_baseline_is_fine_tuned_as_the_trials_are() -> None:
    recipe = CompressConfig.from_dict({"finetune": {"epochs": 2}})
    space = SpaceSection(distill=0.5, max_batches=3)
    capped, final = baseline_config(recipe, space), baseline_config(recipe, space, final=True)
    assert (capped.finetune.distill, capped.finetune.max_batches) == (0.5, 3)
    assert (final.finetune.distill, final.finetune.max_batches, final.finetune.epochs) == (0.5, None, 2)
    own = CompressConfig.from_dict({"finetune": {"distill": 0.2}})
    assert baseline_config(own, space).finetune.distill == 0.2  # a recipe's own setting wins
    assert baseline_config(recipe, SpaceSection()) is recipe


def test_a_ranked_space_searches_one_share_of_all_filters() -> None:
    model = create_model(SPEC)
    layers = SpaceLayers.of(model)
    space = SpaceSection(structured="ranked", magnitude="off", quantize=False, round_to=8)
    dists = distributions(space, layers)
    assert [n for n in dists if n not in ("finetune_epochs", "lr")] == ["ranked_ratio"]
    config = config_from_params({"ranked_ratio": 0.4}, space, layers)
    assert config.structured == FilterPruneConfig(
        ranking="global", default=0.4, round_to=8, reconstruct=RECONSTRUCT_IMAGES
    )
    expected = {"ranked_ratio": 0.4, "finetune_epochs": 1, "lr": 1e-4}
    assert recipe_params(config, dists, model) == expected
    per_layer = config.replace(FilterPruneConfig(layers={"conv1": 0.5}))
    assert "ranked_ratio" not in recipe_params(per_layer, dists, model)  # not expressible here
    with pytest.raises(SpecError, match="'ranked'"):
        SpaceSection(structured="ranks")
    group = dataclasses.replace(space, criterion="group")
    assert config_from_params({"ranked_ratio": 0.4}, group, layers).structured.criterion == "group"
    per_layer_group = dataclasses.replace(group, structured="per_layer")
    assert config_from_params({}, per_layer_group, layers).structured.criterion == "group"
    with pytest.raises(SpecError, match="space.criterion='l3' should be one of l1, l2, group"):
        SpaceSection(criterion="l3")


@pytest.mark.parametrize(
    "stages, message",
    [
        ({"plugin": {}}, "space.stages.plugin: no such stage; stages: finetune, fold, lowrank"),
        ({"lowrank": {"rank": [0.5, 0.2]}}, "space.stages.lowrank: rank=\\[0.5, 0.2\\] is an empty range"),
        ({"lowrank": {"ranks": [0.5]}}, "unknown key space.stages.lowrank.ranks"),
        ({"quantize": {}}, "stage 'quantize' is always run"),
    ],
)
def test_a_bad_stage_table_in_a_spec_is_one_line(stages, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_from_dict({"space": {"stages": stages}})


def test_a_searched_stage_round_trips_through_the_stored_spec() -> None:
    spec = spec_from_dict({"space": {"stages": {"lowrank": {"rank": [0.2, 0.9]}}}})
    assert spec_from_dict(copy.deepcopy(spec.to_dict())) == spec
    assert spec.space.stage("lowrank").rank == [0.2, 0.9]


def test_a_space_without_weight_sharing_samples_no_bits_and_keeps_float_weights() -> None:
    layers = SpaceLayers.of(create_model(SPEC))
    space = SpaceSection(quantize=False, magnitude="off", init=["linear", "forgy"], quant_epochs=[0, 2])
    dists = distributions(space, layers)
    assert list(dists) == ["ratio_conv1", "ratio_conv2", "finetune_epochs", "lr"]
    config = config_from_params({}, space, layers)
    assert not config.quantize.enabled and config.unstructured.layers == {}
