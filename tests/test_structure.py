"""The shape of the package: layers import only downward (at module level and inside
functions alike, so no import hides a cycle), and the CLI and the benchmarks use only public
names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "autoprune"
# Lowest first; a module may import its own layer and the ones below it.
LAYERS = [
    {
        "__init__",
        "errors",
        "_config",
        "_compat",
        "names",
        "ops",
        "cache",
        "limits",
        "stop",
        "device",
        "registry",
    },
    {"models", "data"},
    {"runtime", "measure", "deploy"},  # running a network outside eager torch, timing it, shipping it
    {"train", "task"},
    {"compress"},  # the transforms: a config in, a model changed
    {"pipeline", "sensitivity"},  # the compression use case over them, and the layers' sensitivity
    {"search"},
    {"surrogate"},
    {"workflow"},  # what the commands do: search with every sampler, the surrogate on a study
    {"cli", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def component(path: Path) -> str:
    """The top-level part of the package a file belongs to (autoprune/search/run.py -> search)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every autoprune import in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("autoprune")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoprune"):
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert {component(p) for p in SOURCES} <= set(LAYER), {component(p) for p in SOURCES} - set(LAYER)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_imports_only_go_down(path: Path) -> None:
    mine = LAYER[component(path)]
    for line, module in imported(path):
        target = module.split(".")[1]
        if target in LAYER:  # "autoprune.__version__" and the like name the package itself
            assert LAYER[target] <= mine, (
                f"{path.name}:{line} imports {module}, a layer above {component(path)}"
            )


def private(module: str, own: str) -> bool:
    parts = module.split(".")[1:]
    return parts[0] != own and any(p.startswith("_") and p != "__version__" for p in parts)


CALLERS = sorted((PACKAGE / "cli").glob("*.py")) + sorted((REPO / "bench").glob("*.py"))


@pytest.mark.parametrize("path", CALLERS, ids=[str(p.relative_to(REPO)) for p in CALLERS])
def test_the_cli_and_the_benchmarks_use_public_names(path: Path) -> None:
    bad = [f"{path.name}:{line} {m}" for line, m in imported(path) if private(m, own="cli")]
    assert not bad, bad


def test_the_layer_check_can_fail(tmp_path: Path) -> None:
    upward = tmp_path / "x.py"
    upward.write_text("def f():\n    from autoprune.surrogate import SurrogateSampler\n")
    assert imported(upward) == [(2, "autoprune.surrogate.SurrogateSampler")]
    assert private("autoprune.surrogate._study.compare", own="cli")
    assert not private("autoprune.cli._common.grid", own="cli")


def test_only_compat_reaches_into_optuna_and_torch_internals() -> None:
    reaches = (
        "._storage",
        "._trial_id",
        "._contains(",
        "torch._C",
        "._backend",
        "trial_heartbeats",
        "optuna.storages._",
    )
    found = [
        f"{p.relative_to(PACKAGE)}: {r}"
        for p in SOURCES
        if p.name != "_compat.py"
        for r in reaches
        if r in p.read_text()
    ]
    assert not found, found


def test_trial_sources_are_named_once() -> None:
    """A trial's source ("baseline", "final", ...) is a ``Source`` member, never a string written
    again beside a comparison or a stored attribute."""
    written = re.compile(
        r"""(source["']?\)?\s*[!=]=\s*|["']source["']:\s*)["'](baseline|final|surrogate|sensitivity)["']"""
    )
    found = [
        f"{p.relative_to(PACKAGE)}:{m.group(0)}" for p in SOURCES for m in written.finditer(p.read_text())
    ]
    assert not found, found


def test_one_registry_serves_models_datasets_samplers_and_pruners() -> None:
    from autoprune.data._base import DATASETS
    from autoprune.errors import UnknownNameError
    from autoprune.models._registry import MODELS
    from autoprune.registry import Registry
    from autoprune.search.samplers import PRUNERS, SAMPLERS

    for registry, known in ((MODELS, "lenet5"), (DATASETS, "digits"), (SAMPLERS, "tpe"), (PRUNERS, "median")):
        assert isinstance(registry, Registry) and known in registry and known in registry.names()
        with pytest.raises(
            UnknownNameError, match=rf"unknown {registry.kind} 'nope'; valid {registry.kind}s: .*{known}"
        ):
            registry.get("nope")


def test_the_cli_imports_only_the_workflow_and_errors() -> None:
    """One door per command: the CLI is argparse and printing over ``autoprune.workflow``."""
    allowed = ("autoprune.workflow.", "autoprune.errors.", "autoprune.cli.", "autoprune.__version__")
    found = [
        f"{p.relative_to(PACKAGE)}:{line}: {name}"
        for p in SOURCES
        if component(p) == "cli"
        for line, name in imported(p)
        if not name.startswith(allowed)
    ]
    assert not found, found


def function_imports(path: Path) -> int:
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return len({id(i) for f in functions for i in ast.walk(f) if isinstance(i, (ast.Import, ast.ImportFrom))})


def test_no_function_level_imports() -> None:
    """Every import at the top of its module, where a reader sees what it depends on (the layer
    test above then sees every arrow)."""
    found = {str(p.relative_to(PACKAGE)): n for p in SOURCES if (n := function_imports(p))}
    # the one exception: onnx and its quantization tools cost every command 0.7 s at start,
    # and only writing or reading a file to deploy needs them
    assert found.pop("deploy.py", 0) <= 2
    assert not found, f"imports inside functions (move them to the module's top): {found}"


def code_words(path: Path) -> set[str]:
    """The identifiers and string values a module's code uses (not its comments or docstrings)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
    }
    words: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words.update(node.name.split("."))
        elif isinstance(node, ast.ImportFrom) and node.module:
            words.update(node.module.split("."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.update(re.findall(r"\w+", node.value))
    return words


def test_a_stage_is_its_own_module() -> None:
    """A compression stage is one module (autoprune/compress/stage.py says what it declares):
    the low-rank stage is named in no code of the package but its module's and the import that
    registers it, so the pipeline, the search space, the size model and the packed file all
    reach it through the stage registry."""
    mine = re.compile(r"^(lowrank|LowRank\w*|Factorised|factorise_)$")
    own = PACKAGE / "compress" / "lowrank.py"
    mentions = {
        str(p.relative_to(PACKAGE)): sorted(w for w in code_words(p) if mine.match(w))
        for p in SOURCES
        if p != own
    }
    assert {k: v for k, v in mentions.items() if v} == {"compress/__init__.py": ["lowrank"]}
