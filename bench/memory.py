#!/usr/bin/env python3
"""Benchmark: peak worker memory of a large job against a small one.

Target: "Peak memory of a worker processing a 200,000-line synthetic job (shard size 10,000) is
within 1.5x of the peak for a 20,000-line job" -- both measured in the same run, so the ratio
compares like with like on this machine.

An "N-line job" here has N lines on EACH side (N source lines and N target lines).

For each size this

* generates a deterministic synthetic corpus (``--seed``): sentences of 5-25 words drawn from a
  vocabulary of made-up words, all lines distinct within a side; ``--overlap`` of the target lines
  are copies of source lines (so the job finds real pairs), the rest are fresh sentences;
* runs, in a fresh ``MINER_HOME`` (nothing reused between sizes), exactly what a user runs::

      python -m miner mine SRC TGT --src-lang en --tgt-lang en --model DIR \\
          --shard-size 10000 --workers 1 --concurrency 1 -q -o out.tsv

  with ``MINER_THREADS=2`` (``--threads``).  ``mine`` starts one worker (``python -m miner
  worker``), which forks one Celery pool child that runs every task;
* measures memory of that process tree while it runs, by sampling ``/proc`` every ``--interval``
  seconds: the kernel's per-process peak RSS (``VmHWM``, exact, not sampled) of each process, and
  the sampled sum of ``Pss`` (``smaps_rollup``; shared copy-on-write pages counted once) of the
  whole tree.  The kernel's ``wait4`` peak (``ru_maxrss`` of ``mine`` and every descendant it
  reaped) is a cross-check of the largest process.  Each sample is also tagged with the stage the
  job is in (from ``job_steps``), giving the peak RSS of the pool child per stage.

The model is by default the tiny static-embedding model of ``bench/tiny_encoder.py`` (built once
under ``--out``), loaded through the same ``--model /path/to/dir`` path as any user model.

Usage (from the repository root)::

    python bench/memory.py                          # --small 20000 --large 200000
    python bench/memory.py --small 2000 --large 20000
    python bench/memory.py --json                   # JSON on stdout instead of the table
    python bench/memory.py --json out.json          # table on stdout, JSON to out.json
    python bench/memory.py --check                  # exit 1 when the ratio misses the target
    python bench/memory.py --metadata               # TSV inputs with an id and a url column, export with ids

Progress goes to stderr.  Exit code 0 whether the target is met or not, unless ``--check``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procfs import proc_table  # noqa: E402
from tiny_encoder import build_tiny_encoder, default_dir  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "out"
STAGES = ("ingest", "embed", "index", "knn", "score", "finish")
CORPUS_VERSION = 1
MB = 1024 * 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- synthetic corpora


def make_vocabulary(rng: random.Random, size: int) -> list[str]:
    """``size`` distinct made-up lower-case words of 1-4 syllables."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "dr", "fl", "gr", "kl", "pr", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"]
    words: set[str] = set()
    while len(words) < size:
        n = rng.choice((1, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n)))
    return sorted(words)


def _sentence(rng: random.Random, vocab: list[str]) -> str:
    words = rng.choices(vocab, k=rng.randint(5, 25))
    return " ".join(words).capitalize() + rng.choice(".....?!")


def make_corpus(n: int, folder: Path, *, seed: int = 0, overlap: float = 0.5,
                vocab_size: int = 5000) -> tuple[Path, Path]:
    """Write (once) ``n`` distinct source and ``n`` distinct target lines; returns their paths.

    Target lines: ``round(overlap * n)`` copies of randomly chosen source lines plus fresh
    sentences (distinct from every source line), shuffled.  Same arguments, same bytes.
    """
    stem = f"synth-v{CORPUS_VERSION}-n{n}-s{seed}-o{overlap:g}-v{vocab_size}"
    src_path, tgt_path = folder / f"{stem}.src", folder / f"{stem}.tgt"
    if src_path.exists() and tgt_path.exists():
        return src_path, tgt_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    vocab = make_vocabulary(rng, vocab_size)
    n_copies = round(overlap * n)
    seen: set[str] = set()
    lines: list[str] = []
    while len(lines) < 2 * n - n_copies:
        text = _sentence(rng, vocab)
        if text not in seen:
            seen.add(text)
            lines.append(text)
    src, fresh = lines[:n], lines[n:]
    tgt = rng.sample(src, n_copies) + fresh
    rng.shuffle(tgt)
    for path, side in ((src_path, src), (tgt_path, tgt)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(line + "\n" for line in side), encoding="utf-8")
        os.replace(tmp, path)
    return src_path, tgt_path


# --------------------------------------------------------------------------- /proc sampling


def _children_map() -> dict[int, list[int]]:
    """{ppid: [pid, ...]} of every process visible in /proc."""
    out: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in proc_table().items():
        out.setdefault(ppid, []).append(pid)
    return out


def _descendants(root: int, children: dict[int, list[int]]) -> dict[int, int]:
    """{pid: depth} of ``root`` (depth 0) and all its descendants."""
    out, todo = {root: 0}, [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, ()):
            if child not in out:
                out[child] = out[pid] + 1
                todo.append(child)
    return out


def _status_kb(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    name, value = line.split(":", 1)
                    values[name] = int(value.split()[0])
    except OSError:
        pass
    return values


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


ROLES = {0: "cli", 1: "worker", 2: "pool"}  # depth below `mine` -> role


@dataclass
class Proc:
    pid: int
    role: str
    cmdline: str
    hwm_kb: int = 0  # kernel peak RSS (VmHWM), last value read
    rss_kb: int = 0


class StageProbe:
    """The stage a job is in, read from its SQLite database (read-only, errors ignored)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.conn: sqlite3.Connection | None = None

    def stage(self) -> str | None:
        try:
            if self.conn is None:
                if not self.db.exists():
                    return None
                self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.2)
            done = dict(self.conn.execute("SELECT stage, COUNT(*) FROM job_steps GROUP BY stage").fetchall())
            units = dict(self.conn.execute("SELECT stage, units FROM job_stages").fetchall())
        except sqlite3.Error:
            return None
        units.setdefault("ingest", 2)
        for stage in STAGES:
            if stage not in units or done.get(stage, 0) < units[stage]:
                return stage
        return "export"

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class Result:
    lines: int  # per side
    wall_s: float = 0.0
    returncode: int = 0
    pairs: int | None = None
    candidates: int | None = None
    peak_worker_mb: float = 0.0  # max VmHWM over the worker and its pool children
    peak_pool_mb: float = 0.0  # max VmHWM over the pool children alone
    peak_worker_main_mb: float = 0.0
    peak_cli_mb: float = 0.0
    peak_tree_pss_mb: float = 0.0  # sampled max of the tree's summed PSS
    wait4_maxrss_mb: float = 0.0  # kernel: largest RSS of `mine` or any descendant it reaped
    samples: int = 0
    pool_rss_by_stage_mb: dict = field(default_factory=dict)  # sampled max pool-child VmRSS per stage
    stage_seconds: dict = field(default_factory=dict)
    processes: list = field(default_factory=list)


def _stage_seconds(db: Path) -> dict[str, float]:
    """Seconds per stage: from the job start (or the previous stage's last step) to its last step."""
    import datetime as dt

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        started = conn.execute("SELECT started_at FROM jobs ORDER BY id LIMIT 1").fetchone()[0]
        last = dict(conn.execute("SELECT stage, MAX(finished_at) FROM job_steps GROUP BY stage").fetchall())
        conn.close()
    except (sqlite3.Error, TypeError):
        return {}
    parse = dt.datetime.fromisoformat
    out, previous = {}, parse(started) if started else None
    for stage in STAGES:
        if stage not in last or previous is None:
            continue
        end = parse(last[stage])
        out[stage] = round((end - previous).total_seconds(), 2)
        previous = end
    return out


def with_metadata(path: Path) -> Path:
    """A TSV copy of a corpus with an id and a metadata column: ``s-<n><TAB>text<TAB>https://...``."""
    out = path.with_name(path.name + ".meta.tsv")
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for n, line in enumerate(src):
                dst.write(f"{path.suffix[1:]}-{n:09d}\t{line.rstrip(chr(10))}\thttps://example.org/doc/{n // 50}#{n}\n")
        os.replace(tmp, out)
    return out


def run_job(lines: int, src: Path, tgt: Path, model: Path, *, shard_size: int, threads: int,
            interval: float, workdir: Path, keep: bool, timeout: float, metadata: bool = False) -> Result:
    """Run one ``mine`` in a fresh MINER_HOME and measure its process tree."""
    home = Path(tempfile.mkdtemp(prefix=f"memory-{lines}-", dir=workdir))
    out_tsv = home / "out.tsv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINER_")}
    env.update(MINER_HOME=str(home), MINER_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "miner", "mine", str(src), str(tgt), "--src-lang", "en", "--tgt-lang", "en",
           "--model", str(model), "--shard-size", str(shard_size), "--workers", "1", "--concurrency", "1",
           "-q", "-o", str(out_tsv)]
    if metadata:
        cmd += ["--input-format", "tsv", "--columns", "id,text,url", "--with-ids"]
    result = Result(lines=lines)
    procs: dict[int, Proc] = {}
    by_stage: dict[str, int] = {}
    probe = StageProbe(home / "miner.db")
    stderr_path = home / "mine.stderr"
    t0 = time.monotonic()
    with open(stderr_path, "wb") as err, open(home / "mine.stdout", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
    status = rusage = None
    next_pss = 0.0
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > timeout:
            log(f"  {lines}: timeout after {timeout:.0f}s, stopping it")
            proc.terminate()
            _, status, rusage = os.wait4(proc.pid, 0)
            break
        tree = _descendants(proc.pid, _children_map())
        stage = probe.stage()
        pool_rss = pss_sum = 0
        do_pss = time.monotonic() >= next_pss
        for p, depth in tree.items():
            info = _status_kb(p)
            if not info:
                continue
            rec = procs.get(p)
            if rec is None:
                rec = procs[p] = Proc(p, ROLES.get(depth, f"depth{depth}"), _cmdline(p)[:200])
            rec.hwm_kb = max(rec.hwm_kb, info.get("VmHWM", 0))
            rec.rss_kb = info.get("VmRSS", 0)
            if rec.role == "pool":
                pool_rss += rec.rss_kb
            if do_pss:
                pss_sum += _pss_kb(p) or 0
        if do_pss:
            result.peak_tree_pss_mb = max(result.peak_tree_pss_mb, pss_sum / 1024)
            next_pss = time.monotonic() + max(interval, 0.5)
        if stage and pool_rss:
            by_stage[stage] = max(by_stage.get(stage, 0), pool_rss)
        result.samples += 1
        time.sleep(interval)
    result.wall_s = round(time.monotonic() - t0, 2)
    proc.returncode = result.returncode = os.waitstatus_to_exitcode(status)
    probe.close()
    result.wait4_maxrss_mb = round(rusage.ru_maxrss / 1024, 1)  # Linux: kilobytes

    def peak(roles):
        return round(max((p.hwm_kb for p in procs.values() if p.role in roles), default=0) / 1024, 1)

    result.peak_worker_mb = peak(("worker", "pool"))
    result.peak_pool_mb = peak(("pool",))
    result.peak_worker_main_mb = peak(("worker",))
    result.peak_cli_mb = peak(("cli",))
    result.peak_tree_pss_mb = round(result.peak_tree_pss_mb, 1)
    result.pool_rss_by_stage_mb = {s: round(by_stage[s] / 1024, 1) for s in (*STAGES, "export") if s in by_stage}
    result.processes = [dict(pid=p.pid, role=p.role, peak_mb=round(p.hwm_kb / 1024, 1), cmdline=p.cmdline)
                        for p in procs.values()]
    result.stage_seconds = _stage_seconds(home / "miner.db")
    if out_tsv.exists():
        with open(out_tsv, "rb") as fh:
            result.pairs = sum(1 for _ in fh)
    try:
        conn = sqlite3.connect(f"file:{home / 'miner.db'}?mode=ro", uri=True)
        result.candidates = conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
        conn.close()
    except sqlite3.Error:
        pass
    if result.returncode != 0:
        tail = stderr_path.read_text(errors="replace").strip().splitlines()[-5:]
        log(f"  {lines}: `mine` exited {result.returncode}; last stderr lines:\n    " + "\n    ".join(tail)
            + f"\n  (worker logs: {home / 'logs'})")
        keep = True
    if not keep:
        shutil.rmtree(home, ignore_errors=True)
    else:
        log(f"  {lines}: kept {home}")
    return result


# --------------------------------------------------------------------------- report


def format_table(report: dict) -> str:
    rows = [("lines/side", "wall s", "pairs", "worker peak MB", "pool child MB", "tree PSS MB", "wait4 max MB")]
    for r in (report["small"], report["large"]):
        rows.append((f"{r['lines']:,}", f"{r['wall_s']:.1f}", "-" if r["pairs"] is None else f"{r['pairs']:,}",
                     f"{r['peak_worker_mb']:.1f}", f"{r['peak_pool_mb']:.1f}", f"{r['peak_tree_pss_mb']:.1f}",
                     f"{r['wait4_maxrss_mb']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out = [f"Worker peak memory, {report['small']['lines']:,} vs {report['large']['lines']:,} lines per side "
           f"(shard size {report['shard_size']:,}, model {report['model']}, MINER_THREADS={report['threads']}, "
           f"1 worker x concurrency 1)", "", *lines, ""]
    out.append("pool child peak RSS per stage (sampled MB): ")
    for name in ("small", "large"):
        r = report[name]
        by_stage = ", ".join(f"{s} {v:.0f}" for s, v in r["pool_rss_by_stage_mb"].items())
        secs = ", ".join(f"{s} {v:.1f}" for s, v in r["stage_seconds"].items())
        out.append(f"  {r['lines']:>9,}: {by_stage}")
        out.append(f"  {'':>9}  stage seconds: {secs}")
    out.append("")
    verdict = "PASS" if report["pass"] else "FAIL"
    out.append(f"ratio large/small (worker peak): {report['ratio']:.2f}  target <= {report['target']:g}  -> {verdict}")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=20000, help="lines per side of the baseline job (default 20000)")
    ap.add_argument("--large", type=int, default=200000, help="lines per side of the large job (default 200000)")
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument("--target", type=float, default=1.5, help="maximum ratio large/small (default 1.5)")
    ap.add_argument("--model", default=None,
                    help="any --model value (default: the tiny static model of bench/tiny_encoder.py)")
    ap.add_argument("--dim", type=int, default=64, help="dimension of the tiny model (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="MINER_THREADS of the worker (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="corpus and tiny-model seed (default 0)")
    ap.add_argument("--overlap", type=float, default=0.5, help="share of target lines copied from the source (default 0.5)")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between /proc samples (default 0.1)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per job before it is stopped (default 3600)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"folder for the tiny model, corpora and job homes (default {DEFAULT_OUT})")
    ap.add_argument("--keep", action="store_true", help="keep each job's MINER_HOME (database, artifacts, logs)")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                    help="write JSON: to stdout instead of the table, or to FILE")
    ap.add_argument("--metadata", action="store_true",
                    help="mine TSV copies of the corpora with an id and a metadata (url) column, export with ids")
    ap.add_argument("--check", action="store_true", help="exit 1 when the ratio exceeds --target (or a job fails)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path("/proc/self/status").exists():
        raise SystemExit("this benchmark reads /proc (Linux only)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        t = time.monotonic()
        model = build_tiny_encoder(default_dir(args.dim, args.seed, args.out), dim=args.dim, seed=args.seed)
        log(f"model: {model} ({time.monotonic() - t:.1f}s)")
    else:
        model = args.model
    report = dict(target=args.target, shard_size=args.shard_size, threads=args.threads, model=str(model),
                  lines_mean="per side (an N-line job = N source lines + N target lines)",
                  overlap=args.overlap, seed=args.seed, python=sys.version.split()[0], cpus=os.cpu_count(),
                  metadata=args.metadata)
    for name, n in (("small", args.small), ("large", args.large)):
        t = time.monotonic()
        src, tgt = make_corpus(n, args.out / "corpora", seed=args.seed, overlap=args.overlap)
        if args.metadata:
            src, tgt = with_metadata(src), with_metadata(tgt)
        log(f"{name}: corpus {n:,} lines per side ({time.monotonic() - t:.1f}s); mining ...")
        r = run_job(n, src, tgt, Path(model), shard_size=args.shard_size, threads=args.threads,
                    interval=args.interval, workdir=args.out, keep=args.keep, timeout=args.timeout,
                    metadata=args.metadata)
        log(f"{name}: {r.wall_s:.1f}s, exit {r.returncode}, pairs {r.pairs}, worker peak {r.peak_worker_mb:.1f} MB, "
            f"tree PSS {r.peak_tree_pss_mb:.1f} MB, wait4 {r.wait4_maxrss_mb:.1f} MB")
        report[name] = asdict(r)
    small, large = report["small"], report["large"]
    ok = small["returncode"] == 0 and large["returncode"] == 0 and small["peak_worker_mb"] > 0
    report["ratio"] = round(large["peak_worker_mb"] / small["peak_worker_mb"], 3) if small["peak_worker_mb"] else float("nan")
    report["pass"] = bool(ok and report["ratio"] <= args.target)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not ok:
        log("a job failed: the figures are not comparable")
    return 1 if args.check and not report["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
