"""What autoprune trusts: the code, files and folders named on the command line. What it
never trusts: a packed file, a study's stored spec or attributes, an artifact id. Each test
crafts the hostile input a shared file or database could carry and checks that nothing ran,
nothing leaked and nothing was written outside the working folder."""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest

from autoprune.compress import PackError, load_packed
from autoprune.search.spec import SpecError, spec_from_dict
from autoprune.search.storage import mask_url, parse_storage
from tests.conftest import PG_URL, postgres_reachable
from tests.workspace import call, copy_study, rewrite_header, snapshot

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")

def build(**kwargs):
    from autoprune.models import ModelSpec, create_model
    return create_model(ModelSpec("lenet5", 10, 1, (8, 8)))
"""


def evil_module(folder: Path, name: str = "evil.py") -> tuple[Path, Path]:
    marker = folder / f"marker-{uuid.uuid4().hex[:6]}"
    (folder / name).write_text(EVIL.format(marker=str(marker)))
    return folder / name, marker


@pytest.mark.parametrize("relative", [False, True])
def test_a_packed_file_never_imports_the_code_it_names(
    relative: bool,
    workspace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    evil, marker = evil_module(tmp_path)
    factory = f"{evil.name if relative else evil}:build"
    crafted = rewrite_header(
        workspace / "m.apk", tmp_path / "crafted.apk", lambda h: h["model"].update(name=factory)
    )
    monkeypatch.chdir(tmp_path)  # the relative .py shipped next to the file
    code, _, err = call(["eval", str(crafted)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--model {factory}" in err
    assert not marker.exists()
    with pytest.raises(PackError, match="never imports code"):
        load_packed(crafted)
    assert not marker.exists()
    # the same factory, named by the user, is theirs to run
    code, _, err = call(["eval", str(crafted), "--model", factory, "--json"], capsys)
    assert code == 0, err
    assert marker.exists()


def test_a_module_factory_in_a_packed_file_cannot_end_the_process(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crafted = rewrite_header(
        workspace / "m.apk", tmp_path / "exit.apk", lambda h: h["model"].update(name="sys:exit")
    )
    code, _, err = call(["eval", str(crafted)], capsys)
    assert code == 2 and "--model sys:exit" in err


def test_a_packed_file_never_names_the_folder_to_read(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = {"name": "cifar10", "data_dir": str(tmp_path / "batches"), "val_fraction": 0.1, "seed": 0}
    crafted = rewrite_header(
        workspace / "m.apk", tmp_path / "c.apk", lambda h: h["meta"].update(dataset=recorded)
    )
    code, _, err = call(["eval", str(crafted)], capsys)
    assert code == 2 and "needs --data-dir" in err and "pass --data-dir yourself" in err


def test_an_oversize_header_is_refused_without_allocating(workspace: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name in ("bomb.apk", "classes.apk"):
        with pytest.raises(PackError):
            load_packed(workspace / name)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


def test_a_stored_spec_never_runs_the_code_it_names(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_study(workspace, tmp_path)
    evil, marker = evil_module(tmp_path)
    study = optuna.load_study(study_name="tiny", storage=url)
    spec = study.user_attrs["spec"]
    spec["model"]["name"] = f"{evil}:build"
    study.set_user_attr("spec", spec)
    monkeypatch.chdir(tmp_path)
    for command in (["fit"], ["propose"], ["compare", "--at", "2"]):
        code, _, err = call(["surrogate", *command, "--storage", url, "-q"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"pass --model {evil}:build" in err
        assert not marker.exists()


def test_a_stored_spec_never_chooses_a_folder(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_study(workspace, tmp_path)
    study = optuna.load_study(study_name="tiny", storage=url)
    spec = study.user_attrs["spec"]
    spec["study"]["artifacts"] = "/etc"
    study.set_user_attr("spec", spec)
    with sqlite3.connect(tmp_path / "study.db") as conn:  # a hostile writer edits rows directly
        conn.execute("UPDATE trial_user_attributes SET value_json = '\"passwd\"' WHERE key = 'artifact_id'")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = call(["export", "--storage", url, "--trial", "0", "--out", "x.apk"], capsys)
    assert code == 2 and "has no packed file" in err
    assert not (tmp_path / "x.apk").exists() and snapshot(tmp_path) == before
    spec["data"]["data_dir"] = "/etc"
    study.set_user_attr("spec", spec)
    code, _, err = call(["surrogate", "fit", "--storage", url, "-q"], capsys)
    assert code == 2 and "pass --data-dir yourself" in err


def test_a_stored_study_name_writes_only_into_the_current_folder(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_study(workspace, tmp_path)
    with sqlite3.connect(tmp_path / "study.db") as conn:  # a name no autoprune command accepts
        conn.execute("UPDATE studies SET study_name = '../../x'")
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    code, out, err = call(
        ["export", "--storage", url, "--trial", "0", "--artifacts", str(tmp_path / "artifacts"), "--json"],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in work.iterdir()) == ["_.._x-trial-0.apk"]
    assert not (tmp_path / "x-trial-0.apk").exists()


@pytest.mark.parametrize("name", ["../../x", "a/b", "a\0b", ".hidden", "-rf", "x" * 101])
def test_study_names_that_would_name_other_files_are_refused(name: str) -> None:
    with pytest.raises(SpecError, match="study name"):
        spec_from_dict({"study": {"name": name}})


def test_passwords_are_masked_even_with_a_raw_at_sign() -> None:
    info = parse_storage("postgresql://postgres:hunt@er2pw@db.example/optuna")
    assert info.safe_url == "postgresql://postgres:***@db.example/optuna"
    assert info.public_url == "postgresql://postgres@db.example/optuna"
    assert "hunt" not in mask_url("could not connect to postgresql://postgres:hunt@er2pw@db.example/optuna")
    query = parse_storage("postgresql://u@h/db?password=hunter2&sslmode=require")
    assert "hunter2" not in query.safe_url and "hunter2" not in query.public_url


@pytest.mark.skipif(not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}")
def test_the_database_never_stores_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"secret-{uuid.uuid4().hex[:8]}"
    secret = "s3cret-" + uuid.uuid4().hex[:8]
    url = PG_URL.replace("postgres@", f"postgres:{secret}@")  # trust auth accepts any password
    (tmp_path / "s.toml").write_text("[study]\nlatency_repeats = 3\n[train]\nepochs = 1\n")
    try:
        code, out, err = call(
            [
                "search",
                str(tmp_path / "s.toml"),
                "--storage",
                url,
                "--study",
                name,
                "--setup-only",
                "--quiet",
                "--json",
            ],
            capsys,
        )
        assert code == 0, err
        assert secret not in out + err
        study = optuna.load_study(study_name=name, storage=PG_URL)
        assert study.user_attrs["spec"]["study"]["storage"] == PG_URL  # the URL as given, less the password
        if shutil.which("pg_dump"):
            dump = subprocess.run(
                ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", PG_URL.rsplit("/", 1)[1]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert name in dump and secret not in dump
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)


def test_a_dashboard_open_to_the_network_says_so(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import autoprune.cli._search as search_cli

    served = []
    monkeypatch.setattr(search_cli, "serve_dashboard", lambda storage, **kw: served.append(kw))
    monkeypatch.chdir(workspace)
    code, _, err = call(["dashboard", "--storage", "sqlite:///study.db", "--host", "0.0.0.0"], capsys)
    assert code == 0 and served[0]["host"] == "0.0.0.0"
    assert "no login" in err and "SSH tunnel" in err
    code, _, err = call(["dashboard", "--storage", "sqlite:///study.db"], capsys)
    assert code == 0 and "warning" not in err


def test_a_surrogate_file_never_runs_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pickled"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"format": "autoprune-surrogate/2", "models": Evil()}, tmp_path / "evil.pt")
    code, _, err = call(
        [
            "surrogate",
            "propose",
            "--storage",
            f"sqlite:///{tmp_path / 'none.db'}",
            "--surrogate",
            str(tmp_path / "evil.pt"),
            "-q",
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and not marker.exists()
    from autoprune.surrogate import Surrogate, SurrogateError

    with pytest.raises(SurrogateError, match="not a saved surrogate"):
        Surrogate.load(tmp_path / "evil.pt")  # read with weights_only: refused, never unpickled
    assert not marker.exists()


def test_checkpoints_load_without_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pickled"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    code, _, err = call(["train", "--checkpoint", str(tmp_path / "evil.pt"), "--quiet"], capsys)
    assert code == 2 and not marker.exists()


def test_the_dashboard_on_loopback_answers_only_to_its_own_address(workspace: Path) -> None:
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 sends its own
    name as Host; the server refuses it, and serves the browser that names 127.0.0.1."""
    import socket
    import threading
    import urllib.request

    from autoprune.search.storage import open_storage
    from autoprune.workflow import _dashboard

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = open_storage(parse_storage(f"sqlite:///{workspace / 'study.db'}"), create=False)
    servers = []
    real_make_server = _dashboard.make_server

    def keep(*args, **kwargs):  # noqa: ANN002, ANN003
        servers.append(real_make_server(*args, **kwargs))
        return servers[-1]

    _dashboard.make_server = keep
    try:
        thread = threading.Thread(
            target=_dashboard.serve_dashboard,
            args=(storage,),
            kwargs={"host": "127.0.0.1", "port": port},
            daemon=True,
        )
        thread.start()
        for _ in range(100):
            if servers:
                break
            threading.Event().wait(0.05)

        def status(host: str) -> int:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/meta", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert status("evil.example") == 403
        assert status(f"evil.example:{port}") == 403
        assert status(f"127.0.0.1:{port}") == 200
        assert status(f"localhost:{port}") == 200
    finally:
        _dashboard.make_server = real_make_server
        if servers:
            servers[0].shutdown()
    assert _dashboard.allowed_hosts("0.0.0.0", 80) == {"0.0.0.0", "0.0.0.0:80"}


@pytest.mark.skipif(not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}")
@pytest.mark.parametrize("how", ["PGPASSWORD", "PGPASSFILE"])
def test_the_password_can_come_from_libpq_not_the_command_line(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL without a password: libpq takes it from PGPASSWORD or a passfile (~/.pgpass), so it
    never shows in ``ps``. The connection autoprune opens carries the password libpq found."""
    from autoprune.search.storage import open_storage

    secret = "s3cret-" + uuid.uuid4().hex[:8]
    if how == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", secret)
    else:
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"127.0.0.1:5432:*:postgres:{secret}\n")
        passfile.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(passfile))
        monkeypatch.delenv("PGPASSWORD", raising=False)
    info = parse_storage(PG_URL)
    assert ":" not in PG_URL.split("//")[1].split("@")[0]  # no password in the URL
    storage = open_storage(info, create=True)  # a fresh database has no schema yet
    with storage.engine.connect() as conn:
        assert conn.connection.dbapi_connection.info.password == secret
    assert secret not in info.safe_url + info.public_url


def test_fuzzed_packed_files_load_to_their_shapes_or_are_one_pack_error(
    workspace: Path, tmp_path: Path
) -> None:
    """A short run of bench/fuzz_packed.py (which runs 100,000 and more): mutants of a real file,
    most with a valid checksum again, a third with a rewritten header value."""
    import numpy as np

    from tests.fuzz_packed import check, mutant

    data = (workspace / "m.apk").read_bytes()
    rng = np.random.default_rng(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen = {"loaded": 0, "refused": 0}
    path = tmp_path / "mutant.apk"
    for _ in range(1500):
        path.write_bytes(mutant(data, rng))
        seen[check(path)] += 1
    assert seen["refused"] > 1000 and seen["loaded"] > 0, seen  # both ways out are exercised
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"
