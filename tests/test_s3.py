"""Workers without a shared file system (issue 14): artifacts and inputs in object storage, on a
real S3-API server started by the test run (moto in server mode, tests/servers.py).

The cluster runs Redis + PostgreSQL + S3 and two `miner worker` processes, each with its own
MINER_HOME and working directory and no folder in common; the inputs are uploaded to the bucket and
submitted by URL, MINER_ARTIFACTS is s3://BUCKET/PREFIX."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import SHORT_LEASE, db_counts, miner_env, read_tsv, run_miner, stop_workers
from .servers import free_port

pytestmark = pytest.mark.slow

SHARD = 500  # 2 German and 12 English shards
UNITS = 2 + 3 * 14 + 2 + 1  # ingest, embed/knn/score per shard, index per side, finish


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr[-3000:]
    return lines[-1]


def start_s3_workers(folder: Path, env: dict, n: int, first: int = 0) -> list:
    """``n`` `miner worker` processes, each with its own MINER_HOME (its cache inside) and its own
    working directory under ``folder``: nothing on disk is shared."""
    procs = []
    for i in range(first, first + n):
        own = folder / f"worker{i}"
        own.mkdir(parents=True, exist_ok=True)
        log = open(folder / f"worker{i}.log", "ab")  # noqa: SIM115 - closed in stop_workers
        proc = subprocess.Popen(
            [sys.executable, "-m", "miner", "worker", "--concurrency", "1", "--threads", "1", "--name", f"w{i}@test",
             "--loglevel", os.environ.get("MINER_TEST_WORKER_LOGLEVEL", "WARNING")],
            env=miner_env(own / "home", **env), stdout=log, stderr=subprocess.STDOUT, cwd=str(own),
            start_new_session=True,
        )
        proc.log = log
        procs.append(proc)
    return procs


def upload_case(s3_server, bucket: str, case: dict, folder: Path) -> tuple[str, str]:
    """The case's two files in the bucket (the English side gzip-compressed); the local copies are
    removed, so only the URLs can be read."""
    gz = folder / "tgt.eng.gz"
    gz.write_bytes(gzip.compress(case["tgt"].read_bytes()))
    src = s3_server.upload(case["src"], bucket, "inputs/src.deu")
    tgt = s3_server.upload(gz, bucket, "inputs/tgt.eng.gz")
    gz.unlink()
    return src, tgt


@pytest.fixture(scope="module")
def s3_cluster_env(tmp_path_factory, redis_server, postgres_server, s3_server):
    redis_server.flush()
    bucket = s3_server.create_bucket("miner-test")
    return bucket, {
        "MINER_DB_URL": postgres_server.create_database("s3_cluster"),
        "MINER_BROKER_URL": f"{redis_server.url}/0",
        "MINER_RESULT_BACKEND": f"{redis_server.url}/1",
        "MINER_ARTIFACTS": f"s3://{bucket}/artifacts",
        **s3_server.env,
    }


@pytest.fixture(scope="module")
def deu_s3(tmp_path_factory, s3_server, s3_cluster_env, deu_embedded) -> dict:
    """The deu case of ``deu_embedded`` mined on Redis + PostgreSQL + S3 by two workers that share no
    folder, its inputs submitted as s3:// URLs."""
    bucket, env = s3_cluster_env
    folder = tmp_path_factory.mktemp("deu_s3")
    src, tgt = upload_case(s3_server, bucket, deu_embedded["case"], folder)
    home, out = folder / "client" / "home", folder / "s3.tsv"
    home.parent.mkdir()
    assert run_miner(home, "db", "upgrade", **env).returncode == 0
    workers = start_s3_workers(folder, env, 2)
    started = time.monotonic()
    try:
        result = run_miner(home, "mine", src, tgt, "--src-lang", "de", "--tgt-lang", "en", "--shard-size", str(SHARD),
                           "-o", out, **env)
    finally:
        stop_workers(workers)
    seconds = time.monotonic() - started
    job_id = int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None
    status = json.loads(run_miner(home, "status", str(job_id), "--json", **env).stdout) if job_id else None
    return {"result": result, "env": env, "home": home, "out": out, "job_id": job_id, "status": status,
            "folder": folder, "src": src, "tgt": tgt, "bucket": bucket, "seconds": seconds,
            "candidates": db_counts(env, job_id)["candidates"] if job_id else None}


def test_s3_cluster_gives_the_same_pairs_as_the_embedded_default(deu_s3, deu_embedded, s3_server):
    assert deu_embedded["result"].returncode == 0, deu_embedded["result"].stderr[-3000:]
    result = deu_s3["result"]
    assert result.returncode == 0, result.stderr[-3000:] + "".join(
        p.read_text(errors="replace")[-3000:] for p in deu_s3["folder"].glob("worker*.log"))
    reference, mined = read_tsv(deu_embedded["out"]), read_tsv(deu_s3["out"])
    assert len(mined) == len(reference) > 900
    assert sorted((s, t) for _, s, t in mined) == sorted((s, t) for _, s, t in reference)
    by_pair = {(s, t): score for score, s, t in reference}
    np.testing.assert_allclose([score for score, *_ in mined], [by_pair[(s, t)] for _, s, t in mined], atol=1e-5)

    status = deu_s3["status"]
    assert status["state"] == "done" and status["src"] == deu_s3["src"] and status["tgt"] == deu_s3["tgt"]
    assert {w["name"] for w in status["workers"]} == {"w0@test", "w1@test"}
    assert all(w["units"] > 3 for w in status["workers"])  # both did a real share
    # Every artifact is in the bucket (embeddings of 14 shards, 2 index manifests, kNN and scores
    # of 14 shards, 2 means files) ...
    keys = s3_server.keys(deu_s3["bucket"], "artifacts/")
    kinds = {prefix: len([k for k in keys if k.startswith(f"artifacts/{prefix}/")]) for prefix in ("emb", "index", "knn", "jobs")}
    assert kinds == {"emb": 14, "index": 2, "knn": 14 + 2, "jobs": 14}, kinds
    assert not any(".tmp" in k or ".part" in k for k in keys)
    # ... and no worker wrote one outside its own cache
    for i in (0, 1):
        own = deu_s3["folder"] / f"worker{i}"
        assert not (own / "home" / "artifacts").exists()
        cached = [p for p in (own / "home" / "cache").rglob("*") if p.is_file()]
        assert cached and all(".part" not in p.name for p in cached)


def test_kill9_of_a_worker_mid_embed_on_s3_gives_the_same_export(tmp_path, s3_cluster_env, deu_s3):
    """A worker killed with SIGKILL while it embeds (its upload never made): the unit is sent again
    through its lease, the job finishes with the same export, every unit recorded once."""
    from .test_reliability import JobWatch, _kill9_mid

    assert deu_s3["result"].returncode == 0, deu_s3["result"].stderr[-3000:]
    _bucket, base = s3_cluster_env
    env = dict(base, MINER_ARTIFACTS=base["MINER_ARTIFACTS"] + "-chaos", MINER_STALL_SECONDS="600",
               **SHORT_LEASE)
    home = tmp_path / "client" / "home"
    home.parent.mkdir()
    result = run_miner(home, "submit", deu_s3["src"], deu_s3["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                       "--shard-size", str(SHARD), "--force", **env)
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.strip().splitlines()[-1])
    watch = JobWatch(env, job_id)
    workers = start_s3_workers(tmp_path, env, 2)
    try:
        _kill9_mid(watch, workers[0], "embed", 180, after=2, units=14)
        workers += start_s3_workers(tmp_path, env, 1, first=2)
        watch.wait(lambda: watch.state() in ("done", "failed"), 240, "the job to finish")
    finally:
        stop_workers([w for w in workers if w.poll() is None])
        watch.close()
    assert watch.state() == "done"
    out = tmp_path / "out.tsv"
    result = run_miner(home, "export", job_id, "-o", out, **env)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == deu_s3["out"].read_bytes()
    assert db_counts(env, job_id) == {"candidates": deu_s3["candidates"], "steps": UNITS}


def test_inputs_and_artifacts_at_urls_fail_with_one_line(tmp_path, s3_server, s3_cluster_env):
    """Missing object, missing bucket, an endpoint that is down, access denied: one `Error:` line
    naming the URL, exit 3 for an input and 1 for the artifact store; `miner config` hides the secret."""
    bucket, _env = s3_cluster_env
    sample = Path(__file__).resolve().parents[1] / "examples" / "sample.de"
    src = s3_server.upload(sample, bucket, "inputs/sample.de")
    home = tmp_path / "home"
    env = dict(s3_server.env, MINER_ARTIFACTS=f"s3://{bucket}/errors")
    args = ("--src-lang", "de", "--tgt-lang", "en")

    result = run_miner(home, "submit", src, f"s3://{bucket}/inputs/nothing.en", *args, **env)
    assert result.returncode == 3
    assert one_error_line(result) == f"Error: input file not found: s3://{bucket}/inputs/nothing.en -- check the URL"

    result = run_miner(home, "submit", src, "s3://no-such-bucket-here/x.en", *args, **env)
    assert result.returncode == 3
    assert "s3://no-such-bucket-here/x.en: bucket 'no-such-bucket-here' does not exist" in one_error_line(result)

    result = run_miner(home, "submit", src, src, *args, **dict(env, MINER_ARTIFACTS="s3://no-such-bucket-here/a"))
    assert result.returncode == 1
    assert one_error_line(result) == ("Error: s3://no-such-bucket-here/a: bucket 'no-such-bucket-here' does not exist "
                                      "(create it, or fix the URL)")

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_miner(home, "submit", sample, sample, *args, **dict(env, AWS_ENDPOINT_URL=down))
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith(f"Error: s3://{bucket}/errors: cannot reach the object store at {down}"), line

    # access denied: a second S3 server that checks credentials (moto's IAM enforcement), unknown key
    from .servers import S3Server

    strict = S3Server(tmp_path / "strict", INITIAL_NO_AUTH_ACTION_COUNT="0").start()
    try:
        result = run_miner(home, "submit", f"s3://{bucket}/inputs/sample.de", sample, *args,
                           **dict(env, AWS_ENDPOINT_URL=strict.url, MINER_ARTIFACTS=str(tmp_path / "artifacts")))
    finally:
        strict.stop()
    assert result.returncode == 3
    assert "access denied" in one_error_line(result) and f"s3://{bucket}/inputs/sample.de" in result.stderr

    result = run_miner(home, "config", **env)
    assert result.returncode == 0
    assert "aws_secret_access_key: ***" in result.stdout and "testing-secret" not in result.stdout
    assert f"artifacts: s3://{bucket}/errors" in result.stdout


def test_cache_keeps_to_its_limit_least_recently_used_first(tmp_path, s3_server, s3_cluster_env, monkeypatch):
    """Remote artifacts are copied once into MINER_CACHE; above MINER_CACHE_LIMIT the least recently
    used copies go first, never the one just fetched; an evicted copy is fetched again."""
    from miner.io.artifacts import Artifacts
    from miner.io.storage import Cache

    bucket, _env = s3_cluster_env
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    cache = Cache(tmp_path / "cache", limit=5000)
    art = Artifacts(f"s3://{bucket}/cache-test", cache)
    shards = [art.embeddings("corpus", "model", i * 100, (i + 1) * 100) for i in range(3)]
    local = [cache.path_for(loc) for loc in shards]
    hour = time.time() - 3600
    for i, loc in enumerate(shards):
        art.save_npy(loc, np.full((100, 4), i, dtype=np.float32))  # 1,728 bytes each: two fit
        os.utime(local[i], (hour + 60 * i, hour + 60 * i))  # used in this order
    assert all(art.exists(loc) for loc in shards)
    assert [p.exists() for p in local] == [False, True, True] and cache.usage() <= cache.limit  # the oldest went
    assert float(art.load_npy(shards[0])[0, 0]) == 0.0  # fetched again from the bucket ...
    assert [p.exists() for p in local] == [True, False, True]  # ... and now shard 1 is the least recently used
    mapped = art.load_npy(shards[2])
    os.utime(local[2], (hour, hour))
    art.load_npy(shards[1])
    assert not local[2].exists() and float(mapped[0, 0]) == 2.0  # removed while mapped: still readable
    assert not list((tmp_path / "cache").rglob(".*part*"))


def test_reader_streams_urls_like_local_files(tmp_path, s3_server, s3_cluster_env, monkeypatch):
    """The same reader on an object and on its local copy: plain, gzip by name, xz by magic bytes,
    the same sentences and counters (duplicates, invalid UTF-8, too long), the same content digest."""
    import lzma

    from miner.runtime.errors import InputFileError
    from miner.io.reader import ReadStats, check_input_file, file_digest, read_sentences

    bucket, _env = s3_cluster_env
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    raw = b"Hallo Welt\n\nHallo  Welt\nbad \xff byte\n" + b"x" * 50 + b"\nEnde\n"
    files = {"plain.de": raw, "packed.de.gz": gzip.compress(raw), "packed-no-suffix": lzma.compress(raw)}
    for name, data in files.items():
        local = tmp_path / name
        local.write_bytes(data)
        url = s3_server.upload(local, bucket, f"reader/{name}")
        check_input_file(url)
        got, want = ReadStats(), ReadStats()
        assert list(read_sentences(url, max_chars=40, stats=got)) == list(read_sentences(local, max_chars=40, stats=want))
        assert got == want and (got.duplicates, got.decode_errors, got.too_long, got.sentences) == (1, 1, 1, 2)
        assert file_digest(url) == file_digest(local)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match=r"input file is empty \(0 bytes\): s3://"):
        check_input_file(s3_server.upload(empty, bucket, "reader/empty"))


def test_a_bucket_gone_fails_the_job_with_one_line_and_retry_resumes(tmp_path, s3_server):
    """The artifact bucket disappears between submit and the workers: the job fails with one line
    naming the URL (not a traceback); once the bucket is back, `miner retry --wait` finishes it.
    Then `miner export -o s3://...` writes the same bytes as a local export."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    client = s3_server.client()
    bucket = s3_server.create_bucket("comes-and-goes")
    home = tmp_path / "home"
    env = dict(s3_server.env, MINER_ARTIFACTS=f"s3://{bucket}/a")
    result = run_miner(home, "submit", examples / "sample.de", examples / "sample.en", "--src-lang", "de",
                       "--tgt-lang", "en", **env)
    assert result.returncode == 0, result.stderr
    client.delete_bucket(Bucket=bucket)
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--concurrency", "1", "--threads", "1"],
                              env=miner_env(home, **env), stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
                              start_new_session=True)
    try:
        watched = run_miner(home, "status", "1", "--watch", "--json", "--interval", "0.2", timeout=300, **env)
        final = json.loads(watched.stdout.strip().splitlines()[-1])
        assert final["state"] == "failed"
        assert f"s3://{bucket}/a/" in final["error"] and f"bucket '{bucket}' does not exist" in final["error"]
        assert "Traceback" not in final["error"] and "\n" not in final["error"]
        s3_server.create_bucket(bucket)
        result = run_miner(home, "retry", "1", "--wait", timeout=300, **env)
        assert result.returncode == 0, result.stderr[-2000:]
        status = json.loads(run_miner(home, "status", "1", "--json", **env).stdout)
        assert status["state"] == "done" and status["pairs"] > 100
        assert s3_server.keys(bucket, "a/emb/")
        # export to the bucket: the same bytes as a local export, gzip by name; a missing bucket: one line
        local = tmp_path / "pairs.tsv"
        assert run_miner(home, "export", "1", "-o", local, "--header", **env).returncode == 0
        result = run_miner(home, "export", "1", "-o", f"s3://{bucket}/out/pairs.tsv.gz", "--header", **env)
        assert result.returncode == 0, result.stderr
        body = client.get_object(Bucket=bucket, Key="out/pairs.tsv.gz")["Body"].read()
        assert gzip.decompress(body) == local.read_bytes() and local.stat().st_size > 1000
        result = run_miner(home, "export", "1", "-o", "s3://no-such-bucket-here/pairs.tsv", **env)
        assert result.returncode == 1
        assert one_error_line(result) == ("Error: s3://no-such-bucket-here/pairs.tsv: bucket 'no-such-bucket-here' "
                                          "does not exist (create it, or fix the URL)")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log.close()
