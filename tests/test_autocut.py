"""The automatic threshold (miner.core.autocut) on arrays: synthetic mixtures, real score distributions,
fallbacks, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from miner.core import autocut
from miner.faces.report import _threshold_rows
from miner.pipeline.threshold import threshold_warning

DATA = Path(__file__).parent / "data" / "mined_scores.npz"


def inputs(scores: np.ndarray, decoys: np.ndarray | None = None,
           lengths: tuple[np.ndarray, np.ndarray] | None = None) -> autocut.CutInputs:
    """One-to-one mutual candidates; each candidate's decoy given directly as both sentences' decoy;
    ``lengths``: the candidates' (source, target) sentence lengths."""
    n = len(scores)
    ids = np.arange(n, dtype=np.int64)
    src_len, tgt_len = lengths if lengths is not None else (None, None)
    return autocut.CutInputs(scores=np.asarray(scores, dtype=np.float64), direction=np.full(n, 3, np.int8),
                             src=ids, tgt=ids, fwd_scores=scores, bwd_scores=scores, fwd_decoy=decoys,
                             bwd_decoy=decoys, src_len=src_len, tgt_len=tgt_len)


def mixture(share: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-translations: right-skewed around 1.05-1.1; translations: normal at 1.5 (ratio margin).
    Decoys as a real job has them: a translation's is a draw of what a sentence without a
    translation scores (the non-translations' distribution), a non-translation's is its second
    best, a little below its own score. Returns scores, decoys, gold."""
    n_t = int(round(n * share))
    rng = np.random.default_rng(seed)
    neg = stats.skewnorm.rvs(2, 1.0, 0.12, n - n_t, random_state=rng)
    pos = stats.norm.rvs(1.5, 0.15, n_t, random_state=rng)
    decoys = np.r_[neg - rng.exponential(0.03, n - n_t), stats.skewnorm.rvs(2, 1.0, 0.12, n_t, random_state=rng)]
    return np.r_[neg, pos], decoys, np.r_[np.zeros(n - n_t, bool), np.ones(n_t, bool)]


def f1(scores: np.ndarray, gold: np.ndarray, n_gold: int, cut: float) -> float:
    keep = scores >= cut
    return 2 * int(gold[keep].sum()) / (int(keep.sum()) + n_gold)


def oracle(scores: np.ndarray, gold: np.ndarray, n_gold: int) -> tuple[float, float]:
    order = np.argsort(-scores)
    f = 2 * np.cumsum(gold[order]) / (np.arange(1, len(scores) + 1) + n_gold)
    i = int(np.argmax(f))
    return float(f[i]), float(scores[order][i])


def test_cut_lies_in_the_valley_of_a_bimodal_distribution():
    scores, decoys, gold = mixture(0.1)
    decision = autocut.decide(inputs(scores, decoys), "ratio", 1.05)
    assert decision.method == "auto"
    assert 1.2 < decision.value < 1.45
    best, _ = oracle(scores, gold, int(gold.sum()))
    # Within 8 F1 of the oracle (it cuts a little high: the translations' lower tail reaches below
    # the null's median, which the estimator of the share assumes it does not; docs/quality.md).
    assert f1(scores, gold, int(gold.sum()), decision.value) >= best - 0.08
    assert decision.evidence["share"] == pytest.approx(0.1, abs=0.035)


def test_cut_moves_with_the_share_of_translations():
    cuts = {share: autocut.decide(inputs(*mixture(share)[:2]), "ratio", 1.05).value for share in (0.03, 0.2, 0.5, 0.9)}
    # Rare translations need a higher cut (precision), common ones a lower cut (recall).
    assert cuts[0.03] > cuts[0.2] > cuts[0.5] > cuts[0.9]
    for share in (0.03, 0.5, 0.9):
        scores, _, gold = mixture(share)
        best, _ = oracle(scores, gold, int(gold.sum()))
        assert f1(scores, gold, int(gold.sum()), cuts[share]) >= best - 0.08, share


@pytest.mark.parametrize("case", ["un_es_sparse", "un_es_dense", "tatoeba_deu_1000", "tatoeba_fra_sparse_numpy"])
def test_real_scores_dense_and_sparse(case):
    """Real jobs (tests/data/README.md): UN es-en with 5% and 80% of the pairs kept, Tatoeba
    deu-eng, 1,000 German sentences against their 1,000 English partners + 5,000 distractors (95% of
    the candidates are translations), and a small sparse Tatoeba fra-eng job (42 translations among
    525 candidates)."""
    data = np.load(DATA)
    scores, decoys = data[f"{case}_scores"], data[f"{case}_decoys"]
    gold, n_gold = data[f"{case}_gold"], int(data[f"{case}_ngold"])
    decision = autocut.decide(inputs(scores, decoys), "ratio", 1.05)
    best, best_cut = oracle(scores, gold, n_gold)
    got = f1(scores, gold, n_gold, decision.value)
    fixed = f1(scores, gold, n_gold, 1.05)
    print(f"{case}: {decision.method} {decision.value:.3f} F1 {got:.3f}, oracle {best:.3f} at {best_cut:.3f}, "
          f"fixed 1.05 {fixed:.3f}")
    assert decision.method == "auto"
    if case.startswith("un_"):
        assert got >= best - 0.04
        assert decision.evidence["share"] == pytest.approx(gold.mean(), abs=0.05)
    if case == "un_es_sparse":
        assert got > fixed + 0.4  # 1.05 exports mostly non-translations on a sparse corpus
        assert decision.value > 1.25
    elif case == "un_es_dense":
        assert decision.value < 1.1
    elif case == "tatoeba_deu_1000":
        assert got >= best - 0.02 and decision.value < 1.2
    else:
        # 42 translations among 525: the estimate is noisy, and this draw is the shared bench's
        # worst (it counts about 3 times too many translations; docs/quality.md). Still twice
        # the fixed number's F1.
        assert got > 2 * fixed
        assert gold.mean() / 4 < decision.evidence["share"] < 4 * gold.mean()


def test_the_same_job_from_either_encoder_gets_the_same_cut():
    """tatoeba-fra-sparse (525 candidates, 42 translations) mined with the torch and with the numpy
    muse encoder: the scores differ by up to 2.5e-7. The cut is a smooth function of the scores, so
    it moves by about as much (a fitted mixture landed in other optima: 1.420 against 1.491 here,
    1.454 against 1.420 on another machine's scipy)."""
    data = np.load(DATA)
    torch_scores, numpy_scores = data["tatoeba_fra_sparse_torch_scores"], data["tatoeba_fra_sparse_numpy_scores"]
    assert 0 < np.abs(np.sort(torch_scores) - np.sort(numpy_scores)).max() < 1e-6
    decisions = [autocut.decide(inputs(data[f"tatoeba_fra_sparse_{tag}_scores"],
                                       data[f"tatoeba_fra_sparse_{tag}_decoys"]), "ratio", 1.05) for tag in ("torch", "numpy")]
    assert decisions[0].value == pytest.approx(decisions[1].value, abs=1e-5)
    assert decisions[0].evidence["above"] == decisions[1].evidence["above"]
    assert decisions[0].evidence["share"] == pytest.approx(decisions[1].evidence["share"], abs=1e-4)


@pytest.mark.parametrize("case", ["un_es_sparse", "un_es_dense", "tatoeba_deu_1000", "tatoeba_fra_sparse_numpy"])
def test_noise_of_1e6_moves_the_cut_by_less_than_1e4_and_keeps_the_export(case):
    """Every stored score (and decoy) moved by up to 1e-6 at random, five times: the cut stays
    within 1e-4 and the same candidates are exported."""
    data = np.load(DATA)
    scores, decoys = data[f"{case}_scores"], data[f"{case}_decoys"]
    base = autocut.decide(inputs(scores, decoys), "ratio", 1.05)
    kept = scores >= base.value
    for seed in range(5):
        rng = np.random.default_rng(seed)
        noisy_scores = scores + rng.uniform(-1e-6, 1e-6, scores.size)
        noisy_decoys = decoys + rng.uniform(-1e-6, 1e-6, decoys.size)
        got = autocut.decide(inputs(noisy_scores, noisy_decoys), "ratio", 1.05)
        assert got.value == pytest.approx(base.value, abs=1e-4), seed
        assert np.array_equal(noisy_scores >= got.value, kept), seed


def test_probability_is_monotone_in_the_score_and_matches_the_cut():
    scores, decoys, gold = mixture(0.2, seed=3)
    decision = autocut.decide(inputs(scores, decoys), "ratio", 1.05)
    p = decision.probability
    assert p.shape == scores.shape and np.all((p >= 0) & (p <= 1))
    order = np.argsort(scores)
    assert np.all(np.diff(p[order]) >= -1e-12)
    # Translations get high probabilities, non-translations low ones.
    assert p[gold].mean() > 0.8 and p[~gold].mean() < 0.1
    # The cut keeps the pairs whose probability is at least half the expected F1 (the F1-optimal rule).
    above = scores >= decision.value
    assert p[above].min() >= decision.evidence["f1"] / 2 - 0.05
    density = decision.evidence["density"]
    assert len(density["x"]) == len(density["null"]) == len(density["translation"]) == autocut.GRID
    # The two parts' expected counts add up to about the number of candidates.
    width = density["x"][1] - density["x"][0]
    total = (np.sum(density["null"]) + np.sum(density["translation"])) * width
    assert total == pytest.approx(len(scores), rel=0.05)


def test_deterministic_and_independent_of_order():
    scores, decoys, _ = mixture(0.15, seed=5)
    first = autocut.decide(inputs(scores, decoys), "ratio", 1.05)
    again = autocut.decide(inputs(scores.copy(), decoys.copy()), "ratio", 1.05)
    order = np.random.default_rng(1).permutation(scores.size)
    shuffled = autocut.decide(inputs(scores[order], decoys[order]), "ratio", 1.05)
    assert first.value == again.value == shuffled.value
    assert first.to_json() == again.to_json()


def test_scale_free_across_margins():
    """The same distribution on another scale (distance margin ~0-0.1) gives the same cut, rescaled."""
    scores, decoys, _ = mixture(0.2, seed=7)
    ratio = autocut.decide(inputs(scores, decoys), "ratio", 1.05).value
    distance = autocut.decide(inputs((scores - 1.0) / 10, (decoys - 1.0) / 10), "distance", 0.034).value
    assert distance == pytest.approx((ratio - 1.0) / 10, abs=1e-6)


@pytest.mark.parametrize(
    "scores, decoys, reason",
    [
        (np.linspace(1.0, 1.5, 20), np.linspace(0.9, 1.4, 20), "only 20 candidates"),
        (np.full(500, 1.2), np.full(500, 1.1), "all candidate scores are equal"),
        (np.linspace(1.0, 1.5, 500), None, "no decoys"),
        (np.linspace(1.0, 1.5, 500), np.full(500, np.nan), "only 0 decoy scores"),
        (np.r_[np.linspace(1.0, 1.2, 99), np.inf], np.linspace(0.9, 1.1, 100), "not finite"),
    ],
    ids=["few", "equal", "no-decoys", "nan-decoys", "inf"],
)
def test_degenerate_jobs_fall_back_to_the_fixed_default(scores, decoys, reason):
    decision = autocut.decide(inputs(scores, decoys), "ratio", 1.07)
    assert decision.method == "fallback"
    assert decision.value == 1.07
    assert reason in decision.reason
    assert decision.probability is None
    assert decision.to_json()["reason"] == decision.reason


@pytest.mark.slow
def test_a_million_candidates():
    scores, decoys, gold = mixture(0.1, n=1_000_000, seed=9)
    decision = autocut.decide(inputs(scores, decoys), "ratio", 1.05)
    assert decision.method == "auto" and decision.evidence["candidates"] == 1_000_000
    best, _ = oracle(scores, gold, int(gold.sum()))
    assert f1(scores, gold, int(gold.sum()), decision.value) >= best - 0.08


def test_a_cut_on_few_translations_is_marked_uncertain():
    """~40 translations among 800 candidates: the cut stands, marked uncertain (with its warning
    line); ~400 among 4,000, well apart from the rest: not marked, no warning."""
    few = autocut.decide(inputs(*mixture(0.05, n=800, seed=3)[:2]), "ratio", 1.05)
    assert few.method == "auto" and few.evidence["translations"] < autocut.FEW_TRANSLATIONS
    assert few.evidence["uncertain"] is True
    warning = threshold_warning(7, few.to_json())
    assert warning.startswith(f"job 7: the automatic threshold is uncertain here (about "
                              f"{few.evidence['translations']:.0f} estimated translations, expected F1 ")
    assert "miner calibrate 7 --gold SAMPLE --sample" in warning
    assert "uncertain cut" in dict(_threshold_rows(few.to_json()))
    many = autocut.decide(inputs(*mixture(0.1, n=4000, seed=3)[:2]), "ratio", 1.05)
    assert many.method == "auto" and many.evidence["translations"] > autocut.FEW_TRANSLATIONS
    assert many.evidence["f1"] > autocut.LOW_EXPECTED_F1
    assert many.evidence["uncertain"] is False and threshold_warning(7, many.to_json()) is None
    assert "uncertain cut" not in dict(_threshold_rows(many.to_json()))
    # Many translations, but overlapping the rest: a low expected F1 marks the cut on its own.
    rng = np.random.default_rng(3)
    neg = stats.skewnorm.rvs(2, 1.0, 0.12, 3400, random_state=rng)
    pos = stats.norm.rvs(1.25, 0.15, 600, random_state=rng)
    decoys = np.r_[neg - rng.exponential(0.03, 3400), stats.skewnorm.rvs(2, 1.0, 0.12, 600, random_state=rng)]
    overlap = autocut.decide(inputs(np.r_[neg, pos], decoys), "ratio", 1.05)
    assert overlap.evidence["translations"] > autocut.FEW_TRANSLATIONS
    assert overlap.evidence["f1"] < autocut.LOW_EXPECTED_F1 and overlap.evidence["uncertain"] is True
    fallback = autocut.fallback(inputs(np.linspace(1, 2, 10)), 1.05, "only 10 candidates")
    assert threshold_warning(7, fallback.to_json()).startswith("job 7: automatic threshold fell back")
