#!/usr/bin/env python3
"""Benchmark: what a lost worker costs (issue 16: preemptible machines).

Target: "the wall time exceeds the undisturbed run's by at most 30 s per kill", on Redis +
PostgreSQL, three whole workers killed with SIGKILL at three stages, a fresh worker started after
each kill; the export equals the undisturbed run's byte for byte.

It starts a real Redis server and a real PostgreSQL cluster (as the test suite does, on loopback
ports, in a temporary folder; stopped at the end), builds a job of real sentences (Tatoeba
deu+fra+spa lines against English partners and distractors, ``--size`` per side, ``bench/common.py``)
and runs it twice, each time on a fresh database with the workers' default heartbeat and lease
(``MINER_HEARTBEAT_SECONDS`` 3, ``MINER_LEASE_SECONDS`` 15) unless ``--lease`` is given, and the
default stall sweep (120 s):

* **undisturbed**: ``miner submit``, one ``miner worker --concurrency 1``, until the job is done;
* **chaos**: the same, but when a unit of ``embed``, then ``knn``, then ``finish`` is running (a lease
  is held), the worker's whole process group is killed with SIGKILL and a fresh worker is started.

Reported: both wall times (submit to done), the extra seconds per kill, the recovery lines of the
workers' logs, and whether the two exports are identical.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402
from tests.servers import PostgresServer, RedisServer  # noqa: E402

REPO = common.REPO
KILL_STAGES = ("embed", "knn", "finish")


def run(name: str, corpus: dict, servers, folder: Path, shard: int, extra_env: dict, chaos: bool,
        timeout: float) -> dict:
    from sqlalchemy import create_engine, func, select

    from miner.runtime.db import Job, JobLease

    redis, postgres = servers
    redis.flush()
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINER_")}
    env.update(MINER_HOME=str(folder / "home"), MINER_DB_URL=postgres.create_database(name),
               MINER_BROKER_URL=f"{redis.url}/0", MINER_RESULT_BACKEND=f"{redis.url}/1",
               MINER_ARTIFACTS=str(folder / "artifacts"), MINER_THREADS="1", **extra_env)
    assert common.miner(env, "db", "upgrade").returncode == 0
    engine = create_engine(env["MINER_DB_URL"])

    def state(job_id):
        with engine.connect() as conn:
            return conn.execute(select(Job.state).where(Job.id == job_id)).scalar()

    def running(job_id, stage):
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(JobLease)
                                .where(JobLease.job_id == job_id, JobLease.stage == stage)).scalar()

    procs = [common.start_worker(env, folder, 0)]
    kills = []
    try:
        started = time.monotonic()
        job_id = common.submit(env, corpus, shard, name)
        for stage in KILL_STAGES if chaos else ():
            while not running(job_id, stage):
                if time.monotonic() - started > timeout or state(job_id) in ("done", "failed"):
                    raise SystemExit(f"{name}: never saw a running {stage} unit")
                time.sleep(0.05)
            os.killpg(procs[-1].pid, signal.SIGKILL)
            procs[-1].wait()
            kills.append({"stage": stage, "at_s": round(time.monotonic() - started, 1)})
            common.log(f"{name}: killed w{len(procs) - 1}@bench during {stage} at {kills[-1]['at_s']}s")
            procs.append(common.start_worker(env, folder, len(procs)))
        while state(job_id) not in ("done", "failed", "cancelled"):
            if time.monotonic() - started > timeout:
                raise SystemExit(f"{name}: job {job_id} not done after {timeout:.0f}s")
            time.sleep(0.1)
        wall = time.monotonic() - started
    finally:
        common.stop_workers(procs)
        engine.dispose()
    if state(job_id) != "done":
        raise SystemExit(f"{name}: job {job_id} {state(job_id)}")
    out = folder / "pairs.tsv"
    assert common.miner(env, "export", job_id, "-o", out).returncode == 0
    logs = "".join(p.read_text(errors="replace") for p in sorted(folder.glob("worker*.log")))
    recovered = re.findall(r"job \d+: (\w+) (\S+) lost with (\S+) \(lease not renewed for (\d+)s\); sent again", logs)
    swept = re.findall(r"quiet for \d+s[^\n]*", logs)
    common.log(f"{name}: done in {wall:.1f}s; {len(recovered)} unit(s) recovered through leases, "
               f"{len(swept)} stall sweep(s)")
    return {"name": name, "wall_s": round(wall, 1), "kills": kills, "tsv": str(out),
            "recovered": [{"stage": s, "unit": u, "worker": w, "lease_age_s": int(a)} for s, u, w, a in recovered],
            "stall_sweeps": swept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=6000, help="sentences per side (default 6,000)")
    ap.add_argument("--shard-size", type=int, default=200)
    ap.add_argument("--heartbeat", type=float, default=None, help="MINER_HEARTBEAT_SECONDS (default: the product's)")
    ap.add_argument("--lease", type=float, default=None, help="MINER_LEASE_SECONDS (default: the product's)")
    ap.add_argument("--data", default=str(common.DEFAULT_DATA))
    ap.add_argument("--out", default=str(common.DEFAULT_OUT / "chaos"))
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--target", type=float, default=30.0, help="extra seconds allowed per kill")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = common.build_corpus(args.size, out / "corpus", data=Path(args.data))
    extra = {}
    if args.heartbeat is not None:
        extra["MINER_HEARTBEAT_SECONDS"] = str(args.heartbeat)
    if args.lease is not None:
        extra["MINER_LEASE_SECONDS"] = str(args.lease)
    work = Path(tempfile.mkdtemp(prefix="chaos-", dir=out))
    redis = RedisServer(work / "redis").start()
    postgres = PostgresServer(work / "postgres").start()
    try:
        calm = run("undisturbed", corpus, (redis, postgres), work / "undisturbed", args.shard_size, extra, False,
                   args.timeout)
        chaos = run("chaos", corpus, (redis, postgres), work / "chaos", args.shard_size, extra, True, args.timeout)
    finally:
        postgres.stop()
        redis.stop()
    same = Path(calm["tsv"]).read_bytes() == Path(chaos["tsv"]).read_bytes()
    per_kill = (chaos["wall_s"] - calm["wall_s"]) / len(KILL_STAGES)
    passed = same and per_kill <= args.target
    from miner.runtime.config import Config

    cfg = Config.from_env(dict(os.environ, **extra))
    result = {"bench": "chaos", "machine": common.machine(), "code": common.code_state(), "size": args.size,
              "shard_size": args.shard_size, "heartbeat_s": cfg.heartbeat_seconds, "lease_s": cfg.lease_seconds,
              "undisturbed": calm, "chaos": chaos, "same_export": same, "extra_per_kill_s": round(per_kill, 1),
              "target_s": args.target, "pass": passed}

    def table(res: dict) -> None:
        m = res["machine"]
        print(f"Lost workers on Redis + PostgreSQL: {args.size:,} + {args.size:,} sentences, shard size "
              f"{args.shard_size}, one worker (--concurrency 1) at a time, heartbeat {res['heartbeat_s']:g}s, "
              f"lease {res['lease_s']:g}s, stall sweep 120s")
        print(f"machine: {m['cpu']}, {m['cores']} cores; code {res['code']}")
        print(f"undisturbed: {calm['wall_s']:.1f}s")
        kills = ", ".join(f"{k['stage']} at {k['at_s']}s" for k in chaos["kills"])
        print(f"3 kills ({kills}): {chaos['wall_s']:.1f}s; {len(chaos['recovered'])} unit(s) sent again through "
              f"their leases, {len(chaos['stall_sweeps'])} by the stall sweep")
        for r in chaos["recovered"]:
            print(f"  {r['stage']} {r['unit']} of {r['worker']}: lease {r['lease_age_s']}s old")
        verdict = "PASS" if res["pass"] else "FAIL"
        print(f"extra per kill: {res['extra_per_kill_s']:.1f}s (target <= {args.target:g}s); exports identical: "
              f"{'yes' if same else 'NO'} -> {verdict}")

    common.emit(result, args.json, table)
    if args.check and not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
