"""Fault injection: four workers started as separate commands at the same instant on a fresh
database, SIGKILLed at random moments (and the moment a packed file lands, before its trial
completes) and replaced, until the study holds N trials; then one more run. The study must
end with exactly N trials, each sampled setting once, each baseline once, nothing left
running or queued, every trial's packed file loadable and no file without its trial."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from autoprune.compress import load_packed
from autoprune.search.objective import STATE_ATTR
from tests.conftest import PG_URL, REPO, postgres_reachable, run_cli

N = 12
KILLS = 8  # kill events, every fourth one the moment a packed file lands
GRACE = 3
SPEC = """
[study]
trials = {n}
artifacts = "{artifacts}"
baselines = ["{recipes}/deep-compression-lenet5.toml", "{recipes}/uniform-l1.toml"]
latency_repeats = 3
heartbeat_interval = 1
grace_period = {grace}
[model]
name = "lenet5"
[data]
name = "digits"
[train]
epochs = 2
[space]
ratio = [0.0, 0.5]
quality = [0.0, 1.5]
conv_bits = [4, 6]
fc_bits = [3, 5]
finetune_epochs = [1]
quant_epochs = [1]
max_batches = 3
"""


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autoprune", "search", "--quiet", "--threads", "1", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def completed(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()


@pytest.fixture(
    params=[
        "journal",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}"
            ),
        ),
    ]
)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "journal":
        yield f"journal:{tmp_path / 'study.log'}"
        return
    admin = sqlalchemy.create_engine(PG_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    db = f"autoprune_faults_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{db}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.slow
def test_workers_killed_at_random_leave_every_trial_run_once(fresh_url: str, tmp_path: Path) -> None:
    from autoprune.search.storage import open_storage, parse_storage

    artifacts = tmp_path / "artifacts"
    spec = tmp_path / "faults.toml"
    spec.write_text(SPEC.format(n=N, grace=GRACE, artifacts=artifacts, recipes=REPO / "studies" / "recipes"))
    name = "faults"
    args = [str(spec), "--storage", fresh_url, "--study", name]
    rng = random.Random(0)
    workers = [start(args) for _ in range(4)]  # at the same instant, on an empty database
    storage = None
    kills = landed = 0
    deadline = time.monotonic() + 420
    try:
        while time.monotonic() < deadline:
            if storage is None:
                try:
                    storage = open_storage(parse_storage(fresh_url), create=False)
                except Exception:  # the workers have not made the schema yet
                    time.sleep(0.5)
                    continue
            done = completed(storage, name)
            if done >= N:
                break
            if kills >= KILLS:  # enough faults: let the survivors finish
                time.sleep(0.5)
                continue
            if kills % 4 == 3:  # the moment a packed file lands: before its trial completes
                seen = set(artifacts.iterdir()) if artifacts.is_dir() else set()
                until = time.monotonic() + 30
                while time.monotonic() < until and not (
                    artifacts.is_dir() and set(artifacts.iterdir()) - seen
                ):
                    time.sleep(0.002)
                for w in workers:
                    kill(w)
                workers = [start(args) for _ in range(4)]
                landed += 1
            else:  # a random moment, at least once per trial finished
                until = time.monotonic() + rng.uniform(0.5, 3.0)
                while time.monotonic() < until and completed(storage, name) == done:
                    time.sleep(0.05)
                alive = [w for w in workers if w.poll() is None]
                if alive:
                    victim = rng.choice(alive)
                    kill(victim)
                    workers[workers.index(victim)] = start(args)
            kills += 1
        else:
            raise AssertionError(f"the study did not reach {N} trials in time")
    finally:
        for w in workers:
            kill(w)
    assert kills == KILLS and landed == KILLS // 4
    time.sleep(2 * GRACE + 1)  # the dead workers' trials are stale, their stray files old enough to go
    rerun = run_cli("search", "--quiet", *args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr

    study = optuna.load_study(study_name=name, storage=open_storage(parse_storage(fresh_url), create=False))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    baselines = sorted(
        t.user_attrs["recipe_name"] for t in complete if t.user_attrs.get("source") == "baseline"
    )
    assert baselines == ["deep-compression-lenet5", "uniform-l1"]
    sampled = [tuple(sorted(t.params.items())) for t in complete if t.user_attrs.get("source") != "baseline"]
    assert len(set(sampled)) == len(sampled) == N - 2
    files = {p.name for p in artifacts.iterdir()}
    packed = {t.user_attrs["artifact_id"] for t in complete}
    states = {t.user_attrs[STATE_ATTR] for t in complete if STATE_ATTR in t.user_attrs}  # for promotion
    assert packed <= files <= packed | states  # every packed file kept, and no file without its trial
    for t in complete:
        model, header = load_packed(artifacts / t.user_attrs["artifact_id"])
        assert sum(p.numel() for p in model.parameters()) == t.user_attrs["params"]


def _iptables_usable() -> bool:
    try:
        return (
            subprocess.run(["iptables", "-L", "INPUT", "-n"], capture_output=True, timeout=10).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


class Relay:
    """A TCP relay on a free local port to PostgreSQL, so that packets to it alone can be dropped.

    When either side of a connection ends, both are closed, and `close` ends them all: a client
    killed while its packets were dropped must not leave its server session open, holding the
    locks of a transaction that nobody will finish (the study's cleanup would wait on them)."""

    def __init__(self, host: str, port: int) -> None:
        import threading

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            end(a, b)

        def accept() -> None:
            while True:
                try:
                    client, _ = self.server.accept()
                except OSError:
                    return
                upstream = socket.create_connection((host, port), timeout=10)
                upstream.settimeout(None)
                self.sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def close(self) -> None:
        self.server.close()
        end(*self.sockets)


def end(*sockets: socket.socket) -> None:
    """Shut down, then close: a bare close leaves the connection open while another thread still
    waits in `recv` on it, so PostgreSQL would never hear that its client is gone."""
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


@pytest.mark.slow
@pytest.mark.skipif(not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}")
@pytest.mark.skipif(not _iptables_usable(), reason="needs iptables (root) to drop a connection's packets")
@pytest.mark.parametrize("interrupt", [False, True], ids=["waits", "ctrl-c"])
def test_a_silently_dead_connection_is_one_line_within_the_timeout(interrupt: bool, tmp_path: Path) -> None:
    import urllib.parse

    pg = urllib.parse.urlsplit(PG_URL)
    relay = Relay(pg.hostname or "127.0.0.1", pg.port or 5432)
    url = f"{pg.scheme}://{pg.username}@127.0.0.1:{relay.port}{pg.path}"
    name = f"paused-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "paused.toml"
    text = SPEC.format(n=50, grace=GRACE, artifacts=tmp_path / "a", recipes=REPO / "studies" / "recipes")
    spec.write_text(text.replace(f"grace_period = {GRACE}", f"grace_period = {GRACE}\ndb_timeout = 5"))
    # Its own session waits at most 30 s on a lock: a leftover session fails the test, never hangs it.
    no_hang = {"connect_args": {"options": "-c lock_timeout=30000"}}
    storage = optuna.storages.RDBStorage(PG_URL, engine_kwargs=no_hang)
    proc = start([str(spec), "--storage", url, "--study", name])
    rules = [
        ["INPUT", "-p", "tcp", "--dport", str(relay.port), "-j", "DROP"],
        ["INPUT", "-p", "tcp", "--sport", str(relay.port), "-j", "DROP"],
    ]
    try:
        deadline = time.monotonic() + 180
        while completed(storage, name) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert completed(storage, name) >= 3, proc.stderr.read() if proc.poll() is not None else "too slow"
        for rule in rules:  # silence: no reset, no answer, as a cut cable or a paused VM
            subprocess.run(["iptables", "-I", *rule], check=True)
        paused = time.monotonic()
        if interrupt:
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        took = time.monotonic() - paused
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], capture_output=True)
        kill(proc)
        relay.close()
    lines = [
        line for line in err.strip().splitlines() if not line.startswith("stopping at the next safe point")
    ]
    assert len(lines) == 1 and "Traceback" not in err, err  # Ctrl-C's own notice, then one line
    assert took < 5 + 2, (
        took,
        err,
    )  # db_timeout (5 s: ping and reconnect, 2 s each) and the next heartbeat (1 s)
    if interrupt:
        assert proc.returncode in (2, 130), err
    else:
        assert proc.returncode == 2, err
        assert f"127.0.0.1:{relay.port}" in lines[0], lines[0]
    assert completed(storage, name) >= 3  # what was stored stays stored
    optuna.delete_study(study_name=name, storage=storage)
