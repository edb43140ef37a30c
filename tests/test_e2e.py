"""End to end through real Celery worker processes on the embedded default (SQLite + the embedded Redis broker)."""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys

import pytest

from .conftest import ROOT, make_case, miner_env, precision_recall, read_tsv, run_miner

pytestmark = pytest.mark.slow


def _job_id(result: subprocess.CompletedProcess) -> int:
    return int(result.stdout.strip().splitlines()[-1])


def _status(home, job_id, **env) -> dict:
    result = run_miner(home, "status", job_id, "--json", timeout=60, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_mine_tatoeba_deu_with_distractors(tmp_path, deu_embedded):
    """`miner mine` with the default model finds >= 93% of 1,000 gold pairs among 5,000 distractors,
    with >= 93% precision; a second job against the same English file reuses its embeddings."""
    case, home, out, result = (deu_embedded[k] for k in ("case", "home", "out", "result"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_tsv(out)
    precision, recall = precision_recall(rows, case["gold"])
    print(f"deu: {len(rows)} pairs, precision {precision:.3f}, recall {recall:.3f}")
    assert recall >= 0.93
    assert precision >= 0.93
    assert rows == sorted(rows, key=lambda r: -r[0])
    job_id = _job_id(result)
    status = _status(home, job_id)
    assert status["state"] == "done" and status["pairs"] == len(rows)

    # The same files (by content: a copy counts) and options again: reported, the job is reused.
    copy = tmp_path / "copy.de"
    copy.write_bytes(case["src"].read_bytes())
    again = tmp_path / "again.tsv"
    result = run_miner(home, "mine", copy, case["tgt"], "--src-lang", "de", "--tgt-lang", "en", "-q", "-o", again,
                       "--threshold", "1.1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"job {job_id} (done) already mines these files" in result.stderr and "--force" in result.stderr
    assert _job_id(result) == job_id
    high = read_tsv(again)  # the pairs of the job, at the threshold asked for now
    assert high == [r for r in rows if r[0] >= 1.1] and 0 < len(high) < len(rows)
    result = run_miner(home, "submit", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en")
    assert _job_id(result) == job_id
    assert len(json.loads(run_miner(home, "jobs", "--json").stdout)) == 1

    fra = make_case(tmp_path / "fra", "fra", 0)
    out2 = tmp_path / "fra.tsv"
    result = run_miner(home, "mine", fra["src"], case["tgt"], "--src-lang", "fra", "--tgt-lang", "eng", "-o", out2)
    assert result.returncode == 0, result.stderr[-3000:]
    fra_id = _job_id(result)
    stages = {s["stage"]: s for s in _status(home, fra_id)["stages"]}
    # stderr is not a terminal here: plain progress lines, no cursor escapes; the reused side says so.
    assert "\x1b[" not in result.stderr and "\r" not in result.stderr
    assert re.search(rf"job {fra_id}: embed tgt: [\d,]+/[\d,]+ sentences \(100%\), 1/1 shards, reused\n", result.stderr)
    assert re.search(rf"job {fra_id}: embed src: [\d,]+/[\d,]+ sentences \(100%\), 1/1 shards, [\d,]+ sentences/s\n",
                     result.stderr)
    assert f"job {fra_id}: done, workers seen: 1" in result.stderr
    assert stages["ingest"]["reused"] == 1  # the English side
    assert stages["embed"]["reused"] == 1  # its one shard of 6,000 sentences
    assert len(read_tsv(out2)) > 0


def test_submit_worker_status_export_retry_cancel(tmp_path):
    """Two terminals: a worker in one, submit/status/export in the other."""
    case = make_case(tmp_path / "case", "deu", 1000)
    home = tmp_path / "home"
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--concurrency", "2"],
                              env=miner_env(home), stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        result = run_miner(home, "submit", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                           "--shard-size", "250")
        assert result.returncode == 0, result.stderr
        job_id = _job_id(result)

        # Every update until the job ends, as `miner status --watch --json` prints them.
        watched = run_miner(home, "status", job_id, "--watch", "--json", "--interval", "0.2", timeout=300)
        assert watched.returncode == 0, watched.stderr
        snapshots = [json.loads(line) for line in watched.stdout.splitlines()]
        status = _status(home, job_id)
        assert status["state"] == "done", status
        # Progress was visible while the job ran: a running snapshot with a stage partly done.
        running = [s for s in snapshots if s["state"] == "running"]
        assert running
        assert any(0 < st["done"] < st["total"] for s in running for st in s["stages"] if st["total"])
        final = {st["stage"]: st for st in status["stages"]}
        assert final["embed"]["total"] == 4 + 8 and final["embed"]["done"] == 12
        assert final["knn"]["items_done"] == final["knn"]["items_total"] == 1000 + 2000

        out = tmp_path / "out.tsv"
        result = run_miner(home, "export", job_id, "-o", out)
        assert result.returncode == 0, result.stderr
        rows = read_tsv(out)
        precision, recall = precision_recall(rows, case["gold"])
        assert recall >= 0.93 and precision >= 0.93
        assert len(rows) == status["pairs"]

        stdout = run_miner(home, "export", job_id, "-o", "-").stdout
        assert stdout == out.read_text(encoding="utf-8")
        gz = tmp_path / "out.tsv.gz"
        assert run_miner(home, "export", job_id, "-o", gz, "--header").returncode == 0
        with gzip.open(gz, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        assert lines[0] == "score\tsource\ttarget" and len(lines) == len(rows) + 1
        high = tmp_path / "high.tsv"
        run_miner(home, "export", job_id, "-o", high, "--min-score", "1.2")
        high_rows = read_tsv(high)
        assert 0 < len(high_rows) < len(rows) and all(r[0] >= 1.2 for r in high_rows)

        # Running every task of the finished job again duplicates nothing.
        stored = status["candidates_stored"]
        assert stored >= len(rows)
        result = run_miner(home, "retry", job_id, "--force", "--wait", timeout=300)
        assert result.returncode == 0, result.stderr
        again = tmp_path / "again.tsv"
        run_miner(home, "export", job_id, "-o", again)
        assert again.read_bytes() == out.read_bytes()
        status = _status(home, job_id)
        assert status["candidates_stored"] == stored
        assert status["attempt"] == 2

        # Cancel a queued job (no worker runs, so it cannot end first), then retry it to completion.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        result = run_miner(home, "submit", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                           "--margin", "distance")
        job2 = _job_id(result)
        assert _status(home, job2)["state"] == "queued"
        cancel = run_miner(home, "cancel", job2)
        assert cancel.returncode == 0 and f"job {job2} cancelled" in cancel.stdout
        cancelled = _status(home, job2)
        assert cancelled["state"] == "cancelled" and cancelled["candidates_stored"] == 0
        worker = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--concurrency", "2"],
                                  env=miner_env(home), stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
        result = run_miner(home, "retry", job2, "--wait", timeout=300)
        assert result.returncode == 0, result.stderr
        assert _status(home, job2)["state"] == "done"

        listing = json.loads(run_miner(home, "jobs", "--json").stdout)
        assert [j["id"] for j in listing] == [job2, job_id]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    # The workers' output went to a file: our one summary line, no Celery banner, no kombu warning
    # about the broker URL's missing host name.
    text = (tmp_path / "worker.log").read_text(errors="replace")
    assert "worker: broker miner+socket://" in text
    assert ".> transport:" not in text and "No hostname was supplied" not in text


def test_mine_messy_input_and_failures(tmp_path):
    """Blank lines, duplicates, a 1 MB line and undecodable bytes are counted skips; an unknown
    language code warns; a file with nothing left fails with exit code 3 and one error line."""
    home = tmp_path / "home"
    src = tmp_path / "messy.de"
    src.write_bytes(
        "Ich habe Hunger.\n\n".encode() + b"x" * 1_000_000 + b"\n" + b"Kaputt \xff hier.\n"
        + "Ich habe Hunger.\nDer Hund schläft im Garten.\n".encode()
    )
    tgt = tmp_path / "clean.en"
    tgt.write_text("The dog is sleeping in the garden.\nI am hungry.\nThe stock market fell sharply.\n",
                   encoding="utf-8")
    out = tmp_path / "out.tsv"
    result = run_miner(home, "mine", src, tgt, "--src-lang", "xx", "--tgt-lang", "en", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: unknown language code 'xx'" in result.stderr
    assert "src: 2 sentences kept; skipped 1 blank, 1 duplicates, 1 too long, 1 decode errors" in result.stderr
    assert "Traceback" not in result.stderr
    assert {(s, t) for _, s, t in read_tsv(out)} == {
        ("Ich habe Hunger.", "I am hungry."), ("Der Hund schläft im Garten.", "The dog is sleeping in the garden.")}

    result = run_miner(home, "mine", src, tgt, "--src-lang", "de", "--tgt-lang", "en", "-o", out,
                       "--on-decode-error", "fail")
    assert result.returncode == 3
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: job 2 failed: ingest: ") and "line 4" in last and "--on-decode-error" in last
    assert "Traceback" not in result.stderr

    # Blank lines only: refused before a job exists, like an empty file.
    blank = tmp_path / "blank.de"
    blank.write_text("\n   \n\t\n", encoding="utf-8")
    result = run_miner(home, "mine", blank, tgt, "--src-lang", "de", "--tgt-lang", "en", "-o", out)
    assert result.returncode == 3
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: input file has no sentences (every line is blank): ")
    assert max(j["id"] for j in json.loads(run_miner(home, "jobs", "--json").stdout)) == 2  # no job 3


def test_unwritable_artifacts_fail_the_job_clearly_and_retry_resumes(tmp_path):
    """A path that cannot be written (here a file where the embeddings folder must go) fails the job
    with one line naming the path; once fixed, `miner retry` finishes it. A config path that cannot
    be created is refused before any job exists."""
    case = make_case(tmp_path / "case", "deu", 0)
    home = tmp_path / "home"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "emb").write_text("in the way")
    out = tmp_path / "out.tsv"
    result = run_miner(home, "mine", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en", "-q",
                       "-o", out, MINER_ARTIFACTS=str(artifacts))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: job 1 failed: embed: ") and str(artifacts / "emb") in last
    assert "Traceback" not in result.stderr
    assert _status(home, 1)["state"] == "failed"

    (artifacts / "emb").unlink()
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--concurrency", "1"],
                              env=miner_env(home, MINER_ARTIFACTS=str(artifacts)), stdout=log,
                              stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        result = run_miner(home, "retry", "1", "--wait", timeout=300, MINER_ARTIFACTS=str(artifacts))
        assert result.returncode == 0, result.stderr[-2000:]
        status = _status(home, 1)
        assert status["state"] == "done" and status["pairs"] > 900
        stages = {s["stage"]: s for s in status["stages"]}
        assert stages["ingest"]["reused"] == 0 and stages["ingest"]["done"] == 2  # ingest was kept, not redone
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log.close()

    blocked = tmp_path / "blocked"
    blocked.write_text("a file")
    result = run_miner(home, "jobs", MINER_ARTIFACTS=str(blocked / "sub"))
    assert result.returncode == 1
    assert f"cannot use {blocked / 'sub'}" in result.stderr and "Traceback" not in result.stderr


def test_a_job_whose_worker_died_shows_as_stalled(tmp_path):
    """An interrupted job stayed `running` in `status` and `jobs` for good, its elapsed time
    climbing, with nothing saying that no worker was on it. Now, once no lease has been renewed and
    no unit finished for twice MINER_LEASE_SECONDS, both say so and what to do."""
    import os
    import time

    from .conftest import start_workers, stop_workers

    case = make_case(tmp_path / "case", "deu", 5000)
    home = tmp_path / "home"
    env = {"MINER_HEARTBEAT_SECONDS": "0.5", "MINER_LEASE_SECONDS": "2"}
    workers = start_workers(tmp_path, home, env, 1)
    try:
        result = run_miner(home, "submit", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                           "--shard-size", "250", **env)
        assert result.returncode == 0, result.stderr
        job_id = _job_id(result)
        deadline = time.monotonic() + 240
        while True:  # until a unit runs: its lease is fresh, the job is not stalled
            status = _status(home, job_id, **env)
            if status["state"] == "running" and status["running"]:
                break
            assert status["state"] in ("queued", "running") and time.monotonic() < deadline, status
        assert status["stalled"] is None
        os.killpg(workers[0].pid, signal.SIGKILL)  # the worker and its pool child, mid-unit
        workers[0].wait(30)
        deadline = time.monotonic() + 60
        while not (status := _status(home, job_id, **env))["stalled"]:
            assert status["state"] == "running" and time.monotonic() < deadline, status
    finally:
        stop_workers([w for w in workers if w.poll() is None])
    assert status["stalled"]["quiet_s"] > 4
    assert f"(`miner retry {job_id}`)" in status["stalled"]["hint"] and "`miner worker`" in status["stalled"]["hint"]
    text = run_miner(home, "status", job_id, **env).stdout
    assert "  stalled: no worker has renewed a lease or finished a unit of it for" in text
    listed = json.loads(run_miner(home, "jobs", "--json", **env).stdout)
    assert [j["stalled"] for j in listed if j["id"] == job_id] == [True]
    assert "stalled: no worker on it" in run_miner(home, "jobs", **env).stdout


def test_standard_input_and_named_pipes_as_inputs(tmp_path):
    """`zcat sample.de.gz | miner mine - sample.en ...` failed: prepare_job hashed the stream, which
    consumed it, and ingest read it again in another process. Now `-` and pipes are copied once
    into MINER_ARTIFACTS/inputs (by content), and the export is the plain files' byte for byte."""
    import os
    import threading

    examples = ROOT / "examples"
    plain = tmp_path / "plain.tsv"
    result = run_miner(tmp_path / "home-plain", "mine", examples / "sample.de", examples / "sample.en",
                       "--src-lang", "de", "--tgt-lang", "en", "-q", "-o", plain)
    assert result.returncode == 0, result.stderr[-3000:]
    packed = tmp_path / "sample.de.gz"
    packed.write_bytes(gzip.compress((examples / "sample.de").read_bytes()))
    fifo = tmp_path / "sample.en.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes((examples / "sample.en").read_bytes()))
    writer.start()
    piped = tmp_path / "piped.tsv"
    home = tmp_path / "home-piped"
    result = subprocess.run(f"zcat {packed} | {sys.executable} -m miner mine - {fifo} --src-lang de --tgt-lang en "
                            f"-q -o {piped}", shell=True, env=miner_env(home), capture_output=True, text=True,
                            timeout=600)
    writer.join(60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert piped.read_bytes() == plain.read_bytes()
    assert "source read from standard input into " in result.stderr and f"target read from {fifo} into " in result.stderr
    copies = sorted(p.read_bytes() for p in (home / "artifacts" / "inputs").iterdir())
    assert copies == sorted((examples / name).read_bytes() for name in ("sample.de", "sample.en"))
    # Nothing piped in, or more than MINER_SPOOL_LIMIT: one line, exit 3, no job.
    empty = subprocess.run([sys.executable, "-m", "miner", "mine", "-", str(examples / "sample.en"), "--src-lang",
                            "de", "--tgt-lang", "en", "-o", str(tmp_path / "x.tsv")], input=b"",
                           env=miner_env(tmp_path / "home-empty"), capture_output=True, timeout=120)
    assert empty.returncode == 3 and b"Error: input is empty (0 bytes): standard input" in empty.stderr
    big = subprocess.run([sys.executable, "-m", "miner", "mine", "-", str(examples / "sample.en"), "--src-lang", "de",
                          "--tgt-lang", "en", "-o", str(tmp_path / "x.tsv")], input=(examples / "sample.de").read_bytes(),
                         env=miner_env(tmp_path / "home-big", MINER_SPOOL_LIMIT="1K"), capture_output=True, timeout=120)
    assert big.returncode == 3 and b"standard input gives more than MINER_SPOOL_LIMIT (1,024 bytes)" in big.stderr
    assert not list((tmp_path / "home-big" / "artifacts" / "inputs").glob("*"))  # the partial copy is gone


def test_a_reset_database_does_not_reuse_an_old_jobs_scores(tmp_path):
    """Score shards were stored under the job's integer id (jobs/00000001/...) and reused whenever
    the file existed: after `rm miner.db` (or with two databases on one MINER_ARTIFACTS) ids start
    at 1 again, and a new job of other corpora of the same sizes loaded the old job's scores."""
    examples, data = ROOT / "examples", ROOT / "tests" / "data" / "tatoeba"
    home = tmp_path / "home"
    first = run_miner(home, "mine", examples / "sample.de", examples / "sample.en", "--src-lang", "de",
                      "--tgt-lang", "en", "-q", "-o", tmp_path / "first.tsv")
    assert first.returncode == 0, first.stderr[-3000:]
    for path in home.glob("miner.db*"):  # the database reset (with its -wal and -shm); the artifacts stay
        path.unlink()
    fra = (data / "tatoeba.fra-eng.fra").read_text(encoding="utf-8").splitlines()[:300]
    eng = (data / "tatoeba.fra-eng.eng").read_text(encoding="utf-8").splitlines()[:300]
    eng += (data / "distractors.eng").read_text(encoding="utf-8").splitlines()[:100]  # 300 / 400 lines, as sample
    src, tgt = tmp_path / "other.fr", tmp_path / "other.en"
    src.write_text("\n".join(fra) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(eng) + "\n", encoding="utf-8")
    args = (src, tgt, "--src-lang", "fr", "--tgt-lang", "en", "-q")
    again = run_miner(home, "mine", *args, "-o", tmp_path / "again.tsv")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _job_id(again) == 1  # the id the first job had
    fresh = run_miner(tmp_path / "fresh", "mine", *args, "-o", tmp_path / "fresh.tsv")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert (tmp_path / "again.tsv").read_bytes() == (tmp_path / "fresh.tsv").read_bytes()
    assert len(read_tsv(tmp_path / "again.tsv")) > 250
