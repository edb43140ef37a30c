"""Tests of miner.core.mining against a plain-numpy reference of LASER's mine_bitexts.py."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from miner.core import mining
from miner.runtime.errors import UsageError
from miner.core.mining import Margin, Retrieval

MARGINS = [m.value for m in Margin]
RETRIEVALS = [r.value for r in Retrieval]
ALL_MODES = list(itertools.product(MARGINS, RETRIEVALS))

# Faiss works in float32, the reference in float64: decisions whose two sides are
# closer than FRAGILE (relative to the score size) are "near ties" the two may
# legitimately resolve differently, and a ratio margin whose denominator is below
# MIN_DENOMINATOR amplifies the float32 error beyond the 1e-5 tolerance.
FRAGILE = 1e-5
MIN_DENOMINATOR = 0.05


# --------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """Result of the reference implementation, plus how close it came to a tie."""

    pairs: list[tuple[int, int, float, int]]  # (src, tgt, score, direction), output order
    min_gap: float = np.inf  # smallest relative gap of any decision taken
    min_denominator: float = np.inf  # smallest |mean_avg| a ratio margin divided by
    scores: list[float] = field(default_factory=list)  # every candidate score (fwd + bwd)

    @property
    def robust(self) -> bool:
        """No decision sits so close to a tie that float32 rounding could flip it."""
        return self.min_gap > FRAGILE and self.min_denominator > MIN_DENOMINATOR


def _rel_gap(a: float, b: float) -> float:
    return abs(a - b) / max(1.0, abs(a), abs(b))


def reference_mine(x, y, k, margin, retrieval, threshold=None) -> Reference:
    """LASER's algorithm, written out with explicit loops (float64)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ref = Reference(pairs=[])
    gaps: list[float] = []
    denominators: list[float] = []

    sim = x @ y.T  # brute force, both directions

    def knn_ref(s, k):
        n, m = s.shape
        kk = min(m, k)
        sims = np.zeros((n, kk))
        ids = np.zeros((n, kk), dtype=np.int64)
        for r in range(n):
            order = np.argsort(-s[r], kind="stable")
            ids[r] = order[:kk]
            sims[r] = s[r, order[:kk]]
            if kk < m:  # which neighbours make the cut
                gaps.append(_rel_gap(s[r, order[kk - 1]], s[r, order[kk]]))
        return sims, ids

    x2y_sim, x2y_ind = knn_ref(sim, k)
    y2x_sim, y2x_ind = knn_ref(sim.T, k)
    x2y_mean = x2y_sim.mean(axis=1)
    y2x_mean = y2x_sim.mean(axis=1)

    def margin_fn(a, b):
        if margin == "absolute":
            return a
        if margin == "distance":
            return a - b
        if margin == "ratio":
            # ratio amplifies float32 error when the denominator is near 0
            denominators.append(abs(b))
            return a / b
        raise AssertionError(margin)

    def score_candidates(sims, ids, q_mean, t_mean):
        n, kk = sims.shape
        best = np.zeros(n, dtype=np.int64)
        best_score = np.zeros(n)
        for i in range(n):
            scores = np.zeros(kk)
            for c in range(kk):
                scores[c] = margin_fn(sims[i, c], (q_mean[i] + t_mean[ids[i, c]]) / 2)
            j = int(np.argmax(scores))
            best[i] = ids[i, j]
            best_score[i] = scores[j]
            for c in range(kk):
                if c != j:
                    gaps.append(_rel_gap(scores[j], scores[c]))
        return best, best_score

    fwd_best, fwd_scores = score_candidates(x2y_sim, x2y_ind, x2y_mean, y2x_mean)
    bwd_best, bwd_scores = score_candidates(y2x_sim, y2x_ind, y2x_mean, x2y_mean)
    ref.scores = list(fwd_scores) + list(bwd_scores)

    fwd_pairs = {(i, int(fwd_best[i])) for i in range(len(x))}
    bwd_pairs = {(int(bwd_best[j]), j) for j in range(len(y))}

    out: list[tuple[int, int, float, int]] = []
    if retrieval == "fwd":
        for i in range(len(x)):
            out.append((i, int(fwd_best[i]), float(fwd_scores[i]), 1))
    elif retrieval == "bwd":
        for j in range(len(y)):
            out.append((int(bwd_best[j]), j, float(bwd_scores[j]), 2))
    elif retrieval == "intersect":
        for i in range(len(x)):
            if bwd_best[fwd_best[i]] == i:
                out.append((i, int(fwd_best[i]), float(fwd_scores[i]), 3))
    elif retrieval == "max":
        cands = [(i, int(fwd_best[i]), float(fwd_scores[i])) for i in range(len(x))]
        cands += [(int(bwd_best[j]), j, float(bwd_scores[j])) for j in range(len(y))]
        # Conflicting candidates (distinct pairs sharing a side) must not nearly tie.
        for a, b in itertools.combinations(cands, 2):
            if (a[0], a[1]) != (b[0], b[1]) and (a[0] == b[0] or a[1] == b[1]):
                gaps.append(_rel_gap(a[2], b[2]))
        cands.sort(key=lambda c: (-c[2], c[0], c[1]))
        seen_src, seen_tgt = set(), set()
        for s, t, score in cands:
            if s not in seen_src and t not in seen_tgt:
                seen_src.add(s)
                seen_tgt.add(t)
                direction = (1 if (s, t) in fwd_pairs else 0) + (2 if (s, t) in bwd_pairs else 0)
                out.append((s, t, score, direction))
    else:
        raise AssertionError(retrieval)

    if threshold is not None:
        for p in out:
            gaps.append(_rel_gap(p[2], threshold))
        out = [p for p in out if p[2] >= threshold]
    out.sort(key=lambda p: (-p[2], p[0], p[1]))
    ref.pairs = out
    ref.min_gap = min(gaps, default=np.inf)
    ref.min_denominator = min(denominators, default=np.inf)
    return ref


# --------------------------------------------------------------------------- helpers


def embeddings(rng: np.random.Generator, n: int, dim: int, rho: float = 0.0) -> np.ndarray:
    """L2-normalised random embeddings whose pairwise cosines average about ``rho``."""
    v = rng.standard_normal((n, dim))
    if rho:
        common = np.zeros(dim)
        common[0] = np.sqrt(dim * rho / (1 - rho))
        v = v + common
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32)


def planted(rng: np.random.Generator, n_x: int, n_y: int, n_real: int, dim: int, noise: float):
    """x random; y holds noisy copies of ``n_real`` x rows among random rows, shuffled.

    Returns x, y and the planted (src, tgt) pairs.
    """
    x = embeddings(rng, n_x, dim, rho=0.2)
    y = embeddings(rng, n_y, dim, rho=0.2).astype(np.float64)
    srcs = rng.choice(n_x, size=n_real, replace=False)
    tgts = rng.choice(n_y, size=n_real, replace=False)
    y[tgts] = x[srcs] + noise * rng.standard_normal((n_real, dim))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y.astype(np.float32), set(zip(srcs.tolist(), tgts.tolist()))


def middle_threshold(ref: Reference) -> float:
    """A threshold halfway between two candidate scores, so it splits the pairs."""
    s = np.unique(np.asarray(ref.scores))
    if len(s) < 2:
        return float(s[0]) - 0.5
    mid = len(s) // 2
    return float((s[mid - 1] + s[mid]) / 2)


def assert_matches(got, ref: Reference) -> None:
    src, tgt, scores, direction = got
    assert src.dtype == np.int64 and tgt.dtype == np.int64
    assert scores.dtype == np.float64
    assert np.issubdtype(direction.dtype, np.integer)
    assert len(src) == len(tgt) == len(scores) == len(direction)
    # output order: descending score, ties by (src, tgt)
    order = np.lexsort((tgt, src, -scores))
    assert np.array_equal(order, np.arange(len(src)))

    got_pairs = sorted(zip(src.tolist(), tgt.tolist(), scores.tolist(), direction.tolist()))
    want_pairs = sorted(ref.pairs)
    assert [(s, t, d) for s, t, _, d in got_pairs] == [(s, t, d) for s, t, _, d in want_pairs]
    np.testing.assert_allclose(
        [p[2] for p in got_pairs], [p[2] for p in want_pairs], rtol=1e-5, atol=1e-5
    )


def check_all_modes(x, y, k, require_robust=True):
    """mine() == reference for every margin x retrieval, thresholds None and mid-range."""
    for margin, retrieval in ALL_MODES:
        ref = reference_mine(x, y, k, margin, retrieval)
        thresholds = [None, middle_threshold(ref)]
        for threshold in thresholds:
            ref = reference_mine(x, y, k, margin, retrieval, threshold)
            if require_robust:
                # the fixed test data must not sit on a near tie
                assert ref.robust, (margin, retrieval, threshold, ref)
            got = mining.mine(x, y, k=k, margin=margin, retrieval=retrieval, threshold=threshold)
            assert_matches(got, ref)


# --------------------------------------------------------------------------- mine vs reference


@pytest.mark.parametrize(
    "n_x, n_y, dim, k, rho, seed",
    [
        (50, 70, 16, 4, 0.3, 0),
        (70, 50, 32, 4, 0.3, 1),
        (60, 60, 64, 8, 0.2, 2),
        (50, 70, 24, 4, 0.0, 3),
        (40, 30, 16, 1, 0.3, 4),
    ],
)
def test_mine_matches_reference_random(n_x, n_y, dim, k, rho, seed):
    rng = np.random.default_rng(seed)
    x = embeddings(rng, n_x, dim, rho)
    y = embeddings(rng, n_y, dim, rho)
    check_all_modes(x, y, k)


@pytest.mark.parametrize("seed", [10, 11])
def test_mine_matches_reference_planted(seed):
    rng = np.random.default_rng(seed)
    x, y, real = planted(rng, n_x=60, n_y=70, n_real=40, dim=32, noise=0.1)
    check_all_modes(x, y, k=4)
    # the method recovers the planted translations
    for retrieval in ("max", "intersect"):
        src, tgt, _, _ = mining.mine(x, y, k=4, margin="ratio", retrieval=retrieval)
        found = set(zip(src.tolist(), tgt.tolist()))
        assert real <= found
        top = set(zip(src[: len(real)].tolist(), tgt[: len(real)].tolist()))
        assert top == real


def test_mine_planted_threshold_separates_real_pairs():
    rng = np.random.default_rng(12)
    x, y, real = planted(rng, n_x=80, n_y=80, n_real=50, dim=48, noise=0.1)
    src, tgt, scores, _ = mining.mine(x, y, k=4, margin="ratio", retrieval="max", threshold=1.3)
    assert set(zip(src.tolist(), tgt.tolist())) == real
    assert (scores >= 1.3).all()


@pytest.mark.parametrize(
    "n_x, n_y, k",
    [(3, 3, 10), (3, 8, 10), (8, 3, 10), (1, 1, 4), (1, 5, 4), (5, 1, 4), (1, 5, 1), (6, 9, 1)],
)
def test_mine_matches_reference_small_sides(n_x, n_y, k):
    rng = np.random.default_rng(n_x * 100 + n_y * 10 + k)
    # rho=0.5 keeps every cosine well away from 0 (a ratio denominator here)
    x = embeddings(rng, n_x, 16, rho=0.5)
    y = embeddings(rng, n_y, 16, rho=0.5)
    check_all_modes(x, y, k)


def test_one_by_one():
    x = embeddings(np.random.default_rng(5), 1, 8)
    y = embeddings(np.random.default_rng(6), 1, 8)
    cos = float(x[0] @ y[0])
    for retrieval in RETRIEVALS:
        src, tgt, scores, direction = mining.mine(x, y, k=4, margin="ratio", retrieval=retrieval)
        assert src.tolist() == [0] and tgt.tolist() == [0]
        assert scores[0] == pytest.approx(1.0)  # cos / ((cos + cos) / 2)
        assert direction.tolist() == [{"fwd": 1, "bwd": 2}.get(retrieval, 3)]
        src, tgt, scores, _ = mining.mine(x, y, k=4, margin="distance", retrieval=retrieval)
        assert scores[0] == pytest.approx(0.0, abs=1e-6)
        src, tgt, scores, _ = mining.mine(x, y, k=4, margin="absolute", retrieval=retrieval)
        assert scores[0] == pytest.approx(cos, abs=1e-6)


def test_empty_side_gives_empty_result():
    x = embeddings(np.random.default_rng(0), 4, 8)
    empty = np.zeros((0, 8), dtype=np.float32)
    for a, b in ((x, empty), (empty, x), (empty, empty)):
        for retrieval in RETRIEVALS:
            src, tgt, scores, direction = mining.mine(a, b, retrieval=retrieval)
            assert len(src) == len(tgt) == len(scores) == len(direction) == 0
            assert src.dtype == np.int64 and scores.dtype == np.float64


def test_enum_members_and_strings_are_equivalent():
    rng = np.random.default_rng(7)
    x, y = embeddings(rng, 20, 16, 0.3), embeddings(rng, 25, 16, 0.3)
    for margin, retrieval in itertools.product(Margin, Retrieval):
        a = mining.mine(x, y, margin=margin, retrieval=retrieval)
        b = mining.mine(x, y, margin=margin.value, retrieval=retrieval.value)
        for u, v in zip(a, b):
            assert np.array_equal(u, v)


def test_mine_accepts_float64_and_noncontiguous_input():
    rng = np.random.default_rng(8)
    x, y = embeddings(rng, 20, 16, 0.3), embeddings(rng, 25, 16, 0.3)
    a = mining.mine(x, y)
    b = mining.mine(np.asfortranarray(x.astype(np.float64)), y.astype(np.float64)[::1])
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


# --------------------------------------------------------------------------- sharding


def knn_both_ways(x: np.ndarray, y: np.ndarray, k: int):
    """(x2y_sim, x2y_ind, y2x_sim, y2x_ind, x2y_mean, y2x_mean) by exact search."""
    x2y_sim, x2y_ind = mining.knn(x, y, k)
    y2x_sim, y2x_ind = mining.knn(y, x, k)
    return x2y_sim, x2y_ind, y2x_sim, y2x_ind, mining.knn_mean(x2y_sim), mining.knn_mean(y2x_sim)


@pytest.mark.parametrize("margin", MARGINS)
def test_sharded_best_candidates_equal_unsharded(margin):
    rng = np.random.default_rng(20)
    x, y = embeddings(rng, 53, 32, 0.2), embeddings(rng, 41, 32, 0.2)
    k = 5
    x2y_sim, x2y_ind, y2x_sim, y2x_ind, x2y_mean, y2x_mean = knn_both_ways(x, y, k)
    full_fwd = mining.best_candidates(x2y_sim, x2y_ind, x2y_mean, y2x_mean, margin)
    full_bwd = mining.best_candidates(y2x_sim, y2x_ind, y2x_mean, x2y_mean, margin)

    def sharded(sims, ids, target_mean, bounds):
        best, scores = [], []
        for a, b in zip(bounds[:-1], bounds[1:]):
            # each shard only has its own rows of the kNN output
            bb, ss = mining.best_candidates(
                sims[a:b], ids[a:b], mining.knn_mean(sims[a:b]), target_mean, margin
            )
            best.append(bb)
            scores.append(ss)
        return np.concatenate(best), np.concatenate(scores)

    fwd = sharded(x2y_sim, x2y_ind, y2x_mean, [0, 10, 10, 30, 31, 53])
    bwd = sharded(y2x_sim, y2x_ind, x2y_mean, [0, 7, 20, 41])
    for got, want in ((fwd, full_fwd), (bwd, full_bwd)):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])

    for retrieval in RETRIEVALS:
        got = mining.retrieve(*fwd, *bwd, retrieval, threshold=None)
        want = mining.mine(x, y, k=k, margin=margin, retrieval=retrieval)
        for u, v in zip(got, want):
            np.testing.assert_array_equal(u, v)


def test_best_candidates_is_vectorised_formula():
    sims = np.array([[0.9, 0.8, 0.7], [0.5, 0.5, 0.1]], dtype=np.float32)
    ids = np.array([[2, 0, 1], [1, 0, 2]])
    qm = sims.astype(np.float64).mean(1)
    tm = np.array([0.9, 0.2, 0.95])
    best, scores = mining.best_candidates(sims, ids, qm, tm, "ratio")
    expected = sims.astype(np.float64) / ((qm[:, None] + tm[ids]) / 2)
    np.testing.assert_allclose(scores, expected.max(1))
    assert best.tolist() == [ids[0, expected[0].argmax()], ids[1, expected[1].argmax()]]
    assert best.dtype == np.int64 and scores.dtype == np.float64
    # ties: first column wins, like numpy.argmax
    best, _ = mining.best_candidates(
        np.array([[0.5, 0.5]]), np.array([[3, 1]]), np.array([0.5]), np.ones(4) * 0.5, "absolute"
    )
    assert best.tolist() == [3]


def test_best_candidates_rejects_out_of_range_ids():
    with pytest.raises(UsageError, match="ids"):
        mining.best_candidates(
            np.array([[0.5, 0.4]]), np.array([[0, -1]]), np.array([0.45]), np.ones(3), "ratio"
        )
    with pytest.raises(UsageError, match="ids"):
        mining.best_candidates(
            np.array([[0.5, 0.4]]), np.array([[0, 3]]), np.array([0.45]), np.ones(3), "ratio"
        )
    best, scores = mining.best_candidates(
        np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), np.zeros(0), np.ones(3), "ratio"
    )
    assert best.shape == scores.shape == (0,)


@pytest.mark.parametrize("margin", MARGINS)
def test_best_candidates_with_decoy_leaves_the_best_out(margin):
    """The best pick equals best_candidates'; the decoy is the best margin score among the other
    k' - 1 neighbours with the query's mean taken over those k' - 1 only (a plain Python loop),
    sharded or not; k' = 1 gives nan."""
    rng = np.random.default_rng(21)
    x, y = embeddings(rng, 37, 16, 0.3), embeddings(rng, 29, 16, 0.3)
    k = 4
    x2y_sim, x2y_ind, y2x_sim, y2x_ind, x2y_mean, y2x_mean = knn_both_ways(x, y, k)
    best, scores, decoy = mining.best_candidates_with_decoy(x2y_sim, x2y_ind, x2y_mean, y2x_mean, margin)
    want_best, want_scores = mining.best_candidates(x2y_sim, x2y_ind, x2y_mean, y2x_mean, margin)
    np.testing.assert_array_equal(best, want_best)
    np.testing.assert_array_equal(scores, want_scores)
    assert decoy.dtype == np.float64 and decoy.shape == (37,)
    for q in range(37):
        row = [float(mining.apply_margin(x2y_sim[q, c], (x2y_mean[q] + y2x_mean[x2y_ind[q, c]]) / 2, margin))
               for c in range(k)]
        top = int(np.argmax(row))
        assert row[top] == pytest.approx(scores[q], abs=1e-12)
        others = [c for c in range(k) if c != top]
        mean = sum(float(x2y_sim[q, c]) for c in others) / len(others)
        want = max(float(mining.apply_margin(x2y_sim[q, c], (mean + y2x_mean[x2y_ind[q, c]]) / 2, margin))
                   for c in others)
        assert decoy[q] == pytest.approx(want, abs=1e-9)
    parts = [mining.best_candidates_with_decoy(x2y_sim[a:b], x2y_ind[a:b], mining.knn_mean(x2y_sim[a:b]), y2x_mean,
                                               margin)
             for a, b in ((0, 10), (10, 11), (11, 37))]
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), decoy)
    one = mining.best_candidates_with_decoy(x2y_sim[:, :1], x2y_ind[:, :1], mining.knn_mean(x2y_sim[:, :1]), y2x_mean,
                                            margin)
    assert np.isnan(one[2]).all() and one[2].shape == (37,)
    empty = mining.best_candidates_with_decoy(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), np.zeros(0),
                                              np.ones(3), margin)
    assert [a.shape for a in empty] == [(0,), (0,), (0,)]
    with pytest.raises(UsageError, match="ids"):
        mining.best_candidates_with_decoy(np.array([[0.5, 0.4]]), np.array([[0, 3]]), np.array([0.45]), np.ones(3),
                                          margin)


def test_decoy_of_a_translation_is_a_non_translation_score():
    """A query whose best neighbour is its translation: the decoy is what it would score without
    it, i.e. its best score once the translation is removed from the other side."""
    rng = np.random.default_rng(5)
    y = embeddings(rng, 200, 32, 0.0)
    x = y[:20] + 0.05 * rng.standard_normal((20, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = 4
    x2y_sim, x2y_ind = mining.knn(x, y, k + 1)
    y2x_sim, _ = mining.knn(y, x, k)
    y2x_mean = mining.knn_mean(y2x_sim)
    best, _, decoy = mining.best_candidates_with_decoy(x2y_sim[:, :k], x2y_ind[:, :k], mining.knn_mean(x2y_sim[:, :k]),
                                                       y2x_mean, "ratio")
    assert (best == np.arange(20)).all()
    # Without the translation the neighbourhood is ranks 2..k (k-1 of them, as the decoy uses).
    sims, ids = x2y_sim[:, 1:k], x2y_ind[:, 1:k]
    want = mining.apply_margin(sims, (sims.mean(axis=1)[:, None] + y2x_mean[ids]) / 2, "ratio").max(axis=1)
    np.testing.assert_allclose(decoy, want, atol=1e-12)


# --------------------------------------------------------------------------- knn


def test_knn_matches_brute_force():
    rng = np.random.default_rng(30)
    q, v = embeddings(rng, 17, 24), embeddings(rng, 29, 24)
    sims, ids = mining.knn(q, v, 6)
    assert sims.shape == ids.shape == (17, 6)
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    full = q.astype(np.float64) @ v.T.astype(np.float64)
    want = np.argsort(-full, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, 1), atol=1e-6)


def test_knn_clips_k_and_handles_empty_inputs():
    rng = np.random.default_rng(31)
    q, v = embeddings(rng, 4, 8), embeddings(rng, 3, 8)
    sims, ids = mining.knn(q, v, 10)
    assert sims.shape == ids.shape == (4, 3)
    assert sorted(ids[0].tolist()) == [0, 1, 2]
    sims, ids = mining.knn(q[:0], v, 10)
    assert sims.shape == ids.shape == (0, 3)
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    sims, ids = mining.knn(q, v[:0], 2)
    assert sims.shape == ids.shape == (4, 0)


def test_knn_index_on_prebuilt_index_equals_knn():
    import faiss

    rng = np.random.default_rng(32)
    q, v = embeddings(rng, 12, 16), embeddings(rng, 20, 16)
    index = faiss.IndexFlatIP(16)
    index.add(v)
    a = mining.knn_index(q, index, 5)
    b = mining.knn(q, v, 5)
    # The same neighbours; knn recomputes their similarities pair by pair (last bits may differ).
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(UsageError, match="dimension"):
        mining.knn_index(embeddings(rng, 3, 8), index, 2)
    with pytest.raises(UsageError, match="k must be"):
        mining.knn_index(q, index, 0)


@pytest.mark.parametrize("k", [0, -1, -10])
def test_knn_k_below_one_raises(k):
    x = embeddings(np.random.default_rng(0), 3, 4)
    with pytest.raises(UsageError, match="k must be >= 1"):
        mining.knn(x, x, k)
    with pytest.raises(UsageError, match="k must be >= 1"):
        mining.mine(x, x, k=k)


@pytest.mark.parametrize("k", [1.5, "3", None, True])
def test_knn_k_not_an_integer_raises(k):
    x = embeddings(np.random.default_rng(0), 3, 4)
    with pytest.raises(UsageError, match="k must be"):
        mining.knn(x, x, k)


def test_knn_rejects_bad_shapes():
    rng = np.random.default_rng(0)
    with pytest.raises(UsageError, match="dimension"):
        mining.knn(embeddings(rng, 3, 4), embeddings(rng, 3, 5), 2)
    with pytest.raises(UsageError, match="2-D"):
        mining.knn(np.ones(4, dtype=np.float32), embeddings(rng, 3, 4), 2)
    with pytest.raises(UsageError, match="2-D"):
        mining.mine(embeddings(rng, 3, 4), np.ones((2, 3, 4)))
    with pytest.raises(UsageError, match="dimension"):
        mining.mine(embeddings(rng, 3, 4), embeddings(rng, 3, 6))
    with pytest.raises(UsageError, match="numeric"):
        mining.knn(np.array([["a", "b"]]), embeddings(rng, 3, 2), 1)


# --------------------------------------------------------------------------- margin / modes


def test_apply_margin_values():
    a = np.array([[0.8, 0.6], [0.4, 0.2]], dtype=np.float32)
    b = np.array([[0.5], [0.25]])
    np.testing.assert_array_equal(mining.apply_margin(a, b, "absolute"), a.astype(np.float64))
    np.testing.assert_allclose(mining.apply_margin(a, b, "distance"), a.astype(np.float64) - b)
    np.testing.assert_allclose(mining.apply_margin(a, b, Margin.RATIO), a.astype(np.float64) / b)
    for margin in MARGINS:
        out = mining.apply_margin(a, b, margin)
        assert out.dtype == np.float64 and out.shape == (2, 2)


@pytest.mark.parametrize("bad", ["cosine", "", "RATIO", None, 3])
def test_unknown_margin_raises(bad):
    x = embeddings(np.random.default_rng(0), 3, 4)
    with pytest.raises(UsageError, match="'ratio', 'distance', 'absolute'"):
        mining.apply_margin(np.ones(2), np.ones(2), bad)
    with pytest.raises(UsageError, match="unknown margin"):
        mining.best_candidates(np.ones((1, 1)), np.zeros((1, 1), int), np.ones(1), np.ones(1), bad)
    with pytest.raises(UsageError, match="unknown margin"):
        mining.mine(x, x, margin=bad)


@pytest.mark.parametrize("bad", ["both", "MAX", "", None])
def test_unknown_retrieval_raises(bad):
    x = embeddings(np.random.default_rng(0), 3, 4)
    with pytest.raises(UsageError, match="'max', 'intersect', 'fwd', 'bwd'"):
        mining.retrieve(np.zeros(1, int), np.ones(1), np.zeros(1, int), np.ones(1), bad)
    with pytest.raises(UsageError, match="unknown retrieval"):
        mining.mine(x, x, retrieval=bad)


def test_bad_threshold_raises():
    with pytest.raises(UsageError, match="threshold"):
        mining.retrieve(np.zeros(1, int), np.ones(1), np.zeros(1, int), np.ones(1), "max", "high")


# --------------------------------------------------------------------------- retrieve


def test_max_is_one_to_one_on_large_random_candidates():
    rng = np.random.default_rng(40)
    n_x, n_y = 3000, 2000
    fwd_best = rng.integers(0, n_y, n_x)
    bwd_best = rng.integers(0, n_x, n_y)
    fwd_scores = rng.random(n_x)
    bwd_scores = rng.random(n_y)
    src, tgt, scores, direction = mining.retrieve(fwd_best, fwd_scores, bwd_best, bwd_scores, "max")
    assert len(set(src.tolist())) == len(src)
    assert len(set(tgt.tolist())) == len(tgt)
    assert np.all(np.diff(scores) <= 0)
    # each taken pair is a real candidate, and its direction says which
    is_fwd = fwd_best[src] == tgt
    is_bwd = bwd_best[tgt] == src
    assert np.all(is_fwd | is_bwd)
    np.testing.assert_array_equal(direction, is_fwd * 1 + is_bwd * 2)


def test_max_output_is_one_to_one_on_embeddings():
    rng = np.random.default_rng(41)
    x, y = embeddings(rng, 120, 16, 0.3), embeddings(rng, 90, 16, 0.3)
    for margin in MARGINS:
        src, tgt, _, _ = mining.mine(x, y, k=4, margin=margin, retrieval="max")
        assert len(set(src.tolist())) == len(src)
        assert len(set(tgt.tolist())) == len(tgt)


def test_retrieve_max_ties_and_duplicates():
    # x0 -> y0 (0.9) and y0 -> x0 (0.9): the same pair proposed twice, kept once as "both".
    # x1 -> y1 (0.5), x2 -> y1 (0.5), y1 -> x2 (0.5): tie; (1, 1) sorts first and wins.
    fwd_best = np.array([0, 1, 1])
    fwd_scores = np.array([0.9, 0.5, 0.5])
    bwd_best = np.array([0, 2])
    bwd_scores = np.array([0.9, 0.5])
    src, tgt, scores, direction = mining.retrieve(fwd_best, fwd_scores, bwd_best, bwd_scores, "max")
    assert list(zip(src.tolist(), tgt.tolist())) == [(0, 0), (1, 1)]
    assert scores.tolist() == [0.9, 0.5]
    assert direction.tolist() == [3, 1]


def python_retrieve(fwd_best, fwd_scores, bwd_best, bwd_scores, retrieval, threshold=None):
    """The retrieval modes written out on Python lists, for tie-heavy comparisons."""
    fwd = [(i, int(t), float(s)) for i, (t, s) in enumerate(zip(fwd_best, fwd_scores))]
    bwd = [(int(s_), j, float(s)) for j, (s_, s) in enumerate(zip(bwd_best, bwd_scores))]
    fwd_pairs = {(s, t) for s, t, _ in fwd}
    bwd_pairs = {(s, t) for s, t, _ in bwd}
    if retrieval == "fwd":
        out = [(s, t, sc, 1) for s, t, sc in fwd]
    elif retrieval == "bwd":
        out = [(s, t, sc, 2) for s, t, sc in bwd]
    elif retrieval == "intersect":
        out = [(s, t, sc, 3) for s, t, sc in fwd if bwd_best[t] == s]
    else:
        out, seen_s, seen_t = [], set(), set()
        for s, t, sc in sorted(fwd + bwd, key=lambda c: (-c[2], c[0], c[1])):
            if s not in seen_s and t not in seen_t:
                seen_s.add(s)
                seen_t.add(t)
                out.append((s, t, sc, ((s, t) in fwd_pairs) + 2 * ((s, t) in bwd_pairs)))
    if threshold is not None:
        out = [p for p in out if p[2] >= threshold]
    return sorted(out, key=lambda p: (-p[2], p[0], p[1]))


@pytest.mark.parametrize("retrieval", RETRIEVALS)
def test_retrieve_with_many_ties_matches_python(retrieval):
    rng = np.random.default_rng(42)
    for _ in range(50):
        n_x, n_y = (int(v) for v in rng.integers(1, 12, 2))
        fwd_best = rng.integers(0, n_y, n_x)
        bwd_best = rng.integers(0, n_x, n_y)
        fwd_scores = rng.integers(0, 3, n_x).astype(float)  # lots of exact ties
        bwd_scores = rng.integers(0, 3, n_y).astype(float)
        for threshold in (None, 1.0):
            got = mining.retrieve(fwd_best, fwd_scores, bwd_best, bwd_scores, retrieval, threshold)
            want = python_retrieve(fwd_best, fwd_scores, bwd_best, bwd_scores, retrieval, threshold)
            assert list(zip(*(a.tolist() for a in got))) == want


def test_retrieve_modes_by_hand():
    fwd_best = np.array([1, 0, 1])
    fwd_scores = np.array([1.2, 1.05, 1.3])
    bwd_best = np.array([1, 2])
    bwd_scores = np.array([1.05, 1.3])
    r = lambda mode, thr=None: mining.retrieve(fwd_best, fwd_scores, bwd_best, bwd_scores, mode, thr)

    src, tgt, scores, direction = r("fwd")
    assert list(zip(src.tolist(), tgt.tolist())) == [(2, 1), (0, 1), (1, 0)]
    assert direction.tolist() == [1, 1, 1]
    src, tgt, scores, direction = r("bwd")
    assert list(zip(src.tolist(), tgt.tolist())) == [(2, 1), (1, 0)]
    assert direction.tolist() == [2, 2]
    src, tgt, scores, direction = r("intersect")
    assert list(zip(src.tolist(), tgt.tolist())) == [(2, 1), (1, 0)]
    assert direction.tolist() == [3, 3]
    src, tgt, scores, direction = r("max")
    assert list(zip(src.tolist(), tgt.tolist())) == [(2, 1), (1, 0)]
    assert direction.tolist() == [3, 3]
    # threshold is inclusive and applied after the greedy walk: (0, 1) stays blocked
    src, tgt, scores, _ = r("max", 1.05)
    assert list(zip(src.tolist(), tgt.tolist())) == [(2, 1), (1, 0)]
    src, tgt, scores, _ = r("max", 1.1)
    assert list(zip(src.tolist(), tgt.tolist())) == [(2, 1)]
    src, tgt, scores, _ = r("fwd", 1.2)
    assert list(zip(src.tolist(), tgt.tolist())) == [(2, 1), (0, 1)]


def test_retrieve_validates_inputs():
    with pytest.raises(UsageError, match="same length"):
        mining.retrieve(np.zeros(2, int), np.ones(3), np.zeros(1, int), np.ones(1), "fwd")
    with pytest.raises(UsageError, match="must lie in"):
        mining.retrieve(np.array([5]), np.ones(1), np.zeros(1, int), np.ones(1), "max")
    with pytest.raises(UsageError, match="must lie in"):
        mining.retrieve(np.array([0]), np.ones(1), np.array([0, 3]), np.ones(2), "intersect")
    with pytest.raises(UsageError, match="integers"):
        mining.retrieve(np.array([0.5]), np.ones(1), np.zeros(1, int), np.ones(1), "fwd")
    # fwd needs no backward side
    src, _, _, _ = mining.retrieve(np.array([0, 0]), np.ones(2), np.zeros(0, int), np.ones(0), "fwd")
    assert src.tolist() == [0, 1]


# --------------------------------------------------------------------------- property test


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(
    n_x=st.integers(1, 9),
    n_y=st.integers(1, 9),
    dim=st.integers(2, 12),
    k=st.integers(1, 12),
    margin=st.sampled_from(MARGINS),
    retrieval=st.sampled_from(RETRIEVALS),
    use_threshold=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_matches_reference(n_x, n_y, dim, k, margin, retrieval, use_threshold, seed):
    rng = np.random.default_rng(seed)
    x = embeddings(rng, n_x, dim, rho=0.3)
    y = embeddings(rng, n_y, dim, rho=0.3)
    threshold = None
    if use_threshold:
        threshold = middle_threshold(reference_mine(x, y, k, margin, retrieval))
    ref = reference_mine(x, y, k, margin, retrieval, threshold)
    assume(ref.robust)  # float32 vs float64 may resolve near ties differently

    got = mining.mine(x, y, k=k, margin=margin, retrieval=retrieval, threshold=threshold)
    src, tgt, scores, direction = got
    pairs = list(zip(src.tolist(), tgt.tolist()))
    assert len(set(pairs)) == len(pairs)
    assert all(0 <= s < n_x for s in src.tolist())
    assert all(0 <= t < n_y for t in tgt.tolist())
    assert set(direction.tolist()) <= {1, 2, 3}
    if threshold is not None:
        assert (scores >= threshold).all()
    if retrieval == "max":
        assert len(set(src.tolist())) == len(src) and len(set(tgt.tolist())) == len(tgt)
    assert_matches(got, ref)


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_knn_blocks_equals_one_shot_knn(block, k):
    """Streaming the target side block by block gives the same neighbours as one flat index."""
    rng = np.random.default_rng(block * 10 + k)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    vectors = rng.normal(size=(150, 24)).astype(np.float32)
    sims, ids = mining.knn(queries, vectors, k)
    blocks = ((start, vectors[start:start + block]) for start in range(0, len(vectors), block))
    bsims, bids = mining.knn_blocks(queries, blocks, k)
    assert bsims.shape == (40, k) and bids.dtype == np.int64
    np.testing.assert_array_equal(bids, ids)
    np.testing.assert_allclose(bsims, sims, rtol=1e-6)


def test_knn_blocks_clips_k_and_rejects_mismatched_dims():
    queries = np.eye(3, dtype=np.float32)
    sims, ids = mining.knn_blocks(queries, [(0, np.eye(3, dtype=np.float32)[:2])], 5)
    assert ids.shape == (3, 2)
    assert ids[0].tolist() == [0, 1] and ids[1].tolist() == [1, 0]
    with pytest.raises(UsageError):
        mining.knn_blocks(queries, [(0, np.ones((2, 4), dtype=np.float32))], 2)


def test_knn_similarities_do_not_depend_on_how_many_vectors_are_searched_together():
    """FAISS's blocked matrix product rounds by the shapes it is given (the same pair scored
    differently with shards of 200 and 10,000); knn's similarities are each pair's own float64 dot
    product, so the queries and targets can be split any way."""
    rng = np.random.default_rng(33)
    q, v = embeddings(rng, 300, 64), embeddings(rng, 700, 64)
    whole = mining.knn(q, v, 4)
    by_blocks = mining.knn_blocks(q, [(o, v[o:o + 90]) for o in range(0, 700, 90)], 4)
    by_query = [mining.knn(q[i:i + 7], v, 4) for i in range(0, 300, 7)]
    np.testing.assert_array_equal(whole[0], by_blocks[0])
    np.testing.assert_array_equal(whole[1], by_blocks[1])
    np.testing.assert_array_equal(whole[0], np.concatenate([s for s, _ in by_query]))
    expected = np.einsum("nd,nkd->nk", q.astype(np.float64), v[whole[1]].astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(whole[0], expected)
