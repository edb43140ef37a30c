"""Bad input through the CLI, against a running worker: each case gives its documented exit code
and one-line message, and the database stays consistent -- a refused input creates no job, a job
whose input fails at ingest ends 'failed' (resumable), and no job is left queued or running."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time

import pytest

from .conftest import miner_env, read_tsv, run_miner

pytestmark = pytest.mark.slow

GOOD_EN = "I am hungry.\nThe dog is sleeping in the garden.\nThat is good.\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A MINER_HOME with one worker running for the whole module."""
    folder = tmp_path_factory.mktemp("bad_input")
    home = folder / "home"
    log = open(folder / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--concurrency", "1"],
                              env=miner_env(home), stdout=log, stderr=subprocess.STDOUT, cwd=str(folder))
    yield {"home": home, "folder": folder}
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        worker.kill()
    log.close()


def _jobs(home) -> list[dict]:
    return json.loads(run_miner(home, "jobs", "--json").stdout or "[]")


def _wait(home, job_id, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(run_miner(home, "status", str(job_id), "--json").stdout)
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.3)
    worker_log = (home.parent / "worker.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"job {job_id} still {status['state']} after {timeout}s: {status}\nworker log:\n{worker_log}")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


REFUSED = {
    # name: (bytes or None for a missing file / "dir", expected exit code, message fragment)
    "missing": (None, 3, "input file not found"),
    "empty": (b"", 3, "empty"),
    "empty.gz": ("gz-empty", 3, "empty"),
    "directory": ("dir", 3, "directory"),
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, 3, "does not look like a text file"),
    "utf16": ("\ufeffIch habe Hunger.\nDas ist gut.\n".encode("utf-16-le"), 3, "UTF-16"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_inputs_create_no_job(live, name):
    home, folder = live["home"], live["folder"]
    data, code, fragment = REFUSED[name]
    path = folder / f"refused-{name}"
    if data == "dir":
        path.mkdir(exist_ok=True)
    elif data == "gz-empty":
        path = folder / "refused-empty.gz"
        path.write_bytes(gzip.compress(b""))
    elif data is not None:
        _write(path, data)
    tgt = _write(folder / "good.en", GOOD_EN.encode())
    before = _jobs(home)
    result = run_miner(home, "submit", path, tgt, "--src-lang", "de", "--tgt-lang", "en")
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and fragment.lower() in lines[-1].lower(), result.stderr
    assert str(path) in lines[-1]
    assert "Traceback" not in result.stderr
    assert _jobs(home) == before


def test_a_file_of_blank_lines_only_is_refused_like_an_empty_one(live):
    """It passed submit and failed in the worker (exit 3 from `mine`; then `report` and `export` said
    "nothing to report yet")."""
    home, folder = live["home"], live["folder"]
    blank = _write(folder / "blank.de", b"\n\n   \n\t\r\n\xc2\xa0\n" * 50)
    tgt = _write(folder / "good.en", GOOD_EN.encode())
    before = _jobs(home)
    for command in (["submit"], ["mine", "-o", folder / "blank.tsv"]):
        result = run_miner(home, *command, blank, tgt, "--src-lang", "de", "--tgt-lang", "en")
        assert result.returncode == 3, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (f"Error: input file has no sentences (every line is blank): "
                                                         f"{blank} -- pass a text file with one sentence per line")
    assert _jobs(home) == before


def test_k_not_smaller_than_a_side_is_refused(live):
    """300 / 400 lines with --k 500 mined: the margin averaged over whole sides, a top pair scored
    1294.7 and the automatic cut 39.6 (15 pairs exported, F1 10.2 where the best cut gives 91.4)."""
    home, folder = live["home"], live["folder"]
    src = _write(folder / "few.de", "".join(f"Satz Nummer {i}.\n" for i in range(300)).encode())
    tgt = _write(folder / "few.en", "".join(f"Sentence number {i}.\n" for i in range(400)).encode())
    before = _jobs(home)
    for k, n in (("500", 300), ("300", 300)):
        result = run_miner(home, "submit", src, tgt, "--src-lang", "de", "--tgt-lang", "en", "--k", k)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (f"Error: --k {k} needs more than {k} sentences on each "
                                                         f"side, and {src} has {n}; pass a smaller --k (at most 299)")
    assert _jobs(home) == before
    # One below the side's size is allowed; so is the default k on a side of two sentences.
    two = _write(folder / "two.de", "Ich habe Hunger.\nDas ist gut.\n".encode())
    for args in ((src, tgt, "--k", "299"), (two, tgt)):
        result = run_miner(home, "submit", *args, "--src-lang", "de", "--tgt-lang", "en")
        assert result.returncode == 0, result.stderr
        assert _wait(home, int(result.stdout.split()[-1]))["state"] == "done"


@pytest.mark.parametrize("args, code, fragment", [
    (["--k", "0"], 2, "--k"),
    (["--margin", "cosine"], 2, "--margin"),
    (["--shard-size", "0"], 2, "--shard-size"),
    (["--model", "no-such-model-anywhere"], 4, "no-such-model-anywhere"),
])
def test_wrong_options_create_no_job(live, args, code, fragment):
    home, folder = live["home"], live["folder"]
    src = _write(folder / "good.de", "Ich habe Hunger.\nDas ist gut.\n".encode())
    tgt = _write(folder / "good.en", GOOD_EN.encode())
    before = _jobs(home)
    result = run_miner(home, "submit", src, tgt, "--src-lang", "de", "--tgt-lang", "en", *args)
    assert result.returncode == code, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert _jobs(home) == before


MESSY = (
    "\ufeffIch habe Hunger.\r\n"            # BOM + Windows line ending
    "\r\n"                                  # blank
    "Der Hund\x00 schläft\tim\x07 Garten.\r\n"  # NUL, tab, control character
).encode() + b"Kaputt \xff\xfe hier.\n" + ("Das ist gut.\n" + "x" * 5000 + "\n").encode()


def test_messy_text_is_cleaned_and_counted(live):
    home, folder = live["home"], live["folder"]
    src = _write(folder / "messy.de", MESSY)
    tgt = _write(folder / "good.en", GOOD_EN.encode())
    result = run_miner(home, "submit", src, tgt, "--src-lang", "de", "--tgt-lang", "en", "--max-line-length", "1000")
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.split()[-1])
    status = _wait(home, job_id)
    assert status["state"] == "done", status
    assert status["corpora"]["src"]["sentences"] == 3
    assert status["corpora"]["src"]["skipped"] == {"blank": 1, "duplicates": 0, "too_long": 1, "decode_errors": 1, "bad_rows": 0}
    out = folder / "messy.tsv"
    assert run_miner(home, "export", str(job_id), "-o", out, "--min-score", "0").returncode == 0
    sources = {s for _, s, _ in read_tsv(out)}
    assert sources == {"Ich habe Hunger.", "Der Hund schläft im Garten.", "Das ist gut."}


@pytest.mark.parametrize("name, data, extra, fragment", [
    ("undecodable", b"Ich habe Hunger.\nKaputt \xff hier.\n", ["--on-decode-error", "fail"], "line 2"),
    ("all-too-long", b"y" * 3000 + b"\n", ["--max-line-length", "100"], "no sentences left"),
], ids=["undecodable", "all-too-long"])
def test_inputs_failing_at_ingest_fail_the_job_resumably(live, name, data, extra, fragment):
    home, folder = live["home"], live["folder"]
    src = _write(folder / f"{name}.de", data)
    tgt = _write(folder / "good.en", GOOD_EN.encode())
    result = run_miner(home, "submit", src, tgt, "--src-lang", "de", "--tgt-lang", "en", *extra)
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.split()[-1])
    status = _wait(home, job_id)
    assert status["state"] == "failed" and status["exit_code"] == 3
    assert status["error"].startswith("ingest: ") and fragment in status["error"]
    assert "src" in status["missing"]["ingest"] and status["running"] == []  # tgt may have stopped too
    assert "missing ingest units: src" in run_miner(home, "status", str(job_id)).stdout
    result = run_miner(home, "export", str(job_id), "-o", folder / "x.tsv")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert not [j for j in _jobs(home) if j["state"] in ("queued", "running")]

    # Fixed input, same path: `miner retry` resumes the job and finishes it.
    src.write_bytes(b"Ich habe Hunger.\nDas ist gut.\n")
    result = run_miner(home, "retry", str(job_id), "--wait", timeout=300)
    assert result.returncode == 0, result.stderr
    assert _wait(home, job_id)["state"] == "done"


def test_same_file_for_both_sides_warns(live):
    home, folder = live["home"], live["folder"]
    tgt = _write(folder / "same.en", GOOD_EN.encode())
    result = run_miner(home, "submit", tgt, tgt, "--src-lang", "en", "--tgt-lang", "en")
    assert result.returncode == 0
    assert "the same file is given for both sides" in result.stderr
    status = _wait(home, int(result.stdout.split()[-1]))
    assert status["state"] == "done"
    assert not [j for j in _jobs(home) if j["state"] in ("queued", "running")]
