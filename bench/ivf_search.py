#!/usr/bin/env python3
"""Benchmark: the kNN step's IVF search (``miner.core.indexes.search_side``) against
``faiss.contrib.big_batch_search`` doing the same search (issue 12).

Both search an IVF index list by list: the queries are assigned to their ``nprobe`` nearest
centroids, grouped by inverted list, and each list is compared with all the queries that probe it
in one product. The product does this with its own loop (per-list ``faiss.knn`` in a Python thread
pool, each thread running FAISS single-threaded, per-list top-k merged with numpy);
``big_batch_search`` is FAISS's version (per-list ``faiss.knn``, results added to a
``faiss.ResultHeap``). This script measures which is faster on the same index, queries, ``nprobe``,
``k`` and threads, and whether they return the same neighbours. On one query shard they were about
equal; on whole jobs (``bench/scale.py``, ``bench/memory.py``) the product's loop was clearly faster,
so ``miner.core.indexes.search`` keeps it (figures in its docstring).

Data (generated once per setting under ``--workdir``, deterministic, reused by later runs)
------------------------------------------------------------------------------------------

``bench/common.py:synthetic_embeddings``: clustered unit vectors (``--clusters`` random centres plus
Gaussian noise, 20% of the query rows with a noisy copy planted in the database). The database has
``--n`` rows (200,000), the queries ``--queries`` rows (10,000: one query shard, the product's
``SHARD_SIZE``), ``--dim`` dimensions (256). The index is what the product builds for such a side:
``choose_index(n, dim, --index)`` (``auto``: for 200k rows an ``IndexIVFFlat`` with nlist 2048, nprobe
16), trained by ``training_sample`` + ``build_ivf``, written with ``faiss.write_index`` and loaded in
each measuring process with ``miner.core.indexes.read_index`` (memory-mapped inverted lists, ``nprobe`` set),
as the kNN step loads it. The index file stays in the page cache between runs.

What is timed (wall clock, ``time.perf_counter``; CPU seconds of the process beside it)
------------------------------------------------------------------------------------------

* ``product``: ``search_side(index, spec, queries, k, blocks)`` then ``mark_missing``: exactly the
  kNN step's two calls (``miner/pipeline/steps.py:knn``), with the product's code as it is;
* ``big_batch``: ``big_batch_search(index, queries, k)`` (sequential, ``threaded=0``: FAISS's OpenMP
  threads inside each ``faiss.knn``), then ``mark_missing``;
* ``big_batch-prefetch``: the same with ``threaded=1`` (the next list is copied out while one is
  computed);
* ``big_batch-pool``: ``threaded=2`` with ``computation_threads=threads`` (one FAISS thread each),
  the closest to the product's scheme (one Python thread per core); only with 2+ threads;
* ``faiss``: FAISS's own ``index.search`` (query by query), for reference.

``big_batch_search`` prints progress even at ``verbose=0`` (one line per list); it runs with
``verbose=1`` (a few lines per call) and its stdout is discarded. Each thread count runs in its own
process with ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS``, threadpoolctl and
``faiss.omp_set_num_threads`` set to it (what ``miner.runtime.config.limit_threads`` does in a worker: the
product runs 2 worker processes x 1 thread on 2 cores by default, or 1 x 2 with ``--concurrency 1``).
Every method runs once untimed (warm-up, and the results compared), then ``--repeat`` rounds, the
order of the methods rotating from round to round so that a change of machine load hits all of them;
the table gives the median and every round. The ratio ``product / big_batch`` uses the fastest
big_batch variant (by median) and, per round, the same round's figures.

Agreement: against the product's result, the share of identical neighbour ids (same slot), the share
of queries with the same set of ids, the largest similarity difference, the slots where the ids
differ although the similarities differ by more than 1e-5 (i.e. not a mere reordering of ties) and
the missing neighbours (id -1) on each side.

Memory (skip with ``--no-memory``): each method once in a fresh process: ``VmHWM`` after the search
minus ``VmRSS`` before it (index loaded, queries in memory), i.e. what the search adds at its peak
(the memory-mapped index pages it touches included; they are shared page cache, the same for all).

Usage (from the repository root)::

    python bench/ivf_search.py                      # 200k x 256-d, 10k queries, k 4, threads 2 and 1
    python bench/ivf_search.py --repeat 5 --threads 2
    python bench/ivf_search.py --index ivf --nlist 1024 --nprobe 32
    python bench/ivf_search.py --json out.json      # table on stdout, JSON to out.json (``--json``: JSON only)

Progress goes to stderr. The verdict line says whether the product's loop is clearly faster (median
ratio <= 0.90 and faster in every round, at every thread count) than the best big_batch variant on
this one query shard.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS_DEFAULT = 2
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS_DEFAULT))

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "bench"):
    if str(_p) not in sys.path:  # runnable from a checkout without installing
        sys.path.insert(0, str(_p))

from common import dump_json, loadavg, log, machine, synthetic_embeddings

DATA_VERSION = 1
CLEARLY_FASTER = 0.90  # product / big_batch median ratio at or below which the product's search is kept
METHODS = ("product", "big_batch", "big_batch-prefetch", "big_batch-pool", "faiss")
BIG_BATCH = ("big_batch", "big_batch-prefetch", "big_batch-pool")
MB = 1024


# --------------------------------------------------------------------------- data


def data_dir(args) -> Path:
    from miner.core.indexes import choose_index

    spec = choose_index(args.n, args.dim, args.index, args.nlist, args.nprobe, args.m)
    tag = f"v{DATA_VERSION}-n{args.n}-q{args.queries}-d{args.dim}-c{args.clusters}-s{args.seed}-{spec.name}"
    return Path(args.workdir) / tag


def ensure_data(args) -> dict:
    """Queries (.npy) and the built index (.faiss) for the setting, made once."""
    from miner.runtime.defaults import SHARD_SIZE
    from miner.core.indexes import build_ivf, choose_index, train_size, training_sample

    spec = choose_index(args.n, args.dim, args.index, args.nlist, args.nprobe, args.m)
    if spec.exact:
        raise SystemExit(f"{args.n} rows with --index {args.index} is searched exactly (flat): no IVF search to compare")
    folder = data_dir(args)
    info_path = folder / "info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        log(f"data: reusing {folder}")
        return info
    folder.mkdir(parents=True, exist_ok=True)
    log(f"data: generating {args.n} x {args.dim} database + {args.queries} queries ...")
    started = time.perf_counter()
    queries, db, planted = synthetic_embeddings(args.queries, args.n, dim=args.dim, clusters=args.clusters,
                                                seed=args.seed)
    np.save(folder / "queries.npy", queries)
    if spec.kind == "ivfpq":  # its candidates are re-scored with the stored rows (float16, as the product stores them)
        np.save(folder / "database.float16.npy", db.astype(np.float16))
    generated = time.perf_counter() - started
    log(f"data: building {spec.name} (nprobe {spec.nprobe}) ...")
    started = time.perf_counter()

    def shards():
        for lo in range(0, len(db), SHARD_SIZE):
            yield db[lo:lo + SHARD_SIZE]

    train = training_sample(shards(), len(db), train_size(spec, len(db)), seed=args.seed)
    index = build_ivf(spec, args.dim, train, shards())
    import faiss

    faiss.write_index(index, str(folder / "index.faiss"))
    info = {"spec": {"kind": spec.kind, "nlist": spec.nlist, "m": spec.m, "nprobe": spec.nprobe, "name": spec.name},
            "n": args.n, "queries": args.queries, "dim": args.dim, "clusters": args.clusters, "seed": args.seed,
            "planted": len(planted), "generate_s": round(generated, 1),
            "build_s": round(time.perf_counter() - started, 1),
            "index_mb": round((folder / "index.faiss").stat().st_size / 2**20, 1),
            "list_sizes": _list_size_stats(index)}
    info_path.write_text(json.dumps(info, indent=2))
    log(f"data: built in {info['build_s']} s ({info['index_mb']} MB)")
    return info


def _list_size_stats(index) -> dict:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    return {"mean": round(float(sizes.mean()), 1), "min": int(sizes.min()), "max": int(sizes.max()),
            "empty": int((sizes == 0).sum())}


# --------------------------------------------------------------------------- measuring process


def set_threads(threads: int) -> None:
    """What ``miner.workers.app.limit_threads`` does (the environment variables are set by the parent)."""
    import faiss

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # not installed: the environment variables still apply
        pass
    faiss.omp_set_num_threads(threads)


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def searchers(index, spec, k: int, threads: int, blocks=None) -> dict:
    """method -> function(queries) -> (sims, ids), each ending with ``mark_missing`` as the kNN step does."""
    import faiss
    from faiss.contrib.big_batch_search import big_batch_search

    from miner.core.indexes import mark_missing, search_side

    def product(q):
        return mark_missing(*search_side(index, spec, q, k, blocks))

    def quiet(**kw):
        def run(q):
            with contextlib.redirect_stdout(io.StringIO()):  # it prints even at verbose=0
                d, i = big_batch_search(index, q, k, verbose=1, **kw)
            return mark_missing(d, i)
        return run

    def one_thread_knn(xq, xb, kk, metric=faiss.METRIC_INNER_PRODUCT, thread_id=None):
        faiss.omp_set_num_threads(1)  # per calling thread (OpenMP's thread-local setting)
        return faiss.knn(xq, xb, kk, metric=metric)

    def reference(q):
        return mark_missing(*index.search(q, k, params=faiss.SearchParametersIVF(nprobe=spec.nprobe)))

    out = {"product": product, "big_batch": quiet(), "big_batch-prefetch": quiet(threaded=1)}
    if threads > 1:
        out["big_batch-pool"] = quiet(threaded=2, computation_threads=threads, prefetch_threads=1, knn=one_thread_knn)
    out["faiss"] = reference
    return out


def agreement(ref, other) -> dict:
    (rs, ri), (os_, oi) = ref, other
    same = ri == oi
    both = np.isfinite(rs) & np.isfinite(os_)
    dsim = np.abs(rs[both].astype(np.float64) - os_[both]) if both.any() else np.zeros(1)
    not_tie = (~same) & ~(np.isclose(rs, os_, atol=1e-5, rtol=0) | (np.isneginf(rs) & np.isneginf(os_)))
    sets = np.mean([set(a) == set(b) for a, b in zip(ri.tolist(), oi.tolist())]) if len(ri) else 1.0
    return {"same_ids": round(float(same.mean()), 6), "same_sets": round(float(sets), 6),
            "max_dsim": float(dsim.max()), "differ_not_tie": int(not_tie.sum()),
            "missing": [int((ri < 0).sum()), int((oi < 0).sum())],
            "dtypes": [str(rs.dtype), str(os_.dtype), str(ri.dtype), str(oi.dtype)]}


def child(cfg: dict) -> dict:
    threads = cfg["threads"]
    set_threads(threads)
    from miner.core.indexes import IndexSpec, read_index

    spec = IndexSpec(**{key: cfg["spec"][key] for key in ("kind", "nlist", "m", "nprobe")})
    folder = Path(cfg["folder"])
    queries = np.asarray(np.load(folder / "queries.npy"), dtype=np.float32)  # as the kNN step loads a shard
    index = read_index(str(folder / "index.faiss"), spec.nprobe)
    blocks = None
    if spec.kind == "ivfpq":  # as steps._mapped_blocks: the side's stored rows, memory-mapped
        blocks = [(0, np.load(folder / "database.float16.npy", mmap_mode="r"))]
    runs = searchers(index, spec, cfg["k"], threads, blocks)
    if cfg["mode"] == "memory":
        run = runs[cfg["method"]]
        rss, hwm_before = proc_status_kb("VmRSS"), proc_status_kb("VmHWM")
        clock = time.perf_counter()
        run(queries)
        seconds = time.perf_counter() - clock
        hwm = proc_status_kb("VmHWM")
        return {"rss_before_mb": rss / MB, "hwm_before_mb": hwm_before / MB, "hwm_after_mb": hwm / MB,
                "peak_extra_mb": (hwm - rss) / MB, "seconds": seconds}
    methods = [m for m in METHODS if m in runs]
    results, warm = {}, {}
    for name in methods:  # warm-up: page cache -> this process's mappings, lazy inits; results compared
        clock = time.perf_counter()
        results[name] = runs[name](queries)
        warm[name] = time.perf_counter() - clock
        log(f"  threads {threads}: {name} warm-up {warm[name]:.2f} s")
    ref = results["product"]
    agree = {name: agreement(ref, results[name]) for name in methods if name != "product"}
    agree["product"] = agreement(ref, ref)
    del results
    times = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    for r in range(cfg["repeat"]):
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        for name in order:
            c0, clock = time.process_time(), time.perf_counter()
            runs[name](queries)
            times[name].append(time.perf_counter() - clock)
            cpu[name].append(time.process_time() - c0)
        log(f"  threads {threads}: round {r + 1}/{cfg['repeat']}: "
            + ", ".join(f"{name} {times[name][-1]:.2f}" for name in methods))
    return {"threads": threads, "methods": methods, "times": times, "cpu": cpu, "warmup": warm, "agreement": agree,
            "omp_threads": _omp(), "loadavg_end": loadavg()}


def _omp() -> int:
    import faiss

    return faiss.omp_get_max_threads()


def spawn(cfg: dict) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(cfg["threads"])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)], env=env,
                          stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"measuring process failed ({proc.returncode}): {cfg}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def summarise(run: dict, memory: dict) -> dict:
    methods, times = run["methods"], run["times"]
    med = {m: statistics.median(times[m]) for m in methods}
    best = min((m for m in methods if m in BIG_BATCH), key=lambda m: med[m])
    rows = []
    for m in methods:
        rows.append({"method": m, "median_s": med[m], "runs_s": times[m], "cpu_median_s": statistics.median(run["cpu"][m]),
                     "ratio_product_over_this": med["product"] / med[m],
                     "round_ratios": [p / t for p, t in zip(times["product"], times[m])],
                     "peak_extra_mb": memory.get(m, {}).get("peak_extra_mb"), **run["agreement"][m]})
    out = {"threads": run["threads"], "rows": rows, "best_big_batch": best, "omp_threads": run["omp_threads"],
           "loadavg_end": run["loadavg_end"]}
    for name in ("product",):  # the issue-12 question: is the product's own loop clearly faster?
        ratio = med[name] / med[best]
        rounds = [a / b for a, b in zip(times[name], times[best])]
        out[name] = {"ratio": ratio, "round_ratios": rounds,
                     "clearly_faster": ratio <= CLEARLY_FASTER and max(rounds) < 1.0}
    return out


def print_table(report: dict) -> None:
    d = report["data"]
    s = d["spec"]
    print(f"IVF search of one query shard: {d['n']:,} x {d['dim']}-d database ({s['name']}, nprobe {s['nprobe']}, "
          f"lists of {d['list_sizes']['mean']} vectors on average), {d['queries']:,} queries, k={report['k']}, "
          f"median of {report['repeat']} rounds")
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
          f"load average {report['machine']['loadavg_start'][0]:.2f} at start")
    print(f"command: {report['command']}")
    print()
    head = (f"{'threads':>7}  {'method':<19}{'median s':>9}  {'rounds s':<20}{'cpu s':>7}{'prod/this':>10}"
            f"{'same ids':>10}{'same sets':>10}{'max|dsim|':>10}{'not tie':>8}{'missing':>9}{'+peak MB':>9}")
    print(head)
    print("-" * len(head))
    for t in report["by_threads"]:
        for row in t["rows"]:
            rounds = " ".join(f"{x:.2f}" for x in row["runs_s"])
            peak = f"{row['peak_extra_mb']:.0f}" if row["peak_extra_mb"] is not None else "-"
            print(f"{t['threads']:>7}  {row['method']:<19}{row['median_s']:>9.3f}  {rounds:<20}{row['cpu_median_s']:>7.2f}"
                  f"{row['ratio_product_over_this']:>10.3f}{row['same_ids']:>10.4f}{row['same_sets']:>10.4f}"
                  f"{row['max_dsim']:>10.1e}{row['differ_not_tie']:>8}{row['missing'][1]:>9}{peak:>9}")
        print()
    for t in report["by_threads"]:
        for name in ("product",):
            r = t[name]
            print(f"threads {t['threads']}: {name} / {t['best_big_batch']} = {r['ratio']:.3f} (median); per round "
                  + " ".join(f"{x:.3f}" for x in r["round_ratios"])
                  + f" -> {name} {'clearly faster' if r['clearly_faster'] else 'not clearly faster'}")
    print(f"verdict: {report['verdict']}")
    print("columns: prod/this = median of product / median of this method (> 1: this one is faster); same ids, "
          "same sets, max|dsim|, not tie (ids differing where the similarities differ by > 1e-5), missing (ids -1) "
          "compare with the product's result; +peak MB = VmHWM after one search - VmRSS before it, fresh process.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="database rows (default 200000)")
    ap.add_argument("--queries", type=int, default=10_000, help="queries: one shard (default 10000)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=1000, help="cluster centres of the synthetic vectors")
    ap.add_argument("--k", type=int, default=4, help="neighbours (default 4, the product's k)")
    ap.add_argument("--threads", default="2,1", help="thread counts to measure, comma-separated (default 2,1)")
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds per thread count (default 3; median)")
    ap.add_argument("--index", default="auto", choices=("auto", "ivf", "ivfpq"),
                    help="choose_index kind (default auto: what the product picks for --n rows)")
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--m", type=int, default=None, help="PQ sub-quantizers (ivfpq)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "out" / "ivf_search"))
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="JSON on stdout ('--json' alone: JSON only) or to PATH (the table still prints)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not threads or min(threads) < 1 or args.repeat < 1:
        ap.error("need --threads >= 1 and --repeat >= 1")
    mach = machine()
    info = ensure_data(args)
    if info["spec"]["kind"] != "ivf":
        log("note: the product searches an IVF-PQ index with FAISS's own index.search, not list by list")
    folder = str(data_dir(args))
    base = {"folder": folder, "spec": info["spec"], "k": args.k, "repeat": args.repeat}
    by_threads = []
    for t in threads:
        log(f"threads {t}: timing ...")
        run = spawn({**base, "threads": t, "mode": "time"})
        memory = {}
        if not args.no_memory:
            for m in run["methods"]:
                memory[m] = spawn({**base, "threads": t, "mode": "memory", "method": m})
                log(f"  threads {t}: {m} peak +{memory[m]['peak_extra_mb']:.0f} MB")
        summary = summarise(run, memory)
        summary["memory"] = memory
        by_threads.append(summary)
    clearly = all(t["product"]["clearly_faster"] for t in by_threads)
    verdict = (f"the product's list-by-list search is clearly faster than big_batch_search on this query shard (median "
               f"ratio <= {CLEARLY_FASTER:.2f} and faster in every round) at every thread count"
               if clearly else
               f"the product's list-by-list search is not clearly faster than big_batch_search on one query shard "
               f"(median ratio <= {CLEARLY_FASTER:.2f} and faster in every round needed); whole jobs decide it: see "
               f"miner.core.indexes.search")
    if info["spec"]["kind"] != "ivf":
        verdict = "IVF-PQ: the product uses FAISS's own search; big_batch_search is no option"
    import faiss

    report = {"command": "python bench/ivf_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": mach, "faiss": faiss.__version__, "data": info, "k": args.k, "repeat": args.repeat,
              "by_threads": by_threads, "verdict": verdict, "loadavg_end": loadavg()}
    if args.json == "-":
        dump_json(report, "-")
    else:
        print_table(report)
        if args.json:
            dump_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
