"""A submit that cannot reach the broker leaves a failed job that `miner retry` resumes, not a
queued one that nothing picks up and that the next submit calls a live duplicate."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.conftest import run_miner

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ARGS = ("submit", EXAMPLES / "sample.de", EXAMPLES / "sample.en", "--src-lang", "de", "--tgt-lang", "en",
        "--model", "minilm", "--threshold", "1.0")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_submit_with_the_broker_down_leaves_a_failed_job(tmp_path):
    home = tmp_path / "home"
    broker = f"redis://127.0.0.1:{_closed_port()}/0"
    first = run_miner(home, *ARGS, timeout=60, MINER_BROKER_URL=broker)
    assert first.returncode != 0
    errors = [line for line in first.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "broker" in errors[0] and "miner retry 1" in errors[0], first.stderr

    listed = run_miner(home, "jobs", "--json", timeout=60, MINER_BROKER_URL=broker)
    jobs = json.loads(listed.stdout)
    assert [(job["id"], job["state"]) for job in jobs] == [(1, "failed")]

    second = run_miner(home, *ARGS, timeout=60, MINER_BROKER_URL=broker)
    assert second.returncode != 0
    assert "already mines" not in second.stderr  # not reported as a live duplicate
    assert "miner retry 1" in second.stderr

    retried = run_miner(home, "retry", "1", timeout=60, MINER_BROKER_URL=broker)
    assert retried.returncode != 0 and "broker" in retried.stderr
    states = {job["id"]: job["state"] for job in json.loads(run_miner(home, "jobs", "--json", timeout=60,
                                                                      MINER_BROKER_URL=broker).stdout)}
    assert "queued" not in states.values(), states
