"""docker/: no Docker engine runs here, so the files are checked statically. Their commands are
run natively elsewhere (test_search's PostgreSQL test runs setup-only, then workers)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoprune.cli import build_parser
from tests.conftest import REPO

COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"


def _with_defaults(word: str) -> str:
    """A compose word with each ${VAR:-default} replaced by its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", word)


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_compose_command_is_a_valid_autoprune_command() -> None:
    parser = build_parser()
    commands = {name: [_with_defaults(w) for w in s["command"]]
                for name, s in _services().items() if s.get("image", "").startswith("autoprune")}  # fmt: skip
    assert set(commands) == {"setup", "worker", "dashboard"}
    parsed = {name: parser.parse_args(words) for name, words in commands.items()}
    assert parsed["setup"].setup_only and not parsed["worker"].setup_only
    assert parsed["setup"].spec == parsed["worker"].spec and (REPO / parsed["worker"].spec).is_file()
    assert len({p.storage for p in parsed.values()}) == 1  # one database for all three
    assert parsed["worker"].jobs >= 1 and parsed["dashboard"].host == "0.0.0.0"


def test_workers_start_after_setup_and_share_cache_and_artifacts() -> None:
    services = _services()
    assert services["worker"]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert services["setup"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    mounts = {name: {v.split(":")[1] for v in services[name]["volumes"]} for name in ("setup", "worker", "dashboard")}
    assert all({"/cache", "/app/studies/artifacts"} <= m for m in mounts.values())


def test_dockerfile_installs_cpu_torch_before_the_project() -> None:
    runs = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("RUN ")]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_at = next(i for i, r in enumerate(runs) if "pip install ." in r)
    assert torch_at < project_at and "download.pytorch.org/whl/cpu" in runs[torch_at]


@pytest.mark.parametrize("tool, args", [("hadolint", [str(DOCKERFILE)]),
                                        ("docker-compose", ["-f", str(COMPOSE), "config", "-q"])])  # fmt: skip
def test_docker_files_pass_their_linters(tool: str, args: list[str]) -> None:
    beside = Path(sys.executable).with_name(tool)  # hadolint comes with the dev extras, in the venv
    found = str(beside) if beside.is_file() else shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (README, 'Docker', says how)")
    r = subprocess.run([found, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
