"""Workers on one host share its cores (miner/runtime/cores.py): registrations held by live processes
count, those of dead ones are dropped, and `miner worker` registers unless --threads is given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from miner.runtime import cores
from miner.runtime.errors import MinerError

from .conftest import miner_env, run_miner

REGISTER = """
import sys
from pathlib import Path
from miner.runtime import cores
from miner.runtime.errors import MinerError
cores.register(int(sys.argv[2]), Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()
"""


def _registered(folder, slots):
    proc = subprocess.Popen([sys.executable, "-c", REGISTER, str(folder), str(slots)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_live_workers_share_the_cores_and_dead_ones_are_dropped(tmp_path):
    assert cores.live_slots(tmp_path) == 0 and cores.threads_per_slot(8, tmp_path) == 8
    one, three = _registered(tmp_path, 1), _registered(tmp_path, 3)
    try:
        assert cores.live_slots(tmp_path) == 4
        assert cores.threads_per_slot(8, tmp_path) == 2
        assert cores.threads_per_slot(2, tmp_path) == 1  # never less than one thread
        three.kill()
        three.wait()
        assert cores.live_slots(tmp_path) == 1 and cores.threads_per_slot(8, tmp_path) == 8
        assert len(list(tmp_path.glob("*.slots"))) == 1  # the dead worker's file is gone
    finally:
        for proc in (one, three):
            proc.kill()
            proc.wait()
    assert cores.live_slots(tmp_path) == 0 and list(tmp_path.glob("*")) == []


def test_a_process_counts_its_own_registration_and_its_children_inherit_it(tmp_path):
    pid = os.fork()
    if pid == 0:  # a worker: registers, forks a pool child that counts, exits with the count
        try:
            cores.register(2, tmp_path)
            child = os.fork()
            if child == 0:
                os._exit(cores.live_slots(tmp_path))
            _, status = os.waitpid(child, 0)
            os._exit(os.waitstatus_to_exitcode(status))
        except BaseException:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2
    assert cores.live_slots(tmp_path) == 0  # both gone: the file is removed


@pytest.mark.parametrize("threads", [None, "1"])
def test_miner_worker_registers_unless_threads_are_given(tmp_path, threads):
    folder = tmp_path / "cores"
    args = [sys.executable, "-m", "miner", "worker", "--concurrency", "2", "--loglevel", "WARNING"]
    if threads:
        args += ["--threads", threads]
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, env=miner_env(tmp_path / "home", MINER_CORES_DIR=str(folder)), stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True)
    try:
        deadline = time.monotonic() + 120  # until the worker answers a ping: it is set up by then
        while run_miner(tmp_path / "home", "workers", "--timeout", "1", MINER_CORES_DIR=str(folder)).returncode:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
        text = (tmp_path / "worker.log").read_text(errors="replace")
        assert "SecurityWarning" not in text  # Celery's root warning, silenced knowingly (workers/app.py)
        if threads:
            assert "2 processes x 1 threads" in text
            assert cores.live_slots(folder) == 0
        else:
            assert "2 processes x a share of this host's" in text
            assert cores.live_slots(folder) == 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        log.close()
    # A clean shutdown removes its registration itself (before live_slots would clean up after it).
    assert list(folder.glob("*.slots")) == []
    assert cores.live_slots(folder) == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_cores_folder_of_another_user_is_refused(tmp_path):
    """Another local user who created /tmp/bitext-miner-<uid>/cores first could count as many slots
    as they like there (starving the workers of threads) or read the host's worker list."""
    folder = tmp_path / "cores"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)  # nobody (the tests run as root, as CI does)
    with pytest.raises(MinerError, match="belongs to another user; set MINER_CORES_DIR"):
        cores.register(1, folder)
    assert list(folder.iterdir()) == []
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o777)
    mine.chmod(0o777)
    path = cores.register(2, mine)
    try:
        assert mine.stat().st_mode & 0o777 == 0o700 and cores.live_slots(mine) == 2
    finally:
        cores.unregister()
    assert not path.exists()


def test_a_loaded_model_follows_the_thread_count():
    """A task process whose share of the cores changed encodes with the new thread count (muse's
    BLAS limit is its own; torch models follow torch.set_num_threads)."""
    import numpy as np

    from miner.embedding.encoders import encode, load_model, resolve_model, set_threads

    model = load_model(resolve_model("muse"), threads=2)
    before = encode(model, ["Ich habe Hunger.", "I am hungry."])
    set_threads(model, 1)
    assert model.threads == model._use.threads == 1
    assert model._use._backend.threads == 1  # loaded with the model, changed in place
    np.testing.assert_allclose(encode(model, ["Ich habe Hunger.", "I am hungry."]), before, atol=1e-6)
