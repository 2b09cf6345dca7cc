"""The size estimate against real packed files: every built-in model, random settings of every
stage, and the recipes' own modes (sparsity targets, float32 values, no Huffman coding)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.compress import (
    CompressConfig,
    FilterPruneConfig,
    MagnitudeConfig,
    PackConfig,
    ShareConfig,
    prune_filters_,
    prune_magnitude_,
    save_packed,
    share_weights_,
    weight_layers,
)
from autoprune.compress.size import SizeModel
from autoprune.models import ModelSpec, create_model, list_models
from autoprune.ops.huffman import HuffmanCode, stream_bits
from autoprune.ops.sparse import encode_relative, expected_gap_counts
from autoprune.search.space import SpaceLayers

TOLERANCE = 0.03  # the estimate is within 3% of the real file (measured: within 2.2%, mostly < 1%)
SHAPES = {"lenet5": (1, 28, 28), "lenet300": (1, 28, 28)}


def trial_meta(model: torch.nn.Module) -> dict:
    """What a search trial's file records besides the network: study, dataset, base, settings."""
    layers = weight_layers(model)
    settings = {f"quality_{n}": 0.987654321 for n in layers} | {
        f"ratio_{n}": 0.123456789 for n in layers if "conv" in n
    }
    return {
        "study": "a-study-name",
        "trial": 7,
        "recipe": "TPESampler trial 7",
        "settings": settings,
        "dataset": {"name": "digits", "data_dir": None, "val_fraction": 0.3, "seed": 0},
        "base": {"accuracy": 96.98765, "dense_bytes": 123456, "macs": 654321, "latency_ms": 0.0212345},
    }


def real_size(base: torch.nn.Module, spec: ModelSpec, config: CompressConfig, path: Path) -> int:
    """What the pipeline writes for ``config`` in a search trial (before fine-tuning, which
    moves no mask)."""
    model = copy.deepcopy(base)
    prune_filters_(model, config.structured, torch.zeros(1, spec.in_channels, *spec.image_size))
    prune_magnitude_(model, config.unstructured)
    bits = {}
    if config.quantize.enabled:
        share_weights_(model, config.quantize)
        bits = {n: config.quantize.bits_for(n, m) for n, m in weight_layers(model).items()}
    return save_packed(model, spec, path, bits=bits, config=config.pack, meta=trial_meta(base)).packed_bytes


def random_config(layers: SpaceLayers, rng: np.random.Generator) -> CompressConfig:
    return CompressConfig.of(
        FilterPruneConfig(layers={layer: float(rng.uniform(0, 0.7)) for layer in layers.conv}),
        MagnitudeConfig(layers={layer: float(rng.uniform(0, 2.5)) for layer in layers.weights}),
        ShareConfig(
            conv_bits=int(rng.integers(4, 9)),
            fc_bits=int(rng.integers(2, 7)),
            init=str(rng.choice(["linear", "density", "forgy"])),
        ),
        name="random",
    )


@pytest.mark.parametrize("name", list_models())
def test_the_estimate_is_within_tolerance_of_real_files_on_every_built_in_model(
    name: str, tmp_path: Path
) -> None:
    c, h, w = SHAPES.get(name, (3, 32, 32))
    spec = ModelSpec(name, 10, c, (h, w))
    torch.manual_seed(0)
    base = create_model(spec).eval()
    sizes = SizeModel(base, spec)
    layers = SpaceLayers.of(base)
    rng = np.random.default_rng(len(name))
    for i in range(4):
        config = random_config(layers, rng)
        real = real_size(base, spec, config, tmp_path / f"{i}.apk")
        estimate = sizes.estimate(config)
        assert abs(estimate / real - 1) <= TOLERANCE, (i, estimate, real, config)
    # the per-layer counts are exact: structured and magnitude pruning replayed, not guessed
    model = copy.deepcopy(base)
    prune_filters_(model, config.structured, torch.zeros(1, c, h, w))
    prune_magnitude_(model, config.unstructured)
    real_layers = {
        n: (m.weight.numel(), int(torch.count_nonzero(m.weight))) for n, m in weight_layers(model).items()
    }
    assert {x.layer: (x.weights, x.nonzero) for x in sizes.layers(config)} == real_layers


@pytest.mark.parametrize(
    "config",
    [
        CompressConfig.of(
            MagnitudeConfig(mode="sparsity", layers={"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81}),
            ShareConfig(conv_bits=8, fc_bits=5),
            name="sparsity",
        ),
        CompressConfig.of(FilterPruneConfig(default=0.5), ShareConfig(enabled=False), name="uniform-l1"),
        CompressConfig.of(
            FilterPruneConfig(default=0.3),
            MagnitudeConfig(default=1.0),
            PackConfig(conv_index_bits=4, fc_index_bits=3, huffman=False),
            name="no-huffman",
        ),
        CompressConfig.of(
            FilterPruneConfig(mode="threshold", default=0.9), MagnitudeConfig(default=0.5), name="threshold"
        ),
        CompressConfig.of(
            FilterPruneConfig(ranking="global", default=0.4),
            MagnitudeConfig(default=1.0),
            name="ranked",
        ),
    ],
    ids=lambda c: c.name,
)
def test_the_recipes_modes_are_estimated_too(config: CompressConfig, tmp_path: Path) -> None:
    spec = ModelSpec("lenet5", 10, 1, (28, 28))
    torch.manual_seed(1)
    base = create_model(spec).eval()
    real = real_size(base, spec, config, tmp_path / "r.apk")
    assert abs(SizeModel(base, spec).estimate(config) / real - 1) <= TOLERANCE


def test_expected_gap_symbols_match_random_positions() -> None:
    rng = np.random.default_rng(0)
    numel = 200_000
    for density, bits in [(0.3, 8), (0.05, 5), (0.01, 5), (0.002, 8)]:
        positions = np.flatnonzero(rng.random(numel) < density)
        symbols = encode_relative(positions, bits)
        expected = expected_gap_counts(numel, positions.size, bits)
        assert expected.sum() == pytest.approx(symbols.size, rel=0.02)
        real = np.bincount(symbols, minlength=1 << bits)
        code = HuffmanCode.fit(symbols, 1 << bits)
        huffman = min(code.encoded_bits(symbols) + 8 * (symbols.max() + 1), bits * symbols.size)
        expected[expected < 0.5] = 0
        assert stream_bits(expected, bits) == pytest.approx(huffman, rel=0.05), (
            density,
            bits,
        )  # 3.4% at 0.002
        assert stream_bits(real, bits) == pytest.approx(huffman, rel=0.001)


def test_a_stream_that_huffman_does_not_shrink_stays_fixed_width() -> None:
    uniform = np.full(16, 100.0)
    assert stream_bits(uniform, 4) == 4 * 1600
    assert stream_bits(np.array([1000.0, 1, 1, 1]), 2) < 2 * 1003
    assert stream_bits(np.array([1000.0, 1, 1, 1]), 2, huffman=False) == 2 * 1003
    assert stream_bits(np.zeros(4), 2) == 0
