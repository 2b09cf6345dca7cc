from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.data import load_dataset
from autoprune.errors import AutoPruneError, CheckpointError, ModelError, UnknownNameError
from autoprune.measure import count_params
from autoprune.models import ModelSpec, create_model, list_models, load_checkpoint
from autoprune.train import TrainConfig, fit

BUILTIN = ["lenet300", "lenet5", "vgg", "resnet20", "mobilenetv2"]

USER_MODEL = """
from torch import nn

def tiny(num_classes, in_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes),
    )

def broken(num_classes):
    raise RuntimeError("out of ideas")

def not_a_module():
    return 42
"""


def test_registry_lists_the_builtins() -> None:
    assert sorted(BUILTIN) == list_models()


def test_lenet_parameter_counts_match_deep_compression() -> None:
    assert count_params(create_model(ModelSpec("lenet5", 10, 1, (28, 28)))) == 431_080
    assert count_params(create_model(ModelSpec("lenet300", 10, 1, (28, 28)))) == 266_610


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("data", ["digits", "gray28", "rgb32"])
def test_every_builtin_trains_one_epoch(name: str, data: str, request: pytest.FixtureRequest) -> None:
    if data == "digits":
        splits = load_dataset("digits")
    else:
        splits = load_dataset(
            "npz", data_dir=request.getfixturevalue({"gray28": "npz28", "rgb32": "npz32rgb"}[data])
        )
    c, h, w = splits.input_shape
    model = create_model(ModelSpec(name, splits.num_classes, c, (h, w)))
    before = [p.detach().clone() for p in model.parameters()]
    history = fit(model, splits, TrainConfig(epochs=1, batch_size=32, max_batches=8), progress=False)
    assert len(history) == 1 and 0.0 <= history[0] <= 100.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model(splits.test.x[:3]).shape == (3, splits.num_classes)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mynet.py"
    path.write_text(USER_MODEL)
    return path


def test_user_model_by_file_path(user_file: Path) -> None:
    model = create_model(ModelSpec(f"{user_file}:tiny", 7, 3, (16, 16)))
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 7)


def test_user_model_by_import_path(user_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_file.parent))
    model = create_model(ModelSpec("mynet:tiny", 5, 1, (8, 8)))
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 5)


def test_factory_that_raises(user_file: Path) -> None:
    with pytest.raises(ModelError, match="raised RuntimeError: out of ideas"):
        create_model(ModelSpec(f"{user_file}:broken", 10, 1, (8, 8)))


def test_factory_that_returns_something_else(user_file: Path) -> None:
    with pytest.raises(ModelError, match="returned int, not a torch.nn.Module"):
        create_model(ModelSpec(f"{user_file}:not_a_module", 10, 1, (8, 8)))


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNameError) as e:
        create_model(ModelSpec("alexnet", 10, 1, (8, 8)))
    assert all(name in str(e.value) for name in BUILTIN)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = ModelSpec("lenet5", 10, 1, (8, 8))
    model = create_model(spec)
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    other = load_checkpoint(create_model(spec), tmp_path / "ok.pt")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), other(x))


def test_checkpoint_errors(tmp_path: Path) -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    (tmp_path / "corrupt.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(model, tmp_path / "corrupt.pt")
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_checkpoint(model, tmp_path / "list.pt")
    torch.save(create_model(ModelSpec("lenet300", 10, 1, (8, 8))).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not match this model"):
        load_checkpoint(model, tmp_path / "other.pt")
    torch.save(create_model(ModelSpec("lenet5", 7, 1, (8, 8))).state_dict(), tmp_path / "classes.pt")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(model, tmp_path / "classes.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(model, tmp_path / "missing.pt")
    assert isinstance(model, nn.Module)


def _wrapped(kind: str, state: dict[str, torch.Tensor]) -> dict:
    """``state`` saved the ways training scripts save it."""
    prefixed = lambda p: {p + k: v for k, v in state.items()}  # noqa: E731
    return {
        "dataparallel": prefixed("module."),
        "compiled": prefixed("_orig_mod."),
        "lightning": {"state_dict": {**prefixed("model."), "loss.weight": torch.ones(3)}, "epoch": 4},
        "recipe": {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 9},
        "tutorial": {"model_state_dict": prefixed("module._orig_mod."), "loss": 0.25},
    }[kind]


@pytest.mark.parametrize("kind", ["dataparallel", "compiled", "lightning", "recipe", "tutorial"])
def test_a_checkpoint_saved_by_a_training_script_loads(kind: str, tmp_path: Path) -> None:
    """The weights under a checkpoint's usual keys and a wrapper's prefix: the same network."""
    spec = ModelSpec("resnet20", 10, 1, (8, 8))
    torch.manual_seed(0)
    trained = create_model(spec).eval()
    trained.bn1.running_mean.uniform_()  # a buffer too, not only parameters
    torch.save(_wrapped(kind, trained.state_dict()), tmp_path / "ckpt.pt")
    loaded = load_checkpoint(create_model(spec), tmp_path / "ckpt.pt").eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(trained(x), loaded(x))


def test_a_checkpoint_a_model_cannot_be_read_from_says_why(tmp_path: Path) -> None:
    model = create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
    torch.save(model, tmp_path / "whole.pt")  # a pickled module: its code would run on load
    with pytest.raises(CheckpointError, match=r"pickled Python objects .* save model.state_dict\(\)"):
        load_checkpoint(model, tmp_path / "whole.pt")
    torch.save({"epoch": 3, "weights": [1.0]}, tmp_path / "no-weights.pt")
    with pytest.raises(CheckpointError, match="a dict of 'epoch', 'weights', and none of state_dict"):
        load_checkpoint(model, tmp_path / "no-weights.pt")
    state = {"module." + k: v for k, v in model.state_dict().items()}
    state.pop("module.fc2.bias")  # under the prefix, but not all of the model: no match, said
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(model, tmp_path / "partial.pt")


def test_a_file_packed_with_a_relative_factory_path_loads_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from autoprune.compress import load_packed, save_packed
    from autoprune.models import ModelSpec, create_model

    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir()
    elsewhere.mkdir()
    wrapper = made / "wrap.py"
    wrapper.write_text(
        "from autoprune.models._builtin import lenet5\n\n\ndef build(num_classes, in_channels, image_size):\n"
        "    return lenet5(num_classes=num_classes, in_channels=in_channels, image_size=image_size)\n"
    )
    monkeypatch.chdir(made)
    spec = ModelSpec("wrap.py:build", 10, 1, (8, 8))  # relative, as typed in that folder
    save_packed(create_model(spec), spec, made / "m.apk")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(AutoPruneError, match=f"--model {made / 'wrap.py'}:build"):  # the hint works from here
        load_packed(made / "m.apk")
    model, header = load_packed(made / "m.apk", model="../made/wrap.py:build")  # relative to where we are now
    assert header["model"]["name"] == f"{wrapper}:build" and sum(p.numel() for p in model.parameters()) > 0
    assert not [r for r in caplog.records if "other source" in r.getMessage()]
    wrapper.write_text(wrapper.read_text() + "\n# edited\n")
    load_packed(made / "m.apk", model=f"{wrapper}:build")
    assert [r for r in caplog.records if "other source" in r.getMessage()]  # the changed factory is named
