"""`miner mine` stopped by a signal mid-job: SIGTERM and SIGHUP (a closed terminal, `timeout`, a
batch system's kill) stop the workers it started, as Ctrl-C does; SIGKILL leaves them to the kernel
(PR_SET_PDEATHSIG: a cold shutdown when their parent is gone). Either way no process of the job is
left after 10 s -- workers, pool children, the broker's supervisor and its Redis -- and the next
`mine` of the same files in the same MINER_HOME finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import SHORT_LEASE as LEASE, make_case, miner_env, read_tsv, run_miner

pytestmark = pytest.mark.slow


def _processes_of(home: Path) -> list[str]:
    """Command lines of the processes whose environment names this MINER_HOME (the workers, their
    pool children, the broker's supervisor and redis-server inherit it)."""
    marker = b"MINER_HOME=" + os.fsencode(str(home)) + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes() + b"\0":
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return [cmd for cmd in found if cmd.strip()]  # zombies have no command line


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["TERM", "HUP", "KILL"])
def test_mine_stopped_by_a_signal_leaves_nothing_running(tmp_path, signum):
    case = make_case(tmp_path / "case", "deu", 1000)
    home, out = tmp_path / "home", tmp_path / "out.tsv"
    args = ["mine", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en", "-q", "--shard-size", "100",
            "-o", out]
    mine = subprocess.Popen([sys.executable, "-m", "miner", *map(str, args)], env=miner_env(home, **LEASE),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:  # until a unit of job 1 runs on one of mine's workers, past its first step's start
        # (a unit holds its lease a moment before its step marks the job running)
        status = run_miner(home, "status", "1", "--json", timeout=60, **LEASE)
        if status.returncode == 0 and (now := json.loads(status.stdout))["running"] and now["state"] == "running":
            break
        assert mine.poll() is None and time.monotonic() < deadline, (status.stderr, mine.stderr.read())
    mine.send_signal(signum)
    _, stderr = mine.communicate(timeout=60)
    if signum == signal.SIGKILL:
        assert mine.returncode == -signal.SIGKILL
    else:
        assert mine.returncode == 128 + signum, stderr
        assert b"interrupted: stopping the 1 worker(s) this `mine` started" in stderr
        assert b"interrupted: job 1 is left as it is" in stderr and b"Traceback" not in stderr
    deadline = time.monotonic() + 10
    while left := _processes_of(home):
        assert time.monotonic() < deadline, f"still running 10 s after {signal.Signals(signum).name}: {left}"
        time.sleep(0.1)
    again = run_miner(home, *args, timeout=300, **LEASE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "job 1 (running) already mines these files" in again.stderr
    assert len(read_tsv(out)) > 900


_ORPHAN = """
import os, subprocess, sys, time
if sys.argv[1] == "parent":  # starts the child, prints its pid, then waits to be killed
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", str(os.getpid())], start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(600)
else:  # the child: a grandchild of its own (its process group), then the watch, then sleep
    from miner.runtime.locks import watch_parent
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    watch_parent(int(sys.argv[2]), 0.5, poll=0.05)
    print(grandchild.pid, flush=True, file=open(os.environ["PID_FILE"], "w"))
    time.sleep(600)
"""


def test_watch_parent_ends_the_process_group_when_the_parent_is_killed(tmp_path):
    """The watch behind `miner mine`'s workers: once its parent dies (here by SIGKILL, so nothing is
    sent to it), the watching process and its process group (a worker's pool children) are killed."""
    pid_file = tmp_path / "grandchild.pid"
    env = dict(os.environ, PID_FILE=str(pid_file), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN, "parent", _ORPHAN], stdout=subprocess.PIPE, env=env)
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the child never started its watch"
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert _alive(child) and _alive(grandchild)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(child) or _alive(grandchild):
        assert time.monotonic() < deadline, "the watch did not end the orphaned process group"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not yet reaped by init, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
