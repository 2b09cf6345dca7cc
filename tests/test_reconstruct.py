"""Least-squares reconstruction after filter pruning: the channels noted as kept are the ones
kept, and the refitted network gives the unpruned one's outputs far more closely."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autoprune.compress import FilterPruneConfig, RecipeError, output_layer, prune_filters_
from autoprune.compress.reconstruct import ridge_fit, step_noting_kept
from autoprune.compress.structured import FilterNormImportance
from autoprune.models import ModelSpec, create_model
from tests.zoo import ZOO

warnings.filterwarnings("ignore", module="torch_pruning")
BLOCKS = str(Path(__file__).with_name("blocks.py")) + ":block_net"
ZOO_FILE = str(Path(__file__).with_name("zoo.py"))
SHAPE = (3, 16, 16)


def _base(name: str) -> nn.Module:
    """A built network with batch-norm statistics of its own (not the identity of a fresh one)."""
    torch.manual_seed(0)
    model = create_model(ModelSpec(name, 7, SHAPE[0], SHAPE[1:])).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, *SHAPE))
    return model.eval()


def test_ridge_fit_recovers_an_exact_linear_map_and_leans_on_the_prior_when_damped() -> None:
    torch.manual_seed(0)
    a = torch.randn(200, 10, dtype=torch.float64)
    w = torch.randn(10, 3, dtype=torch.float64)
    prior = torch.randn(10, 3, dtype=torch.float64)
    y = a @ w
    assert torch.allclose(ridge_fit(a.T @ a, a.T @ y, prior, 1e-12), w, atol=1e-8)
    assert torch.allclose(ridge_fit(a.T @ a, a.T @ y, prior, 1e9), prior, atol=1e-6)


@pytest.mark.parametrize(
    "name", ["lenet5", "vgg", "resnet20", "mobilenetv2", BLOCKS, *(f"{ZOO_FILE}:{z}" for z in ZOO)]
)
def test_the_channels_noted_as_kept_are_those_left_in_every_layer(name: str) -> None:
    original = _base(name)
    model = copy.deepcopy(original)
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros(1, *SHAPE),
        importance=FilterNormImportance(),
        pruning_ratio=0.4,
        ignored_layers=[model.get_submodule(output_layer(model))],
        root_module_types=[nn.Conv2d],
    )
    kept = step_noting_kept(pruner, model)
    before = dict(original.named_modules())
    checked = 0
    for layer_name, k in kept.items():
        layer = model.get_submodule(layer_name)
        if getattr(layer, "groups", 1) > 1:
            continue  # its weight holds a group's inputs, not all of them
        weight = before[layer_name].weight[list(k.outputs)][:, list(k.inputs)]
        assert torch.equal(layer.weight, weight), layer_name
        checked += 1
    if "shuffle" not in name:  # a shuffle's graph is only cut by prune_filters_, not here
        assert checked and any(len(k.outputs) < _width(before[n]) for n, k in kept.items())


def _width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg", BLOCKS])
@pytest.mark.parametrize("ranking", ["layer", "global"])
def test_reconstruction_brings_the_pruned_network_close_to_the_unpruned_one(name: str, ranking: str) -> None:
    base = _base(name)
    calibration, probe = torch.randn(128, *SHAPE), torch.randn(64, *SHAPE)  # held-out probe
    with torch.no_grad():
        reference = base(probe)
    config = FilterPruneConfig(default=0.5, ranking=ranking)
    plain, refitted = copy.deepcopy(base), copy.deepcopy(base)
    prune_filters_(plain, config, torch.zeros(1, *SHAPE))
    prune_filters_(refitted, config, torch.zeros(1, *SHAPE), calibration=calibration)

    def error(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(probe) - reference).pow(2).mean() / reference.pow(2).mean())

    assert error(refitted) < 0.2 * error(plain)
    shapes = {n: p.shape for n, p in plain.named_parameters()}
    assert {n: p.shape for n, p in refitted.named_parameters()} == shapes  # the same architecture
    first = next(n for n, m in plain.named_modules() if isinstance(m, nn.Conv2d))
    assert torch.equal(
        plain.get_submodule(first).weight, refitted.get_submodule(first).weight
    )  # no input lost


def test_nothing_pruned_nothing_refitted() -> None:
    base = _base("resnet20")
    model = copy.deepcopy(base)
    prune_filters_(
        model, FilterPruneConfig(default=0.0), torch.zeros(1, *SHAPE), calibration=torch.randn(8, *SHAPE)
    )
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))


def test_reconstruct_takes_a_count_of_images() -> None:
    assert FilterPruneConfig(reconstruct=256).reconstruct == 256
    with pytest.raises(RecipeError, match="reconstruct=-1 should be in 0..10000"):
        FilterPruneConfig(reconstruct=-1)


def test_a_compress_refits_before_fine_tuning_on_its_training_images(tmp_path: Path) -> None:
    from autoprune.compress import CompressConfig
    from autoprune.data import load_dataset
    from autoprune.measure import measure_model
    from autoprune.pipeline import compress
    from autoprune.train import TrainConfig, accuracy, train_base

    splits = load_dataset("digits")
    spec = ModelSpec("resnet20", 10, 1, (8, 8))
    base = train_base(spec, splits, TrainConfig(epochs=3), progress=False).model
    metrics = measure_model(base, splits, latency=False)
    found = {}
    for images in (0, 128):
        config = CompressConfig.from_dict(
            {
                "structured": {"ranking": "global", "default": 0.5, "reconstruct": images},
                "finetune": {"epochs": 0},  # what pruning (and the refit) left, untrained
                "quantize": {"enabled": False},
            }
        )
        out = tmp_path / f"{images}.apk"
        result = compress(
            base, spec, splits, config, out, base_metrics=metrics, progress=False, latency=False
        )
        found[images] = accuracy(result.model, splits.val)
    assert found[128] > found[0] + 30, found  # the refit network works before any fine-tuning


def test_the_original_inputs_kept_from_one_pass_give_the_same_refit(monkeypatch: pytest.MonkeyPatch) -> None:
    from autoprune.compress import reconstruct

    base, images = _base("resnet20"), torch.randn(100, *SHAPE)  # two chunks, the second short
    config = FilterPruneConfig(default=0.5)
    kept, again = copy.deepcopy(base), copy.deepcopy(base)
    prune_filters_(kept, config, torch.zeros(1, *SHAPE), calibration=images)
    monkeypatch.setattr(reconstruct, "CACHE_BYTES", 0)  # too little to keep: each computed again
    prune_filters_(again, config, torch.zeros(1, *SHAPE), calibration=images)
    for (name, a), b in zip(kept.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Conv2d(3, 4, (3, 5), padding=(1, 2), dilation=(2, 1)),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    ],
)
def test_receptive_fields_are_the_unfolded_columns_at_the_places_drawn(conv: nn.Conv2d) -> None:
    from autoprune.compress.reconstruct import _rows

    x = torch.randn(2, 3, 9, 11)
    every = 10**6  # more than there are: every place, in a random order
    rows, _ = _rows(conv, x, x, every, torch.Generator().manual_seed(0))
    padded = x
    if conv.padding_mode != "zeros":
        ph, pw = conv.padding
        padded = nn.functional.pad(x, (pw, pw, ph, ph), mode=conv.padding_mode)
    pad = (0, 0) if conv.padding_mode != "zeros" else conv.padding
    columns = nn.functional.unfold(padded, conv.kernel_size, conv.dilation, pad, conv.stride)  # (N, d, L)
    expected = columns.transpose(1, 2).flatten(0, 1)  # every place of every image, in order
    assert rows.shape == expected.shape
    # the same rows: each drawn row is one of the unfolded columns, and each column is drawn
    distance = torch.cdist(rows, expected, compute_mode="donot_use_mm_for_euclid_dist")
    assert distance.min(1).values.max() < 1e-5 and distance.min(0).values.max() < 1e-5
    # and the layer's outputs are those rows times its weights (what the fit relies on)
    out = conv(x).permute(0, 2, 3, 1).flatten(0, 2)  # (N * L, out), in unfold's order
    assert torch.allclose(expected @ conv.weight.flatten(1).T + conv.bias, out, atol=1e-5)
