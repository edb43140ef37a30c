#!/usr/bin/env python3
"""Benchmark: mining 1,000,000 x 1,000,000 synthetic embeddings with the automatic index choice.

Target (issue 4, item 3), on the 2-core development machine: mining wall time <= 10 minutes, peak
RSS <= 8 GB, and >= 95% of the planted pairs that exact search finds.

Data (generated once per setting under ``--workdir``, deterministic, reused by later runs)
------------------------------------------------------------------------------------------

Two sides of ``--n`` unit vectors of ``--dim`` dimensions, written shard by shard (10,000 rows, the
product's default shard size) as ``.npy`` files named and typed as the product stores them
(``emb/<side>/<start>-<end>[.float16].npy``: float16 when the chosen index of the side is IVF,
float32 when it is searched exactly -- ``steps.storage_dtype`` with ``--storage auto``):

* ``--clusters`` random unit centres (default ``n / 100``, i.e. about 100 points per cluster and
  side) shared by both sides ("topics"); each cluster has a spread ``sigma_c ~ U(0.7, 1.3)``; a
  point is ``centre + sigma_c * g / sqrt(dim)`` (``g`` standard normal), L2-normalised, in a random
  cluster. Two points of one cluster have cosine ~0.5, of different clusters ~0.
* ``--planted`` random source rows get a "translation" at a random target row: the target row is a
  noisy copy, ``normalise(x + s * g / sqrt(dim))`` with ``s ~ U(0.5, 1.3)`` per pair, so the pair's
  cosine is ~0.61-0.89: above the best same-cluster distractor (~0.6) for most pairs, but not for
  all, and the noisy copy may fall into another IVF cell than its source.

Generation runs in a child process; its time and peak RSS are reported separately and are not part of
the mining figures.

Mining (measured, in this process)
----------------------------------

The same functions the product's steps use, streaming shard by shard (``miner/pipeline/steps.py``): per side
``choose_index(n, dim, --index, --nlist, --nprobe, --m)`` (``auto`` by default), then

* index: an IVF side gets ``training_sample`` (from memory-mapped shards), ``build_ivf`` (trained on
  the sample, the shards added one at a time), ``faiss.write_index``; an exact side needs nothing;
* kNN, both directions: per query shard, ``miner.core.indexes.search_side`` on the other side's index loaded with
  ``read_index`` (memory-mapped, ``nprobe`` set) followed by ``miner.core.indexes.mark_missing`` for IVF
  ``-1`` ids, or ``knn_blocks`` over the other side's shard files for an exact side; each result is
  saved as ``.npz`` as the product does;
* score: ``knn_mean`` per shard, then ``best_candidates`` per query shard with the other side's
  means (computed once here; see "product score stage" in the output for what ``steps.score`` costs);
* finish: ``retrieve(..., "max")``; pairs are kept at the generic ratio threshold 1.05
  (``miner.runtime.defaults.GENERIC_THRESHOLDS``), other thresholds are reported too.

FAISS and BLAS use ``--threads`` (2) threads. Shards are read through the page cache (the data was just
written). Wall time covers index + kNN + score + retrieval; peak RSS is the kernel's ``VmHWM`` of this
process after mining (and ``ru_maxrss``), with the sampled ``VmRSS`` maximum per phase.

Baseline (measured in the same run, after mining): exact search (``knn_blocks``) of
``--baseline-queries`` source rows (2,000) against the whole target side, scaled to both directions of
the whole corpus: what mining with ``--index flat`` would cost; the report gives the ratio.

Quality
-------

(a) Recovered: planted pairs among the mined pairs scoring >= threshold, over all planted pairs.

(b) Relative to exact search on a sample (the target): draw ``--sample`` source rows uniformly; the
planted pairs ``(i, j)`` whose source is drawn (a proportional share, ~``sample * planted / n``) are
evaluated. Exact search (``knn_blocks``, flat, on the stored vectors, in a child process, cached)
runs for those ``i`` against the whole target side and for their ``j`` against the whole source
side, and again for every other neighbour they have (so that the margin of every candidate of ``i``
and of ``j`` uses exact neighbourhood means on both sides). "Exact search finds ``(i, j)``" means: with
exact kNN, ``j`` is ``i``'s best margin candidate or ``i`` is ``j``'s, the pair's score is >=
threshold, and no competing candidate of ``i`` or ``j`` (``i``'s own best, ``j``'s own best) scores
higher (one-to-one ``max`` retrieval; candidates proposed by sentences outside this neighbourhood are
not modelled). The figure is the share of those pairs that the mined output (the real ``retrieve``
result above threshold) contains. The same rule applied to the mined best candidates is shown as a
cross-check, with the kNN recall (top-1 and top-k ids) of the evaluated queries.

Usage (from the repository root)::

    python bench/scale.py                                        # 1M x 1M, 100k planted, 100k sample
    python bench/scale.py --n 100000 --planted 10000 --sample 10000
    python bench/scale.py --index ivf --nlist 1024 --nprobe 16   # a setting other than auto
    python bench/scale.py --json out.json                        # table on stdout, JSON to out.json

Progress goes to stderr. Exit code 0 whether the targets are met or not, unless ``--check``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

THREADS_DEFAULT = 2
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS_DEFAULT))

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

from miner.core import mining  # noqa: E402
from miner.io.artifacts import Artifacts, load_npz  # noqa: E402
from miner.runtime.defaults import GENERIC_THRESHOLDS, K, SHARD_SIZE  # noqa: E402
from miner.core.indexes import (  # noqa: E402
    build_ivf, choose_index, mark_missing, read_index, search_side, train_size, training_sample,
)

DATA_VERSION = 1
EXACT_VERSION = 1
MARGIN = "ratio"
THRESHOLD = GENERIC_THRESHOLDS[MARGIN]  # synthetic vectors: no model-specific default applies
THRESHOLDS = (1.0, THRESHOLD, 1.1, 1.2, 1.3)
TARGET_WALL_S = 600.0
TARGET_RSS_BYTES = 8 * 10**9
TARGET_SHARE = 0.95
SPREAD = (0.7, 1.3)  # cluster spread sigma_c
NOISE = (0.5, 1.3)  # planted-pair noise s
MB = 1024 * 1024
SIDES = ("src", "tgt")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def set_threads(threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


def span(start: int, end: int) -> str:
    return f"{start:010d}-{end:010d}"


def shard_spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


# --------------------------------------------------------------------------- memory


def proc_status_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples this process's VmRSS every ``interval`` s; keeps the maximum per named phase."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        rss = proc_status_kb("VmRSS")
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def set(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- data


def data_settings(args) -> dict:
    specs = {side: choose_index(args.n, args.dim, args.index, args.nlist, args.nprobe, args.m) for side in SIDES}
    return {
        "version": DATA_VERSION, "n": args.n, "dim": args.dim, "planted": args.planted,
        "clusters": args.clusters, "seed": args.seed, "shard_size": args.shard_size,
        "spread": list(SPREAD), "noise": list(NOISE),
        # As the product stores a side with --storage auto: float16 for an IVF side, else float32.
        "dtype": {side: ("float32" if spec.exact else "float16") for side, spec in specs.items()},
    }


def data_dir(args) -> Path:
    s = data_settings(args)
    return Path(args.workdir) / (f"synth-v{DATA_VERSION}-n{s['n']}-d{s['dim']}-p{s['planted']}"
                                 f"-c{s['clusters']}-s{s['seed']}-sh{s['shard_size']}"
                                 + ("-f32" if "float32" in s["dtype"].values() else ""))


def shard_path(folder: Path, side: str, start: int, end: int, dtype: str) -> Path:
    suffix = "" if dtype == "float32" else f".{dtype}"
    return folder / "emb" / side / f"{span(start, end)}{suffix}.npy"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def generate(folder: str, settings: dict, threads: int) -> None:
    """Write both sides shard by shard (child process). Source shards first; the planted source rows
    are kept (``planted`` x ``dim`` float32) to make their noisy copies in the target shards."""
    set_threads(threads)
    folder = Path(folder)
    n, dim, p, c, seed = (settings[k] for k in ("n", "dim", "planted", "clusters", "seed"))
    rng = np.random.default_rng([seed, 0])
    centres = rng.standard_normal((c, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(*SPREAD, size=c).astype(np.float32)
    src_ids = np.sort(rng.choice(n, p, replace=False))
    tgt_ids = rng.choice(n, p, replace=False)  # random order: pair t = (src_ids[t], tgt_ids[t])
    noise = rng.uniform(*NOISE, size=p).astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(dim))
    kept = np.empty((p, dim), dtype=np.float32)
    src_pos = np.full(n, -1, dtype=np.int64)
    src_pos[src_ids] = np.arange(p)
    tgt_pair = np.full(n, -1, dtype=np.int64)
    tgt_pair[tgt_ids] = np.arange(p)
    for code, side in enumerate(SIDES):
        dtype = settings["dtype"][side]
        for shard_no, (start, end) in enumerate(shard_spans(n, settings["shard_size"])):
            srng = np.random.default_rng([seed, 1 + code, shard_no])
            cl = srng.integers(0, c, end - start)
            v = srng.standard_normal((end - start, dim), dtype=np.float32)
            v *= (spread[cl] * scale)[:, None]
            v += centres[cl]
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            if side == "src":
                rows = np.nonzero(src_pos[start:end] >= 0)[0]
                kept[src_pos[start + rows]] = v[rows]
            else:
                rows = np.nonzero(tgt_pair[start:end] >= 0)[0]
                pair = tgt_pair[start + rows]
                g = srng.standard_normal((len(rows), dim), dtype=np.float32)
                y = kept[pair] + g * (noise[pair] * scale)[:, None]
                v[rows] = y / np.linalg.norm(y, axis=1, keepdims=True)
            _atomic_save(shard_path(folder, side, start, end, dtype), v.astype(dtype))
    np.savez(folder / "planted.npz", src=src_ids, tgt=tgt_ids, noise=noise)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")


def ensure_data(args) -> dict:
    folder = data_dir(args)
    settings = data_settings(args)
    meta = folder / "settings.json"
    if meta.exists() and json.loads(meta.read_text()) == settings:
        log(f"data: reusing {folder}")
        return {"reused": True, "seconds": 0.0, "peak_rss_mb": None, "folder": str(folder)}
    folder.mkdir(parents=True, exist_ok=True)
    if meta.exists():
        meta.unlink()
    log(f"data: generating 2 x {args.n:,} x {args.dim} ({settings['dtype']}) with {args.planted:,} planted pairs"
        f" in {folder}")
    t0 = time.monotonic()
    seconds, peak = run_child(generate, str(folder), settings, args.threads)
    log(f"data: {seconds:.1f}s")
    return {"reused": False, "seconds": round(seconds, 1), "peak_rss_mb": peak, "folder": str(folder),
            "wall_s": round(time.monotonic() - t0, 1)}


def run_child(func, *fargs) -> tuple[float, float]:
    """Run ``func(*fargs)`` in a fresh (spawned) process; (seconds, its peak RSS in MB)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    t0 = time.monotonic()
    proc = ctx.Process(target=_child_main, args=(func, fargs))
    proc.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc._popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here; tell multiprocessing
    if proc.exitcode != 0:
        raise SystemExit(f"child process {func.__name__} failed with exit code {proc.exitcode}")
    return time.monotonic() - t0, round(usage.ru_maxrss / 1024, 1)


def _child_main(func, fargs) -> None:
    func(*fargs)


class Side:
    """A side's shard files, opened memory-mapped one at a time."""

    def __init__(self, folder: Path, name: str, n: int, shard_size: int, dtype: str) -> None:
        self.name, self.n, self.dtype = name, n, dtype
        self.spans = shard_spans(n, shard_size)
        self.paths = [shard_path(folder, name, s, e, dtype) for s, e in self.spans]

    def shard(self, i: int) -> np.ndarray:
        return np.load(self.paths[i], mmap_mode="r")

    def shards(self, on_first=None):
        for i in range(len(self.spans)):
            if i == 0 and on_first is not None:
                on_first()
            yield self.shard(i)

    def blocks(self):
        for i, (start, _end) in enumerate(self.spans):
            yield start, self.shard(i)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows ``ids`` (any order), reading each shard once."""
        ids = np.asarray(ids, dtype=np.int64)
        out = None
        for i, (start, end) in enumerate(self.spans):
            sel = np.nonzero((ids >= start) & (ids < end))[0]
            if len(sel):
                shard = self.shard(i)
                if out is None:
                    out = np.empty((len(ids), shard.shape[1]), dtype=np.float32)
                out[sel] = shard[ids[sel] - start]
        return out if out is not None else np.empty((0, 0), np.float32)


def open_sides(args) -> dict[str, Side]:
    s = data_settings(args)
    folder = data_dir(args)
    return {side: Side(folder, side, args.n, args.shard_size, s["dtype"][side]) for side in SIDES}


def planted_pairs(args) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_dir(args) / "planted.npz") as z:
        return z["src"].astype(np.int64), z["tgt"].astype(np.int64)


# --------------------------------------------------------------------------- mining


def build_side_index(side: Side, spec, dim: int, path: Path) -> dict:
    """What steps.build_index does for one side; returns the seconds of its parts."""
    import faiss

    t0 = time.monotonic()
    if spec.exact:
        for i in range(len(side.spans)):  # the product checks every shard's shape
            side.shard(i).shape
        return {"total": time.monotonic() - t0}
    size = train_size(spec, side.n)
    train = training_sample(side.shards(), side.n, size)
    t_sample = time.monotonic()
    marks = {}
    index = build_ivf(spec, dim, train, side.shards(on_first=lambda: marks.setdefault("train_done", time.monotonic())))
    t_built = time.monotonic()
    del train
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    del index
    t_written = time.monotonic()
    train_done = marks.get("train_done", t_built)
    return {"sample": t_sample - t0, "train": train_done - t_sample, "add": t_built - train_done,
            "write": t_written - t_built, "total": t_written - t0, "train_rows": size,
            "index_mb": round(path.stat().st_size / MB, 1)}


def knn_direction(query: Side, target: Side, spec, index_path: Path, k: int, out: Path) -> tuple[list, dict]:
    """What steps.knn does for every query shard of one direction; returns the per-shard (sims, ids)."""
    k = min(k, target.n)
    results = []
    t0 = time.monotonic()
    timings: dict = {}
    index = None if spec.exact else read_index(str(index_path), spec.nprobe)
    t_load = time.monotonic() - t0
    missing_rows = 0
    mapped = list(target.blocks()) if spec.kind == "ivfpq" else None  # as steps._mapped_blocks: kept open
    for i, (start, end) in enumerate(query.spans):
        queries = np.asarray(np.load(query.paths[i]), dtype=np.float32)
        if spec.exact:
            sims, ids = mining.knn_blocks(queries, target.blocks(), k)
        else:
            sims, ids = search_side(index, spec, queries, k, mapped, timings)
            missing_rows += int((ids < 0).any(axis=1).sum())
            sims, ids = mark_missing(sims, ids)
        Artifacts(out).save_npz(out / f"{span(start, end)}.npz", sims=sims, ids=ids)
        results.append((sims, ids))
    del index
    info = {"total": time.monotonic() - t0, "load_index": t_load, "rows_with_missing": missing_rows}
    info.update(timings)  # an IVF side: seconds of the coarse assignment, list scan and merge
    return results, info


def mine_all(args, sides: dict[str, Side], specs: dict, work: Path, sampler: RssSampler) -> dict:
    dim = args.dim
    timings: dict = {}
    t_start = time.monotonic()
    index_paths = {side: work / "index" / f"{side}-{specs[side].name}.faiss" for side in SIDES}
    for side in SIDES:  # steps.build_index, one task per side
        sampler.set(f"index:{side}")
        log(f"mine: index {side}: {specs[side]}")
        timings[f"index_{side}"] = build_side_index(sides[side], specs[side], dim, index_paths[side])
        log(f"mine: index {side}: {fmt_parts(timings[f'index_{side}'])}")
    knn_out = {}
    for direction, (q, t) in (("fwd", ("src", "tgt")), ("bwd", ("tgt", "src"))):  # steps.knn
        sampler.set(f"knn:{direction}")
        log(f"mine: kNN {direction} ({len(sides[q].spans)} query shards)")
        folder = work / "knn" / direction
        folder.mkdir(parents=True, exist_ok=True)
        knn_out[direction], timings[f"knn_{direction}"] = knn_direction(
            sides[q], sides[t], specs[t], index_paths[t], args.k, folder)
        log(f"mine: kNN {direction}: {fmt_parts(timings[f'knn_{direction}'])}")
    sampler.set("score")
    t0 = time.monotonic()
    means = {d: np.concatenate([mining.knn_mean(s) for s, _ in knn_out[d]]) for d in knn_out}
    best = {}
    for d, other in (("fwd", "bwd"), ("bwd", "fwd")):  # steps.score, per query shard
        parts = [mining.best_candidates(s, i, mining.knn_mean(s), means[other], MARGIN) for s, i in knn_out[d]]
        best[d] = (np.concatenate([b for b, _ in parts]), np.concatenate([sc for _, sc in parts]))
    timings["score"] = {"total": time.monotonic() - t0}
    sampler.set("retrieve")
    t0 = time.monotonic()
    src, tgt, scores, direction = mining.retrieve(*best["fwd"], *best["bwd"], "max", threshold=None)
    timings["retrieve"] = {"total": time.monotonic() - t0}
    wall = time.monotonic() - t_start
    sampler.set("after")
    # What steps.score costs in the product: every score task re-reads all kNN files of the other
    # direction (_side_means). Measured once here, not part of the wall time above.
    t0 = time.monotonic()
    other_files = sorted((work / "knn" / "bwd").glob("*.npz"))
    np.concatenate([mining.knn_mean(load_npz(p)["sims"]) for p in other_files])
    per_task = time.monotonic() - t0
    n_tasks = len(sides["src"].spans) + len(sides["tgt"].spans)
    timings["product_score_reload"] = {"per_task": per_task, "tasks": n_tasks, "total_est": per_task * n_tasks}
    return {"wall_s": wall, "timings": timings, "best": best, "knn": knn_out,
            "pairs": (src, tgt, scores, direction)}


UNITLESS = ("train_rows", "index_mb", "rows_with_missing", "ndis_per_query")


def fmt_parts(d: dict) -> str:
    return ", ".join(f"{k} {v:.1f}s" if isinstance(v, float) and k not in UNITLESS else f"{k} {v}"
                     for k, v in d.items())


# --------------------------------------------------------------------------- exact reference


def exact_settings(args) -> dict:
    return {"version": EXACT_VERSION, "data": data_settings(args), "sample": args.sample, "k": args.k,
            "sample_seed": args.seed, "margin": MARGIN}


def exact_path(args) -> Path:
    return data_dir(args) / f"exact-v{EXACT_VERSION}-sample{args.sample}-k{args.k}-s{args.seed}-{MARGIN}.npz"


def exact_reference(args_dict: dict, threads: int) -> None:
    """Child process: exact kNN for the evaluated planted pairs and every neighbour of theirs."""
    set_threads(threads)
    args = argparse.Namespace(**args_dict)
    sides = open_sides(args)
    src_ids, tgt_ids = planted_pairs(args)
    rng = np.random.default_rng([args.seed, 7])
    drawn = np.sort(rng.choice(args.n, min(args.sample, args.n), replace=False))
    keep = np.isin(src_ids, drawn)
    I, J = src_ids[keep], tgt_ids[keep]
    k = min(args.k, args.n)
    found = {"fwd": {}, "bwd": {}}  # direction -> {query id: (sims, ids)}

    def search(direction: str, ids: np.ndarray) -> None:
        ids = np.unique(ids)
        ids = ids[~np.isin(ids, np.fromiter(found[direction], dtype=np.int64, count=len(found[direction])))]
        if not len(ids):
            return
        q, t = ("src", "tgt") if direction == "fwd" else ("tgt", "src")
        t0 = time.monotonic()
        sims, nn = mining.knn_blocks(sides[q].rows(ids), sides[t].blocks(), k)
        for row, qid in enumerate(ids.tolist()):
            found[direction][qid] = (sims[row], nn[row])
        log(f"exact: {direction} {len(ids):,} queries x {sides[t].n:,}: {time.monotonic() - t0:.1f}s")

    search("fwd", I)
    search("bwd", J)
    # Exact means of every candidate the margins need: i's targets and j's sources.
    search("bwd", np.concatenate([found["fwd"][i][1] for i in I.tolist()]) if len(I) else np.empty(0, np.int64))
    search("fwd", np.concatenate([found["bwd"][j][1] for j in J.tolist()]) if len(J) else np.empty(0, np.int64))
    arrays = {"drawn": np.int64(len(drawn)), "I": I, "J": J}
    for d in ("fwd", "bwd"):
        qids = np.array(sorted(found[d]), dtype=np.int64)
        arrays[f"{d}_q"] = qids
        arrays[f"{d}_sims"] = np.stack([found[d][q][0] for q in qids.tolist()]) if len(qids) else np.empty((0, k), np.float32)
        arrays[f"{d}_ids"] = np.stack([found[d][q][1] for q in qids.tolist()]) if len(qids) else np.empty((0, k), np.int64)
    path = exact_path(args)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, settings=np.array(json.dumps(exact_settings(args))), **arrays)
    os.replace(tmp, path)


def ensure_exact(args) -> dict:
    path = exact_path(args)
    if path.exists():
        with np.load(path) as z:
            if json.loads(str(z["settings"])) == exact_settings(args):
                log(f"exact: reusing {path}")
                return {"reused": True, "seconds": 0.0, "path": str(path)}
    log(f"exact: searching exactly for the planted pairs of a {args.sample:,}-row source sample (child process)")
    seconds, peak = run_child(exact_reference, vars(args), args.threads)
    return {"reused": False, "seconds": round(seconds, 1), "peak_rss_mb": peak, "path": str(path)}


def decide(I, J, fwd_best, fwd_score, bwd_best, bwd_score, threshold) -> np.ndarray:
    """Whether ``max`` retrieval keeps planted pair (I[t], J[t]), from the best candidates of I[t]
    (``fwd_*``) and of J[t] (``bwd_*``), all arrays aligned with the pairs. The pair is a candidate if
    either side proposes it (its score: the higher proposal); it is kept if it scores >= threshold and
    no other proposal of I[t] or J[t] ranks before it (score, then (src, tgt) ascending)."""
    via_f = fwd_best == J
    via_b = bwd_best == I
    score = np.where(via_f & via_b, np.maximum(fwd_score, bwd_score), np.where(via_f, fwd_score, bwd_score))

    def before(other_score, other_src, other_tgt):
        return (other_score > score) | ((other_score == score) & ((other_src < I) | ((other_src == I) & (other_tgt < J))))

    blocked = (~via_f & before(fwd_score, I, fwd_best)) | (~via_b & before(bwd_score, bwd_best, J))
    return (via_f | via_b) & (score >= threshold) & ~blocked


def exact_decisions(z) -> dict:
    """Exact best candidates of every evaluated pair's source (fwd) and target (bwd)."""
    I, J = z["I"], z["J"]
    table = {}
    for d in ("fwd", "bwd"):
        q = z[f"{d}_q"]
        table[d] = (q, z[f"{d}_sims"], z[f"{d}_ids"], mining.knn_mean(z[f"{d}_sims"]) if len(q) else np.empty(0))

    def lookup(d, ids):
        q = table[d][0]
        pos = np.searchsorted(q, ids)
        if len(ids) and not np.array_equal(q[np.minimum(pos, len(q) - 1)], ids):
            raise SystemExit("exact reference is incomplete; delete it and run again")
        return pos

    out = {}
    for d, other, queries in (("fwd", "bwd", I), ("bwd", "fwd", J)):
        pos = lookup(d, queries)
        sims, ids, means = table[d][1][pos], table[d][2][pos], table[d][3][pos]
        # best_candidates wants the other side's means indexed by id: map ids to rows of the table.
        other_pos = lookup(other, ids.ravel()).reshape(ids.shape) if ids.size else ids
        best_local, score = mining.best_candidates(sims, other_pos, means, table[other][3], MARGIN)
        out[d] = (table[other][0][best_local] if len(best_local) else best_local, score)
        out[f"{d}_ids"] = ids
    return out


# --------------------------------------------------------------------------- report


def quality(args, mined: dict, z) -> dict:
    src_ids, tgt_ids = planted_pairs(args)
    partner = np.full(args.n, -1, dtype=np.int64)
    partner[src_ids] = tgt_ids
    src, tgt, scores, _ = mined["pairs"]
    is_planted = partner[src] == tgt
    I, J = z["I"], z["J"]
    ex = exact_decisions(z)
    fb, fs = mined["best"]["fwd"]
    bb, bs = mined["best"]["bwd"]
    # The mined output as a set of (src, tgt) keyed by src (one-to-one): tgt of src, score.
    out_tgt = np.full(args.n, -1, dtype=np.int64)
    out_score = np.full(args.n, -np.inf)
    out_tgt[src] = tgt
    out_score[src] = scores
    rows = []
    for thr in THRESHOLDS:
        above = scores >= thr
        recovered = int(np.count_nonzero(is_planted & above))
        exact_found = decide(I, J, *ex["fwd"], *ex["bwd"], thr)
        mined_has = (out_tgt[I] == J) & (out_score[I] >= thr)
        same_rule = decide(I, J, fb[I], fs[I], bb[J], bs[J], thr)
        n_exact = int(exact_found.sum())
        rows.append({
            "threshold": thr,
            "pairs_above": int(above.sum()),
            "planted_recovered": recovered,
            "recovered_share": recovered / max(len(src_ids), 1),
            "false_above": int(np.count_nonzero(~is_planted & above)),
            "sample_planted": int(len(I)),
            "exact_found": n_exact,
            "exact_found_share": n_exact / max(len(I), 1),
            "mined_of_exact": int((exact_found & mined_has).sum()),
            "relative_share": float((exact_found & mined_has).sum() / n_exact) if n_exact else None,
            "mined_not_exact": int((~exact_found & mined_has).sum()),
            "same_rule_of_exact": float((exact_found & same_rule).sum() / n_exact) if n_exact else None,
        })
    # kNN recall of the evaluated queries: the mined neighbours against the exact ones.
    recall = {}
    for d, queries in (("fwd", I), ("bwd", J)):
        shard = args.shard_size
        knn = mined["knn"][d]
        mined_ids = np.stack([knn[q // shard][1][q % shard] for q in queries.tolist()]) if len(queries) else None
        ex_ids = ex[f"{d}_ids"]
        if mined_ids is None:
            continue
        top1 = float(np.mean(mined_ids[:, 0] == ex_ids[:, 0]))
        topk = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(mined_ids.tolist(), ex_ids.tolist())]))
        recall[d] = {"top1": top1, "topk": topk, "queries": int(len(queries))}
    return {"rows": rows, "knn_recall": recall, "drawn": int(z["drawn"])}


def format_report(r: dict) -> str:
    lines = []
    m = r["machine"]
    lines.append(f"Scale benchmark: {r['n']:,} x {r['n']:,} x {r['dim']}-d synthetic embeddings, "
                 f"{r['planted']:,} planted pairs, {r['clusters']:,} clusters, k={r['k']}, ratio margin, max retrieval")
    lines.append(f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {r['threads']} FAISS/BLAS threads, "
                 f"{m.get('mem_gb', '?')} GB RAM; {r['date']}")
    spec_txt = "; ".join(f"{s}: {v}" for s, v in r["index"].items())
    lines.append(f"index ({r['index_option']}): {spec_txt}")
    g = r["data"]
    lines.append("data generation (not in the mining time): " + (
        "reused from an earlier run" if g["reused"] else f"{g['seconds']:.1f}s, child peak RSS {g['peak_rss_mb']:.0f} MB"))
    lines.append("")
    lines.append("mining time breakdown (s):")
    t = r["timings"]
    for side in SIDES:
        lines.append(f"  index {side:<4} {fmt_parts(t[f'index_{side}'])}")
    for d in ("fwd", "bwd"):
        lines.append(f"  kNN {d:<6} {fmt_parts(t[f'knn_{d}'])}")
    lines.append(f"  score      {t['score']['total']:.1f}s (means computed once)")
    lines.append(f"  retrieve   {t['retrieve']['total']:.1f}s")
    pr = t["product_score_reload"]
    lines.append(f"  (product score stage re-reads the other direction's kNN files in each of its {pr['tasks']} tasks: "
                 f"{pr['per_task']:.2f}s per task, ~{pr['total_est']:.0f}s in all; not in the wall time)")
    lines.append("  peak VmRSS per phase (MB): " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in r["rss_phases_kb"].items()))
    lines.append("")
    q = r["quality"]
    lines.append(f"quality: {q['drawn']:,} source rows drawn, {q['rows'][0]['sample_planted']:,} planted pairs among them "
                 f"evaluated against exact search (flat kNN of each pair's ends and of all their neighbours)")
    for d, v in q["knn_recall"].items():
        lines.append(f"  kNN recall {d} on those queries: top-1 {v['top1']:.4f}, top-{r['k']} {v['topk']:.4f}")
    hdr = f"  {'thr':>5} {'pairs>=thr':>10} {'planted rec.':>12} {'rec. %':>7} {'other>=thr':>10} " \
          f"{'exact finds':>11} {'mined/exact':>11} {'rel. %':>7} {'extra':>6} {'same rule %':>11}"
    lines.append(hdr)
    for row in q["rows"]:
        rel = f"{100 * row['relative_share']:.2f}" if row["relative_share"] is not None else "-"
        same = f"{100 * row['same_rule_of_exact']:.2f}" if row["same_rule_of_exact"] is not None else "-"
        mark = " *" if row["threshold"] == r["threshold"] else ""
        lines.append(f"  {row['threshold']:>5.2f} {row['pairs_above']:>10,} {row['planted_recovered']:>12,} "
                     f"{100 * row['recovered_share']:>7.2f} {row['false_above']:>10,} {row['exact_found']:>11,} "
                     f"{row['mined_of_exact']:>11,} {rel:>7} {row['mined_not_exact']:>6,} {same:>11}{mark}")
    lines.append("  (* the generic default threshold; rec. % = planted pairs mined >= thr / all planted; "
                 "rel. % = of the sample's pairs exact search finds, the share the mined output has; "
                 "extra = mined but not found exactly)")
    b = r.get("baseline")
    if b:
        lines.append("")
        lines.append(f"baseline, measured in this run: exact search (knn_blocks, what --index flat runs) of "
                     f"{b['queries']:,} source rows against all {r['n']:,} target rows took {b['seconds']:.1f}s; "
                     f"exact kNN of both directions would take ~{b['exact_estimate_s']:,.0f} s "
                     f"({b['exact_estimate_s'] / 3600:.1f} h); mining wall time / that = {b['ratio']:.3f}")
    lines.append("")
    for name, (value, target, ok) in r["targets"].items():
        lines.append(f"{name:<34} {value:<22} target {target:<14} {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def exact_baseline(args, sides: dict) -> dict:
    """Time exact search of the first ``--baseline-queries`` source rows against the whole target side
    (after mining, not in its wall time) and scale it to both directions of the whole corpus."""
    queries = sides["src"].rows(np.arange(min(args.baseline_queries, args.n)))
    log(f"baseline: exact search of {len(queries):,} source rows against {args.n:,} target rows")
    t0 = time.monotonic()
    mining.knn_blocks(queries, sides["tgt"].blocks(), min(args.k, args.n))
    seconds = time.monotonic() - t0
    estimate = seconds * (args.n / len(queries)) * 2
    return {"queries": int(len(queries)), "seconds": round(seconds, 2), "exact_estimate_s": round(estimate, 1),
            "ratio": None}


def machine() -> dict:
    info = {}
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import machine as common_machine  # bench/common.py

        info = common_machine()
    except Exception:
        info = {"cores": len(os.sched_getaffinity(0))}
    try:
        info["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError):
        pass
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="sentences per side")
    ap.add_argument("--planted", type=int, default=100_000, help="planted translation pairs")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--sample", type=int, default=100_000, help="source rows drawn for the exact comparison")
    ap.add_argument("--clusters", type=int, default=None, help="cluster centres (default n / 100)")
    ap.add_argument("--k", type=int, default=K)
    ap.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    ap.add_argument("--index", default="auto", choices=("auto", "flat", "ivf", "ivfpq"),
                    help="choose_index kind (default auto: what the product picks)")
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--m", type=int, default=None, help="PQ sub-quantizers (ivfpq)")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "out" / "scale"))
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="JSON on stdout ('-', the default) or to PATH (the table still prints)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--baseline-queries", type=int, default=2000,
                    help="source rows searched exactly in this run, to estimate what exact mining would take "
                         "(0: skip)")
    args = ap.parse_args(argv)
    if args.clusters is None:
        args.clusters = max(1, args.n // 100)
    if args.planted > args.n or args.n < 1:
        ap.error("need 1 <= planted <= n")
    set_threads(args.threads)
    import datetime as dt

    data = ensure_data(args)
    exact = ensure_exact(args)
    sides = open_sides(args)
    specs = {side: choose_index(args.n, args.dim, args.index, args.nlist, args.nprobe, args.m) for side in SIDES}
    tag = "-".join(filter(None, [specs["src"].name, f"p{specs['src'].nprobe}" if not specs["src"].exact else ""]))
    work = data_dir(args) / f"run-{tag}"
    hwm_before = proc_status_kb("VmHWM")
    with RssSampler() as sampler:
        mined = mine_all(args, sides, specs, work, sampler)
    hwm = proc_status_kb("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    log(f"mine: {mined['wall_s']:.1f}s, VmHWM {hwm / 1024:.0f} MB")
    baseline = exact_baseline(args, sides) if args.baseline_queries > 0 else None
    with np.load(exact_path(args)) as zf:
        z = {key: zf[key] for key in zf.files}
    q = quality(args, mined, z)
    row = next(r for r in q["rows"] if r["threshold"] == THRESHOLD)
    peak_bytes = max(hwm, maxrss) * 1024
    rel = row["relative_share"]
    report = {
        "n": args.n, "dim": args.dim, "planted": args.planted, "clusters": args.clusters, "k": args.k,
        "sample": args.sample, "threads": args.threads, "threshold": THRESHOLD, "margin": MARGIN,
        "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "index_option": args.index if args.index != "auto" else "auto: the product's automatic choice",
        "index": {s: f"{v.kind} nlist={v.nlist} nprobe={v.nprobe}" + (f" m={v.m}" if v.m else "") if not v.exact else "flat"
                  for s, v in specs.items()},
        "data": data, "exact": exact,
        "wall_s": round(mined["wall_s"], 1),
        "baseline": baseline and {**baseline, "ratio": round(mined["wall_s"] / baseline["exact_estimate_s"], 4)},
        "timings": mined["timings"],
        "vmhwm_mb": round(hwm / 1024, 1), "vmhwm_before_mining_mb": round(hwm_before / 1024, 1),
        "ru_maxrss_mb": round(maxrss / 1024, 1),
        "rss_phases_kb": dict(sampler.peaks),
        "quality": q,
        "definition": ("relative share = |mined pairs >= thr among E| / |E|, E = planted pairs (i, j) with i in a "
                       "uniform sample of source rows that exact kNN (both ways, exact means for every candidate) "
                       "+ ratio margin + one-to-one max retrieval would output at score >= thr"),
    }
    report["targets"] = {
        "mining wall time": (f"{mined['wall_s']:.0f} s", f"<= {TARGET_WALL_S:.0f} s", mined["wall_s"] <= TARGET_WALL_S),
        "peak RSS (VmHWM / ru_maxrss)": (f"{peak_bytes / 1e9:.2f} GB", f"<= {TARGET_RSS_BYTES / 1e9:.0f} GB",
                                         peak_bytes <= TARGET_RSS_BYTES),
        f"share of exact-found pairs @ {THRESHOLD}": (f"{100 * rel:.2f} %" if rel is not None else "n/a",
                                                     f">= {100 * TARGET_SHARE:.0f} %",
                                                     rel is not None and rel >= TARGET_SHARE),
    }
    print(format_report(report))
    if args.json is not None:
        text = json.dumps(report, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            log(f"JSON written to {args.json}")
    ok = all(v[2] for v in report["targets"].values())
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
