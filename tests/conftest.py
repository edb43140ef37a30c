"""Shared fixtures: isolated MINER_HOME folders, the Tatoeba test data (tests/data), running the real CLI."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _release_embedded_brokers():
    """A test that used an embedded broker in-process stops counting as its user when it ends, so
    that broker's supervisor stops it (as it does when a `miner` process exits)."""
    yield
    from miner import broker

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

    from miner.db import Candidate, JobStep

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
