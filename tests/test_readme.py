"""The README and docs/ stay true: every shell command and Python snippet in them runs, in order
(README.md, then docs/ in the order of ``DOCS``), in a fresh folder holding the repository's
studies, and exits 0.

Budgets are bounded so that the whole README runs in a few minutes: Fashion-MNIST is a small
stand-in of the same format and shapes (``--data-dir``), its base model trains one epoch and its
searches run one trial, each in a study of its own (the README lists them as alternatives); the
default search runs 12 trials (a resumed one 14) and `compare` runs 2 proposals. A few lines
cannot run anywhere but on the reader's machine (a
placeholder database, dataset folder or factory, Docker, the set-up itself) and are listed
with why. A line the test does not know is run as written."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autoprune.compress import CompressConfig
from autoprune.search.spec import spec_from_dict

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from tests.conftest import REPO, images, write_idx

NOT_HERE = {  # a piece of the line -> why it cannot run in a test
    "pip install": "the set-up itself: CI runs it, before this test",
    "USER@HOST": "a placeholder PostgreSQL server",
    "~/data/cifar": "a placeholder CIFAR-10 folder",
    "mynets.py": "a placeholder model file",
    "docker": "needs a Docker engine (docker/e2e.sh runs the stack)",
    "other@sqlite:///other.db": "a placeholder second storage",
    "journal:studies/gpus.log": "needs a machine with several GPUs (tests/test_device.py runs the CPU twin)",
}


# the reference, in the order its commands build on each other (a search before its export)
DOCS = ("search", "surrogate", "compress", "security", "models-and-data", "docker", "python-api")
README_LIMIT = 12 * 1024  # bytes: what it does, set-up, results, commands; the reference is in docs/


def pages() -> list[Path]:
    return [REPO / "README.md", *(REPO / "docs" / f"{name}.md" for name in DOCS)]


def blocks(language: str) -> list[str]:
    text = "\n".join(page.read_text() for page in pages())
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_is_short_and_every_doc_is_run() -> None:
    assert len((REPO / "README.md").read_bytes()) <= README_LIMIT
    assert {p.name for p in (REPO / "docs").glob("*.md")} == {f"{name}.md" for name in DOCS}
    # every page the README links to exists
    for link in re.findall(r"\]\(([^)#]+)", (REPO / "README.md").read_text()):
        assert (REPO / link).exists(), link


def commands() -> list[str]:
    """Every command line of the README's shell blocks, continuations joined, comments and
    optional ``[...]`` parts left out."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line)
            line = re.sub(r"\[[^\]]*\]", "", line).strip()
            if line:
                out.append(line)
    return out


def bounded(line: str, fashion: list[str], data: Path) -> list[str]:
    """The command as the test runs it, its budget bounded: the default search 12 trials (what
    the surrogate needs), Fashion-MNIST the stand-in in ``data``, its searches one trial on a
    base trained one epoch, each in a study of its own (``fashion`` collects their names;
    finalize takes the first)."""
    args = line.split()
    if args[0] == "python":  # this environment's, wherever the reader's is
        return [sys.executable, *args[1:]]
    if args[0] != "autoprune":
        return args
    if "fashion-mnist" in args or "studies/fashion-lenet5.toml" in args or "new-study" in args:
        args += ["--data-dir", str(data)]

    def setting(flag: str, value: str) -> None:
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args.extend([flag, value])

    command = args[1]
    if "studies/fashion-lenet5.toml" in args and command in ("search", "finalize"):
        args += ["--train-epochs", "1"]
        if command == "search" and "--setup-only" not in args:
            setting("--trials", "1")
        if "--study" not in args:
            if command == "search":
                fashion.append(f"fashion-{len(fashion)}")
            args += ["--study", fashion[-1] if command == "search" else fashion[0]]
    elif command == "search" and "--study" not in args or command == "search" and "--sampler" in args:
        setting("--trials", "12")
    elif command == "search" and "--trials" in args:  # a study resumed: two more trials
        setting("--trials", "14")
    if command == "train":
        setting("--epochs", "1")
    if command == "compress":
        setting("--epochs", "1")
    if "compare" in args:
        setting("--at", "10")
        setting("-k", "2")
    quiet = (
        ["-q"]
        if command in ("search", "finalize", "train", "compress", "surrogate", "sensitivity", "report")
        else []
    )
    return [sys.executable, "-m", "autoprune", *args[1:], *quiet]


def dashboard(argv: list[str], cwd: Path) -> None:
    """Serve, answer once, stop: it runs until stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*argv, "--port", str(port)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    assert r.status == 200
                    return
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                time.sleep(0.5)
        raise AssertionError("the dashboard did not answer")
    finally:
        server.terminate()
        server.wait(timeout=30)


def stand_in_fashion(folder: Path) -> Path:
    """Fashion-MNIST's four IDX files, small: 1,200 training and 300 test images of 28x28 in 10
    classes (learnable bands), so that the README's Fashion-MNIST lines run in seconds."""
    folder.mkdir(parents=True)
    x, y = images(1200, (28, 28), 10)
    xt, yt = images(300, (28, 28), 10, seed=1)
    for name, array in (
        ("train-images-idx3-ubyte", x),
        ("train-labels-idx1-ubyte", y),
        ("t10k-images-idx3-ubyte", xt),
        ("t10k-labels-idx1-ubyte", yt),
    ):
        write_idx(folder / name, array, gz=True)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(1800)  # every command of the README in turn: 8-9 minutes, past 15 on an AVX2-only host
def test_every_readme_command_and_snippet_runs(tmp_path: Path) -> None:
    work = tmp_path / "reader"
    shutil.copytree(REPO / "studies", work / "studies", ignore=shutil.ignore_patterns("*.db", "artifacts"))
    shutil.copytree(REPO / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    data = stand_in_fashion(tmp_path / "fashion")
    ran, skipped, fashion = [], [], []
    for line in commands():
        why = next((why for piece, why in NOT_HERE.items() if piece in line), None)
        if why:
            skipped.append((line, why))
            continue
        argv = bounded(line, fashion, data)
        if argv[3:4] == ["dashboard"]:
            dashboard(argv, work)
        else:
            started = time.perf_counter()
            r = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"README line {line!r} (run as {argv[2:]}) failed:\n{r.stderr}"
            print(f"{time.perf_counter() - started:6.1f} s  {' '.join(argv[3:])}")
        ran.append(line)
    for snippet in blocks("python"):
        r = subprocess.run(
            [sys.executable, "-c", snippet], cwd=work, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, f"README snippet failed:\n{snippet}\n{r.stderr}"
    for block in blocks("toml"):  # a spec's tables, or the recipe reference
        table = tomllib.loads(block)
        if set(table) & {"study", "data", "model", "space", "final"}:
            spec_from_dict(table)
        else:
            CompressConfig.from_dict(table)
    assert len(ran) >= 15 and len(skipped) <= 11, (
        ran,
        skipped,
    )  # a new placeholder line is a choice, seen here
    assert not list(REPO.glob("*.apk")), "a README command wrote into the repository"


def anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_benchmarks_open_with_the_summary_and_every_link_in_it_resolves() -> None:
    text = (REPO / "BENCHMARKS.md").read_text()
    headings = re.findall(r"^#{2,3} (.+)$", text, flags=re.M)
    assert headings[0].startswith("Summary"), headings[:2]
    anchors = {anchor(h) for h in headings}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "the summary links to no section"
    assert not [link for link in links if link not in anchors]
    summary = text.split("\n## ", 2)[1]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows and all(line.rstrip().endswith("|") and line.count("|") == 4 for line in rows), rows
