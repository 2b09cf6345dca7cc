"""A compression recipe: every setting of one run of the pipeline, as a frozen config.

Recipes are TOML files (``studies/recipes/*.toml``) with one table per stage. Reading one
checks every key and type and names the offending key, so a typo is never silently ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoprune._config import build_config, read_toml
from autoprune.compress._layers import RecipeError
from autoprune.compress.packing import PackConfig
from autoprune.compress.quantize import ShareConfig
from autoprune.compress.stage import Stage, ordered_stages, stage_of
from autoprune.compress.structured import FilterPruneConfig
from autoprune.compress.unstructured import MagnitudeConfig
from autoprune.train import TrainConfig


def _built_in() -> tuple[Any, ...]:
    return tuple(stage.default() for stage in ordered_stages() if not stage.optional)


@dataclass(frozen=True)
class CompressConfig:
    """All the settings of one compression run: one config per stage it runs, in the order
    they run (every built-in stage, and the optional ones a recipe or a search names)."""

    name: str = "custom"
    description: str = ""
    stages: tuple[Any, ...] = field(default_factory=_built_in)

    def __post_init__(self) -> None:
        named = [stage_of(c).name for c in self.stages]
        if len(set(named)) != len(named):
            raise RecipeError(f"a recipe runs each stage once; it has {', '.join(named)}")
        given = set(named)
        missing = [s.default() for s in ordered_stages() if not s.optional and s.name not in given]
        ordered = sorted([*self.stages, *missing], key=lambda c: stage_of(c).order)
        object.__setattr__(self, "stages", tuple(ordered))

    @classmethod
    def of(cls, *configs: Any, name: str = "custom", description: str = "") -> CompressConfig:
        """A config of these stage configs (built-in stages not given keep their defaults)."""
        return cls(name=name, description=description, stages=configs)

    def items(self) -> list[tuple[Stage, Any]]:
        """(stage, its config), in pipeline order."""
        return [(stage_of(c), c) for c in self.stages]

    def get(self, name: str) -> Any | None:
        """The config of stage ``name`` (None: the run does not include it)."""
        return next((c for c in self.stages if stage_of(c).name == name), None)

    def replace(self, *configs: Any) -> CompressConfig:
        """This config with ``configs`` in place of (or beside) those of their stages."""
        new = {stage_of(c).name: c for c in configs}
        kept = [c for c in self.stages if stage_of(c).name not in new]
        return CompressConfig(self.name, self.description, (*kept, *new.values()))

    # the built-in stages by name, for the code that reads one of them
    @property
    def structured(self) -> FilterPruneConfig:
        return self._built("structured")

    @property
    def unstructured(self) -> MagnitudeConfig:
        return self._built("unstructured")

    @property
    def finetune(self) -> TrainConfig:
        return self._built("finetune")

    @property
    def quantize(self) -> ShareConfig:
        return self._built("quantize")

    @property
    def pack(self) -> PackConfig:
        return self._built("pack")

    def _built(self, name: str) -> Any:
        config = self.get(name)
        assert config is not None, "every built-in stage is in every config"
        return config

    def to_dict(self) -> dict[str, Any]:
        """The recipe's tables: name, description, then one per stage in pipeline order."""
        return {
            "name": self.name,
            "description": self.description,
            **{stage.name: asdict(c) for stage, c in self.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressConfig:
        if not isinstance(data, dict):
            raise RecipeError("the file should be a table")
        keys = ["name", "description", *(s.name for s in ordered_stages())]
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise RecipeError(f"unknown key {unknown[0]}; valid keys: {', '.join(keys)}")
        for key in ("name", "description"):
            if not isinstance(data.get(key, ""), str):
                raise RecipeError(f"{key}={data[key]!r} should be of type str")
        configs = [
            build_config(
                stage.config,
                data[stage.name],
                error=RecipeError,
                prefix=f"{stage.name}.",
                base=stage.default(),
            )
            for stage in ordered_stages()
            if stage.name in data
        ]
        return cls.of(*configs, name=data.get("name", "custom"), description=data.get("description", ""))


def load_recipe(path: str | Path) -> CompressConfig:
    path = Path(path)
    data = read_toml(path, "recipe", RecipeError)
    try:
        return CompressConfig.from_dict(data)
    except RecipeError as e:
        raise RecipeError(f"recipe {path}: {e}") from None


def fit_recipe(config: CompressConfig, model: Any) -> CompressConfig:
    """``config`` for ``model``: what it says by layer position given to the layers there.
    Fails fast, before any training, when the recipe names a layer the model lacks."""
    return config.replace(*(stage.fit(c, model) for stage, c in config.items()))
