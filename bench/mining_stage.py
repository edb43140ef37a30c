#!/usr/bin/env python3
"""Benchmark: the mining stage on given embeddings against a plain LASER reference.

Target (issue 4): "mining stage on given embeddings (both directions kNN + margin + one-to-one max
retrieval) against a plain reference implementation of the LASER algorithm (exact flat kNN, numpy)
on the same embeddings: same pairs out, time ratio <= 1.0."

Embeddings (``--source``):

* ``real`` (default): muse embeddings of the shared data, ``--size`` sentences per side (default:
  the largest size with disjoint sides, 18,401; built as in ``bench/common.py``), encoded once (one
  process per side) and cached under ``bench/out/mining_stage/``;
* ``synthetic``: ``--size`` (default 50,000) clustered 512-d unit vectors per side with 20% planted
  noisy-copy pairs (``bench/common.synthetic_embeddings``).

Implementations, all on the same float32 arrays, k = 4, ratio margin, max retrieval, no threshold
(every one-to-one candidate is compared; the pairs >= 1.05 are compared too):

* ``product mine()``: ``miner.core.mining.mine(x, y, k, "ratio", "max", None)`` (one ``faiss.IndexFlatIP``
  per direction over the whole other side);
* ``product sharded``: the path the workers take, without the artifact files between stages: the
  sides split into ``--shard-size`` (10,000) shards saved as ``.npy`` (not timed); per direction and
  query shard ``mining.knn_blocks(query shard, memory-mapped target shards, k)``; per shard
  ``mining.best_candidates`` with the other direction's means; ``mining.retrieve(..., "max")``;
* ``LASER loop``: LASER's ``source/mine_bitexts.py`` written out plainly: ``knnCPU`` (a
  ``faiss.IndexFlatIP`` over the whole other side, ``search(x, k)``), ``x2y_sim.mean(axis=1)``,
  ``score_candidates`` (Python loop over every (sentence, candidate): ``margin(x[i].dot(y[k]),
  (fwd_mean[i] + bwd_mean[k]) / 2)``), argmax per row, and the ``max`` retrieval loop over
  ``np.argsort(-scores)`` with ``seen_src``/``seen_trg`` sets;
* ``LASER vectorised``: the same kNN, the margin computed on the whole ``(n, k)`` arrays with numpy
  (float64), then the same greedy loop (over a stable sort).

The two LASER variants share one timed kNN (the same faiss call): each variant's time is that kNN's
time plus its own scoring and retrieval. Each implementation is timed with ``time.perf_counter`` in
this process, in an order that alternates between repeats; ``--repeat`` gives medians. FAISS uses
``--threads`` threads (default: all cores) in every implementation. The machine may be shared: the
cores busy with other processes during each run are reported.

Ratios: product time / reference time, for mine() and sharded against each LASER variant.
PASS when both product paths are <= 1.0 x the faster reference (medians) and give the same pairs
(sets equal; scores of common pairs within 1e-5). Also printed: best-of-R ratios and the median of
per-repeat ratios (product and reference timed next to each other), which suffer less from other
processes on a shared machine.

Usage (from the repository root)::

    python bench/mining_stage.py                                   # real, 18,401 x 18,401
    python bench/mining_stage.py --source synthetic                # 50,000 x 50,000
    python bench/mining_stage.py --source synthetic --size 20000 --repeat 3
    python bench/mining_stage.py --json [FILE]  |  --check

Progress goes to stderr. Exit code 0 whether the target is met or not, unless ``--check``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

import faiss  # noqa: E402

from miner.core import mining  # noqa: E402

TARGET = 1.0
THRESHOLD = 1.05
SCORE_TOL = 1e-5


# --------------------------------------------------------------------------- reference (LASER)


def laser_knn(x: np.ndarray, y: np.ndarray, k: int):
    """LASER ``knnCPU``: exact inner product with one flat index over the whole other side."""
    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(y)
    sim, ind = idx.search(x, k)
    return sim, ind


def laser_score_candidates(x, y, candidate_inds, fwd_mean, bwd_mean, margin):
    """LASER ``score_candidates``: a Python loop over every candidate."""
    scores = np.zeros(candidate_inds.shape)
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            k = candidate_inds[i, j]
            scores[i, j] = margin(x[i].dot(y[k]), (fwd_mean[i] + bwd_mean[k]) / 2)
    return scores


def laser_max(x_n: int, y_n: int, fwd_best, bwd_best, fwd_scores_max, bwd_scores_max, kind=None):
    """LASER's ``--retrieval max``: candidates of both directions, greedily one-to-one by score."""
    indices = np.stack((np.concatenate((np.arange(x_n), bwd_best)),
                        np.concatenate((fwd_best, np.arange(y_n)))), axis=1)
    scores = np.concatenate((fwd_scores_max, bwd_scores_max))
    seen_src, seen_trg = set(), set()
    out = []
    order = np.argsort(-scores) if kind is None else np.argsort(-scores, kind=kind)
    for i in order:
        src_ind, trg_ind = indices[i]
        if src_ind not in seen_src and trg_ind not in seen_trg:
            seen_src.add(src_ind)
            seen_trg.add(trg_ind)
            out.append((int(src_ind), int(trg_ind), float(scores[i])))
    return out


def laser_knn_both(x, y, k):
    t = time.perf_counter()
    x2y_sim, x2y_ind = laser_knn(x, y, min(y.shape[0], k))
    x2y_mean = x2y_sim.mean(axis=1)
    y2x_sim, y2x_ind = laser_knn(y, x, min(x.shape[0], k))
    y2x_mean = y2x_sim.mean(axis=1)
    return (x2y_sim, x2y_ind, x2y_mean, y2x_sim, y2x_ind, y2x_mean), time.perf_counter() - t


def laser_loop_rest(x, y, knn_out):
    """LASER's scoring and retrieval after the kNN, as written in mine_bitexts.py."""
    x2y_sim, x2y_ind, x2y_mean, y2x_sim, y2x_ind, y2x_mean = knn_out
    phases = {}
    t = time.perf_counter()

    def margin(a, b):
        return a / b

    fwd_scores = laser_score_candidates(x, y, x2y_ind, x2y_mean, y2x_mean, margin)
    bwd_scores = laser_score_candidates(y, x, y2x_ind, y2x_mean, x2y_mean, margin)
    fwd_best = x2y_ind[np.arange(x.shape[0]), fwd_scores.argmax(axis=1)]
    bwd_best = y2x_ind[np.arange(y.shape[0]), bwd_scores.argmax(axis=1)]
    phases["score"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs = laser_max(x.shape[0], y.shape[0], fwd_best, bwd_best, fwd_scores.max(axis=1), bwd_scores.max(axis=1))
    phases["retrieve"] = time.perf_counter() - t
    return pairs, phases


def laser_vectorised_rest(x, y, knn_out):
    """The same algorithm with the margin on whole arrays (float64) and a stable sort."""
    x2y_sim, x2y_ind, _, y2x_sim, y2x_ind, _ = knn_out
    phases = {}
    t = time.perf_counter()
    x2y_mean = x2y_sim.astype(np.float64).mean(axis=1)
    y2x_mean = y2x_sim.astype(np.float64).mean(axis=1)
    fwd_scores = x2y_sim / ((x2y_mean[:, None] + y2x_mean[x2y_ind]) / 2)
    bwd_scores = y2x_sim / ((y2x_mean[:, None] + x2y_mean[y2x_ind]) / 2)
    fwd_col = fwd_scores.argmax(axis=1)
    bwd_col = bwd_scores.argmax(axis=1)
    rows_x, rows_y = np.arange(x.shape[0]), np.arange(y.shape[0])
    fwd_best, bwd_best = x2y_ind[rows_x, fwd_col], y2x_ind[rows_y, bwd_col]
    fwd_max, bwd_max = fwd_scores[rows_x, fwd_col], bwd_scores[rows_y, bwd_col]
    phases["score"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs = laser_max(x.shape[0], y.shape[0], fwd_best, bwd_best, fwd_max, bwd_max, kind="stable")
    phases["retrieve"] = time.perf_counter() - t
    return pairs, phases


# --------------------------------------------------------------------------- product


def product_mine(x, y, k):
    t = time.perf_counter()
    src, tgt, scores, _ = mining.mine(x, y, k=k, margin="ratio", retrieval="max", threshold=None)
    total = time.perf_counter() - t
    return list(zip(src.tolist(), tgt.tolist(), scores.tolist())), {"total": total}


def write_shards(arr: np.ndarray, folder: Path, shard_size: int) -> list[tuple[int, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for start in range(0, arr.shape[0], shard_size):
        path = folder / f"{start}.npy"
        np.save(path, arr[start:start + shard_size])
        out.append((start, path))
    return out


def product_sharded(shards: dict, k: int):
    """The workers' path: knn_blocks per query shard over memory-mapped target shards, means of the
    whole other side, best_candidates per shard, retrieve."""
    phases = {}
    t = time.perf_counter()
    knn_out = {}
    for direction, (query, target) in (("fwd", ("x", "y")), ("bwd", ("y", "x"))):
        parts = []
        for _start, path in shards[query]:
            queries = np.load(path)
            blocks = ((s, np.load(p, mmap_mode="r")) for s, p in shards[target])
            parts.append(mining.knn_blocks(queries, blocks, k))
        knn_out[direction] = parts
    phases["knn"] = time.perf_counter() - t
    t = time.perf_counter()
    means = {d: np.concatenate([mining.knn_mean(sims) for sims, _ in parts]) for d, parts in knn_out.items()}
    best = {}
    for direction, other in (("fwd", "bwd"), ("bwd", "fwd")):
        ids, scores = [], []
        for sims, nn in knn_out[direction]:
            b, s = mining.best_candidates(sims, nn, mining.knn_mean(sims), means[other], "ratio")
            ids.append(b)
            scores.append(s)
        best[direction] = (np.concatenate(ids), np.concatenate(scores))
    phases["score"] = time.perf_counter() - t
    t = time.perf_counter()
    src, tgt, scores, _ = mining.retrieve(*best["fwd"], *best["bwd"], "max", threshold=None)
    phases["retrieve"] = time.perf_counter() - t
    return list(zip(src.tolist(), tgt.tolist(), scores.tolist())), phases


# --------------------------------------------------------------------------- harness


def _busy() -> float:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return (sum(values) - values[3] - (values[4] if len(values) > 4 else 0)) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def timed(fn, *a):
    """Run fn: (result, phases, wall s, CPU s of this process, cores used by other processes meanwhile)."""
    gc.collect()
    busy0, cpu0 = _busy(), _self_cpu()
    t = time.perf_counter()
    pairs, phases = fn(*a)
    wall = time.perf_counter() - t
    cpu = _self_cpu() - cpu0
    other = max(0.0, (_busy() - busy0) - cpu) / wall if wall > 0 else 0.0
    return pairs, phases, wall, cpu, round(other, 2)


def compare(a: list, b: list, threshold: float | None = None) -> dict:
    """Pairs of a vs b (lists of (src, tgt, score)): set differences and score agreement."""
    if threshold is not None:
        a = [p for p in a if p[2] >= threshold]
        b = [p for p in b if p[2] >= threshold]
    da = {(s, t): sc for s, t, sc in a}
    db = {(s, t): sc for s, t, sc in b}
    common_keys = da.keys() & db.keys()
    diff = max((abs(da[k] - db[k]) for k in common_keys), default=0.0)
    return {"pairs_a": len(da), "pairs_b": len(db), "only_a": len(da.keys() - db.keys()),
            "only_b": len(db.keys() - da.keys()), "max_score_diff": diff,
            "same": da.keys() == db.keys() and diff <= SCORE_TOL}


def _encode_side(lines, cache, threads):
    return common.muse_embeddings(lines, cache, threads=threads)


def load_embeddings(args) -> tuple[np.ndarray, np.ndarray, dict]:
    if args.source == "synthetic":
        size = args.size or 50000
        t = time.perf_counter()
        x, y, planted = common.synthetic_embeddings(size, size, seed=args.seed)
        log(f"synthetic embeddings {size} x {size} (512-d, 1000 clusters, {len(planted)} planted pairs) in "
            f"{time.perf_counter() - t:.1f}s")
        return x, y, {"source": "synthetic", "size": size, "planted": len(planted),
                      "how": f"{size} x {size} clustered 512-d unit vectors, 1000 clusters, {len(planted)} planted "
                             f"noisy-copy pairs (seed {args.seed})", "_planted": planted}
    size = args.size or common.max_distinct_size(Path(args.data))
    folder = Path(args.out) / "mining_stage"
    corpus = common.build_corpus(size, folder / "corpora", data=Path(args.data), seed=args.seed)
    t = time.perf_counter()
    log(f"muse embeddings of {size} + {size} sentences (cached under {folder}) ...")
    with ProcessPoolExecutor(2) as pool:  # one process per side, one thread each
        fx = pool.submit(_encode_side, corpus["src_lines"], folder, 1)
        fy = pool.submit(_encode_side, corpus["tgt_lines"], folder, 1)
        x, y = fx.result(), fy.result()
    log(f"  ready in {time.perf_counter() - t:.1f}s")
    return x, y, {"source": "real", "size": size, "how": "muse embeddings; " + corpus["how"],
                  "_corpus": corpus}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=("real", "synthetic"), default="real")
    ap.add_argument("--size", type=int, default=None,
                    help="vectors per side (default: real 18,401 = largest disjoint size; synthetic 50,000)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all cores)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-loop", action="store_true", help="skip the (slow) LASER Python-loop variant")
    ap.add_argument("--data", default=str(common.DEFAULT_DATA))
    ap.add_argument("--out", default=str(common.DEFAULT_OUT))
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                    help="JSON on stdout (no FILE) or to FILE (table on stdout)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = ap.parse_args(argv)

    info = common.machine()
    threads = args.threads or info["cores"]
    faiss.omp_set_num_threads(threads)
    x, y, meta = load_embeddings(args)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    k = args.k

    tmp = Path(tempfile.mkdtemp(prefix="mining_stage-"))
    try:
        shards = {"x": write_shards(x, tmp / "x", args.shard_size), "y": write_shards(y, tmp / "y", args.shard_size)}
        names = ["product mine()", "product sharded", "LASER"]
        runs = {n: [] for n in ("product mine()", "product sharded", "LASER loop", "LASER vectorised")}
        outputs = {}
        for rep in range(args.repeat):
            order = names if rep % 2 == 0 else names[::-1]
            for name in order:
                if name == "product mine()":
                    pairs, phases, wall, cpu, other = timed(product_mine, x, y, k)
                    runs[name].append({"wall_s": wall, "cpu_s": cpu, "phases": phases, "other_cores": other})
                    outputs[name] = pairs
                elif name == "product sharded":
                    pairs, phases, wall, cpu, other = timed(product_sharded, shards, k)
                    runs[name].append({"wall_s": wall, "cpu_s": cpu, "phases": phases, "other_cores": other})
                    outputs[name] = pairs
                else:
                    gc.collect()
                    busy0, cpu0 = _busy(), _self_cpu()
                    knn_out, knn_s = laser_knn_both(x, y, k)
                    knn_cpu = _self_cpu() - cpu0
                    other_knn = max(0.0, (_busy() - busy0) - knn_cpu) / knn_s
                    variants = [("LASER vectorised", laser_vectorised_rest)]
                    if not args.skip_loop:
                        variants.append(("LASER loop", laser_loop_rest))
                    for vname, fn in variants:
                        pairs, phases, wall, cpu, other = timed(fn, x, y, knn_out)
                        runs[vname].append({"wall_s": knn_s + wall, "cpu_s": knn_cpu + cpu,
                                            "phases": {"knn": knn_s, **phases},
                                            "other_cores": round((other_knn * knn_s + other * wall) / (knn_s + wall), 2)})
                        outputs[vname] = pairs
                    del knn_out
                last = {n: r[-1]["wall_s"] for n, r in runs.items() if r}
                log(f"  rep {rep + 1} {name}: " + ", ".join(f"{n} {v:.2f}s" for n, v in last.items()
                                                           if n.startswith(name.split()[0])))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for name, rs in runs.items():
        if not rs:
            continue
        summary[name] = {"wall_s": round(common.median([r["wall_s"] for r in rs]), 3),
                         "min_s": round(min(r["wall_s"] for r in rs), 3),
                         "cpu_s": round(common.median([r["cpu_s"] for r in rs]), 3),
                         "walls": [round(r["wall_s"], 3) for r in rs],
                         "phases": {p: round(common.median([r["phases"][p] for r in rs]), 3) for p in rs[0]["phases"]},
                         "other_cores": [r["other_cores"] for r in rs]}
    refs = [n for n in ("LASER vectorised", "LASER loop") if n in summary]
    fastest_ref = min(refs, key=lambda n: summary[n]["wall_s"])
    ratios = {p: {r: round(summary[p]["wall_s"] / summary[r]["wall_s"], 3) for r in refs}
              for p in ("product mine()", "product sharded")}
    # also: best-of-R ratios, and the median of per-repeat ratios (runs next to each other in time)
    ratios_min = {p: {r: round(summary[p]["min_s"] / summary[r]["min_s"], 3) for r in refs} for p in ratios}
    ratios_paired = {p: {r: round(common.median([a["wall_s"] / b["wall_s"] for a, b in zip(runs[p], runs[r])]), 3)
                         for r in refs} for p in ratios}
    ratios_cpu = {p: {r: round(summary[p]["cpu_s"] / summary[r]["cpu_s"], 3) for r in refs} for p in ratios}
    agreement = {}
    for p in ("product mine()", "product sharded"):
        for r in refs:
            agreement[f"{p} vs {r}"] = {"all": compare(outputs[p], outputs[r]),
                                        f">= {THRESHOLD}": compare(outputs[p], outputs[r], THRESHOLD)}
    recall = None
    if meta["source"] == "synthetic":
        planted = meta["_planted"]
        recall = {n: round(100.0 * len({(s, t) for s, t, _ in outputs[n]} & planted) / len(planted), 2)
                  for n in outputs}
    else:
        corpus = meta["_corpus"]
        gold = corpus["gold"]
        src_id = {s: i for i, s in enumerate(corpus["src_lines"])}
        tgt_id = {t: i for i, t in enumerate(corpus["tgt_lines"])}
        gold_ids = {(src_id[s], tgt_id[t]) for s, t in gold if s in src_id and t in tgt_id}
        recall = {n: round(100.0 * len({(s, t) for s, t, sc in outputs[n] if sc >= THRESHOLD} & gold_ids)
                           / len(corpus["gold"]), 2) for n in outputs}
    same = all(a["all"]["same"] for key, a in agreement.items())
    passed = same and all(ratios[p][fastest_ref] <= TARGET for p in ratios)
    info["loadavg_end"] = list(os.getloadavg())
    result = {"machine": info, "faiss_threads": threads, "k": k, "shard_size": args.shard_size,
              "repeat": args.repeat, "embeddings": {k_: v for k_, v in meta.items() if not k_.startswith("_")},
              "times": summary, "ratios": ratios, "ratios_min": ratios_min, "ratios_paired": ratios_paired,
              "ratios_cpu": ratios_cpu, "fastest_reference": fastest_ref, "target": TARGET,
              "agreement": agreement, "recall_pct": recall, "pass": passed}

    common.emit(result, args.json, print_table)
    return 1 if args.check and not passed else 0


def print_table(r: dict) -> None:
    m = r["machine"]
    e = r["embeddings"]
    print(f"Mining stage on given embeddings: product vs a plain LASER reference (k={r['k']}, ratio margin, max "
          f"retrieval, exact flat kNN with faiss.IndexFlatIP, {r['faiss_threads']} FAISS threads); median of "
          f"{r['repeat']} run(s)")
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, load average at start "
          f"{m['loadavg_start'][0]:.2f}; code {m['code']}")
    print(f"embeddings: {e['how']}")
    head = f"{'implementation':<18} {'wall':>9} {'min':>7} {'cpu':>7}  {'knn':>8} {'score':>8} {'retrieve':>8}  {'other load':>10}  {'recall':>7}"
    print(head)
    print("-" * len(head))
    for name, s in r["times"].items():
        ph = s["phases"]
        cols = [f"{ph[p]:.2f}s" if p in ph else "-" for p in ("knn", "score", "retrieve")]
        other = "/".join(f"{o:.2f}" for o in s["other_cores"])
        print(f"{name:<18} {s['wall_s']:>8.2f}s {s['min_s']:>6.2f}s {s['cpu_s']:>6.2f}s  {cols[0]:>8} {cols[1]:>8} {cols[2]:>8}  {other:>10}  "
              f"{r['recall_pct'].get(name, 0):>6.2f}%")
    print("(other load: cores busy with other processes during the run; recall: "
          + ("planted pairs among all candidates)" if e["source"] == "synthetic"
             else f"Tatoeba gold pairs among candidates >= {THRESHOLD}, of {3000})"))
    print()
    refs = list(next(iter(r["ratios"].values())).keys())
    print(f"{'ratio (target <= 1.0)':<22} " + " ".join(f"{'vs ' + ref:>20}" for ref in refs)
          + "   same pairs   (best-of / paired median / CPU seconds)")
    for p, rr in r["ratios"].items():
        same = " ".join("yes" if r["agreement"][f"{p} vs {ref}"]["all"]["same"] else "NO" for ref in refs)
        extra = "; ".join(f"{r['ratios_min'][p][ref]:.3f} / {r['ratios_paired'][p][ref]:.3f} / "
                          f"{r['ratios_cpu'][p][ref]:.3f}" for ref in refs)
        print(f"{p:<22} " + " ".join(f"{rr[ref]:>20.3f}" for ref in refs) + f"   {same:<10}   ({extra})")
    for key, a in r["agreement"].items():
        al = a["all"]
        th = a[f">= {THRESHOLD}"]
        print(f"  {key}: all candidates {al['pairs_a']} vs {al['pairs_b']}, only in one {al['only_a']}/{al['only_b']}, "
              f"max score diff {al['max_score_diff']:.1e}; >= {THRESHOLD}: {th['pairs_a']} vs {th['pairs_b']}, only in "
              f"one {th['only_a']}/{th['only_b']}")
    verdict = "PASS" if r["pass"] else "FAIL"
    print(f"result: {verdict} (both product paths <= {r['target']} x the fastest reference, {r['fastest_reference']}, "
          f"and the same pairs as every reference)")


if __name__ == "__main__":
    sys.exit(main())
