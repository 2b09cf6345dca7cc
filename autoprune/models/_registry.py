"""Model registry: built-in networks by name, a user's own by ``module:factory``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import sysconfig
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn

from autoprune.errors import ModelError
from autoprune.registry import Registry

Factory = Callable[..., nn.Module]
MODELS: Registry[Factory] = Registry(
    "model", hint="or your own as package.module:factory or path/to/file.py:factory"
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model's architecture again (never a pickle of it)."""

    name: str  # a registered name, "package.module:factory" or "path/to/file.py:factory"
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Read back a stored spec; stored data is checked, never trusted (ValueError)."""
        name, classes, channels, size = d["name"], d["num_classes"], d["in_channels"], d["image_size"]
        if not isinstance(name, str) or not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise ValueError(f"a model spec needs a name and an image size (H, W), got {d!r}")
        for what, value, high in [
            ("num_classes", classes, 1 << 20),
            ("in_channels", channels, 4096),
            ("image height", size[0], 1 << 14),
            ("image width", size[1], 1 << 14),
        ]:
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ValueError(f"model spec {what}={value!r} should be an integer in 1..{high}")
        return cls(name, classes, channels, (size[0], size[1]))


def register_model(fn: Factory) -> Factory:
    """Register a built-in factory under its function name."""
    return MODELS.register(fn.__name__)(fn)


def list_models() -> list[str]:
    return MODELS.names()


def is_user_model(name: str) -> bool:
    return ":" in name


def create_model(spec: ModelSpec) -> nn.Module:
    """Build the network a spec names, adapted to its channels, image size and classes."""
    factory = resolve_factory(spec.name)
    kwargs = {
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "image_size": spec.image_size,
    }
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        model = factory(**{k: v for k, v in kwargs.items() if takes_all or k in params})
    except Exception as e:  # a user's factory can fail in any way; report it in one line
        raise ModelError(f"model factory {spec.name!r} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model factory {spec.name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if not any(True for _ in model.parameters()):
        raise ModelError(
            f"model factory {spec.name!r} returned a network with no parameters: nothing to compress"
        )
    return model


def resolve_factory(name: str) -> Factory:
    if not is_user_model(name):
        return MODELS.get(name)
    target, _, attr = name.rpartition(":")
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{target} has no callable {attr!r}")
    return factory


def model_fingerprint(name: str, model: nn.Module) -> str:
    """What a freshly built network is, for the base-model cache: its modules and their shapes,
    its initial weights (built at the caller's seed), its traced graph where torch.fx can trace
    it (an activation swapped inside ``forward`` shows there), and for a user's model the source
    of every user file its factory and classes come from, and of the user modules and functions
    those files import."""
    h = hashlib.blake2b(digest_size=12)
    h.update(repr(model).encode())
    for key, value in model.state_dict().items():
        h.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h.update(torch.fx.symbolic_trace(model).code.encode())
    except Exception:  # data-dependent control flow: the sources below still cover forward()
        h.update(b"untraceable")
    if is_user_model(name):
        for path in _user_sources([resolve_factory(name), *(type(m) for m in model.modules())]):
            h.update(str(path).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def canonical_name(name: str) -> str:
    """A model name that means the same from any folder: a factory file's path made absolute."""
    target, _, attr = name.rpartition(":")
    if is_user_model(name) and target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return name


def factory_source_hash(name: str) -> str | None:
    """A hash of the user files a factory comes from (None for a built-in model), so a packed
    file can tell when the factory named to load it is not the code that made it."""
    if not is_user_model(name):
        return None
    h = hashlib.blake2b(digest_size=8)
    for path in _user_sources([resolve_factory(name)]):
        h.update(path.read_bytes())
    return h.hexdigest()


def _user_sources(objects: list[Any]) -> list[Path]:
    """The source files, outside the standard library and installed packages, that define
    ``objects`` or anything their modules import by name (one level deep)."""
    installed = {
        Path(p).resolve()
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    modules = {m for o in objects if (m := inspect.getmodule(o)) is not None}
    for module in list(modules):
        for value in vars(module).values():
            kind = inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value)
            if kind and (m := inspect.getmodule(value)) is not None:
                modules.add(m)
    files = set()
    for module in modules:
        source = getattr(module, "__file__", None)
        if not source or not source.endswith(".py"):
            continue
        path = Path(source).resolve()
        if path.is_file() and not any(path.is_relative_to(root) for root in installed):
            files.add(path)
    return sorted(files)


def _import_module(target: str) -> Any:
    try:
        return importlib.import_module(target)
    except Exception as e:
        raise ModelError(f"cannot import {target!r}: {type(e).__name__}: {e}") from None


def _import_file(path: Path) -> Any:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    module_name = "autoprune_user_" + hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise ModelError(f"cannot import {path}: {type(e).__name__}: {e}") from None
    return module
