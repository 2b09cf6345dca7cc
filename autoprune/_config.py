"""Strict TOML -> frozen dataclass: every key known, every value of the declared type.

Recipes and study specs are both read through :func:`build_config`, so a typo is never
silently ignored and the error names the offending key.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, cast

from autoprune.errors import AutoPruneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: Path, what: str, error: type[AutoPruneError]) -> dict[str, Any]:
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not valid TOML: {e}") from None


def build_config(
    cls: type, data: Any, *, error: type[AutoPruneError], prefix: str = "", base: Any = None
) -> Any:
    """Construct dataclass ``cls`` (nested dataclasses included) from a TOML table; keys the
    table leaves out keep ``base``'s values (for a nested table: the parent field's default,
    so a recipe's ``[finetune]`` starts from fine-tuning's defaults, not base training's)."""
    if not isinstance(data, dict):
        raise error(f"{prefix.rstrip('.') or 'the file'} should be a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        valid = ", ".join(prefix + n for n in names) or f"none ({prefix.rstrip('.')} takes no settings)"
        raise error(f"unknown key {prefix}{unknown[0]}; valid keys: {valid}")
    kwargs = {}
    for name, value in data.items():
        hint, key = hints[name], prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_config(
                cast(type, hint), value, error=error, prefix=key + ".", base=_default(cls, name)
            )
        else:
            kwargs[name] = _check(value, hint, key, error)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise error(f"{prefix.rstrip('.')}: {e}") from None


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _check(value: Any, hint: Any, key: str, error: type[AutoPruneError]) -> Any:
    if hint is Any:  # checked by its owner (a stage's own table)
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{key} should be a table")
        return {k: _check(v, args[1], f"{key}.{k}", error) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise error(f"{key}={value!r} should be a list")
        return [_check(v, args[0], f"{key}[{i}]", error) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _check(value, next(a for a in args if a is not type(None)), key, error)
    ok = {
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise error(f"{key}={value!r} should be of type {hint.__name__}")
    if hint is float and not math.isfinite(value):
        raise error(f"{key}={value!r} should be a finite number")
    return float(value) if hint is float else value
