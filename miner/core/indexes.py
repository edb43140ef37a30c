"""Which FAISS index searches a side, and how it is built from shards: plain functions.

* ``flat``: exact; no index is built, the side's shard files stream through the search
  (:func:`miner.core.mining.knn_blocks`), so memory does not grow with the corpus.
* ``ivf``: ``IndexIVFFlat`` (inner product), ``nlist`` lists, trained by k-means on a sample;
  the vectors are stored uncompressed (float32): 4 * dim bytes per sentence.
* ``ivfpq``: ``IndexIVFPQ``, ``m`` sub-quantizers of 8 bits: ``m`` bytes per sentence. Its
  similarities are approximate, so the kNN step asks it for ``REFINE_FACTOR * k`` candidates and
  re-scores them with the side's stored vectors (:func:`refine`): margins use exact similarities.

``auto`` (the default) follows the habit of Meta's stopes pipeline: exact search while it is cheap,
then IVF with ``nlist`` growing with the corpus (about 4 * sqrt(n), a power of two), compressed
with PQ once uncompressed vectors would not fit comfortably in memory. The thresholds were chosen on
this 2-core machine: exact search of 100k x 100k 512-d vectors takes about four minutes (20k x 20k:
about 9 s), an IVF index a small fraction of that.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable

import numpy as np

from miner.runtime.errors import UsageError

KINDS = ("auto", "flat", "ivf", "ivfpq")
FLAT_MAX = 100_000  # sentences: above this, auto picks an IVF index
IVF_FLAT_MAX = 2_000_000  # sentences: above this, auto compresses with PQ
TRAIN_PER_LIST = 39  # FAISS wants at least 39 training points per centroid
TRAIN_MAX = 100_000  # training sample cap (k-means cost grows with it)
REFINE_FACTOR = 4  # IVF-PQ: candidates per wanted neighbour, re-scored with the stored vectors
KMEANS_ITERATIONS = 10  # FAISS's default is 25; 10 lost no recall on bench/scale.py and halves training


@dataclasses.dataclass(frozen=True)
class IndexSpec:
    kind: str  # flat, ivf or ivfpq
    nlist: int = 0
    m: int = 0  # PQ sub-quantizers (ivfpq)
    nprobe: int = 0

    @property
    def name(self) -> str:
        """The artifact name: what the index content depends on (not nprobe)."""
        if self.kind == "flat":
            return "flat"
        if self.kind == "ivf":
            return f"ivf{self.nlist}"
        return f"ivf{self.nlist}pq{self.m}"

    @property
    def exact(self) -> bool:
        return self.kind == "flat"


def default_nlist(n: int) -> int:
    """About 4 * sqrt(n), a power of two, and small enough to train on the side itself."""
    if n < 2 * TRAIN_PER_LIST:
        return 1
    target = 4 * math.sqrt(n)
    nlist = 2 ** max(0, round(math.log2(target)))
    return max(1, min(nlist, n // TRAIN_PER_LIST))


def default_nprobe(nlist: int) -> int:
    """Lists searched per query: 16 up to 4096 lists, then growing with nlist (at most 64).

    Measured with ``bench/scale.py`` (1M x 1M, nlist 4096): nprobe 8 keeps 99.5% of the planted pairs
    that exact search finds, 16 keeps 99.7%, 32 keeps 99.8%; the kNN time per direction was 77 s,
    118 s and about 200 s on the 2-core development machine."""
    return max(16, min(64, nlist // 256))


def default_m(dim: int) -> int:
    """PQ sub-quantizers: the largest of 64, 32, ... that divides ``dim`` (at least 8 dims each)."""
    for m in (64, 48, 32, 24, 16, 8, 4, 2, 1):
        if dim % m == 0 and dim // m >= 4:
            return m
    return 1


def choose_index(n: int, dim: int | None = None, kind: str = "auto", nlist: int | None = None,
                 nprobe: int | None = None, m: int | None = None) -> IndexSpec:
    """The index for a side of ``n`` sentences (``dim`` needed for ``ivfpq``)."""
    if kind not in KINDS:
        raise UsageError(f"unknown index {kind!r}; choose one of {', '.join(KINDS)}")
    if nlist is not None and nlist < 1:
        raise UsageError(f"nlist must be at least 1, got {nlist}")
    if nprobe is not None and nprobe < 1:
        raise UsageError(f"nprobe must be at least 1, got {nprobe}")
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX else ("ivf" if n <= IVF_FLAT_MAX else "ivfpq")
    if kind == "flat":
        return IndexSpec("flat")
    lists = min(nlist or default_nlist(n), max(1, n))
    probe = min(nprobe or default_nprobe(lists), lists)
    if kind == "ivf":
        return IndexSpec("ivf", lists, 0, probe)
    sub = m or default_m(dim or 512)
    if dim is not None and dim % sub:
        raise UsageError(f"PQ needs m to divide the dimension {dim}; {sub} does not")
    return IndexSpec("ivfpq", lists, sub, probe)


def training_sample(shards: Iterable[np.ndarray], n: int, size: int, seed: int = 0) -> np.ndarray:
    """An evenly spread random sample of ``size`` rows from shards that together hold ``n`` rows,
    reading one shard at a time."""
    size = min(size, n)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, size=size, replace=False))
    parts, offset = [], 0
    for shard in shards:
        rows = picked[(picked >= offset) & (picked < offset + len(shard))] - offset
        if len(rows):
            parts.append(np.asarray(shard[rows], dtype=np.float32))
        offset += len(shard)
    return np.ascontiguousarray(np.concatenate(parts)) if parts else np.empty((0, 0), np.float32)


def build_ivf(spec: IndexSpec, dim: int, train: np.ndarray, shards: Iterable[np.ndarray], threads: int | None = None):
    """Train an IVF (or IVF-PQ) inner-product index on ``train`` and add the shards in order."""
    import faiss

    if spec.kind == "flat":
        raise ValueError("a flat side has no index to build")
    quantizer = faiss.IndexFlatIP(dim)
    if spec.kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.m, 8, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.cp.max_points_per_centroid = max(TRAIN_PER_LIST, len(train) // max(spec.nlist, 1) + 1)
    index.cp.niter = KMEANS_ITERATIONS
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    for shard in shards:
        index.add(np.ascontiguousarray(shard, dtype=np.float32))
    return index


def train_size(spec: IndexSpec, n: int) -> int:
    want = max(spec.nlist * TRAIN_PER_LIST, 256 * TRAIN_PER_LIST if spec.kind == "ivfpq" else 0)
    return min(n, max(want, min(TRAIN_MAX, n)))


def _list_vectors(invlists, list_no: int, dim: int):
    """The vectors and ids of one inverted list of an ``IndexIVFFlat``, as numpy views (no copy;
    they stay valid while the index lives -- memory-mapped lists stay on disk)."""
    import faiss

    size = invlists.list_size(list_no)
    if size == 0:
        return None, None
    codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * dim * 4)
    ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
    return codes.view(np.float32).reshape(size, dim), ids


def search(index, queries: np.ndarray, k: int, nprobe: int | None = None,
           timings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search of an IVF index (``nprobe`` lists per query; default: the
    index's own setting). Same result as ``index.search``, much faster for many queries.

    FAISS's own IVF search walks query by query, reading each query's ``nprobe`` lists from
    memory: with 512-d float vectors that is memory-bound (about 0.5 ms per query at 1M vectors,
    nlist 4096, nprobe 16, on two cores). Here the search goes list by list instead: the queries
    are assigned to their ``nprobe`` nearest centroids (one BLAS product), grouped by list, and
    each list's vectors are compared with all the queries that probe it in one BLAS product
    (``faiss.knn``), so each list is read once per block of queries. The per-list top-``k`` are
    merged at the end, vectorised. An index that does not store plain vectors (IVF-PQ) is
    searched by FAISS itself.

    ``faiss.contrib.big_batch_search`` does the same, and was measured against this function
    (issue 12; 2-core VM, 2026-12-01): equal on one 10,000-query shard of 200,000 x 256-d
    (``python bench/ivf_search.py``: 0.50-0.64 s against 0.47-0.67 s, ratios 0.96-1.12, identical
    results), but clearly slower on whole jobs: ``python bench/scale.py --n 300000 --planted 30000
    --sample 30000`` (512-d, nlist 2048, 30 query shards per direction) took 22.0 + 21.6 s of kNN
    here against 31.6 + 31.1 s with it (mining 70 s against 90 s), and the kNN stage of
    ``python bench/memory.py`` (200,000 x 64-d) 11.2 s against 21.8 s. So this one is kept. (It also
    prints to stdout at every verbosity, fails on small query batches and is wrong for
    inner-product IVF-PQ.)

    Returns ``(sims, ids)``, ``(n, k)`` float32 / int64, best first, ties broken higher id first;
    where the probed lists hold fewer than ``k`` vectors the row ends with id -1 and similarity
    ``-inf``. ``timings``, if given, accumulates the seconds of the ``coarse`` assignment, the
    list ``scan`` and the ``merge``.
    """
    import faiss

    clock = time.perf_counter()
    ivf = faiss.extract_index_ivf(index)
    probe = int(nprobe or ivf.nprobe)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = q.shape[0]
    flat_codes = isinstance(faiss.downcast_index(index), faiss.IndexIVFFlat)
    if not flat_codes or ivf.metric_type != faiss.METRIC_INNER_PRODUCT or n == 0:
        return index.search(q, k, params=faiss.SearchParametersIVF(nprobe=probe))
    probe = max(1, min(probe, ivf.nlist))
    _, assign = ivf.quantizer.search(q, probe)  # (n, probe) list numbers, -1 where none
    coarse = time.perf_counter()
    flat = assign.ravel()
    order = np.argsort(flat, kind="stable")
    lists = flat[order]
    cuts = np.flatnonzero(np.diff(lists)) + 1
    starts = np.concatenate([[0], cuts]).tolist()
    ends = np.concatenate([cuts, [len(lists)]]).tolist()
    # Row r of the candidates holds the top-k of query r // probe in its (r % probe)-th list.
    cand_sims = np.full((n * probe, k), -np.inf, dtype=np.float32)
    cand_ids = np.full((n * probe, k), -1, dtype=np.int64)
    invlists, dim = ivf.invlists, ivf.d

    def scan(groups, single: bool = False) -> None:
        if single:
            faiss.omp_set_num_threads(1)  # OpenMP's thread count is per thread: set it in each pool thread
        for lo, hi in groups:
            list_no = int(lists[lo])
            if list_no < 0:
                continue
            vectors, ids = _list_vectors(invlists, list_no, dim)
            if vectors is None:
                continue
            rows = order[lo:hi]
            kk = min(k, len(vectors))
            sims, local = faiss.knn(q[rows // probe], vectors, kk, metric=faiss.METRIC_INNER_PRODUCT)
            cand_sims[rows, :kk] = sims
            cand_ids[rows, :kk] = ids[local]

    groups = list(zip(starts, ends))
    threads = faiss.omp_get_max_threads()
    if threads > 1 and len(groups) >= 4 * threads:
        # The per-list products are small: one Python thread per core, each running FAISS
        # single-threaded, keeps the cores busier than FAISS's own threads would (FAISS
        # releases the GIL). The rows each thread writes are disjoint.
        from concurrent.futures import ThreadPoolExecutor

        faiss.omp_set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda part: scan(part, single=True), [groups[i::threads] for i in range(threads)]))
        finally:
            faiss.omp_set_num_threads(threads)
    else:
        scan(groups)
    scanned = time.perf_counter()
    cand_sims = cand_sims.reshape(n, probe * k)
    cand_ids = cand_ids.reshape(n, probe * k)
    best = np.lexsort((-cand_ids, -cand_sims), axis=1)[:, :k]
    sims, ids = np.take_along_axis(cand_sims, best, 1), np.take_along_axis(cand_ids, best, 1)
    if timings is not None:
        for key, seconds in (("coarse", coarse - clock), ("scan", scanned - coarse),
                             ("merge", time.perf_counter() - scanned)):
            timings[key] = timings.get(key, 0.0) + seconds
    return sims, ids


def gather_rows(blocks, ids: np.ndarray) -> np.ndarray:
    """float32 rows ``ids`` (sorted, unique, >= 0) of a side stored as consecutive ``(offset,
    vectors)`` blocks (e.g. memory-mapped shard files), reading only the blocks that hold them."""
    ids = np.asarray(ids, dtype=np.int64)
    out = None
    for offset, block in blocks:
        lo, hi = np.searchsorted(ids, [offset, offset + len(block)])
        if hi > lo:
            if out is None:
                out = np.empty((len(ids), block.shape[1]), dtype=np.float32)
            out[lo:hi] = block[ids[lo:hi] - offset]
        if hi == len(ids):
            break
    if out is None:
        raise ValueError("no rows gathered")
    return out


def refine(queries: np.ndarray, cand_ids: np.ndarray, rows_of, k: int,
           chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidates (``cand_ids``, -1 = none), best ``k``
    first (ties: higher id first). ``rows_of(sorted unique ids)`` returns their vectors.

    IVF-PQ similarities are approximate (on the 1M bench, top-4 agreement with exact search fell
    to 0.46 and margins were biased), so its candidates are re-scored with the stored vectors: the
    neighbourhood means and margins then use exact similarities."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    cand_ids = np.asarray(cand_ids, dtype=np.int64)
    n = len(q)
    valid = cand_ids >= 0
    uniq = np.unique(cand_ids[valid])
    vectors = rows_of(uniq) if len(uniq) else np.empty((0, q.shape[1]), np.float32)
    sims = np.full(cand_ids.shape, -np.inf, dtype=np.float32)
    for lo in range(0, n, chunk):
        ids = cand_ids[lo:lo + chunk]
        ok = valid[lo:lo + chunk]
        pos = np.searchsorted(uniq, np.where(ok, ids, 0))
        pos = np.minimum(pos, max(len(uniq) - 1, 0))
        if len(uniq):
            block = np.einsum("nd,nkd->nk", q[lo:lo + chunk], vectors[pos], dtype=np.float32)
            sims[lo:lo + chunk] = np.where(ok, block, -np.inf)
    order = np.lexsort((-cand_ids, -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(cand_ids, order, 1)


def search_side(index, spec: IndexSpec, queries: np.ndarray, k: int, blocks,
                timings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kNN step's search of a side's IVF index: :func:`search` with the spec's ``nprobe``; for
    IVF-PQ, ``REFINE_FACTOR * k`` candidates re-scored by :func:`refine` with the side's stored
    vectors, ``blocks`` (``(offset, vectors)``, kept open by the caller). ``-1`` ids where fewer
    than ``k`` were found (see :func:`mark_missing`)."""
    if spec.kind != "ivfpq":
        return search(index, queries, k, spec.nprobe, timings)
    _, cand = search(index, queries, min(int(index.ntotal), k * REFINE_FACTOR), spec.nprobe, timings)
    clock = time.perf_counter()
    result = refine(queries, cand, lambda rows: gather_rows(blocks, rows), k)
    if timings is not None:
        timings["refine"] = timings.get("refine", 0.0) + time.perf_counter() - clock
    return result


def mark_missing(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An IVF search returns id -1 where the probed lists hold fewer than k vectors (FAISS may put
    ``-FLT_MAX`` or anything else beside it): mark every such slot as missing, id -1 and
    similarity ``-inf``, which :func:`miner.core.mining.knn_mean` leaves out of the neighbourhood mean
    and :func:`miner.core.mining.best_candidates` never picks (a query with no neighbour at all gets no
    candidate). Nothing is made up: a missing neighbour is never replaced by a real id."""
    ids = np.asarray(ids, dtype=np.int64)
    sims = np.asarray(sims, dtype=np.float32)
    missing = ids < 0
    if not missing.any():
        return sims, ids
    sims, ids = sims.copy(), ids.copy()
    sims[missing] = -np.inf
    ids[missing] = -1
    return sims, ids



def read_index(path: str, nprobe: int):
    """Load a built index, memory-mapped where FAISS allows (its inverted lists stay on disk)."""
    import faiss

    try:
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        index = faiss.read_index(path)
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index
