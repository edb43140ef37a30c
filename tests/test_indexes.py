"""miner.core.indexes: the index choice, IVF building from shards, and the list-by-list IVF search,
checked against FAISS's own search and exact search (real FAISS, no mocks)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from miner.core import indexes, mining
from miner.runtime.errors import UsageError


def unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng, n, dim, centres):
    c = unit(rng, centres, dim)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def shards_of(x, size):
    return [x[i:i + size] for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def ivf_data():
    rng = np.random.default_rng(7)
    x = clustered(rng, 12_000, 32, 150)
    q = clustered(rng, 2_500, 32, 150)
    spec = indexes.choose_index(len(x), 32, "ivf", nlist=64, nprobe=6)
    train = indexes.training_sample(shards_of(x, 1000), len(x), indexes.train_size(spec, len(x)))
    index = indexes.build_ivf(spec, 32, train, shards_of(x, 1000))
    return x, q, spec, index


def test_auto_choice_by_size():
    assert indexes.choose_index(indexes.FLAT_MAX).kind == "flat"
    big = indexes.choose_index(1_000_000, 512)
    assert (big.kind, big.nlist, big.nprobe) == ("ivf", 4096, 16)
    assert indexes.choose_index(indexes.IVF_FLAT_MAX + 1, 512).kind == "ivfpq"
    assert indexes.choose_index(200_000, 512).nlist == 2048
    # nlist never exceeds what the side can train (39 points per list), nprobe never exceeds nlist
    small = indexes.choose_index(500, 8, "ivf")
    assert small.nlist <= 500 // indexes.TRAIN_PER_LIST and small.nprobe <= small.nlist
    assert indexes.default_nprobe(1024) == 16 and indexes.default_nprobe(16384) == 64


def test_choice_overrides_and_errors():
    spec = indexes.choose_index(10, 64, "ivfpq", nlist=8, nprobe=3, m=16)
    assert (spec.kind, spec.nlist, spec.nprobe, spec.m, spec.name) == ("ivfpq", 8, 3, 16, "ivf8pq16")
    with pytest.raises(UsageError, match="unknown index"):
        indexes.choose_index(10, 8, "hnsw")
    with pytest.raises(UsageError, match="nprobe"):
        indexes.choose_index(10, 8, "ivf", nprobe=0)
    with pytest.raises(UsageError, match="divide"):
        indexes.choose_index(10, 100, "ivfpq", m=64)


def test_training_sample_reads_shards_and_is_deterministic():
    x = np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4)
    a = indexes.training_sample(shards_of(x, 64), 1000, 100, seed=3)
    b = indexes.training_sample(shards_of(x, 300), 1000, 100, seed=3)
    assert a.shape == (100, 4) and np.array_equal(a, b)
    rows = (a[:, 0] / 4).astype(int)
    assert len(set(rows.tolist())) == 100 and np.array_equal(x[rows], a)
    assert len(indexes.training_sample(shards_of(x, 64), 1000, 5000)) == 1000


def test_built_index_holds_every_row_once(ivf_data):
    x, _q, spec, index = ivf_data
    ivf = faiss.extract_index_ivf(index)
    assert index.ntotal == len(x) and ivf.nlist == spec.nlist
    ids = np.concatenate([faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy()
                          for i in range(ivf.nlist) if ivf.invlists.list_size(i)])
    assert np.array_equal(np.sort(ids), np.arange(len(x)))


@pytest.mark.parametrize("nprobe", [1, 3, 6, 20])
def test_list_search_equals_faiss_search(ivf_data, nprobe):
    _x, q, _spec, index = ivf_data
    faiss.extract_index_ivf(index).nprobe = nprobe
    want_sims, want_ids = index.search(q, 5)
    sims, ids = indexes.search(index, q, 5, nprobe)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    # Same neighbours; only exact ties may be ordered differently.
    same = ids == want_ids
    tied = np.isclose(sims, want_sims, atol=1e-6)
    assert same.mean() > 0.999 and np.all(same | tied)


def test_list_search_threads_small_batches_ties_and_quiet(capfd):
    """The big_batch_search wrapper: the same result with one FAISS thread (sequential) and several
    (its computation-thread pool), and for a batch too small for its bucket sort (FAISS's own search
    then); exact ties ordered higher id first; the index's nprobe left alone; nothing printed."""
    rng = np.random.default_rng(4)
    x = unit(rng, 3000, 16)
    x[[100, 1700, 2999, 42]] = x[5]  # five identical vectors: exact ties
    index = indexes.build_ivf(indexes.IndexSpec("ivf", 8, 0, 2), 16, x, [x])
    ivf = faiss.extract_index_ivf(index)
    q = np.concatenate([x[[5, 42]], unit(rng, 400, 16)])
    threads = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one = indexes.search(index, q, 6, nprobe=2)
        faiss.omp_set_num_threads(3)
        three = indexes.search(index, q, 6, nprobe=2)
        small = indexes.search(index, q[:3], 6, nprobe=2)  # 3 x 2 (query, list) pairs <= 8 lists + 1
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(one[0], three[0]) and np.array_equal(one[1], three[1])
    assert np.array_equal(small[0], one[0][:3]) and np.array_equal(small[1], one[1][:3])
    assert one[1][:2, :5].tolist() == [[2999, 1700, 100, 42, 5]] * 2 and np.all(one[0][:2, :5] == one[0][0, 0])
    want_sims, want_ids = index.search(q, 6, params=faiss.SearchParametersIVF(nprobe=2))
    np.testing.assert_allclose(one[0], want_sims, atol=1e-6)
    assert np.array_equal(np.sort(one[1][2:], axis=1), np.sort(want_ids[2:], axis=1))
    assert ivf.nprobe == 1 and capfd.readouterr().out == ""


def test_list_search_probing_every_list_is_exact(ivf_data):
    x, q, spec, index = ivf_data
    sims, ids = indexes.search(index, q, 4, nprobe=spec.nlist)
    want_sims, want_ids = mining.knn(q, x, 4)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert (ids == want_ids).mean() > 0.999


def test_recall_grows_with_nprobe(ivf_data):
    x, q, _spec, index = ivf_data
    _, exact = mining.knn(q, x, 1)
    recall = [np.mean(indexes.search(index, q, 1, p)[1][:, 0] == exact[:, 0]) for p in (1, 4, 16, 64)]
    assert recall[0] < recall[1] < recall[2] <= recall[3] == 1.0 and recall[2] > 0.95


def test_search_of_memory_mapped_index_from_disk(ivf_data, tmp_path):
    _x, q, spec, index = ivf_data
    path = tmp_path / "side.faiss"
    faiss.write_index(index, str(path))
    loaded = indexes.read_index(str(path), spec.nprobe)
    assert faiss.extract_index_ivf(loaded).nprobe == spec.nprobe
    a = indexes.search(loaded, q[:300], 4)
    b = indexes.search(index, q[:300], 4, spec.nprobe)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])


def test_short_lists_give_missing_neighbours():
    rng = np.random.default_rng(1)
    x = unit(rng, 200, 8)
    spec = indexes.IndexSpec("ivf", 16, 0, 1)
    index = indexes.build_ivf(spec, 8, x, [x])
    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(16)])
    k = int(sizes.max()) + 3  # more than any single list holds
    sims, ids = indexes.search(index, x[:50], k, nprobe=1)
    assert np.all(ids[:, -3:] == -1) and np.all(np.isneginf(sims[:, -3:]))
    found = (ids >= 0).sum(axis=1)
    _, lists = ivf.quantizer.search(x[:50], 1)
    assert np.array_equal(found, sizes[lists[:, 0]])
    assert np.all(ids[:, 0] == np.arange(50))  # each vector finds itself first


def test_empty_queries_and_pq_fallback():
    rng = np.random.default_rng(2)
    x = unit(rng, 3000, 16)
    spec = indexes.choose_index(len(x), 16, "ivfpq", nlist=8, nprobe=8, m=4)
    index = indexes.build_ivf(spec, 16, x, [x])
    sims, ids = indexes.search(index, np.empty((0, 16), np.float32), 3)
    assert sims.shape == (0, 3) and ids.shape == (0, 3)
    s, i = indexes.search(index, x[:100], 3, nprobe=8)  # IVF-PQ: FAISS's own search
    assert faiss.extract_index_ivf(index).nprobe == 1  # the index's own setting is left alone
    faiss.extract_index_ivf(index).nprobe = 8
    assert np.array_equal(i, index.search(x[:100], 3)[1])
    assert np.mean(i[:, 0] == np.arange(100)) > 0.8


def test_gather_rows_reads_the_right_blocks():
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    blocks = [(i, x[i:i + 7].astype(np.float16)) for i in range(0, 50, 7)]
    ids = np.array([0, 6, 7, 20, 48, 49])
    np.testing.assert_array_equal(indexes.gather_rows(iter(blocks), ids), x[ids])


def test_refine_rescores_pq_candidates_exactly():
    rng = np.random.default_rng(5)
    x = clustered(rng, 20_000, 32, 200)
    q = x[:1000] + 0.4 * rng.standard_normal((1000, 32)).astype(np.float32) / np.sqrt(32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # noisy copies: a clear best neighbour each
    spec = indexes.choose_index(len(x), 32, "ivfpq", nlist=64, nprobe=64, m=8)
    index = indexes.build_ivf(spec, 32, x[:10_000], shards_of(x, 5000))
    exact_sims, exact_ids = mining.knn(q, x, 4)
    pq_sims, pq_ids = indexes.search(index, q, 4)
    _, cand = indexes.search(index, q, 4 * indexes.REFINE_FACTOR)
    cand[:3, -2:] = -1  # missing candidates stay missing
    sims, ids = indexes.refine(q, cand, lambda rows: x[rows], 4)
    # re-scored similarities are the true inner products of the ids returned
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", q, x[ids]), atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)
    def overlap(a):
        return np.mean([len(set(r) & set(e)) / 4 for r, e in zip(a.tolist(), exact_ids.tolist())])
    # wherever the true best is among the candidates, it comes first after re-scoring
    has_best = (cand == exact_ids[:, :1]).any(axis=1)
    assert has_best.mean() > 0.9 and np.all(ids[has_best, 0] == exact_ids[has_best, 0])
    assert np.mean(ids[:, 0] == exact_ids[:, 0]) > np.mean(pq_ids[:, 0] == exact_ids[:, 0]) + 0.1
    assert overlap(ids) > overlap(pq_ids) + 0.1
    assert np.abs(sims - exact_sims).mean() < np.abs(pq_sims - exact_sims).mean()
    # fewer candidates than k: the row ends with -1 / -inf
    s2, i2 = indexes.refine(q[:2], np.array([[5, -1, -1], [-1, -1, -1]]), lambda rows: x[rows], 2)
    assert i2[0, 0] == 5 and i2[0, 1] == -1 and np.isneginf(s2[1]).all()


def test_mark_missing_invents_no_neighbour():
    sims = np.array([[0.9, 0.5, -3.4e38], [-np.inf, -np.inf, -np.inf], [0.8, 0.7, 0.6]], np.float32)
    ids = np.array([[3, 7, -1], [-1, -1, -1], [1, 2, 4]])
    s, i = indexes.mark_missing(sims, ids)
    assert i.tolist() == [[3, 7, -1], [-1, -1, -1], [1, 2, 4]]
    assert np.isneginf(s[0, 2]) and np.isneginf(s[1]).all() and s[0, :2].tolist() == sims[0, :2].tolist()
    assert sims[0, 2] == np.float32(-3.4e38)  # the inputs are left alone


def near(rng, centre, n, spread=0.05):
    x = centre + spread * rng.standard_normal((n, len(centre))).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("margin", ["ratio", "distance", "absolute"])
def test_ivf_missing_neighbours_are_never_candidates(margin):
    """Real IVF index with two lists, one of them empty: the target side holds three sentences,
    all in list A. Sources 0-2 are their translations (near them, in list A), source 3 lies in
    list B. With nprobe 1 and k 4, sources 0-2 find 3 of 4 neighbours and source 3 none at all.
    The steps' sequence (search_side, mark_missing, knn_mean, best_candidates_with_decoy,
    retrieve) must give source 3 no candidate, and means over the present neighbours only."""
    rng = np.random.default_rng(3)
    dim = 8
    a, b = np.eye(dim, dtype=np.float32)[0], -np.eye(dim, dtype=np.float32)[0]
    train = np.concatenate([near(rng, a, 100, 0.3), near(rng, b, 100, 0.3)])
    y = near(rng, a, 3, 0.3)
    x = np.concatenate([y + 0.02 * rng.standard_normal(y.shape).astype(np.float32), near(rng, b, 1)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    spec = indexes.IndexSpec("ivf", 2, 0, 1)
    index = indexes.build_ivf(spec, dim, train, [y])
    ivf = faiss.extract_index_ivf(index)
    assert sorted(ivf.invlists.list_size(i) for i in range(2)) == [0, 3]  # one list is empty
    k = 4
    sims, ids = indexes.mark_missing(*indexes.search_side(index, spec, x, k, None))
    assert (ids[:3] >= 0).sum(axis=1).tolist() == [3, 3, 3] and (ids[3] == -1).all()
    assert np.isneginf(sims[ids < 0]).all()
    # the backward direction (target -> source), exact, as a flat side would be searched
    y2x_sim, y2x_ind = mining.knn(y, x, k)
    x2y_mean, y2x_mean = mining.knn_mean(sims), mining.knn_mean(y2x_sim)
    # means over the present neighbours only: the exact 3 neighbours of sources 0-2
    exact_sims, _ = mining.knn(x[:3], y, 3)
    np.testing.assert_allclose(x2y_mean[:3], exact_sims.astype(np.float64).mean(axis=1), rtol=1e-6)
    assert np.isnan(x2y_mean[3])
    fwd_best, fwd_scores, fwd_decoy = mining.best_candidates_with_decoy(sims, ids, x2y_mean, y2x_mean, margin)
    assert fwd_best[3] == -1 and np.isnan(fwd_scores[3]) and np.isnan(fwd_decoy[3])
    assert fwd_best[:3].tolist() == [0, 1, 2] and np.isfinite(fwd_scores[:3]).all()
    plain_best, plain_scores = mining.best_candidates(sims, ids, x2y_mean, y2x_mean, margin)
    assert plain_best.tolist() == fwd_best.tolist()
    np.testing.assert_array_equal(plain_scores, fwd_scores)
    # each decoy: the best margin among the 2 other present neighbours, with their own mean
    for row in range(3):
        others = [c for c in range(3) if ids[row, c] != fwd_best[row]]
        o_sims = sims[row, others].astype(np.float64)
        want = mining.apply_margin(o_sims, (o_sims.mean() + y2x_mean[ids[row, others]]) / 2, margin).max()
        assert fwd_decoy[row] == pytest.approx(want)
    # source 3 is every target's 4th neighbour: its unknown (nan) mean must not poison their scores
    bwd_best, bwd_scores = mining.best_candidates(y2x_sim, y2x_ind, y2x_mean, x2y_mean, margin)
    assert 3 in y2x_ind and np.isfinite(bwd_scores).all() and bwd_best.tolist() == [0, 1, 2]
    for mode in ("max", "intersect", "fwd", "bwd"):
        src, tgt, scores, _ = mining.retrieve(fwd_best, fwd_scores, bwd_best, bwd_scores, mode)
        assert np.isfinite(scores).all(), mode
        if mode != "bwd":
            assert 3 not in src.tolist(), mode  # no pair made up for the query without neighbours
        if mode in ("max", "intersect"):
            assert sorted(zip(src.tolist(), tgt.tolist())) == [(0, 0), (1, 1), (2, 2)], mode


def test_missing_neighbour_id_with_a_real_similarity_is_an_error():
    with pytest.raises(UsageError, match="ids"):
        mining.best_candidates(np.array([[0.5, -1.0]]), np.array([[0, -1]]), np.array([0.45]), np.ones(3), "ratio")


def test_search_side_refines_only_pq(ivf_data):
    x, q, spec, index = ivf_data
    timings: dict = {}
    flat_side = indexes.search_side(index, spec, q[:200], 4, blocks=None, timings=timings)
    assert np.array_equal(flat_side[1], indexes.search(index, q[:200], 4, spec.nprobe)[1])
    assert "refine" not in timings and timings["scan"] > 0
    pq = indexes.choose_index(len(x), 32, "ivfpq", nlist=16, nprobe=16, m=8)
    pq_index = indexes.build_ivf(pq, 32, x, shards_of(x, 4000))
    sims, ids = indexes.search_side(pq_index, pq, q[:200], 4, list(enumerate_blocks(x, 4000)), timings)
    stored = x.astype(np.float16).astype(np.float32)  # re-scored with the stored (float16) rows
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", q[:200], stored[ids]), atol=1e-5)
    assert timings["refine"] > 0


def enumerate_blocks(x, size):
    return [(i, x[i:i + size].astype(np.float16)) for i in range(0, len(x), size)]
