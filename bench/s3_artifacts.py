#!/usr/bin/env python3
"""Benchmark: workers without a shared folder (issue 14): artifacts and inputs in object storage.

The same job (``--size`` + ``--size`` real sentences, ``bench/common.py``) on Redis + PostgreSQL with
``--workers`` `miner worker` processes (``--concurrency 1`` each), run twice in one go:

* **shared folder**: ``MINER_ARTIFACTS`` a local folder all workers see, inputs by path;
* **s3**: ``MINER_ARTIFACTS=s3://bench/artifacts`` on a real S3-API server (moto in server mode on
  loopback, as the tests start it), the inputs uploaded to the bucket and submitted by URL, each
  worker with its own ``MINER_HOME`` and working directory (its cache, ``MINER_CACHE``, inside).

Reported: both wall times (submit to done) and their ratio, whether the exports are identical, the
objects and bytes in the bucket, and the peak disk use of the workers' caches (sampled every 0.2 s,
per worker and together). moto keeps objects in memory on the same machine: the figure is the
cost of the storage layer (uploads, downloads, the cache), not of a network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402
from tests.servers import PostgresServer, RedisServer, S3Server  # noqa: E402


def _worker(env: dict, folder: Path, n: int, own_home: bool):
    own = folder / f"worker{n}"
    own.mkdir(parents=True, exist_ok=True)
    env = dict(env, MINER_HOME=str(own / "home")) if own_home else env
    return common.start_worker(env, folder, n, cwd=own)


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


class PeakDisk(threading.Thread):
    """Samples the size of some folders every 0.2 s; keeps the peak of each and of their sum."""

    def __init__(self, folders: list[Path]) -> None:
        super().__init__(daemon=True)
        self.folders, self.peaks, self.peak_total = folders, [0] * len(folders), 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            sizes = [_size(f) for f in self.folders]
            self.peaks = [max(p, s) for p, s in zip(self.peaks, sizes)]
            self.peak_total = max(self.peak_total, sum(sizes))


def run(name: str, corpus: dict, servers, folder: Path, args, s3: S3Server | None) -> dict:
    from sqlalchemy import create_engine, select

    from miner.runtime.db import Job

    redis, postgres = servers
    redis.flush()
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINER_", "AWS_"))}
    env.update(MINER_HOME=str(folder / "client"), MINER_DB_URL=postgres.create_database(name.replace(" ", "_")),
               MINER_BROKER_URL=f"{redis.url}/0", MINER_RESULT_BACKEND=f"{redis.url}/1", MINER_THREADS="1")
    src, tgt = corpus["src"], corpus["tgt"]
    if s3 is None:
        env["MINER_ARTIFACTS"] = str(folder / "artifacts")
    else:
        env.update(s3.env, MINER_ARTIFACTS="s3://bench/artifacts", MINER_CACHE_LIMIT=args.cache_limit)
        s3.create_bucket("bench")
        src, tgt = s3.upload(src, "bench", "inputs/src.txt"), s3.upload(tgt, "bench", "inputs/tgt.txt")
    assert common.miner(env, "db", "upgrade").returncode == 0
    engine = create_engine(env["MINER_DB_URL"])

    def state(job_id):
        with engine.connect() as conn:
            return conn.execute(select(Job.state).where(Job.id == job_id)).scalar()

    procs = [_worker(env, folder, i, own_home=s3 is not None) for i in range(args.workers)]
    caches = [folder / f"worker{i}" / "home" / "cache" for i in range(args.workers)]
    sampler = PeakDisk(caches)
    sampler.start()
    try:
        started = time.monotonic()
        job_id = common.submit(env, dict(corpus, src=src, tgt=tgt), args.shard_size, name)
        while state(job_id) not in ("done", "failed", "cancelled"):
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"{name}: job {job_id} not done after {args.timeout:.0f}s")
            time.sleep(0.1)
        wall = time.monotonic() - started
    finally:
        sampler.halt.set()
        sampler.join()
        common.stop_workers(procs)
        engine.dispose()
    if state(job_id) != "done":
        raise SystemExit(f"{name}: job {job_id} {state(job_id)}: see {folder}/worker*.log")
    out = folder / "pairs.tsv"
    assert common.miner(env, "export", job_id, "-o", out).returncode == 0
    result = {"name": name, "wall_s": round(wall, 1), "tsv": str(out), "pairs": len(out.read_text().splitlines())}
    if s3 is not None:
        client = s3.client()
        objects = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="artifacts/")
                   for o in page.get("Contents", [])]
        result.update(objects=len(objects), bucket_bytes=sum(o["Size"] for o in objects),
                      cache_peak_bytes=sampler.peaks, cache_peak_total_bytes=sampler.peak_total,
                      cache_end_bytes=[_size(c) for c in caches])
    common.log(f"{name}: done in {wall:.1f}s")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=20000, help="sentences per side (default 20,000)")
    ap.add_argument("--shard-size", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache-limit", default="20G", help="MINER_CACHE_LIMIT of the s3 workers")
    ap.add_argument("--data", default=str(common.DEFAULT_DATA))
    ap.add_argument("--out", default=str(common.DEFAULT_OUT / "s3_artifacts"))
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = common.build_corpus(args.size, out / "corpus", data=Path(args.data))
    work = Path(tempfile.mkdtemp(prefix="s3-", dir=out))
    redis = RedisServer(work / "redis").start()
    postgres = PostgresServer(work / "postgres").start()
    s3 = S3Server(work / "s3").start()
    try:
        shared = run("shared folder", corpus, (redis, postgres), work / "shared", args, None)
        remote = run("s3", corpus, (redis, postgres), work / "s3run", args, s3)
    finally:
        s3.stop()
        postgres.stop()
        redis.stop()
    same = Path(shared["tsv"]).read_bytes() == Path(remote["tsv"]).read_bytes()
    result = {"bench": "s3_artifacts", "machine": common.machine(), "code": common.code_state(), "size": args.size,
              "shard_size": args.shard_size, "workers": args.workers, "shared": shared, "s3": remote,
              "ratio": round(remote["wall_s"] / shared["wall_s"], 3), "same_export": same}

    def table(res: dict) -> None:
        m, mib = res["machine"], 1024 * 1024
        print(f"S3 artifacts vs a shared folder: {args.size:,} + {args.size:,} sentences, shard size {args.shard_size}, "
              f"{args.workers} workers (--concurrency 1), Redis + PostgreSQL; S3 = moto server on loopback")
        print(f"machine: {m['cpu']}, {m['cores']} cores; code {res['code']}")
        print(f"shared folder: {shared['wall_s']:.1f}s; s3: {remote['wall_s']:.1f}s; ratio s3 / shared = "
              f"{res['ratio']:.2f}; exports identical: {'yes' if same else 'NO'} ({shared['pairs']:,} pairs)")
        print(f"bucket: {remote['objects']} objects, {remote['bucket_bytes'] / mib:.1f} MiB; cache peak per worker: "
              + ", ".join(f"{b / mib:.1f} MiB" for b in remote["cache_peak_bytes"])
              + f" (together {remote['cache_peak_total_bytes'] / mib:.1f} MiB, limit {args.cache_limit})")

    common.emit(result, args.json, table)


if __name__ == "__main__":
    main()
