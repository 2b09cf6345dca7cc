"""docker/: the files checked statically (every command a valid autoprune command, the linters),
and docker/e2e.sh run for real where a Docker engine runs or can be started: here, with a wrong
database password, it must stop at the step that meets it and say so (.ci/run runs it whole
before the suite, keeping the images this run then reuses; without them it builds them)."""

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
    commands = {
        name: [_with_defaults(w) for w in s["command"]]
        for name, s in _services().items()
        if _with_defaults(s.get("image", "")).startswith("autoprune")
    }
    assert set(commands) == {"setup", "worker", "dashboard"}
    parsed = {name: parser.parse_args(words) for name, words in commands.items()}
    assert parsed["setup"].setup_only and not parsed["worker"].setup_only
    assert parsed["setup"].spec == parsed["worker"].spec and (REPO / parsed["worker"].spec).is_file()
    assert len({p.storage for p in parsed.values()}) == 1  # one database for all three
    assert parsed["worker"].jobs >= 1 and parsed["dashboard"].host == "0.0.0.0"
    # the password reaches libpq through the environment, never the command line (ps shows it)
    assert all(":" not in p.storage.split("//")[1].split("@")[0] for p in parsed.values())
    assert all(
        s["environment"]["PGPASSWORD"] == "${DB_PASSWORD:-autoprune}"
        for name, s in _services().items()
        if name in commands
    )


def test_the_gpu_variant_runs_workers_on_cuda_with_a_device_reservation() -> None:
    """--device cuda would refuse to parse here (no GPU): the words are checked, not parsed."""
    gpu = yaml.safe_load((REPO / "docker" / "compose.gpu.yaml").read_text())["services"]
    words = [_with_defaults(w) for w in gpu["worker"]["command"]]
    assert words[words.index("--device") + 1] == "cuda" and "--jobs" in words
    assert words[:2] == [_with_defaults(w) for w in _services()["worker"]["command"][:2]]  # the same spec
    reservation = gpu["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]


def test_workers_start_after_setup_and_share_cache_and_artifacts() -> None:
    services = _services()
    assert services["worker"]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert services["setup"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    mounts = {
        name: {v.split(":")[1] for v in services[name]["volumes"]}
        for name in ("setup", "worker", "dashboard")
    }
    assert all({"/cache", "/app/studies/artifacts"} <= m for m in mounts.values())


def test_dockerfile_installs_cpu_torch_before_the_project_and_defaults_to_the_public_images() -> None:
    text = DOCKERFILE.read_text()
    runs = [line for line in text.replace("\\\n", " ").splitlines() if line.startswith("RUN ")]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_at = next(i for i, r in enumerate(runs) if re.search(r"pip install .*\.$", r))
    assert torch_at < project_at and '--index-url "$TORCH_INDEX"' in runs[torch_at]
    # a user with Docker Hub and PyTorch's index gets what they always got
    assert (
        "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
        and "ARG BASE=python:3.11-slim-bookworm" in text
    )
    build = yaml.safe_load(COMPOSE.read_text())["x-autoprune"]["build"]["args"]
    assert _with_defaults(build["BASE"]) == "python:3.11-slim-bookworm"
    assert _with_defaults(build["TORCH_INDEX"]) == "https://download.pytorch.org/whl/cpu"
    assert _with_defaults(_services()["postgres"]["image"]) == "postgres:16-bookworm"
    assert "USER 1000" in text and "PASSWORD" not in text


@pytest.mark.parametrize(
    "tool, args",
    [
        ("hadolint", [str(DOCKERFILE)]),
        ("docker-compose", ["-f", str(COMPOSE), "config", "-q"]),
        (
            "docker-compose",
            ["-f", str(COMPOSE), "-f", str(COMPOSE.with_name("compose.gpu.yaml")), "config", "-q"],
        ),
    ],
)
def test_docker_files_pass_their_linters(tool: str, args: list[str]) -> None:
    beside = Path(sys.executable).with_name(tool)  # hadolint comes with the dev extras, in the venv
    found = str(beside) if beside.is_file() else shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (docs/docker.md says how)")
    r = subprocess.run([found, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def docker_engine() -> str | None:
    """Why no Docker engine can be used here, or None: one that answers, or one started now
    (dockerd as root in the background, as .ci/run does)."""
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return "docker or docker-compose is not installed"
    answers = lambda: subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0  # noqa: E731
    if answers():
        return None
    import os

    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        return "no Docker engine answers and none can be started (dockerd needs root)"
    subprocess.Popen(
        ["dockerd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    import time

    for _ in range(60):
        if answers():
            return None
        time.sleep(1)
    return "dockerd did not answer within 60 s"


@pytest.mark.slow
def test_e2e_names_the_step_that_fails_and_cleans_up() -> None:
    why = docker_engine()
    if why:
        pytest.skip(why)
    env = {
        **__import__("os").environ,
        "DB_PASSWORD": "not-the-password",
        "E2E_PROJECT": "autoprune-e2e-fail",
        "E2E_KEEP_IMAGES": "1",
        "E2E_PORT": "18081",
    }  # the full run (.ci/run) reuses the images
    r = subprocess.run(
        ["bash", str(REPO / "docker" / "e2e.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode != 0, r.stdout
    assert "e2e: FAILED at step: up" in r.stderr, r.stdout + r.stderr
    assert "password authentication failed" in r.stderr, r.stderr  # setup's one line, the database's words
    assert "e2e: ok: build" in r.stdout and "e2e: ok: images" in r.stdout  # a line per step before it, timed
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=autoprune-e2e-fail"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert not left  # cleaned up, also on failure
    assert not list((REPO / "docker" / "wheels").glob("*.whl"))
