"""miner.indexes: the index choice, IVF building from shards, and the list-by-list IVF search,
checked against FAISS's own search and exact search (real FAISS, no mocks)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from miner import indexes, mining
from miner.errors import UsageError


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


def test_fill_missing_repeats_the_last_real_neighbour():
    sims = np.array([[0.9, 0.5, -np.inf], [-np.inf, -np.inf, -np.inf], [0.8, 0.7, 0.6]], np.float32)
    ids = np.array([[3, 7, -1], [-1, -1, -1], [1, 2, 4]])
    s, i = indexes.fill_missing(sims, ids)
    assert i.tolist() == [[3, 7, 7], [0, 0, 0], [1, 2, 4]]
    np.testing.assert_array_equal(s, np.array([[0.9, 0.5, 0.5], [-1, -1, -1], [0.8, 0.7, 0.6]], np.float32))
    assert ids[0, 2] == -1  # the inputs are left alone


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
