"""Shared fixtures: isolated MINER_HOME folders, the Tatoeba test data (tests/data), running the real CLI.

Running the suite in pieces: every test gets exactly one of three markers, set by
:func:`pytest_collection_modifyitems` below from what the test uses (its module, its fixtures, the
names its code and the tests/ helpers it calls use), not by hand (one set by hand wins):

* ``integration`` -- it starts or needs other processes: ``miner`` subprocesses (``run_miner``),
  worker processes, Redis, PostgreSQL, the S3 server, ``miner serve``, a browser; or it is marked
  ``slow`` (in-process, but the real models over the Tatoeba data, a million candidates, ...);
* ``chaos`` -- it kills workers, brokers or servers on purpose (tests/test_chaos.py,
  tests/test_reliability.py, tests/test_signals.py, tests/test_broker_down.py, and any test that
  sends SIGKILL);
* ``unit`` -- everything else: in-process only (library calls, CliRunner, the in-process API
  client) and not ``slow``; about 45 s on two cores.

::

    python -m pytest                       # everything (what CI and the README run)
    python -m pytest -m unit               # the fast in-process tests
    python -m pytest -m integration        # real processes and servers (and slow), no deliberate kills
    python -m pytest -m chaos              # killed workers, brokers and servers
    python -m pytest -m "not chaos"        # all but the chaos tests
    python -m pytest -m "not slow"         # the hand-set marker still works on its own

The three pieces together are the whole suite. ``slow`` (pyproject.toml) is set by hand on tests
that run real models or worker processes; a slow test is never ``unit``.
"""

from __future__ import annotations

import dis
import functools
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Test data inside the repository (tests/data/README.md: source and licence), so a clone alone passes.
TATOEBA = ROOT / "tests" / "data" / "tatoeba"
DISTRACTORS = TATOEBA / "distractors.eng"  # the first 5,000 lines of the shared distractors

#: A short unit lease for tests that kill workers or `mine`: their units (and a corpus whose filler
#: died, after twice the lease) are taken over after 3 s instead of the default 15 (what happens is the same).
SHORT_LEASE = {"MINER_HEARTBEAT_SECONDS": "0.5", "MINER_LEASE_SECONDS": "3"}
MINER_VARS = ("MINER_HOME", "MINER_DB_URL", "MINER_BROKER_URL", "MINER_RESULT_BACKEND", "MINER_ARTIFACTS", "MINER_THREADS")


def miner_env(home: Path, **extra: str) -> dict:
    """The environment of a miner process whose state lives in ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in MINER_VARS}
    env["MINER_HOME"] = str(home)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_miner(home: Path, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    """Run ``miner ARGS`` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "miner", *map(str, args)],
        capture_output=True,
        text=True,
        env=miner_env(home, **extra),
        timeout=timeout,
        cwd=str(home.parent),
    )


# --------------------------------------------------------------------------- markers

#: Modules whose every test kills workers, brokers or servers on purpose.
CHAOS_MODULES = frozenset({"test_chaos", "test_reliability", "test_signals", "test_broker_down"})
#: Fixtures (here) that start a server or worker processes, or depend on one that does.
PROCESS_FIXTURES = frozenset({"redis_server", "postgres_server", "s3_server", "cluster_env", "deu_embedded",
                              "deu_cluster"})
#: Names whose use, by a test or by a fixture or tests/ helper it reaches, means another process.
PROCESS_NAMES = frozenset({"run_miner", "start_workers", "wait_for_workers", "subprocess", "Popen",
                           "multiprocessing", "RedisServer", "PostgresServer", "S3Server", "Browser"})
#: Values of a back-end parameter that mean a server (a fixture parametrized over sqlite and postgresql).
SERVER_PARAMS = frozenset({"postgresql", "postgres", "redis", "s3"})
#: Names whose use by a test (or a tests/ helper it calls, not a fixture's clean-up) means a deliberate kill.
KILL_NAMES = frozenset({"SIGKILL"})


@functools.lru_cache(maxsize=None)
def _code_names(code) -> frozenset[str]:
    """The global, attribute and imported names ``code`` and its nested functions use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _code_names(const)
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def _imported_in(code) -> dict:
    """What ``from tests.X import name`` (or ``from .X import name``) inside ``code`` binds."""
    out, module = {}, None
    if "IMPORT_FROM" in _opnames(code):
        for ins in dis.get_instructions(code):
            if ins.opname == "IMPORT_NAME":
                module = sys.modules.get(f"tests.{ins.argval}") or sys.modules.get(ins.argval)
            elif ins.opname == "IMPORT_FROM" and module is not None and hasattr(module, ins.argval):
                out[ins.argval] = getattr(module, ins.argval)
    for const in code.co_consts:
        if inspect.iscode(const):
            out.update(_imported_in(const))
    return out


def _opnames(code) -> set[str]:
    return {dis.opname[op] for op in code.co_code[::2]}


_REACHED: dict = {}


def _reached_names(obj, seen: set | None = None) -> set[str]:
    """The names a test or fixture function uses, including those of the functions and classes of
    tests/ that it calls (transitively)."""
    if seen is None:  # a test or a fixture: computed once
        key = id(obj)
        if key not in _REACHED:
            _REACHED[key] = (obj, frozenset(_reached_names(obj, set())))
        return set(_REACHED[key][1])
    obj = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)  # a @given test: the test itself
    obj = inspect.unwrap(obj)
    if id(obj) in seen:
        return set()
    seen.add(id(obj))
    if inspect.isclass(obj):
        names = set()
        for member in vars(obj).values():
            member = getattr(member, "__func__", getattr(member, "fget", member))
            if inspect.isfunction(member):
                names |= _reached_names(member, seen)
        return names
    code = getattr(obj, "__code__", None)
    if code is None:
        return set()
    names = set(_code_names(code))
    scope = dict(getattr(obj, "__globals__", {}))
    scope.update(_imported_in(code))
    for name in list(names):
        target = scope.get(name)
        if (inspect.isfunction(target) or inspect.isclass(target)) and \
                getattr(target, "__module__", "").split(".")[0] == "tests":
            names |= _reached_names(target, seen)
    return names


def _fixture_functions(item) -> dict:
    """{name: function} of the fixtures ``item`` uses that are defined in tests/ (its whole closure)."""
    info = getattr(item, "_fixtureinfo", None)
    out = {}
    for name, defs in getattr(info, "name2fixturedefs", {}).items():
        func = getattr(defs[-1], "func", None) if defs else None
        if func is not None and getattr(func, "__module__", "").split(".")[0] == "tests":
            out[name] = func
    return out


def _asks_for_a_server(func) -> bool:
    """Whether a fixture asks for a server fixture by name (``request.getfixturevalue("postgres_server")``)."""
    code = getattr(inspect.unwrap(func), "__code__", None)
    return code is not None and "getfixturevalue" in code.co_names and bool(PROCESS_FIXTURES & set(code.co_consts))


def marker_for(item) -> str:
    """``unit``, ``integration`` or ``chaos`` (see the module docstring)."""
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    function = getattr(item, "function", None)
    own = _reached_names(function) if function is not None else set()
    if module in CHAOS_MODULES or own & KILL_NAMES:
        return "chaos"
    if PROCESS_FIXTURES & set(item.fixturenames) or own & PROCESS_NAMES:
        return "integration"
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name, func in _fixture_functions(item).items():
        if _reached_names(func) & PROCESS_NAMES:
            return "integration"
        # A fixture parametrized over back ends (sqlite, postgresql) that starts the server for some.
        if _asks_for_a_server(func) and (name not in params or params[name] in SERVER_PARAMS):
            return "integration"
    if item.get_closest_marker("slow"):  # in-process, but a real model over real data: not fast
        return "integration"
    return "unit"


KINDS = ("unit", "integration", "chaos")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(kind) for kind in KINDS):  # one set by hand wins
            item.add_marker(marker_for(item))


@pytest.fixture(autouse=True)
def _release_embedded_brokers():
    """A test that used an embedded broker in-process stops counting as its user when it ends, so
    that broker's supervisor stops it (as it does when a `miner` process exits)."""
    yield
    from miner.runtime import broker

    broker.release_all()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh MINER_HOME for in-process use (CliRunner, library calls)."""
    for var in MINER_VARS:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "home"
    monkeypatch.setenv("MINER_HOME", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return path


def no_crash(result) -> None:
    """Fail when a CliRunner invocation crashed. CliRunner catches an uncaught exception into
    ``result.exception`` (the output never holds its traceback); a clean exit, with or without an
    error message, leaves a SystemExit there or nothing."""
    import traceback

    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else repr(result.exception)
        raise AssertionError(f"the command crashed:\n{trace}\noutput:\n{result.output}")


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def make_case(folder: Path, lang: str, n_distractors: int, seed: int = 0) -> dict:
    """Tatoeba LANG-eng: all LANG lines as source; the English partners mixed with distractors,
    shuffled, as target. Returns paths and the gold pairs (as text)."""
    folder.mkdir(parents=True, exist_ok=True)
    src_lines = read_lines(TATOEBA / f"tatoeba.{lang}-eng.{lang}")
    eng_lines = read_lines(TATOEBA / f"tatoeba.{lang}-eng.eng")
    distractors = read_lines(DISTRACTORS)[:n_distractors]
    target = eng_lines + distractors
    random.Random(seed).shuffle(target)
    src = folder / f"src.{lang}"
    tgt = folder / "tgt.eng"
    src.write_text("\n".join(src_lines) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(target) + "\n", encoding="utf-8")
    gold = {(" ".join(s.split()), " ".join(t.split())) for s, t in zip(src_lines, eng_lines)}
    return {"src": src, "tgt": tgt, "gold": gold}


def read_tsv(path: Path) -> list[tuple[float, str, str]]:
    rows = []
    for line in read_lines(path):
        score, src, tgt = line.split("\t")
        rows.append((float(score), src, tgt))
    return rows


def precision_recall(rows, gold) -> tuple[float, float]:
    found = {(s, t) for _, s, t in rows}
    hits = found & gold
    return len(hits) / max(len(rows), 1), len(hits) / len(gold)


@pytest.fixture(scope="session")
def deu_embedded(tmp_path_factory) -> dict:
    """`miner mine` on the embedded default (SQLite, the embedded Redis broker, one local worker, default
    shard size): Tatoeba deu against its English partners + 5,000 distractors. Shared by the
    quality test and as the reference of the cluster test."""
    folder = tmp_path_factory.mktemp("deu_embedded")
    case = make_case(folder / "deu", "deu", 5000)
    home, out = folder / "home", folder / "out.tsv"
    result = run_miner(home, "mine", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en", "-q", "-o", out)
    return {"case": case, "home": home, "out": out, "result": result}


# --------------------------------------------------------------------------- worker processes


def start_workers(tmp_path, home, env, n, first=0, **extra):
    """Start ``n`` separate `miner worker` processes named w<first>@test, w<first+1>@test, ..."""
    procs = []
    for i in range(first, first + n):
        log = open(tmp_path / f"worker{i}.log", "ab")  # noqa: SIM115 - closed in stop_workers
        proc = subprocess.Popen(
            [sys.executable, "-m", "miner", "worker", "--concurrency", "1", "--threads", "1",
             "--name", f"w{i}@test", "--loglevel", os.environ.get("MINER_TEST_WORKER_LOGLEVEL", "WARNING")],
            env=miner_env(home, **env, **extra), stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
            start_new_session=True,  # its own process group: tests can kill a worker with its pool children
        )
        proc.log = log
        procs.append(proc)
    return procs


def stop_workers(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.log.close()


def wait_for_workers(home, env, names, timeout=60):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        result = run_miner(home, "workers", "--json", **env)
        seen = json.loads(result.stdout or "[]")
        if set(names) <= set(seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"workers {names} did not answer a ping within {timeout}s (seen: {seen})")



# --------------------------------------------------------------------------- real servers


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for the whole run."""
    from .servers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL cluster (initdb into a temp dir) on a free loopback port for the whole run."""
    from .servers import PostgresServer

    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-API server (moto in server mode, a subprocess) on a free loopback port for the
    whole run; ``s3_server.env`` holds the AWS_* variables a client needs."""
    from .servers import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def cluster_env(tmp_path, redis_server, postgres_server, request) -> dict:
    """MINER_* variables of a cluster: Redis broker and result backend, a fresh PostgreSQL database,
    a shared artifact folder. Pass as ``**cluster_env`` to run_miner or to miner_env."""
    redis_server.flush()
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    return {
        "MINER_DB_URL": postgres_server.create_database(name),
        "MINER_BROKER_URL": f"{redis_server.url}/0",
        "MINER_RESULT_BACKEND": f"{redis_server.url}/1",
        "MINER_ARTIFACTS": str(tmp_path / "shared-artifacts"),
    }


@pytest.fixture(scope="session")
def deu_cluster(tmp_path_factory, redis_server, postgres_server, deu_embedded) -> dict:
    """The deu case of ``deu_embedded`` mined on the cluster: Redis, PostgreSQL, two separate worker
    processes, shard size 125 (8 German and 48 English shards). The undisturbed reference of the
    reliability tests."""
    folder = tmp_path_factory.mktemp("deu_cluster")
    redis_server.flush()
    env = {
        "MINER_DB_URL": postgres_server.create_database("deu_cluster"),
        "MINER_BROKER_URL": f"{redis_server.url}/0",
        "MINER_RESULT_BACKEND": f"{redis_server.url}/1",
        "MINER_ARTIFACTS": str(folder / "shared-artifacts"),
    }
    home, out, case = folder / "home", folder / "cluster.tsv", deu_embedded["case"]
    upgrade = run_miner(home, "db", "upgrade", **env)
    assert upgrade.returncode == 0, upgrade.stderr
    workers = start_workers(folder, home, env, 2)
    try:
        wait_for_workers(home, env, ["w0@test", "w1@test"])
        result = run_miner(home, "mine", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                           "--shard-size", str(CLUSTER_SHARD_SIZE), "-o", out, **env)
    finally:
        stop_workers(workers)
    job_id = int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None
    status = json.loads(run_miner(home, "status", str(job_id), "--json", **env).stdout) if job_id else None
    candidates = db_counts(env, job_id)["candidates"] if job_id else None
    return {"result": result, "env": env, "home": home, "out": out, "job_id": job_id, "status": status,
            "candidates": candidates, "case": case}


CLUSTER_SHARD_SIZE = 125


def db_counts(env: dict, job_id: int) -> dict:
    """Rows of a job in the database at ``env["MINER_DB_URL"]``: candidates and recorded steps."""
    from sqlalchemy import create_engine, func, select

    from miner.runtime.db import Candidate, JobStep

    engine = create_engine(env["MINER_DB_URL"])
    try:
        with engine.connect() as conn:
            return {
                "candidates": conn.execute(select(func.count()).select_from(Candidate)
                                           .where(Candidate.job_id == job_id)).scalar(),
                "steps": conn.execute(select(func.count()).select_from(JobStep).where(JobStep.job_id == job_id)).scalar(),
            }
    finally:
        engine.dispose()
