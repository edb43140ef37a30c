#!/usr/bin/env python3
"""Benchmark: several workers on one host share its cores (issue 13).

Target: "Two workers on one host, default settings: embedding throughput >= 0.9 x one worker alone
with all cores."

For each configuration below, in a fresh ``MINER_HOME`` (embedded default: SQLite and the embedded
Redis broker, which several ``miner worker`` processes share) and a fresh ``MINER_CORES_DIR``, this
starts the workers exactly as a user would (``python -m miner worker ...``), waits until they answer
a ping, submits the same job (``--src-lang xx --tgt-lang en --shard-size S``; muse; real sentences
built by ``bench/common.build_corpus``, ``--size`` per side), waits for it to finish, and reads the
embed stage from the job's ``job_steps`` rows: its span (first unit's start to last unit's end) and
throughput (sentences / span). Then it stops the workers.

* ``alone``: one ``miner worker --concurrency 1``: one task process with every core (the reference);
* ``two default``: two ``miner worker`` with no option (each: concurrency = cores);
* ``two c1``: two ``miner worker --concurrency 1`` (threads left to the product);
* ``two c1 --threads 2`` (``--oversubscribed-threads``): the same with each process given every core,
  which is what ``--concurrency 1`` gave before workers shared the host's cores (threads = cores /
  concurrency of each worker alone): the case the sharing fixes.

Prints a table and the ratios to ``alone`` measured in this run; ``--check`` exits 1 when a
two-worker configuration without explicit threads is below ``--target`` (0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REPO = common.REPO


def _env(home: Path, cores_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINER_")}
    env.update(MINER_HOME=str(home), MINER_CORES_DIR=str(cores_dir), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return env


def _embed_figures(db: Path, job_id: int) -> dict:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT items, seconds, finished_at, worker FROM job_steps WHERE job_id = ? AND stage = 'embed'",
                            (job_id,)).fetchall()
    ends = [datetime.fromisoformat(str(r[2])) for r in rows]
    starts = [end.timestamp() - float(r[1]) for end, r in zip(ends, rows)]
    span = max(e.timestamp() for e in ends) - min(starts)
    items = sum(int(r[0]) for r in rows)
    busy = sum(float(r[1]) for r in rows)
    return {"units": len(rows), "sentences": items, "span_s": round(span, 2), "rate": round(items / span, 1),
            "busy_s": round(busy, 2), "workers": sorted({r[3] for r in rows})}


def run_config(name: str, workers: list[list[str]], corpus: dict, shard: int, out: Path, timeout: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"{name.replace(' ', '-')}-", dir=out))
    home, cores_dir = folder / "home", folder / "cores"
    env = _env(home, cores_dir)
    assert common.miner(env, "db", "upgrade").returncode == 0
    procs = []
    try:
        for i, extra in enumerate(workers):
            log = open(folder / f"worker{i}.log", "wb")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen([sys.executable, "-m", "miner", "worker", "--loglevel", "WARNING",
                                            "--name", f"w{i}@bench", *extra], env=env, stdout=log,
                                           stderr=subprocess.STDOUT, cwd=str(folder), start_new_session=True), log))
        deadline = time.monotonic() + 120
        while True:  # every worker answers a ping: all are set up and registered
            names = json.loads(common.miner(env, "workers", "--json", "--timeout", "1").stdout or "[]")
            if len(names) == len(workers):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                raise SystemExit(f"{name}: the workers did not start; see {folder}")
        common.log(f"{name}: {len(workers)} worker(s) ready; submitting")
        started = time.monotonic()
        job_id = common.submit(env, corpus, shard, name)
        while True:
            status = json.loads(common.miner(env, "status", job_id, "--json").stdout)
            if status["state"] in ("done", "failed", "cancelled"):
                break
            if time.monotonic() - started > timeout:
                raise SystemExit(f"{name}: job {job_id} not done after {timeout:.0f}s")
            time.sleep(1.0)
        if status["state"] != "done":
            raise SystemExit(f"{name}: job {job_id} {status['state']}: {status.get('error')}")
        figures = _embed_figures(home / "miner.db", job_id)
        figures.update(name=name, workers_started=len(workers), options=[" ".join(w) or "(none)" for w in workers],
                       job_wall_s=round(time.monotonic() - started, 1), load_after=common.loadavg())
        common.log(f"{name}: embed {figures['sentences']:,} sentences in {figures['span_s']:.1f}s = "
                   f"{figures['rate']:,.0f}/s over {figures['units']} units on {len(figures['workers'])} worker(s)")
        return figures
    finally:
        for proc, _log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=None, help="sentences per side (default: the most distinct, 18,401)")
    ap.add_argument("--shard-size", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1, help="runs of every configuration (medians reported)")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--no-oversubscribed", action="store_true", help="skip the two c1 --threads <cores> case")
    ap.add_argument("--data", default=str(common.DEFAULT_DATA))
    ap.add_argument("--out", default=str(common.DEFAULT_OUT / "multi_worker"))
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE")
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio misses the target")
    args = ap.parse_args()

    data = Path(args.data)
    size = args.size or common.max_distinct_size(data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = common.build_corpus(size, out / "corpus", data=data)
    cores = common.machine().get("cores") or os.cpu_count()
    configs = [("alone", [["--concurrency", "1"]]),
               ("two default", [[], []]),
               ("two c1", [["--concurrency", "1"], ["--concurrency", "1"]])]
    if not args.no_oversubscribed:
        configs.append((f"two c1 --threads {cores}", [["--concurrency", "1", "--threads", str(cores)]] * 2))
    runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for rep in range(args.repeat):
        for name, workers in configs:
            runs[name].append(run_config(name, workers, corpus, args.shard_size, out, args.timeout))
    rows = []
    for name, _ in configs:
        rate = common.median([r["rate"] for r in runs[name]])
        rows.append({"name": name, "rate": rate, "span_s": common.median([r["span_s"] for r in runs[name]]),
                     "options": runs[name][0]["options"], "runs": runs[name]})
    reference = rows[0]["rate"]
    for row in rows:
        row["ratio"] = round(row["rate"] / reference, 3)
    checked = [row for row in rows[1:] if "--threads" not in row["name"]]
    passed = all(row["ratio"] >= args.target for row in checked)
    result = {"bench": "multi_worker", "machine": common.machine(), "code": common.code_state(), "size": size,
              "shard_size": args.shard_size, "corpus": corpus["how"], "rows": rows, "target": args.target,
              "pass": passed}

    def table(res: dict) -> None:
        print(f"Embedding throughput of workers on one host (muse, {size:,} + {size:,} sentences, shard size "
              f"{args.shard_size:,}, embedded default; median of {args.repeat} run(s))")
        m = res["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, load average at start "
              f"{m['loadavg_start'][0]:.2f}; code {res['code']}")
        print(f"{'configuration':<24} {'worker options':<44} {'embed span':>10} {'sent/s':>9} {'vs alone':>9}")
        print("-" * 100)
        for row in res["rows"]:
            options = " | ".join(row["options"])
            print(f"{row['name']:<24} {options:<44} {row['span_s']:>9.1f}s {row['rate']:>9,.0f} {row['ratio']:>9.3f}")
        verdict = "PASS" if res["pass"] else "FAIL"
        print(f"result: {verdict} (two workers without --threads >= {args.target} x one worker alone with all cores)")

    common.emit(result, args.json, table)
    if args.check and not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
