"""k-nearest-neighbour search for margin mining, on plain arrays (step 1 and 2 of :mod:`miner.core.mining`):
exact inner-product search (``faiss.IndexFlatIP``) on whole arrays or on target blocks streamed
from disk, search of a prebuilt index, and the neighbourhood means. :mod:`miner.core.mining` re-exports
these functions as part of its API.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from miner.runtime.errors import UsageError


def check_k(k: Any) -> int:
    """``k`` as an int, or UsageError when it is not an integer >= 1 (shared by the kNN and mining math)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise UsageError(f"k must be an integer >= 1, got {k!r}")
    if k < 1:
        raise UsageError(f"k must be >= 1, got {k}")
    return int(k)


def as_matrix(a: Any, name: str) -> np.ndarray:
    """Convert ``a`` to a C-contiguous 2-D float32 array, or raise UsageError."""
    try:
        arr = np.ascontiguousarray(a, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name} must be a numeric 2-D array: {exc}") from None
    if arr.ndim != 2:
        raise UsageError(f"{name} must be a 2-D array (n, dim), got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise UsageError(f"{name} must have a dimension >= 1, got shape {arr.shape}")
    return arr


def _empty_knn(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)


def knn_index(queries: np.ndarray, index: faiss.Index, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search an already built faiss index for the ``k`` best neighbours of each query.

    Args:
        queries: ``(n, dim)`` query embeddings; converted to contiguous float32.
        index: a faiss index holding the other side's vectors (e.g. one loaded
            from disk).  Its metric decides what "best" means; for margin mining
            it should be inner product on L2-normalised vectors.
        k: number of neighbours wanted, ``>= 1``; clipped to ``index.ntotal``.

    Returns:
        ``(sims, ids)``: float32 and int64 arrays of shape ``(n, k')`` with
        ``k' = min(k, index.ntotal)``, best neighbour first.  Empty inputs give
        empty arrays of that shape.  An approximate index may return id ``-1``
        for missing neighbours (an exact flat index never does).

    Raises:
        UsageError: ``k < 1``, queries not a 2-D numeric array, or the query
            dimension differs from the index's.
    """
    k = check_k(k)
    q = as_matrix(queries, "queries")
    if q.shape[1] != index.d:
        raise UsageError(
            f"queries have dimension {q.shape[1]} but the index has dimension {index.d}"
        )
    k_eff = min(k, int(index.ntotal))
    n = q.shape[0]
    if n == 0 or k_eff == 0:
        return _empty_knn(n, k_eff)
    sims, ids = index.search(q, k_eff)
    return np.asarray(sims, dtype=np.float32), np.asarray(ids, dtype=np.int64)


def knn_blocks(queries: np.ndarray, blocks, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` over target vectors that arrive in blocks.

    Args:
        queries: ``(n, dim)`` query embeddings.
        blocks: iterable of ``(offset, vectors)``: consecutive ``(m_i, dim)`` slices of the target
            side, ``offset`` being the id of their first row (e.g. memory-mapped shard files).
        k: number of neighbours wanted, ``>= 1``; clipped to the total number of target rows.

    Returns:
        ``(sims, ids)`` as :func:`knn` gives on the concatenated blocks: best first, ties broken
        as FAISS breaks them (the higher id first), so the result does not depend on the block
        sizes. Memory holds the queries, one block and ``n * k`` results -- never the whole target
        side.
    """
    k = check_k(k)
    q = as_matrix(queries, "queries")
    n = q.shape[0]
    best_sims = np.empty((n, 0), dtype=np.float32)
    best_ids = np.empty((n, 0), dtype=np.int64)
    for offset, block in blocks:
        v = as_matrix(np.asarray(block), "vectors")
        if v.shape[0] == 0:
            continue
        if v.shape[1] != q.shape[1]:
            raise UsageError(f"queries have dimension {q.shape[1]} but vectors have dimension {v.shape[1]}")
        sims, ids = knn(q, v, k)
        ids = ids + int(offset)
        sims = np.concatenate([best_sims, sims], axis=1)
        ids = np.concatenate([best_ids, ids], axis=1)
        # Sort by descending similarity, then descending id (lexsort: the last key is primary).
        order = np.lexsort((-ids, -sims), axis=1)[:, :k]
        best_sims = np.take_along_axis(sims, order, axis=1)
        best_ids = np.take_along_axis(ids, order, axis=1)
    return np.ascontiguousarray(best_sims, dtype=np.float32), np.ascontiguousarray(best_ids, dtype=np.int64)


def knn(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-nearest-neighbour search (``faiss.IndexFlatIP``).

    Args:
        queries: ``(n, dim)`` query embeddings (L2-normalised for cosine).
        vectors: ``(m, dim)`` embeddings searched; same ``dim`` as ``queries``.
            Both are converted to contiguous float32.
        k: number of neighbours wanted, ``>= 1``; clipped to ``m``.

    Returns:
        ``(sims, ids)``: float32 and int64 arrays of shape ``(n, min(k, m))``,
        best neighbour first.  ``n == 0`` or ``m == 0`` gives empty arrays of
        that shape.

    Raises:
        UsageError: ``k < 1``, an input that is not a 2-D numeric array, or
            mismatched dimensions.
    """
    k = check_k(k)
    q = as_matrix(queries, "queries")
    v = as_matrix(vectors, "vectors")
    if q.shape[1] != v.shape[1]:
        raise UsageError(
            f"queries have dimension {q.shape[1]} but vectors have dimension {v.shape[1]}"
        )
    index = faiss.IndexFlatIP(v.shape[1])
    if v.shape[0]:
        index.add(v)
    sims, ids = knn_index(q, index, k)
    sims = exact_sims(q, v, ids, sims)
    # Order as knn_blocks merges: descending similarity, then descending id.
    order = np.lexsort((-ids, -sims), axis=1)
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


#: Queries per chunk of :func:`exact_sims` (bounds its float64 working set: rows x k x dim x 8 bytes).
EXACT_CHUNK = 2048


def exact_sims(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """The inner products of the found neighbours, recomputed one pair at a time in float64.

    FAISS computes similarities with a matrix product whose rounding depends on how many queries
    and vectors it is given together (differences of ~5e-7 between a side searched in shards of
    200 and of 10,000), so the same pair would score differently with another shard size.
    Recomputing each found pair on its own makes a similarity a function of the two vectors only;
    the neighbours found (and their order, but for exact ties) are FAISS's. ``-inf`` (missing) slots
    stay as they are. Returns float32 ``(n, k)``.
    """
    out = np.array(sims, dtype=np.float32, copy=True)
    if out.size == 0:
        return out
    ids = np.asarray(ids, dtype=np.int64)
    present = ids >= 0
    for lo in range(0, ids.shape[0], EXACT_CHUNK):
        chunk = ids[lo:lo + EXACT_CHUNK]
        q = queries[lo:lo + EXACT_CHUNK].astype(np.float64)
        v = vectors[np.where(chunk >= 0, chunk, 0)].astype(np.float64)
        dots = np.einsum("nd,nkd->nk", q, v, optimize=False)
        out[lo:lo + EXACT_CHUNK] = np.where(present[lo:lo + EXACT_CHUNK], dots.astype(np.float32),
                                            out[lo:lo + EXACT_CHUNK])
    return out


def knn_mean(sims: np.ndarray) -> np.ndarray:
    """Mean similarity of each query to its neighbours (``x2y_mean`` / ``y2x_mean``).

    Args:
        sims: ``(n, k)`` similarities from :func:`knn`, ``k >= 1``.  ``-inf`` marks a missing
            neighbour (an approximate index found fewer than ``k``;
            :func:`miner.core.indexes.mark_missing`): it is left out, so the mean is over the present
            neighbours only.

    Returns:
        float64 array of shape ``(n,)``; ``nan`` for a query with no neighbour at all.

    Raises:
        UsageError: ``sims`` is not 2-D, or has no columns while having rows.
    """
    s = np.asarray(sims)
    if s.ndim != 2:
        raise UsageError(f"sims must be a 2-D array (n, k), got shape {s.shape}")
    if s.shape[1] == 0:
        if s.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        raise UsageError("sims has no neighbours (k' = 0): the other side is empty")
    s = s.astype(np.float64, copy=False)
    present = ~np.isneginf(s)
    if present.all():
        return s.mean(axis=1)
    count = present.sum(axis=1)
    total = np.where(present, s, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
