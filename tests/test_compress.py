"""The Deep Compression engine: invariants of every stage and of the packed file."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from autoprune.compress import (
    CompressConfig,
    FilterPruneConfig,
    MagnitudeConfig,
    PackError,
    RecipeError,
    ShareConfig,
    fit_recipe,
    load_packed,
    load_recipe,
    prune_filters_,
    prune_magnitude_,
    read_header,
    save_packed,
    share_weights_,
    weight_layers,
)
from autoprune.compress._layers import conv_layers, output_layer
from autoprune.compress.export import export_onnx, export_torchscript
from autoprune.compress.quantize import attach_codebooks_, detach_codebooks_
from autoprune.compress.structured import filter_norms
from autoprune.compress.unstructured import mask_holder
from autoprune.data import load_dataset
from autoprune.errors import DivergedError
from autoprune.measure import count_params, measure_model
from autoprune.models import ModelSpec, create_model
from autoprune.pipeline import compress
from autoprune.runtime import ort_session, run_session
from autoprune.train import TrainConfig, fit, train_base
from tests.conftest import REPO
from tests.zoo import ZOO

warnings.filterwarnings("ignore", module="torch_pruning")
BLOCKS = str(Path(__file__).with_name("blocks.py")) + ":block_net"
ALL_MODELS = ["lenet300", "lenet5", "vgg", "resnet20", "mobilenetv2", BLOCKS]
RECIPES = Path(__file__).resolve().parent.parent / "studies" / "recipes"


def expected_params(model: nn.Module) -> int:
    """Parameters implied by each layer's channel counts alone."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += m.out_channels * (m.in_channels // m.groups) * kh * kw + (
                m.out_channels if m.bias is not None else 0
            )
        elif isinstance(m, nn.Linear):
            total += m.out_features * m.in_features + (m.out_features if m.bias is not None else 0)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * m.num_features
    return total


@pytest.mark.parametrize("criterion", ["l1", "group"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_structured_pruning_keeps_output_shape_and_channel_arithmetic(name: str, criterion: str) -> None:
    spec = ModelSpec(name, 7, 3, (16, 16))
    model = create_model(spec).eval()
    x = torch.randn(2, 3, 16, 16)
    before = count_params(model)
    config = FilterPruneConfig(default=0.4, criterion=criterion)
    records = prune_filters_(model, config, torch.zeros(1, 3, 16, 16))
    assert model(x).shape == (2, 7)
    assert count_params(model) == expected_params(model)  # no stray tensor of the old shape
    if any(r.removed for r in records):
        assert count_params(model) < before
    for r in records:
        assert r.norms == sorted(r.norms, reverse=True) and max(r.normalised) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["vgg", "resnet20", "mobilenetv2", BLOCKS])
def test_global_ranking_removes_the_lowest_ranked_filters_of_the_whole_network(name: str) -> None:
    spec = ModelSpec(name, 7, 3, (16, 16))
    torch.manual_seed(0)
    model = create_model(spec).eval()
    records = prune_filters_(
        model, FilterPruneConfig(ranking="global", default=0.4), torch.zeros(1, 3, 16, 16)
    )
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert count_params(model) == expected_params(model)
    assert not any(r.why for r in records)  # each conv lost the share the ranking gave it
    assert all(r.removed <= 0.9 * (r.kept + r.removed) for r in records)  # no group emptied
    if name == "vgg":  # a chain, nothing coupled: 40% of its filters, lowest norm / layer mean first
        prunable = [r for r in records if r.kept + r.removed > 7]  # all but the classifier's
        assert sum(r.removed for r in prunable) == int(0.4 * sum(r.kept + r.removed for r in prunable))
        scores = [(torch.tensor(r.norms) / torch.tensor(r.norms).mean(), r.kept) for r in prunable]
        assert max(s[k:].max() for s, k in scores if k < len(s)) <= min(s[:k].min() for s, k in scores)
        assert len({r.removed for r in prunable}) > 1  # not the same share everywhere: ranked


@pytest.mark.parametrize("name", ["vgg", "resnet20", "mobilenetv2"])
def test_the_group_criterion_ranks_as_torch_prunings_global_pruning(name: str) -> None:
    """Same order of channels as Torch-Pruning's MetaPruner(global_pruning=True) with group L1:
    per conv, one keeps at least what the other keeps everywhere (only the count cut differs, by
    how each rounds the share of all channels)."""
    torch.manual_seed(0)
    model = create_model(ModelSpec(name, 7, 3, (16, 16))).eval()
    example = torch.zeros(1, 3, 16, 16)
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    prune_filters_(ours, FilterPruneConfig(ranking="global", default=0.4, criterion="group"), example)
    tp.pruner.MetaPruner(
        theirs,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.4,
        global_pruning=True,
        ignored_layers=[theirs.get_submodule(output_layer(theirs))],
    ).step()
    kept = [
        (a.out_channels, b.out_channels)
        for a, b in zip(conv_layers(ours).values(), conv_layers(theirs).values())
    ]
    assert all(a >= b for a, b in kept) or all(a <= b for a, b in kept)
    total = sum(c.out_channels for c in conv_layers(model).values())
    assert abs(sum(a - b for a, b in kept)) <= 0.01 * total
    assert sum(a for a, _ in kept) < 0.7 * total  # a real share went


def test_the_group_criterion_takes_a_ratio() -> None:
    with pytest.raises(RecipeError, match="criterion='group'.*mode='ratio'"):
        FilterPruneConfig(mode="threshold", default=0.3, criterion="group")
    with pytest.raises(RecipeError, match="'l1', 'l2' or 'group'"):
        FilterPruneConfig(criterion="l3")


def test_global_ranking_takes_one_ratio() -> None:
    with pytest.raises(RecipeError, match="one ratio"):
        FilterPruneConfig(ranking="global", default=0.3, layers={"conv1": 0.2})
    with pytest.raises(RecipeError, match="ranking"):
        FilterPruneConfig(ranking="network", default=0.3)


def test_lenet5_loses_exactly_the_removed_filters_and_their_inputs() -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (28, 28)))
    conv1 = model.conv1.weight.detach().clone()
    prune_filters_(model, FilterPruneConfig(default=0.5), torch.zeros(1, 1, 28, 28))
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.in_features) == (10, 25, 400)
    # removed: 10 conv1 filters (25 weights + bias each) and conv2's matching inputs (50 * 25 each),
    # 25 conv2 filters (10 * 25 + bias each) and fc1's 25 * 16 inputs per filter (500 outputs)
    removed = 10 * 26 + 10 * 50 * 25 + 25 * (10 * 25 + 1) + 25 * 16 * 500
    assert count_params(model) == 431_080 - removed
    # the survivors are the filters with the largest L1 norms, in their original order
    keep = torch.sort(torch.topk(filter_norms(conv1), 10).indices).values
    assert torch.equal(model.conv1.weight, conv1[keep])


def test_threshold_mode_and_round_to() -> None:
    model = create_model(ModelSpec("vgg", 10, 3, (16, 16)))
    norms = filter_norms(model.features[0].weight)
    expected = int((norms / norms.max() < 0.9).sum())
    records = prune_filters_(
        model, FilterPruneConfig(mode="threshold", default=0.9), torch.zeros(1, 3, 16, 16)
    )
    assert records[0].removed == expected
    model = create_model(ModelSpec("vgg", 10, 3, (16, 16)))
    prune_filters_(model, FilterPruneConfig(default=0.3, round_to=8), torch.zeros(1, 3, 16, 16))
    assert all(m.out_channels % 8 == 0 for m in weight_layers(model).values() if isinstance(m, nn.Conv2d))


def test_classifier_outputs_stay_whole_even_when_named() -> None:
    model = create_model(ModelSpec(BLOCKS, 5, 3, (8, 8)))
    prune_filters_(model, FilterPruneConfig(default=0.5, layers={"head": 0.5}), torch.zeros(1, 3, 8, 8))
    assert model.fc.out_features == 5


def test_magnitude_pruning_quality_and_sparsity() -> None:
    model = create_model(ModelSpec("lenet300", 10, 1, (8, 8)))
    w = model.fc1.weight.detach().clone()
    masks = prune_magnitude_(model, MagnitudeConfig(mode="quality", default=1.0))
    assert torch.equal(masks["fc1"], w.abs() >= w.std())
    model = create_model(ModelSpec("lenet300", 10, 1, (8, 8)))
    masks = prune_magnitude_(model, MagnitudeConfig(mode="sparsity", default=0.0, layers={"fc2": 0.9}))
    assert int((model.fc2.weight == 0).sum()) == round(0.9 * 300 * 100)
    assert bool(masks["fc1"].all())


def test_masks_hold_through_fine_tuning() -> None:
    splits = load_dataset("digits")
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    masks = prune_magnitude_(model, MagnitudeConfig(mode="sparsity", default=0.8))
    fit(
        model,
        splits,
        TrainConfig(epochs=1, max_batches=10, lr=1e-2),
        after_step=mask_holder(model, masks),
        progress=False,
    )
    for name, layer in weight_layers(model).items():
        assert torch.equal(layer.weight != 0, masks[name])  # pruned exactly zero, kept ones moved off zero


def test_trained_quantization_keeps_at_most_2_to_the_bits_values() -> None:
    splits = load_dataset("digits")
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    prune_magnitude_(model, MagnitudeConfig(mode="sparsity", default=0.5))
    zeros = {n: (layer.weight == 0).clone() for n, layer in weight_layers(model).items()}
    config = ShareConfig(conv_bits=3, fc_bits=2, layers={"fc2": 4})
    share_weights_(model, config)
    attach_codebooks_(model)
    before = {n: layer.weight.detach().clone() for n, layer in weight_layers(model).items()}
    fit(model, splits, TrainConfig(epochs=1, max_batches=10, lr=1e-3), progress=False)
    detach_codebooks_(model)
    for name, layer in weight_layers(model).items():
        values = torch.unique(layer.weight[layer.weight != 0])
        assert len(values) <= 2 ** config.bits_for(name, layer), name
        assert torch.equal(layer.weight == 0, zeros[name])
        # shared values moved together: equal weights before are equal after (fixed assignment)
        w0, w1 = before[name][~zeros[name]], layer.weight[~zeros[name]]
        for v in torch.unique(w0):
            assert len(torch.unique(w1[w0 == v])) == 1
    assert any(not torch.equal(before[n], layer.weight) for n, layer in weight_layers(model).items())


def compressed(
    name: str, shape: tuple[int, int, int] = (3, 16, 16)
) -> tuple[nn.Module, ModelSpec, dict[str, int]]:
    spec = ModelSpec(name, 10, shape[0], shape[1:])
    model = create_model(spec).eval()
    prune_filters_(model, FilterPruneConfig(default=0.3), torch.zeros(1, *shape))
    prune_magnitude_(model, MagnitudeConfig(mode="sparsity", default=0.7))
    config = ShareConfig(conv_bits=5, fc_bits=4)
    share_weights_(model, config)
    for m in model.modules():  # make batch-norm statistics non-trivial
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model, spec, {n: config.bits_for(n, layer) for n, layer in weight_layers(model).items()}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_packed_file_reloads_to_identical_outputs(name: str, tmp_path: Path) -> None:
    model, spec, bits = compressed(name)
    report = save_packed(model, spec, tmp_path / "m.apk", bits=bits)
    assert report.packed_bytes == (tmp_path / "m.apk").stat().st_size
    loaded, header = load_packed(tmp_path / "m.apk", model=name if ":" in name else None)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert header["model"]["name"] == name
    for r in report.layers:
        assert r.shared_values <= 2 ** bits[r.layer]


def test_float32_values_and_unpruned_layers_round_trip(tmp_path: Path) -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8))).eval()
    prune_magnitude_(model, MagnitudeConfig(mode="sparsity", layers={"fc1": 0.5}))
    save_packed(model, ModelSpec("lenet5", 10, 1, (8, 8)), tmp_path / "f.apk")
    loaded, _ = load_packed(tmp_path / "f.apk")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_bad_packed_files_are_clear_errors(tmp_path: Path) -> None:
    model, spec, bits = compressed("lenet5", (1, 8, 8))
    path = tmp_path / "m.apk"
    save_packed(model, spec, path, bits=bits)
    data = path.read_bytes()
    (tmp_path / "truncated.apk").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.apk").write_bytes(bytes(flipped))
    (tmp_path / "v9.apk").write_bytes(data[:6] + bytes([9]) + data[7:])
    (tmp_path / "other.apk").write_bytes(b"PK\x03\x04" + data[4:])
    cases = {
        "truncated.apk": "truncated or corrupt",
        "flipped.apk": "truncated or corrupt",
        "v9.apk": "format version 9",
        "other.apk": "not an autoprune packed file",
        "missing.apk": "does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(PackError, match=message):
            load_packed(tmp_path / name)


def test_header_holds_a_shape_spec_not_a_pickle(tmp_path: Path) -> None:
    model, spec, bits = compressed("resnet20")
    save_packed(model, spec, tmp_path / "r.apk", bits=bits)
    header, _ = read_header(tmp_path / "r.apk")
    assert ModelSpec.from_dict(header["model"]) == spec
    assert header["shapes"]["layers.0.conv1"]["out_channels"] == model.layers[0].conv1.out_channels
    assert b"torch.nn" not in (tmp_path / "r.apk").read_bytes()


def test_torchscript_export_matches(tmp_path: Path) -> None:
    model, spec, bits = compressed(BLOCKS)
    path = export_torchscript(model, (3, 16, 16), tmp_path / "m.ts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(name: str, tmp_path: Path) -> None:
    model, spec, bits = compressed(name)
    path = export_onnx(model, (3, 16, 16), tmp_path / "m.onnx")
    session = ort_session(path)
    for batch in (1, 5):  # the batch axis is free
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_session(session, x.numpy())
        assert got.shape == expected.shape
        assert abs(got - expected).max() <= 1e-4 * (1 + abs(expected).max())


@pytest.fixture(scope="module")
def digits_base():
    splits = load_dataset("digits")
    spec = ModelSpec("lenet5", 10, 1, (8, 8))
    base = train_base(spec, splits, TrainConfig(epochs=3), progress=False)
    return splits, spec, base.model, measure_model(base.model, splits, latency_repeats=5)


def test_pipeline_records_every_metric_and_reports_each_epoch(digits_base, tmp_path: Path) -> None:
    splits, spec, base, base_metrics = digits_base
    config = CompressConfig.from_dict(
        {
            "structured": {"default": 0.25},
            "unstructured": {"mode": "sparsity", "default": 0.6},
            "finetune": {"epochs": 2, "max_batches": 5},
            "quantize": {"conv_bits": 6, "fc_bits": 4, "epochs": 1},
        }
    )
    seen = []
    result = compress(
        base,
        spec,
        splits,
        config,
        tmp_path / "c.apk",
        base_metrics=base_metrics,
        callbacks=[lambda e, acc: seen.append(e)],
        progress=False,
        latency_repeats=5,
    )
    assert seen == [1, 2, 3]
    m = result.metrics
    for key in [
        "accuracy",
        "test_accuracy",
        "acc_drop",
        "params",
        "nonzero_params",
        "macs",
        "dense_bytes",
        "packed_bytes",
        "compression_ratio",
        "latency_ms",
        "latency_ms_batch",
        "speedup",
        "prune_s",
        "finetune_s",
        "quantize_s",
        "eval_s",
    ]:
        assert key in m, key
    assert m["packed_bytes"] == (tmp_path / "c.apk").stat().st_size
    assert m["compression_ratio"] == pytest.approx(base_metrics.dense_bytes / m["packed_bytes"])
    assert m["acc_drop"] == pytest.approx(base_metrics.accuracy - m["accuracy"])
    assert m["test_acc_drop"] == pytest.approx(base_metrics.test_accuracy - m["test_accuracy"])
    assert m["params"] < base_metrics.params and m["nonzero_params"] < m["params"]
    assert base is not result.model and count_params(base) == base_metrics.params  # the base is untouched


def test_gradual_pruning_ramps_to_exactly_the_final_sparsity(
    digits_base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits, spec, base, base_metrics = digits_base
    config = CompressConfig.from_dict(
        {
            "unstructured": {"mode": "sparsity", "default": 0.8, "steps": 3},
            "finetune": {"epochs": 3, "max_batches": 4},
            "quantize": {"enabled": False},
        }
    )
    sparsity = []

    def watch(epoch: int, acc: float) -> None:
        w = torch.cat([layer.weight.detach().flatten() for layer in weight_layers(model_ref[0]).values()])
        sparsity.append(float((w == 0).float().mean()))

    import autoprune.compress.finetune as finetune

    model_ref = []  # the model being fine-tuned, seen by the callback
    real_fit = finetune.fit_resumable
    monkeypatch.setattr(
        finetune,
        "fit_resumable",
        lambda model, *a, **kw: model_ref.append(model) or real_fit(model, *a, **kw),
    )
    result = compress(
        base,
        spec,
        splits,
        config,
        tmp_path / "g.apk",
        base_metrics=base_metrics,
        callbacks=[watch],
        progress=False,
        latency_repeats=3,
    )
    assert len(sparsity) == 3 and sparsity[0] < sparsity[1] < sparsity[2]  # one step per epoch, ramping up
    for name, layer in weight_layers(result.model).items():  # the recipe's sparsity, exactly, at the end
        assert int((layer.weight == 0).sum()) == round(0.8 * layer.weight.numel()), name
    assert CompressConfig.from_dict(config.to_dict()).unstructured.steps == 3


def test_distillation_learns_from_the_base_in_every_training_stage_and_leaves_it_untouched(
    digits_base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits, spec, base, base_metrics = digits_base
    before = {k: v.clone() for k, v in base.state_dict().items()}
    config = CompressConfig.from_dict(
        {
            "structured": {"default": 0.25},
            "finetune": {"epochs": 1, "max_batches": 3, "distill": 0.7, "temperature": 2.0},
            "quantize": {"conv_bits": 6, "fc_bits": 4, "epochs": 1},
        }
    )
    assert CompressConfig.from_dict(config.to_dict()).finetune.distill == 0.7
    import autoprune.compress.finetune as finetune
    import autoprune.compress.quantize as quantize

    seen = []  # (stage, teacher, config) of every training run
    real_resumable, real_fit = finetune.fit_resumable, quantize.fit
    monkeypatch.setattr(
        finetune,
        "fit_resumable",
        lambda m, s, c, **kw: seen.append(("finetune", kw["teacher"], c)) or real_resumable(m, s, c, **kw),
    )
    monkeypatch.setattr(
        quantize,
        "fit",
        lambda m, s, c, **kw: seen.append(("quantize", kw["teacher"], c)) or real_fit(m, s, c, **kw),
    )
    compress(
        base,
        spec,
        splits,
        config,
        tmp_path / "k.apk",
        base_metrics=base_metrics,
        progress=False,
        latency=False,
    )
    assert [stage for stage, _, _ in seen] == ["finetune", "quantize"]
    assert all(teacher is base and (c.distill, c.temperature) == (0.7, 2.0) for _, teacher, c in seen)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # the teacher is not trained


def test_pipeline_raises_on_a_diverging_fine_tune(digits_base, tmp_path: Path) -> None:
    splits, spec, base, base_metrics = digits_base
    config = CompressConfig.from_dict({"finetune": {"epochs": 2, "lr": 1e5, "optimizer": "sgd"}})
    with pytest.raises(DivergedError):
        compress(base, spec, splits, config, tmp_path / "d.apk", base_metrics=base_metrics, progress=False)
    assert not (tmp_path / "d.apk").exists()


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(recipe: Path) -> None:
    config = load_recipe(recipe)
    assert config.name == recipe.stem
    assert CompressConfig.from_dict(config.to_dict()) == config


def test_the_recipe_by_layer_position_is_the_named_one_on_lenet5() -> None:
    """Deep Compression's recipe said by position gives LeNet-5 exactly the settings of its
    per-layer recipe, and every conv of a residual network a setting."""
    lenet5 = create_model(ModelSpec("lenet5", 10, 1, (28, 28)))
    by_position = fit_recipe(load_recipe(RECIPES / "deep-compression.toml"), lenet5).to_dict()
    by_name = fit_recipe(load_recipe(RECIPES / "deep-compression-lenet5.toml"), lenet5).to_dict()
    for recipe in (by_position, by_name):
        del recipe["name"], recipe["description"]
    assert by_position == by_name
    assert by_name["unstructured"]["layers"] == {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81}
    resnet = create_model(ModelSpec("resnet20", 10, 1, (8, 8)))
    fitted = fit_recipe(load_recipe(RECIPES / "deep-compression.toml"), resnet).unstructured
    assert fitted.layers == {
        n: 0.34 if n == "conv1" else 0.81 if n == "fc" else 0.88 for n in weight_layers(resnet)
    }
    assert fitted.positions == {}


def test_a_named_layer_keeps_its_own_setting_over_its_position() -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    config = CompressConfig.of(
        FilterPruneConfig(layers={"conv2": 0.1}, positions={"first_conv": 0.25, "conv": 0.5, "output": 0.5}),
        MagnitudeConfig(mode="sparsity", layers={"fc1": 0.5}, positions={"hidden_fc": 0.9, "output": 0.2}),
    )
    fitted = fit_recipe(config, model)
    assert fitted.structured.layers == {"conv1": 0.25, "conv2": 0.1}  # the classifier never loses outputs
    assert fitted.unstructured.layers == {"fc1": 0.5, "fc2": 0.2}
    with pytest.raises(
        RecipeError, match="unknown position 'fc' in unstructured.positions; positions: first_conv"
    ):
        MagnitudeConfig(positions={"fc": 0.5})


def test_the_recipe_by_position_compresses_a_residual_network(tmp_path: Path) -> None:
    splits = load_dataset("digits")
    spec = ModelSpec("resnet20", 10, 1, (8, 8))
    torch.manual_seed(0)
    base = create_model(spec).eval()
    recipe = load_recipe(RECIPES / "deep-compression.toml")
    recipe = recipe.replace(
        TrainConfig(epochs=1, max_batches=2), dataclasses.replace(recipe.quantize, epochs=0)
    )
    out = tmp_path / "resnet20.apk"
    result = compress(
        base,
        spec,
        splits,
        recipe,
        out,
        base_metrics=measure_model(base, splits, latency=False),
        progress=False,
        latency=False,
    )
    for name, layer in weight_layers(result.model).items():  # every layer at its position's sparsity
        target = 0.34 if name == "conv1" else 0.81 if name == "fc" else 0.88
        assert float((layer.weight == 0).float().mean()) == pytest.approx(target, abs=0.01), name
    again, _ = load_packed(out, model=spec.name)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), result.model(x))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"structured": {"default": 1.0}}, "should be in \\[0, 1\\)"),
        ({"structured": {"layers": {"conv1": -0.1}}}, "should be in \\[0, 1\\)"),
        ({"quantize": {"conv_bits": 17}}, "should be an integer in 1..16"),
        ({"quantize": {"fc_bits": 0}}, "should be an integer in 1..16"),
        ({"quantize": {"init": "kmeans++"}}, "init='kmeans\\+\\+'"),
        ({"quantize": {"bits": 4}}, "unknown key quantize.bits"),
        ({"finetune": {"epochs": "two"}}, "finetune.epochs='two' should be of type int"),
        ({"unstructured": {"mode": "sparsity", "default": 1.5}}, "should be in \\[0, 1\\)"),
    ],
)
def test_bad_recipes_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        CompressConfig.from_dict(data)


def test_unknown_layer_name_lists_the_layers() -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    with pytest.raises(RecipeError, match="unknown layer 'conv9'.*conv1, conv2"):
        prune_filters_(model, FilterPruneConfig(layers={"conv9": 0.5}), torch.zeros(1, 1, 8, 8))


class Multiplier2(nn.Module):
    """A grouped conv with a channel multiplier of 2 (groups = inputs, outputs = 2 x inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


def test_a_layer_pruned_other_than_asked_is_named_with_why(caplog: pytest.LogCaptureFixture) -> None:
    model = Multiplier2()
    x = torch.randn(2, 1, 8, 8)
    with caplog.at_level("WARNING", logger="autoprune.compress.structured"):
        records = {
            r.layer: r for r in prune_filters_(model, FilterPruneConfig(default=0.5), torch.zeros(1, 1, 8, 8))
        }
    assert model(x).shape == (2, 10) and count_params(model) == expected_params(model)
    assert {n: r.asked for n, r in records.items()} == {"conv1": 0.5, "conv2": 0.5, "conv3": 0.5}
    assert records["conv3"].removed == 8 and records["conv3"].why == ""  # as asked: nothing to say
    # torch-pruning leaves the multiplier-2 group whole, and conv1 with it: both said, with why
    assert records["conv2"].why.startswith("grouped (groups=8) conv") and records["conv2"].removed == 0
    assert records["conv1"].removed == 0 and records["conv1"].why.startswith("coupled through the graph")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2
    for layer in ("conv1", "conv2"):
        assert any(
            m.startswith(f"structured pruning of {layer} removed 0% of its filters, 50% asked: ")
            for m in warned
        )
    row = records["conv1"].to_dict()
    assert (row["asked"], row["removed_share"], row["why"]) == (
        0.5,
        0.0,
        records["conv1"].why,
    )  # what --json carries


class ChannelShuffle(nn.Module):
    """ShuffleNet's unit: a grouped 1x1 conv, a channel shuffle, a depthwise and a grouped conv."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.g = groups
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gconv1 = nn.Conv2d(16, 16, 1, groups=groups)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.gconv2 = nn.Conv2d(16, 32, 1, groups=groups)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gconv1(torch.relu(self.stem(x))))
        b, c, h, w = x.shape
        x = x.view(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(self.gconv2(self.dw(x)).mean((2, 3)))


class ChannelFlip(nn.Module):
    """Channels mixed by a reshape over the channel axis that the dependency graph cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        b, c, h, w = x.shape
        x = x.reshape(b, 2, c // 2, h, w).flip(1).reshape(b, c, h, w)
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def zeroed_twin(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """``original`` with the filters ``pruned`` lost set to zero (found by their biases): with
    ReLU after every conv and no batch norm, a correct surgery computes exactly the same."""
    twin = copy.deepcopy(original)
    after = dict(pruned.named_modules())
    with torch.no_grad():
        for name, conv in twin.named_modules():
            if isinstance(conv, nn.Conv2d):
                kept = set(after[name].bias.tolist())
                for i, b in enumerate(conv.bias.tolist()):
                    if b not in kept:
                        conv.weight[i] = 0
                        conv.bias[i] = 0
    return twin


def _split_shuffle() -> nn.Module:
    from tests.zoo import split_shuffle

    return split_shuffle(10, 3)


@pytest.mark.parametrize(
    "net, whole",
    [
        (ChannelShuffle, {"gconv1", "dw", "gconv2"}),
        (ChannelFlip, {"conv2"}),
        (_split_shuffle, {"stem", "conv2"}),
    ],
)
def test_couplings_the_graph_cannot_follow_are_left_whole_and_the_rest_is_pruned_correctly(
    net: type, whole: set, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    model = net().eval()
    original = copy.deepcopy(model)
    with caplog.at_level("WARNING", logger="autoprune.compress.structured"):
        records = prune_filters_(model, FilterPruneConfig(default=0.3), torch.zeros(1, 3, 16, 16))
    assert {r.layer for r in records if r.removed == 0} == whole
    assert all(r.removed > 0 for r in records if r.layer not in whole)  # the rest is pruned
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"structured pruning of {layer} removed 0%" in warned for layer in whole)
    x = torch.randn(4, 3, 16, 16)
    assert torch.allclose(
        model(x), zeroed_twin(original, model)(x), atol=1e-6
    )  # the same network, minus filters


def test_the_flip_would_be_corrupted_without_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import autoprune.compress.structured as structured

    monkeypatch.setattr(structured, "channel_cuts", lambda model, x: structured.Cuts(None, frozenset()))
    torch.manual_seed(0)
    model = ChannelFlip().eval()
    original = copy.deepcopy(model)
    prune_filters_(model, FilterPruneConfig(default=0.3), torch.zeros(1, 3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    assert not torch.allclose(model(x), zeroed_twin(original, model)(x), atol=1e-4)  # what the check prevents


def test_a_surgery_that_fails_leaves_the_network_whole_with_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch_pruning as tp

    def broken(self, interactive: bool = False) -> None:
        raise RuntimeError("INDICES element is out of DATA bounds, id=96 axis_dim=96")

    monkeypatch.setattr(tp.pruner.MetaPruner, "step", broken)
    model = create_model(ModelSpec("lenet5", 10, 1, (28, 28)))
    before = copy.deepcopy(model.state_dict())
    with caplog.at_level("WARNING", logger="autoprune.compress.structured"):
        records = prune_filters_(model, FilterPruneConfig(default=0.5), torch.zeros(1, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(r.removed == 0 for r in records)
    assert any(
        "left every conv whole (RuntimeError: INDICES element" in r.getMessage() for r in caplog.records
    )
    assert all(r.why == "torch-pruning's surgery failed on this network: left whole" for r in records)


@pytest.mark.parametrize("name", ZOO)
def test_the_zoo_compresses_reloads_to_identical_outputs_and_exports(name: str, tmp_path: Path) -> None:
    from autoprune.compress import CompressConfig, load_packed
    from autoprune.data import load_dataset
    from autoprune.measure import measure_model
    from autoprune.pipeline import compress
    from autoprune.runtime import export_onnx, ort_session, run_session

    splits = load_dataset("digits")
    spec = ModelSpec(f"{Path(__file__).with_name('zoo.py')}:{name}", 10, 1, (8, 8))
    torch.manual_seed(0)
    base = create_model(spec).eval()
    config = CompressConfig.from_dict(
        {
            "name": "zoo",
            "structured": {"default": 0.3},
            "unstructured": {"mode": "quality", "default": 0.5},
            "finetune": {"epochs": 1, "max_batches": 2},
            "quantize": {"conv_bits": 6, "fc_bits": 4, "epochs": 1},
        }
    )
    out = tmp_path / f"{name}.apk"
    result = compress(
        base,
        spec,
        splits,
        config,
        out,
        base_metrics=measure_model(base, splits, latency=False),
        progress=False,
        latency=False,
    )
    assert count_params(result.model) < count_params(base)  # filters removed somewhere in every family
    removed = {n.layer: n.removed for n in result.norms}
    if name == "shuffle":  # the shuffle-coupled convs stay whole, the stem before them does not
        assert removed["stem"] > 0 and removed["gconv1"] == removed["dw"] == removed["gconv2"] == 0
    if (
        name == "split_shuffle"
    ):  # what feeds the shuffle stays whole; the branch's first conv and what follows do not
        assert removed["stem"] == removed["conv2"] == 0 and removed["conv1"] > 0 and removed["conv3"] > 0
    x = torch.randn(4, 1, 8, 8)
    again, _ = load_packed(out, model=spec.name)
    with torch.no_grad():
        assert torch.equal(again(x), result.model(x))
        expected = result.model(x).numpy()
    graph = export_onnx(again, (1, 8, 8), tmp_path / f"{name}.onnx")
    np.testing.assert_allclose(run_session(ort_session(graph), x.numpy()), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["shufflenet_g2", "shufflenetv2"])
def test_the_real_shufflenets_compress_with_their_shuffles_left_whole_and_reload(
    factory: str, tmp_path: Path
) -> None:
    """ShuffleNet (two groups) and ShuffleNetV2 as users bring them (bench/cifar_nets.py, after
    kuangliu/pytorch-cifar): the first crashed torch-pruning's surgery, the second hung it for
    over ten minutes. Both compress, the convs feeding a channel shuffle keep every filter, the
    others lose theirs, and the packed file reloads to the same outputs."""
    from autoprune.compress import CompressConfig, load_packed
    from autoprune.data import load_dataset
    from autoprune.measure import measure_model
    from autoprune.pipeline import compress
    from tests.conftest import write_npz

    splits = load_dataset(
        "npz", data_dir=write_npz(tmp_path / "rgb16.npz", (16, 16, 3), n=160), val_fraction=0.25
    )
    spec = ModelSpec(f"{REPO / 'bench' / 'cifar_nets.py'}:{factory}", 10, 3, (16, 16))
    torch.manual_seed(0)
    base = create_model(spec).eval()
    config = CompressConfig.from_dict(
        {
            "name": "any-cnn",
            "structured": {"default": 0.3},
            "unstructured": {"default": 0.5},
            "finetune": {"epochs": 1, "max_batches": 1},
            "quantize": {"conv_bits": 6, "fc_bits": 4, "epochs": 0},
        }
    )
    result = compress(
        base,
        spec,
        splits,
        config,
        tmp_path / "m.apk",
        progress=False,
        latency=False,
        base_metrics=measure_model(base, splits, latency=False),
    )
    shuffled = {n.layer for n in result.norms if "reshape or transpose" in n.why}
    assert shuffled and all(n.removed == 0 for n in result.norms if n.layer in shuffled)
    assert sum(n.removed for n in result.norms) > 0 and count_params(result.model) < count_params(base)
    again, _ = load_packed(tmp_path / "m.apk", model=spec.name)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), result.model(x))
