"""The embedded broker (miner.runtime.broker): a private Redis server per MINER_HOME on a Unix socket,
started by whichever process needs it and stopped when no process uses it.

Issue 11: `miner mine` runs in a row on kombu's filesystem transport lost a message about one time
in eight (a reader took a message file before its writer had written it). These run 30 jobs back to
back and 3 at once in one MINER_HOME, and check every output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from miner.runtime import broker

from .conftest import ROOT, miner_env, read_tsv, run_miner

pytestmark = pytest.mark.slow

SAMPLE_DE, SAMPLE_EN = ROOT / "examples" / "sample.de", ROOT / "examples" / "sample.en"
GOLD = {tuple(line.split("\t")) for line in (ROOT / "examples" / "gold.tsv").read_text(encoding="utf-8").splitlines()}
MINE = ("mine", SAMPLE_DE, SAMPLE_EN, "--src-lang", "de", "--tgt-lang", "en", "-q", "--force")


def wait_for(condition, what: str, timeout: float = 60.0):
    """Wait until ``condition()`` is true (checked every 20 ms); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def _pairs(path: Path) -> list[tuple[str, str]]:
    return [(s, t) for _, s, t in read_tsv(path)]


def _check_first(rows: list[tuple[str, str]]) -> None:
    found = set(rows)
    assert len(found & GOLD) >= 0.95 * len(GOLD), f"{len(found & GOLD)} of {len(GOLD)} gold pairs"
    assert len(found & GOLD) >= 0.95 * len(found)


def _no_lost_messages(home: Path) -> None:
    for log in (home / "logs").glob("worker-*.log"):
        text = log.read_text(encoding="utf-8", errors="replace")
        assert not re.search(r"Unrecoverable error|JSONDecodeError|CRITICAL", text), f"{log}:\n{text[-3000:]}"


def _supervisors(home: Path) -> list[int]:
    """Pids of broker supervisors (`python -m miner.runtime.broker serve HOME`) running for ``home``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"miner.runtime.broker" in argv and os.fsencode(str(home.absolute())) in argv:
            pids.append(int(entry.name))
    return pids


def test_eight_mines_back_to_back(tmp_path):
    # Each run starts and stops the private broker and a worker, so eight runs start and stop
    # each eight times over one home (thirty took 160 s of the suite's 20-minute budget, twelve 70 s).
    runs = 8
    home = tmp_path / "home"
    reference = None
    started = time.monotonic()
    for i in range(runs):
        out = tmp_path / f"out{i}.tsv"
        result = run_miner(home, *MINE, "-o", out, timeout=300)
        assert result.returncode == 0, f"run {i + 1}: {result.stderr[-3000:]}"
        assert int(result.stdout.strip().splitlines()[-1]) == i + 1
        rows = _pairs(out)
        if reference is None:
            _check_first(rows)
            reference = rows
        assert rows == reference, f"run {i + 1} wrote other pairs"
    print(f"{runs} mines back to back: {time.monotonic() - started:.0f}s")
    jobs = json.loads(run_miner(home, "jobs", "--json", "--limit", "100").stdout)
    assert sorted(job["id"] for job in jobs) == list(range(1, runs + 1))
    assert {job["state"] for job in jobs} == {"done"}
    _no_lost_messages(home)


def test_three_mines_at_once(tmp_path):
    home = tmp_path / "home"
    procs = []
    for i in range(3):
        out = tmp_path / f"out{i}.tsv"
        procs.append((out, subprocess.Popen([sys.executable, "-m", "miner", *map(str, MINE), "-o", str(out)],
                                            env=miner_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, cwd=str(tmp_path))))
    outputs = []
    for out, proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        outputs.append(_pairs(out))
    _check_first(outputs[0])
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    jobs = json.loads(run_miner(home, "jobs", "--json").stdout)
    assert sorted(job["id"] for job in jobs) == [1, 2, 3] and {job["state"] for job in jobs} == {"done"}
    _no_lost_messages(home)


def test_submitted_job_waits_in_the_stopped_broker_for_a_worker(tmp_path):
    """`submit` with no worker: the broker stops when `submit` has exited, and keeps the job's
    tasks on disk; a worker started later (another terminal) starts the broker again and mines it."""
    home = tmp_path / "home"
    result = run_miner(home, "submit", SAMPLE_DE, SAMPLE_EN, "--src-lang", "de", "--tgt-lang", "en")
    assert result.returncode == 0, result.stderr
    assert "no worker answered" in result.stderr
    job_id = int(result.stdout.strip().splitlines()[-1])
    sock = broker.socket_path(home)
    wait_for(lambda: not _supervisors(home) and not sock.exists(), "the unused broker to stop")
    assert (home / "broker" / "appendonly.aof").stat().st_size > 0

    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--concurrency", "1"],
                              env=miner_env(home), stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        watched = run_miner(home, "status", job_id, "--watch", "--json", timeout=300)
        assert json.loads(watched.stdout.strip().splitlines()[-1])["state"] == "done", watched.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log.close()
    out = tmp_path / "out.tsv"
    assert run_miner(home, "export", job_id, "-o", out).returncode == 0
    _check_first(_pairs(out))
    wait_for(lambda: not _supervisors(home), "the broker to stop after the worker exited")


def test_worker_survives_a_crashed_redis(tmp_path):
    """redis-server killed under a running worker: the next connection starts a new one, and the
    worker reconnects to it and mines a job submitted after the crash."""
    home = tmp_path / "home"
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--concurrency", "1", "--name", "w@test"],
                              env=miner_env(home), stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        wait_for(lambda: json.loads(run_miner(home, "workers", "--json").stdout or "[]") == ["w@test"],
                 "the worker to answer a ping", timeout=120)
        [supervisor] = _supervisors(home)
        redis_pid = int(re.search(r"redis-server (\d+) on", (home / "broker" / "broker.log").read_text())[1])
        os.kill(redis_pid, signal.SIGKILL)
        wait_for(lambda: supervisor not in _supervisors(home), "the supervisor to notice and stop")
        result = run_miner(home, "submit", SAMPLE_DE, SAMPLE_EN, "--src-lang", "de", "--tgt-lang", "en")
        assert result.returncode == 0, result.stderr
        job_id = int(result.stdout.strip().splitlines()[-1])
        watched = run_miner(home, "status", job_id, "--watch", "--json", timeout=300)
        assert json.loads(watched.stdout.strip().splitlines()[-1])["state"] == "done", watched.stderr
        assert _supervisors(home) and _supervisors(home) != [supervisor]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log.close()


def test_one_server_per_home_and_stopped_when_released(tmp_path):
    home = tmp_path / "home"
    sock = broker.ensure(home)
    assert broker.ping(sock) and oct(sock.stat().st_mode & 0o777) == "0o700"
    assert broker.ensure(home) == sock and len(_supervisors(home)) == 1
    # Another process using the same home shares the server.
    other = subprocess.run([sys.executable, "-c", f"from miner.runtime import broker; print(broker.ensure({str(home)!r}))"],
                           capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == str(sock) and len(_supervisors(home)) == 1
    broker.release(home)
    wait_for(lambda: not _supervisors(home) and not broker.ping(sock), "the released broker to stop")


def test_socket_outside_a_long_home(tmp_path):
    home = tmp_path / ("x" * 120) / "home"
    sock = broker.socket_path(home)
    assert len(str(sock)) <= broker.MAX_SOCKET_PATH and sock.parent.name == f"bitext-miner-{os.getuid()}"
    assert broker.socket_path(home) == sock != broker.socket_path(tmp_path / ("y" * 120) / "home")
    assert broker.url_for(home) == f"miner+socket://{sock}" and broker.home_of_socket(str(sock)) == home.absolute()
    try:
        assert broker.ping(broker.ensure(home))
    finally:
        broker.release(home)
    wait_for(lambda: not sock.exists(), "the released broker to stop")


def test_a_loading_server_is_waited_for_not_replaced(tmp_path):
    """A server that still loads a large append-only file answers PING with -LOADING: a process
    that needs the broker waits for it instead of starting a second server on the same socket."""
    import socket
    import threading

    home = tmp_path / "home"
    sock = broker.socket_path(home)
    sock.parent.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(8)
    answers = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                reply = b"-LOADING Redis is loading the dataset in memory\r\n" if len(answers) < 3 else b"+PONG\r\n"
                answers.append(reply)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert broker.probe(sock) == "loading"
        assert broker.ensure(home) == sock
        assert answers[-1] == b"+PONG\r\n" and len(answers) >= 4
        assert _supervisors(home) == []  # nothing else was started
    finally:
        broker.release(home)
        server.close()
    assert broker.probe(tmp_path / "nothing.sock") == "down"


def _servers(sock: Path) -> list[int]:
    """Pids of redis-server processes listening on ``sock`` (Redis rewrites its command line to
    ``redis-server unixsocket:SOCK``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in cmdline and os.fsencode(str(sock)) in cmdline:
            pids.append(int(entry.name))
    return pids


def test_the_server_stops_when_its_home_is_removed(tmp_path):
    """`miner mine` in a temporary home, then `rm -rf` of that home as soon as `mine` returns: the
    supervisor crashed on the lock files' folder going away and its redis-server ran on for good
    (five had piled up in an hour of scripts with temporary homes). Here a process still holds the
    broker while the home is removed, so only the removal can stop the server."""
    import shutil

    home = tmp_path / "home"
    result = run_miner(home, *MINE, "-o", tmp_path / "out.tsv")
    assert result.returncode == 0, result.stderr[-3000:]
    user = _user(home)
    try:
        sock = broker.socket_path(home)
        assert len(_servers(sock)) == 1
        shutil.rmtree(home)
        wait_for(lambda: not _servers(sock) and not _supervisors(home), "the server of the removed home to stop", 30)
    finally:
        user.stdin.close()
        user.wait(30)


def _user(home: Path) -> subprocess.Popen:
    """A process that uses the broker of ``home`` until its stdin closes."""
    user = subprocess.Popen([sys.executable, "-c", f"from miner.runtime import broker; broker.ensure({str(home)!r}); "
                             "print('up', flush=True); import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert user.stdout.readline().strip() == "up"
    return user


def test_the_server_dies_with_its_supervisor(tmp_path):
    """The supervisor killed (SIGKILL, an OOM kill) while a process still uses the broker: Redis
    must not outlive the process that decides when it stops."""
    home = tmp_path / "home"
    user = _user(home)
    try:
        sock = broker.socket_path(home)
        assert len(_servers(sock)) == 1 and len(_supervisors(home)) == 1
        os.kill(_supervisors(home)[0], signal.SIGKILL)
        wait_for(lambda: not _servers(sock), "redis-server to follow its supervisor", 30)
    finally:
        user.stdin.close()
        user.wait(30)
