from __future__ import annotations

import pytest
import torch

from autoprune.data import load_dataset
from autoprune.errors import ConfigError, DivergedError
from autoprune.models import ModelSpec, create_model
from autoprune.train import TrainConfig, distilled, fit, train_base

SPEC = ModelSpec("lenet5", 10, 1, (8, 8))


def test_same_seed_same_model_and_cache_hit() -> None:
    s = load_dataset("digits")
    config = TrainConfig(epochs=1, max_batches=5)
    a = train_base(SPEC, s, config, seed=3, use_cache=False, progress=False)
    b = train_base(SPEC, s, config, seed=3, use_cache=False, progress=False)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = train_base(SPEC, s, config, seed=3, progress=False)
    assert c.cached and c.path == a.path
    assert all(
        torch.equal(va, vc) for va, vc in zip(a.model.state_dict().values(), c.model.state_dict().values())
    )
    d = train_base(SPEC, s, TrainConfig(epochs=1, max_batches=5), seed=4, progress=False)
    assert not d.cached and d.path != a.path


def test_callbacks_see_every_epoch_and_can_stop() -> None:
    s = load_dataset("digits")
    seen = []

    class Stop(Exception):
        pass

    def callback(epoch: int, val: float) -> None:
        seen.append((epoch, val))
        if epoch == 2:
            raise Stop

    model = train_base(SPEC, s, TrainConfig(epochs=1, max_batches=2), progress=False).model
    with pytest.raises(Stop):
        fit(model, s, TrainConfig(epochs=5, max_batches=3), callbacks=[callback], progress=False)
    assert [e for e, _ in seen] == [1, 2]


def test_after_step_runs_after_each_step() -> None:
    s = load_dataset("digits")
    model = train_base(SPEC, s, TrainConfig(epochs=1, max_batches=2), progress=False).model
    calls = []
    fit(model, s, TrainConfig(epochs=2, max_batches=3), after_step=lambda: calls.append(1), progress=False)
    assert len(calls) == 6


def test_diverging_run_raises() -> None:
    s = load_dataset("digits")
    model = train_base(SPEC, s, TrainConfig(epochs=1, max_batches=2), progress=False).model
    with pytest.raises(DivergedError, match="lower the learning rate"):
        fit(model, s, TrainConfig(epochs=3, lr=1e6, optimizer="sgd"), progress=False)


@pytest.mark.parametrize(
    "bad",
    [
        dict(epochs=-1),
        dict(lr=0.0),
        dict(batch_size=0),
        dict(optimizer="rmsprop"),
        dict(distill=1.5),
        dict(distill=-0.1),
        dict(temperature=0.0),
    ],
)
def test_bad_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_distillation_is_zero_on_the_teachers_own_outputs_and_mixes_by_its_weight() -> None:
    torch.manual_seed(0)
    logits, other = torch.randn(16, 10), torch.randn(16, 10)
    label_loss = torch.tensor(2.0)
    assert distilled(label_loss, logits, logits, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distilled(label_loss, logits, other, 0.0, 4.0).item() == pytest.approx(2.0)
    soft = distilled(torch.tensor(0.0), logits, other, 1.0, 4.0).item()
    assert soft > 0
    assert distilled(label_loss, logits, other, 0.25, 4.0).item() == pytest.approx(0.75 * 2.0 + 0.25 * soft)


class Constant(torch.nn.Module):
    """A teacher that says class 3 for every image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], 10), -10.0)
        out[:, 3] = 10.0
        return out


def test_a_student_distilled_at_full_weight_learns_the_teacher_not_the_labels() -> None:
    s = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model(SPEC)
    fit(model, s, TrainConfig(epochs=2, lr=3e-3, distill=1.0), teacher=Constant(), progress=False)
    with torch.no_grad():
        predicted = model(s.val.x).argmax(1)
    assert (predicted == 3).float().mean() > 0.95  # the labels say class 3 for a tenth of them


def test_distillation_without_a_teacher_or_for_a_base_is_one_error() -> None:
    s = load_dataset("digits")
    with pytest.raises(ConfigError, match="needs the network before compression"):
        fit(create_model(SPEC), s, TrainConfig(epochs=1, max_batches=1, distill=0.5), progress=False)
    with pytest.raises(ConfigError, match="needs the network before compression"):
        train_base(
            SPEC, s, TrainConfig(epochs=1, max_batches=1, distill=0.5), use_cache=False, progress=False
        )


NETLIB = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(torch.{act}(self.conv(x)), 1))
"""

WRAPPER = """
from netlib import Net


def build(num_classes, in_channels):
    return Net(num_classes, in_channels)
"""


def test_a_changed_module_the_factory_imports_gives_a_new_base(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "wrap.py").write_text(WRAPPER)
    spec = ModelSpec(f"{tmp_path / 'wrap.py'}:build", 10, 1, (8, 8))
    s = load_dataset("digits")
    config = TrainConfig(epochs=1, max_batches=2)

    def base(act: str):
        (tmp_path / "netlib.py").write_text(NETLIB.format(act=act))
        for name in [n for n in sys.modules if n == "netlib" or n.startswith("autoprune_user_")]:
            del sys.modules[name]  # as a new process would import them
        return train_base(spec, s, config, seed=0, progress=False)

    relu = base("relu")
    assert base("relu").cached  # unchanged: the cache serves it
    sigmoid = base("sigmoid")  # only the imported module's forward() changed: same file named by --model
    assert not sigmoid.cached and sigmoid.path != relu.path
