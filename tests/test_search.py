"""autoprune search against real storages: SQLite, PostgreSQL (when a server is reachable)
and a journal file. Every test runs the command as a user would, in a subprocess."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from autoprune.compress import load_packed
from autoprune.search.objective import stored_recipes, trial_recipe
from autoprune.search.record import Budget, TrialRecord
from autoprune.search.record import names as record_names
from autoprune.search.spec import SpecError, load_spec, spec_from_dict
from tests.conftest import PG_URL, REPO, assert_one_line_error, postgres_reachable, run_cli

TINY_SPEC = """
[study]
trials = {trials}
objectives = {objectives}
baselines = ["{recipes}/deep-compression-lenet5.toml", "{recipes}/uniform-l1.toml"]
latency_repeats = 3
heartbeat_interval = 1
grace_period = 4
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
finetune_epochs = [{epochs}]
quant_epochs = [1]
max_batches = {max_batches}
"""


STORAGES = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}"
        ),
    ),
]


def write_spec(
    tmp_path: Path,
    *,
    trials: int = 4,
    objectives: str = '["accuracy", "packed_bytes"]',
    epochs: int = 1,
    max_batches: int = 3,
) -> Path:
    path = tmp_path / "tiny.toml"
    recipes = REPO / "studies" / "recipes"
    path.write_text(
        TINY_SPEC.format(
            trials=trials, objectives=objectives, recipes=recipes, epochs=epochs, max_batches=max_batches
        )
    )
    return path


def storage_url(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else PG_URL


@functools.cache
def storage_for(url: str) -> optuna.storages.BaseStorage:
    """One storage (one connection pool) per URL: polling must not exhaust the server."""
    from autoprune.search.storage import open_storage, parse_storage

    return open_storage(parse_storage(url))


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_for(url))


def search(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("search", "--quiet", *args, timeout=timeout)


def popen_search(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autoprune", "search", "--quiet", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


@pytest.fixture
def study_name(request: pytest.FixtureRequest):
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    if postgres_reachable():  # leave the shared test database as it was
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG_URL)


def test_shipped_specs_load() -> None:
    for path in sorted((REPO / "studies").glob("*.toml")):
        spec = load_spec(path)
        assert spec.study.name == path.stem
        for recipe in spec.study.baselines:
            assert (path.parent / recipe).is_file()
    for path in sorted((REPO / "bench" / "specs").glob("*.toml")):
        assert load_spec(path).study.name == path.stem  # the benchmarks' own specs load too


@pytest.mark.parametrize(
    "data, message",
    [
        ({"study": {"trails": 3}}, "unknown key study.trails"),
        ({"space": {"bits": [2, 4]}}, "unknown key space.bits"),
        ({"study": {"trials": "many"}}, "study.trials='many' should be of type int"),
        ({"space": {"ratio": [0.5, 0.2]}}, "space.ratio=[0.5, 0.2] is an empty range"),
        ({"space": {"conv_bits": [4, 4]}}, "space.conv_bits=[4, 4] is an empty range"),
        ({"space": {"fc_bits": [0, 4]}}, "should lie within [1, 16]"),
        ({"study": {"objectives": ["speed"]}}, "unknown objective 'speed'"),
        ({"study": {"sampler": "cmaes"}}, "study.sampler='cmaes'"),
    ],
)
def test_spec_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(SpecError) as e:
        spec_from_dict(data)
    assert message in str(e.value)


@pytest.mark.slow
def test_bad_spec_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[space]\nratio = [0.6, 0.1]\n")
    assert_one_line_error(search(str(tmp_path / "bad.toml")), "space.ratio=[0.6, 0.1] is an empty range")


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORAGES)
def test_search_records_everything_and_resumes_to_exactly_n(
    kind: str, tmp_path: Path, study_name: str
) -> None:
    url = storage_url(kind, tmp_path)
    spec = write_spec(tmp_path, trials=3)
    first = search(str(spec), "--storage", url, "--study", study_name)
    assert first.returncode == 0, first.stderr
    study = load(url, study_name)
    assert count(study, TrialState.COMPLETE) == 3
    # the two baselines ran first, once each, under their recipe names
    baselines = [t for t in study.trials if t.user_attrs.get("source") == "baseline"]
    assert sorted(t.user_attrs["recipe_name"] for t in baselines) == ["deep-compression-lenet5", "uniform-l1"]
    assert {t.number for t in baselines} == {0, 1}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert set(record_names()) <= set(t.user_attrs), set(record_names()) - set(t.user_attrs)
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["packed_bytes"]]
    assert study.trials[2].user_attrs["source"] == "TPESampler"
    assert {"base", "spec", "model", "dataset"} <= set(study.user_attrs)
    # a larger plan resumes the same study and completes it exactly, baselines not repeated
    second = search(str(spec), "--storage", url, "--study", study_name, "--trials", "5", "--json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["states"] == {"COMPLETE": 5} and summary["pareto"]
    study = load(url, study_name)
    assert count(study, TrialState.COMPLETE) == 5
    assert sum(t.user_attrs.get("source") == "baseline" for t in study.trials) == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORAGES)
def test_ctrl_c_leaves_nothing_running_and_the_same_command_resumes(
    kind: str, tmp_path: Path, study_name: str
) -> None:
    url = storage_url(kind, tmp_path)
    spec = write_spec(tmp_path, trials=6, epochs=3, max_batches=10)
    args = (str(spec), "--storage", url, "--study", study_name)
    proc = popen_search(*args)
    # interrupt mid-plan: a trial runs and at least two more are still to come, so a slow
    # poll cannot let the search finish before the signal lands
    wait_for(
        lambda: _study_has(
            url,
            study_name,
            lambda s: 1 <= count(s, TrialState.COMPLETE) <= 3 and count(s, TrialState.RUNNING) == 1,
        )
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err.strip().splitlines()[-1]
    study = load(url, study_name)
    assert count(study, TrialState.RUNNING) == 0
    again = search(*args)
    assert again.returncode == 0, again.stderr
    assert count(load(url, study_name), TrialState.COMPLETE) == 6


@pytest.mark.slow
def test_ctrl_c_during_a_baseline_then_rerun_runs_each_baseline_once(tmp_path: Path, study_name: str) -> None:
    url = storage_url("sqlite", tmp_path)
    args = (
        str(write_spec(tmp_path, trials=4, epochs=3, max_batches=10)),
        "--storage",
        url,
        "--study",
        study_name,
    )
    proc = popen_search(*args)
    wait_for(
        lambda: _study_has(
            url,
            study_name,
            lambda s: count(s, TrialState.COMPLETE) == 0 and count(s, TrialState.RUNNING) == 1,
        )
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    interrupted = load(url, study_name).trials[0]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["source"] == "baseline"
    again = search(*args)
    assert again.returncode == 0, again.stderr
    study = load(url, study_name)
    done = [
        t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs.get("source") == "baseline"
    ]
    assert sorted(t.user_attrs["recipe_name"] for t in done) == ["deep-compression-lenet5", "uniform-l1"]
    assert count(study, TrialState.COMPLETE) == 4 and not count(study, TrialState.RUNNING, TrialState.WAITING)


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORAGES)
def test_a_killed_worker_trial_is_retried(kind: str, tmp_path: Path, study_name: str) -> None:
    url = storage_url(kind, tmp_path)
    spec = write_spec(tmp_path, trials=5, epochs=3, max_batches=10)
    args = (str(spec), "--storage", url, "--study", study_name)
    victim = popen_search(*args)
    # kill it mid-plan, in a trial whose heartbeat is recorded (the case before the first beat:
    # the test below); a fixed sleep let the short trials finish first once
    wait_for(
        lambda: _study_has(url, study_name, lambda s: count(s, TrialState.COMPLETE) <= 2 and _beating(url, s))
    )
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    killed = [t for t in load(url, study_name).trials if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    survivor = search(*args)
    assert survivor.returncode == 0, survivor.stderr
    study = load(url, study_name)
    assert count(study, TrialState.COMPLETE) == 5 and count(study, TrialState.RUNNING) == 0
    assert study.trials[killed[0].number].state == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    # the retry runs the same settings (the victim may have died before recording all of them)
    assert killed[0].params.items() <= retried[0].params.items()


@pytest.mark.slow
def test_a_trial_orphaned_before_its_first_heartbeat_is_failed_and_retried(tmp_path: Path) -> None:
    from autoprune.search.recovery import fail_orphaned_trials
    from autoprune.search.storage import Liveness, open_storage, parse_storage

    storage = open_storage(
        parse_storage(f"sqlite:///{tmp_path / 'o.db'}"),
        liveness=Liveness(heartbeat_interval=1, grace_period=4),
    )
    study = optuna.create_study(study_name="orphans", storage=storage)
    trial = study.ask()  # RUNNING, and no heartbeat ever recorded (its worker "died" at once)
    trial.suggest_float("x", 0, 1)
    assert fail_orphaned_trials(study) == 0  # still within the grace period
    time.sleep(4.5)
    optuna.storages.fail_stale_trials(study)  # Optuna's own check cannot see it
    assert study.trials[0].state == TrialState.RUNNING
    assert fail_orphaned_trials(study) == 1
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[1].state == TrialState.WAITING and study.trials[1].params == study.trials[0].params


@pytest.mark.slow
@pytest.mark.skipif(not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}")
def test_two_workers_on_postgresql(tmp_path: Path, study_name: str) -> None:
    spec = write_spec(tmp_path, trials=6)
    args = (str(spec), "--storage", PG_URL, "--study", study_name)
    # docker/compose.yaml's order: set up once, then workers anywhere
    setup = search(*args, "--setup-only", "--json")
    assert setup.returncode == 0, setup.stderr
    assert json.loads(setup.stdout)["states"] == {"WAITING": 2}  # the two baselines, queued
    study = load(PG_URL, study_name)
    assert "base" in study.user_attrs and count(study, TrialState.COMPLETE) == 0
    # two commands against one database (as on two machines), one of them with two processes
    other = popen_search(*args)
    both = search(*args, "--jobs", "2")
    _, err = other.communicate(timeout=300)
    assert both.returncode == 0 and other.returncode == 0, both.stderr + err
    study = load(PG_URL, study_name)
    finished = count(study, TrialState.COMPLETE)
    assert finished == 6  # the check that a trial is needed and its creation share one lock
    names = [
        t.user_attrs.get("recipe_name") for t in study.trials if t.user_attrs.get("source") == "baseline"
    ]
    assert sorted(names) == ["deep-compression-lenet5", "uniform-l1"]  # no duplicated baseline


def _warn_from_a_worker(queue: object) -> None:
    from autoprune.search.workers import _relay_logs_to

    _relay_logs_to(queue)
    optuna.logging.get_logger("optuna").warning("Caught an error from sqlalchemy: lost")
    optuna.logging.get_logger("optuna").info("Trial 3 finished")  # below the bar: not relayed
    import warnings

    warnings.warn("a Python warning in a worker", stacklevel=1)


def test_a_workers_warnings_reach_the_parents_logging_not_its_stderr(capfd: pytest.CaptureFixture) -> None:
    import logging
    import logging.handlers
    import multiprocessing

    from autoprune.search.workers import _Relay

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep(logging.WARNING)
    logging.getLogger().addHandler(keep)
    relay = logging.handlers.QueueListener(queue, _Relay())
    relay.start()
    try:
        worker = context.Process(target=_warn_from_a_worker, args=(queue,))
        worker.start()
        worker.join(timeout=120)
    finally:
        relay.stop()
        logging.getLogger().removeHandler(keep)
    assert worker.exitcode == 0
    assert any("Caught an error from sqlalchemy" in m for m in seen), seen
    assert any("a Python warning in a worker" in m for m in seen), seen
    assert not any("Trial 3 finished" in m for m in seen), seen
    assert "Caught an error" not in capfd.readouterr().err  # the worker printed nothing itself


@pytest.mark.slow
def test_sqlite_refuses_parallel_workers(tmp_path: Path) -> None:
    r = search(str(write_spec(tmp_path)), "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--jobs", "2")
    assert_one_line_error(r, "use --storage postgresql://", "journal:PATH")


@pytest.mark.slow
def test_journal_storage_with_two_workers(tmp_path: Path, study_name: str) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    r = search(str(write_spec(tmp_path, trials=4)), "--storage", url, "--study", study_name, "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert count(load(url, study_name), TrialState.COMPLETE) >= 4


@pytest.mark.slow
def test_unreachable_database_hides_the_password(tmp_path: Path) -> None:
    r = search(str(write_spec(tmp_path)), "--storage", "postgresql://alice:s3cret@127.0.0.1:1/nowhere")
    assert_one_line_error(r, "cannot open storage", "postgresql://alice:***@127.0.0.1:1/nowhere")
    assert "s3cret" not in r.stderr
    assert_one_line_error(
        search(str(write_spec(tmp_path)), "--storage", "mongodb://x"), "unsupported storage"
    )


@pytest.mark.slow
def test_optuna_cli_export_trials_and_eval(tmp_path: Path, study_name: str) -> None:
    url = storage_url("sqlite", tmp_path)
    assert (
        search(str(write_spec(tmp_path, trials=3)), "--storage", url, "--study", study_name).returncode == 0
    )
    optuna_cli = Path(sys.executable).with_name("optuna")
    for command in ("trials", "best-trials"):
        r = subprocess.run(
            [str(optuna_cli), command, "--storage", url, "--study-name", study_name, "-f", "json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert rows and all("user_attrs" in row or "number" in row for row in rows)
    listed = run_cli("trials", "--storage", url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["trial"] for t in json.loads(listed.stdout)["trials"]] == [0, 1, 2]
    out = tmp_path / "best.apk"
    exported = run_cli(
        "export",
        "--storage",
        url,
        "--study",
        study_name,
        "--trial",
        "best",
        "--max-acc-drop",
        "100",
        "--out",
        str(out),
        "--json",
    )
    assert exported.returncode == 0, exported.stderr
    model, header = load_packed(out)
    assert header["model"]["name"] == "lenet5"
    assert run_cli("eval", str(out), "--json").returncode == 0
    assert_one_line_error(
        run_cli("export", "--storage", url, "--trial", "99"), "expected a trial number below 3"
    )


@pytest.mark.slow
def test_dashboard_serves_the_study(tmp_path: Path, study_name: str) -> None:
    url = storage_url("sqlite", tmp_path)
    assert (
        search(str(write_spec(tmp_path, trials=2)), "--storage", url, "--study", study_name).returncode == 0
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "autoprune", "dashboard", "--storage", url, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def studies() -> list:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    return json.loads(r.read())["study_summaries"]
            except OSError:
                return []

        wait_for(lambda: bool(studies()), timeout=60)
        (entry,) = studies()
        assert entry["study_name"] == study_name
    finally:
        server.terminate()
        server.wait(timeout=30)


CHROMIUM = os.environ.get("AUTOPRUNE_TEST_CHROMIUM", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2):
            return True
    except OSError:
        return False


def _beating(url: str, study: optuna.Study) -> bool:
    """One trial is running and has sent a heartbeat."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if len(running) != 1:
        return False
    engine = getattr(storage_for(url), "_backend", storage_for(url)).engine
    with engine.connect() as conn:
        beat = conn.execute(
            sqlalchemy.text("SELECT 1 FROM trial_heartbeats WHERE trial_id = :id"),
            {"id": running[0]._trial_id},
        ).first()
    return beat is not None


def _study_has(url: str, name: str, predicate) -> bool:
    try:
        return predicate(load(url, name))
    except KeyError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize(
    "objectives, extra",
    [
        ('["compression_ratio"]', ("--pruner", "median", "--max-acc-drop", "2.0")),
        ('["accuracy", "latency_ms"]', ()),
    ],
)
def test_other_objectives(objectives: str, extra: tuple, tmp_path: Path, study_name: str) -> None:
    url = storage_url("sqlite", tmp_path)
    spec = write_spec(tmp_path, trials=3, objectives=objectives, epochs=2)
    r = search(str(spec), "--storage", url, "--study", study_name, "--json", *extra)
    assert r.returncode == 0, r.stderr
    study = load(url, study_name)
    names = json.loads(objectives)
    assert study.metric_names == names and study.user_attrs["objectives"] == names
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.values == [t.user_attrs[n] for n in names]
        if len(names) == 1:
            # the accuracy budget is an Optuna constraint; the pruner saw every epoch's accuracy
            judged = Budget.of(2.0, "upper", 0.9).drop(
                TrialRecord.from_attrs(t.user_attrs)
            )  # the spec's default rule
            assert (
                t.constraints == {"acc_drop": pytest.approx(judged - 2.0)}
                and judged > t.user_attrs["acc_drop"]
            )
            baseline = trial_recipe(t, stored_recipes(study))  # a baseline reports its own recipe's epochs
            recipe = baseline[0] if baseline else None
            quant = (recipe.quantize.epochs if recipe.quantize.enabled else 0) if recipe else 1
            epochs = (recipe.finetune.epochs if recipe else 2) + quant
            assert len(t.intermediate_values) == epochs
    summary = json.loads(r.stdout)
    assert summary["objectives"] == names
    if len(names) == 1:  # the Pareto table only shows trials within the budget
        assert all(row["acc_drop"] <= 2.0 for row in summary["pareto"])


@pytest.mark.slow
@pytest.mark.skipif(not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}")
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_database_dropped_mid_run_is_one_line_and_exit_2(jobs: int, tmp_path: Path) -> None:
    name = f"autoprune_drop_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(PG_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        proc = popen_search(
            str(write_spec(tmp_path, trials=20, epochs=3, max_batches=10)),
            "--storage",
            url,
            "--jobs",
            str(jobs),
        )
        probe = sqlalchemy.create_engine(url)

        def running() -> bool:
            try:
                with probe.connect() as conn:
                    return bool(
                        conn.execute(
                            sqlalchemy.text("SELECT count(*) FROM trials WHERE state = 'RUNNING'")
                        ).scalar()
                    )
            except sqlalchemy.exc.SQLAlchemyError:
                return False

        wait_for(running)
        probe.dispose()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert "Traceback" not in err, err
        if jobs == 1:
            assert proc.returncode == 2, err
            assert len(lines) == 1 and name in lines[0], err
        else:  # a line per worker that met it, and the command's own
            assert proc.returncode != 0 and lines, err
            assert all(line.startswith("autoprune search") for line in lines), err
            assert any(name in line for line in lines), err
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


BARS = """
import multiprocessing, os, sys
multiprocessing.set_start_method("spawn")  # as in a worker, where semaphores are registered
from autoprune.search import workers
if sys.argv[1] == "worker":
    workers.thread_lock_for_bars()
def mine(): return sum(f"-{os.getpid()}-" in f for f in os.listdir("/dev/shm"))
before = mine()
workers.tqdm(total=1, disable=True)
print(mine() - before)  # what the first bar made
"""


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm to list named semaphores in")
def test_a_worker_makes_no_named_semaphore_for_its_bars() -> None:
    """A named semaphore made by a worker's first bar while its heartbeat thread exits the
    process leaks, and the resource tracker's warning follows the one error line (CI saw it)."""
    made = {
        kind: subprocess.run(
            [sys.executable, "-c", BARS, kind], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.split()[-1]
        for kind in ("plain", "worker")
    }
    assert made == {"plain": "1", "worker": "0"}


RACE = """
import sys, time
import optuna
from autoprune.search.storage import open_storage, parse_storage
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
storage = open_storage(parse_storage(sys.argv[1]))
optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(not postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}")
def test_workers_started_together_on_an_empty_database_all_start() -> None:
    admin = sqlalchemy.create_engine(PG_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    for _ in range(3):  # the race is a matter of milliseconds: three fresh databases
        name = f"autoprune_race_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        try:
            start = str(time.time() + 4.0)  # every process imports first, then they go together
            url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
            procs = [
                subprocess.Popen([sys.executable, "-c", RACE, url, start], stderr=subprocess.PIPE, text=True)
                for _ in range(4)
            ]
            for p in procs:
                _, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
        finally:
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()
