"""Batch norm for inference: folded into its conv (autoprune/compress/fold.py), or packed as its
scale and shift, and float16 raw tensors in the packed file: the network infers what it did,
only batch norms that can fold do, and the file decodes to the network measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.compress import (
    CompressConfig,
    FilterPruneConfig,
    FoldConfig,
    PackConfig,
    PackError,
    RecipeError,
    load_packed,
    read_header,
    save_packed,
)
from autoprune.compress.fold import FoldedNorm, fold_
from autoprune.compress.size import SizeModel
from autoprune.data import load_dataset
from autoprune.measure import measure_model
from autoprune.models import ModelSpec, create_model
from autoprune.pipeline import compress
from autoprune.search.space import SpaceLayers, config_from_params
from autoprune.search.spec import SpaceSection
from autoprune.train import TrainConfig, train_base
from tests.test_size import TOLERANCE, real_size
from tests.workspace import rewrite_header

SPEC = ModelSpec("resnet20", 10, 1, (8, 8))


def _trained_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with batch norm statistics and affine values a training leaves
    (a fresh one's are 0, 1, 1, 0: folding them would hide a wrong formula)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(c, generator=g) * 0.3 + 1)
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
@torch.no_grad()
def test_folding_every_batch_norm_keeps_the_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = _trained_norms(create_model(ModelSpec(name, 10, 1, (16, 16))))
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.randn(8, 1, 16, 16)
    before = model(x)
    pairs = fold_(model)
    assert sorted(pairs) == sorted(norms)  # every one sits right after a conv in these networks
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for norm, conv in pairs.items():
        assert isinstance(model.get_submodule(norm), FoldedNorm)
        assert model.get_submodule(conv).bias is not None
    assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-5)


class _Shapes(nn.Module):
    """Four batch norms, one of which can fold: after a conv whose output is also added to
    the result, after a ReLU, one called twice, and one right after its conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(4))
        self.bn_a, self.bn_b, self.bn_twice, self.bn_d = (nn.BatchNorm2d(4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.a(x)
        x = self.bn_a(z) + z  # the conv's output is read twice
        x = self.bn_b(torch.relu(self.b(x)))  # not right after the conv
        x = self.bn_twice(self.c(x))
        x = self.bn_twice(x)
        return self.bn_d(self.d(x))


@torch.no_grad()
def test_only_a_batch_norm_right_after_a_conv_nothing_else_reads_folds() -> None:
    torch.manual_seed(0)
    model = _trained_norms(_Shapes())
    x = torch.randn(2, 4, 6, 6)
    before = model(x)
    assert fold_(model) == {"bn_d": "d"}
    assert torch.allclose(model(x), before, atol=1e-5)
    without_stats = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    assert fold_(without_stats) == {}  # it normalises by each batch's statistics, in eval too


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on the data: torch.fx cannot trace it
            x = -x
        return self.bn(self.conv(x))


def test_a_network_torch_fx_cannot_trace_is_one_recipe_error() -> None:
    with pytest.raises(
        RecipeError, match=r"fold: torch.fx cannot trace this network .*leave the \[fold\]"
    ) as e:
        fold_(_Untraceable())
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def digits_base():
    splits = load_dataset("digits")
    base = train_base(SPEC, splits, TrainConfig(epochs=1, max_batches=8), progress=False)
    return splits, base.model, measure_model(base.model, splits, latency_repeats=3, latency=False)


def test_a_folded_float16_file_decodes_to_the_network_measured_and_is_smaller(
    digits_base, tmp_path: Path
) -> None:
    splits, base, base_metrics = digits_base
    plain = CompressConfig.from_dict(
        {
            "structured": {"default": 0.25},
            "unstructured": {"mode": "sparsity", "default": 0.5},
            "finetune": {"epochs": 1, "max_batches": 4},
            "quantize": {"conv_bits": 4, "fc_bits": 5, "epochs": 1},
        }
    )
    folded = CompressConfig.from_dict({**plain.to_dict(), "fold": {}, "pack": {"float16": True}})
    assert folded.get("fold") == FoldConfig() and folded.pack.float16
    files = {}
    for name, config in (("plain", plain), ("folded", folded)):
        files[name] = tmp_path / f"{name}.apk"
        result = compress(
            base, SPEC, splits, config, files[name], base_metrics=base_metrics, progress=False, latency=False
        )
    decoded, header = load_packed(files["folded"])
    x = splits.test.x[:32]
    assert torch.equal(decoded(x), result.model(x))  # the measured network is the file's
    assert not any(isinstance(m, nn.BatchNorm2d) for m in decoded.modules())
    assert set(header["stages"]["fold"]) == {
        n for n, m in base.named_modules() if isinstance(m, nn.BatchNorm2d)
    }
    encodings = {e["encoding"] for e in header["tensors"]}
    assert encodings == {"sparse", "half"}  # the conv biases that hold the batch norms, in float16
    # the batch norms' four float32 values and counter per channel become one float16 bias
    plain_header, _ = read_header(files["plain"])
    folded_norms = tuple(f"{n}." for n in header["stages"]["fold"])
    norms = sum(e["data"][1] for e in plain_header["tensors"] if e["name"].startswith(folded_norms))
    saved = files["plain"].stat().st_size - files["folded"].stat().st_size
    assert saved > 0.8 * norms
    # weight sharing ran on the folded weights: each layer keeps at most 2**bits values
    assert all(len(torch.unique(m.weight)) <= 1 + 16 for m in decoded.modules() if isinstance(m, nn.Conv2d))
    estimate = SizeModel(base, SPEC).estimate(folded)  # replayed: an optional stage
    assert abs(estimate / files["folded"].stat().st_size - 1) <= TOLERANCE


def test_float16_rounds_what_fits_and_keeps_the_rest_float32(tmp_path: Path) -> None:
    model = _trained_norms(create_model(SPEC))
    model.get_submodule("bn1").running_var[0] = 1e6  # beyond float16's 65,504
    path = tmp_path / "m.apk"
    save_packed(model, SPEC, path, config=PackConfig(float16=True))
    header, _ = read_header(path)
    kinds = {e["name"]: (e["encoding"], e.get("dtype")) for e in header["tensors"]}
    assert kinds["bn1.running_var"] == ("raw", "float32") and kinds["bn1.num_batches_tracked"] == (
        "raw",
        "int64",
    )
    assert kinds["bn1.running_mean"] == ("half", None)
    decoded, _ = load_packed(path)
    for key, t in decoded.state_dict().items():
        want = model.state_dict()[key]
        assert t.dtype == want.dtype
        if kinds[key][0] == "half":
            assert torch.equal(t, want.half().float())
        else:
            assert torch.equal(t, want)
    halved = sum(np.prod(e["shape"]) for e in header["tensors"] if e["encoding"] == "half")
    exact = tmp_path / "exact.apk"
    save_packed(model, SPEC, exact)
    assert exact.stat().st_size - path.stat().st_size >= 2 * halved - 64  # 2 bytes a value, less header


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda h: h["stages"].update(fold={"conv1": "bn1"}), "not a batch norm and a conv"),
        (lambda h: h["stages"].update(fold={"layers.3.bn1": "conv1"}), "does not normalise conv1's channels"),
        (lambda h: h["stages"].update(fold=["bn1"]), "table of batch norm -> conv"),
        (lambda h: h["tensors"][1].update(data=[0, 3]), "3 bytes where"),
    ],
)
def test_a_file_whose_fold_or_float16_entries_lie_is_one_pack_error(
    change, message: str, tmp_path: Path
) -> None:
    model = _trained_norms(create_model(SPEC))
    fold_(model)
    path = tmp_path / "m.apk"
    save_packed(model, SPEC, path, config=PackConfig(float16=True))
    header, _ = read_header(path)
    assert header["tensors"][1]["encoding"] == "half"  # conv1's bias
    rewrite_header(path, path, change)
    with pytest.raises(PackError, match=message) as e:
        load_packed(path)
    assert "\n" not in str(e.value)


def test_a_search_folds_every_trial_when_its_space_names_the_stage() -> None:
    layers = SpaceLayers.of(create_model(SPEC))
    params = {"ranked_ratio": 0.3}
    folding = SpaceSection(structured="ranked", stages={"fold": {}})
    assert config_from_params(params, folding, layers).get("fold") == FoldConfig()
    assert config_from_params(params, SpaceSection(structured="ranked"), layers).get("fold") is None


def test_the_fold_table_takes_no_settings() -> None:
    with pytest.raises(RecipeError, match=r"unknown key fold.x; valid keys: none \(fold takes no settings\)"):
        CompressConfig.from_dict({"fold": {"x": 1}})


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_batch_norm_as_scale_and_shift_infers_the_same_from_a_smaller_file(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(name, 10, 1, (16, 16))
    model = _trained_norms(create_model(spec))
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    channels = sum(model.get_submodule(n).num_features for n in norms)
    stats, affine = tmp_path / "stats.apk", tmp_path / "affine.apk"
    save_packed(model, spec, stats)
    save_packed(model, spec, affine, config=PackConfig(affine_norms=True))
    decoded, header = load_packed(affine)
    assert header["norms"] == norms
    assert not any(e["name"].endswith(("running_mean", "running_var")) for e in header["tensors"])
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(decoded(x), model(x), atol=1e-5, rtol=1e-5)
    # two float32 values fewer per channel and the int64 counter per batch norm; the header
    # loses their three entries (some 20 bytes compressed) and gains the list of names
    saved, data = stats.stat().st_size - affine.stat().st_size, 8 * channels + 8 * len(norms)
    assert data - 64 <= saved <= data + 40 * len(norms)
    for config in (PackConfig(affine_norms=True), PackConfig(affine_norms=True, float16=True)):
        pruned = CompressConfig.of(FilterPruneConfig(ranking="global", default=0.3), config)
        real = real_size(model, spec, pruned, tmp_path / "pruned.apk")
        estimate = SizeModel(model, spec).estimate(pruned)  # the analytic model, no replay
        assert abs(estimate / real - 1) <= TOLERANCE, (estimate, real)


@pytest.mark.parametrize(
    "norms, message",
    [
        (["conv1"], "norms names 'conv1', not a batch norm"),
        (["bn1", "bn1"], "names a batch norm twice"),
        ("bn1", "norms should be a list"),
        (["nowhere"], "does not decode"),
    ],
)
def test_a_file_whose_norms_lie_is_one_pack_error(norms, message: str, tmp_path: Path) -> None:
    path = tmp_path / "m.apk"
    save_packed(_trained_norms(create_model(SPEC)), SPEC, path, config=PackConfig(affine_norms=True))
    rewrite_header(path, path, lambda h: h.update(norms=norms))
    with pytest.raises(PackError, match=message) as e:
        load_packed(path)
    assert "\n" not in str(e.value)
