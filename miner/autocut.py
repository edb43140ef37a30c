"""``--threshold auto``: a job picks its own cut from its own score distribution, with no gold.

Plain functions on arrays: no database, no Celery.  :func:`decide` takes what the finish step has
in memory (the one-to-one candidates, their sentences' lengths, and the per-sentence best and decoy
margin scores) and returns a :class:`Decision`: the cut, how it was found, the evidence, and a
per-candidate estimated probability of being a translation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

#: Fewer candidates than this: too few to fit a distribution, fall back to the fixed default.
MIN_CANDIDATES = 50


@dataclasses.dataclass(frozen=True)
class CutInputs:
    """Arrays from the finish step.

    Attributes:
        scores: float ``(n,)`` margin scores of the one-to-one candidates (what is stored).
        direction: int ``(n,)`` 1 forward, 2 backward, 3 both (as :func:`miner.mining.retrieve`).
        src: int ``(n,)`` source sentence ids of the candidates.
        tgt: int ``(n,)`` target sentence ids of the candidates.
        fwd_scores: float ``(n_src,)`` best margin score of each source sentence.
        bwd_scores: float ``(n_tgt,)`` best margin score of each target sentence.
        fwd_decoy: float ``(n_src,)`` decoy score of each source sentence: its best score without
            its best candidate (:func:`miner.mining.best_candidates_with_decoy`; ``nan`` with one
            neighbour only), or None when not available.
        bwd_decoy: the same for the target sentences, or None.
        src_len: int ``(n,)`` characters of each candidate's source sentence, or None.
        tgt_len: int ``(n,)`` characters of each candidate's target sentence, or None. With both,
            the fit models each pair's length ratio beside its score (see :func:`length_feature`).
    """

    scores: np.ndarray
    direction: np.ndarray
    src: np.ndarray
    tgt: np.ndarray
    fwd_scores: np.ndarray
    bwd_scores: np.ndarray
    fwd_decoy: np.ndarray | None = None
    bwd_decoy: np.ndarray | None = None
    src_len: np.ndarray | None = None
    tgt_len: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """The cut a job uses.

    Attributes:
        value: the threshold (pairs with ``score >= value`` are exported).
        method: ``auto`` (estimated from the job) or ``fallback`` (the fixed default, see ``reason``).
        reason: why auto fell back (one line), else None.
        evidence: JSON-ready details: estimated share of translations, estimated precision, recall
            and F1 at the cut, fitted components, and ``density`` (a grid of expected counts per
            unit score for the report: ``{"x": [...], "null": [...], "translation": [...]}``).
        probability: float ``(n,)`` estimated probability that each candidate is a translation
            (same order as ``CutInputs.scores``; from its score and, when the lengths were given,
            its length ratio), or None on fallback.
    """

    value: float
    method: str
    reason: str | None
    evidence: dict
    probability: np.ndarray | None

    def to_json(self) -> dict:
        """``{"value": ..., "method": ..., "reason": ..., **evidence}`` (JSON-ready)."""
        return {"value": self.value, "method": self.method, "reason": self.reason, **self.evidence}


def fallback(inputs: CutInputs, value: float, reason: str) -> Decision:
    """The fixed default, with the reason auto could not be used."""
    n = int(np.asarray(inputs.scores).size)
    return Decision(float(value), "fallback", reason, {"candidates": n, "fixed_default": float(value)}, None)


#: At most this many scores enter the fit (evenly spaced quantiles of the scores: deterministic).
MAX_FIT = 20_000
#: The translations' location must lie at least this many standard deviations of all scores above
#: the non-translations' (keeps the two parts in their roles; the ratio margin's bulk sd is ~0.15-0.25).
MIN_SEPARATION = 0.5
#: Fewer estimated translations than this: no second mode worth a cut.
MIN_TRANSLATIONS = 3.0
#: One mode only: two parts explain the scores no better than one skew-normal. BIC gain (BIC of one
#: part minus BIC of two) measured: one-mode normal samples of 5,000 scores -25 to -34 (8 seeds);
#: real jobs on the shared data -13 (Tatoeba deu dense, where 1.05 is within 2 F1 of the oracle)
#: and -5 to +866 for the others.
MIN_BIC_GAIN = -10.0
#: Starting shares of translations for the fit; the best likelihood wins.
START_SHARES = (0.05, 0.2, 0.5, 0.8, 0.95)
# The non-translations' part is a skew-t (heavier upper tail than a skew-normal: the best of many
# unrelated sentences, near-translations among them, decays about exponentially) with its degrees of
# freedom fitted in NU_BOUNDS, unless that fit takes more than half of the translations a
# skew-normal null leaves them (TAIL_GUARD): a heavy tail may take in the translations' lower
# part, not a small translations' mode (on a 525-candidate job with 9% translations an unguarded
# skew-t null took them all, cut 1.73).
NU_BOUNDS = (3.0, 60.0)
TAIL_GUARD = 0.5
GRID = 64
#: L-BFGS-B runs to a tighter convergence than scipy's defaults (ftol 2.2e-9, gtol 1e-5), and the
#: best fit restarts from its own result while that gains (at most RESTARTS times): with the
#: defaults a skew-t fit stopped wherever the likelihood was flat, so score changes of 2.5e-7 (the
#: numpy and the torch encoder) moved the cut of a 525-candidate job from 1.420 to 1.491 (F1 50.0 ->
#: 45.1); with these, every measured job gets the same cut from both encoders' scores.
FIT_OPTIONS = {"ftol": 1e-10, "gtol": 1e-6, "maxiter": 3000}
RESTARTS = 5
#: Where the non-translations' part may lie, in units of the decoy scores' interquartile range
#: around their median (see :func:`decoy_scores`): mean in [-0.1, +0.8], sd in [0.7, 1.7] IQRs.
ANCHOR_MEAN = (-0.1, 0.8)
ANCHOR_SD = (0.7, 1.7)
#: Second pass (see :func:`translation_decoys`): once the first fit says which candidates are
#: translations, their decoys (what each would score without its translation) are a sample of what
#: sentences without a translation score in this job. Measured with the gold (67 mined jobs): the
#: non-translations' mean lies 0.1 below to 0.5 above the gold translations' decoys' median (median
#: 0.09), their sd 0.79-1.22 of those decoys' interquartile range (median 0.98). The fit pushes the
#: non-translations' part as high and as narrow as allowed (into the translations' lower tail), so
#: its mean lies at most REFINE_MEAN[1] above that median and its sd at least REFINE_SD[0] of that
#: IQR, the typical values (from 0.75 to 0.95: 61 tuning-case jobs' mean gap 2.88 -> 2.41 F1).
REFINE_MEAN = (-0.15, 0.1)
REFINE_SD = (0.95, 1.2)
#: The second pass needs at least this many estimated translations (posterior-weighted): the
#: quartiles of fewer decoys are too noisy (from 50 on, tatoeba-deu-sparse, 49 translations, lost 4 F1).
REFINE_MIN_TRANSLATIONS = 100.0
#: Pair lengths (:func:`length_feature`): in each part the standardised log length ratio is a
#: Student-t with LENGTH_NU degrees of freedom (heavy tails: partial translations, list items), its
#: centre and scale fitted within LENGTH_BOUNDS (centre, scale of the non-translations, then of the
#: translations); the translations' scale may not exceed the non-translations' (a translation's
#: length follows its source's, an unrelated sentence's does not). Measured on the shared data with
#: the gold: the translations' ratios spread 2-4 times less than the non-translations', and within
#: each part the ratio hardly depends on the score (Spearman -0.2 to +0.1), so it is evidence the
#: scores do not already give. Where the score distribution alone leaves the share of translations
#: open (small sparse jobs: the likelihood varied by 2-8 units between 3% and 30%), the lengths say
#: how many candidates pair like translations: over 61 tuning-case jobs the mean gap to the oracle
#: went from 3.56 to 2.88 (docs/quality.md, "Pair lengths").
LENGTH_NU = 5.0
LENGTH_BOUNDS = ((-3.0, 3.0), (0.3, 6.0), (-3.0, 3.0), (0.05, 3.0))
#: Where the fit of the lengths starts (the same for every start).
LENGTH_START = (0.0, 1.5, 0.0, 0.5)


_NORM_PDF_C = math.sqrt(2 * math.pi)


def _skewnorm_pdf(z: np.ndarray, shape: float, loc: float, scale: float) -> np.ndarray:
    """``scipy.stats.skewnorm.pdf(z, shape, loc, scale)``, the same operations without the
    distribution framework's per-call overhead (about 0.1 ms, which a fit calls thousands of times)."""
    from scipy.special import ndtr

    x = (np.asarray(z, dtype=np.float64) - loc) / scale
    normal = np.exp(-x ** 2 / 2.0) / _NORM_PDF_C
    pdf = normal if shape == 0 else 2. * normal * ndtr(shape * x)
    return pdf / scale


def _skewt_pdf(z: np.ndarray, shape: float, loc: float, scale: float, nu: float) -> np.ndarray:
    """Azzalini's skew-t density (``2 t_nu(x) T_{nu+1}(shape x sqrt((nu+1)/(nu+x^2)))``)."""
    from scipy.special import gammaln, stdtr

    x = (np.asarray(z, dtype=np.float64) - loc) / scale
    log_c = gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * math.log(nu * math.pi)
    t_pdf = np.exp(log_c - (nu + 1) / 2 * np.log1p(x * x / nu))
    return 2.0 * t_pdf * stdtr(nu + 1, shape * x * np.sqrt((nu + 1) / (nu + x * x))) / scale


def _t_pdf(x: np.ndarray, centre: float, scale: float, nu: float) -> np.ndarray:
    """Student-t density with ``nu`` degrees of freedom, location ``centre``, scale ``scale``."""
    c = math.exp(math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2)) / math.sqrt(nu * math.pi) / scale
    u = (np.asarray(x, dtype=np.float64) - centre) / scale
    return c * (1.0 + u * u / nu) ** (-(nu + 1) / 2)


def length_feature(inputs: CutInputs) -> tuple[np.ndarray, float, float] | None:
    """Each candidate's log length ratio ``log((source chars + 1) / (target chars + 1))``,
    standardised by its median and 1.4826 times its median absolute deviation (the standard
    deviation when that is 0): ``(standardised, median, scale)``. None without lengths, or when
    every candidate has the same ratio. Scale-free: languages whose lengths differ (Chinese
    against English: a median ratio of 0.27) are centred like any other pair."""
    if inputs.src_len is None or inputs.tgt_len is None:
        return None
    src_len = np.asarray(inputs.src_len, dtype=np.float64)
    tgt_len = np.asarray(inputs.tgt_len, dtype=np.float64)
    n = np.asarray(inputs.scores).size
    if src_len.shape != (n,) or tgt_len.shape != (n,):
        raise ValueError(f"src_len and tgt_len must have one length per candidate ({n}), "
                         f"got {src_len.shape} and {tgt_len.shape}")
    ratio = np.log((np.maximum(src_len, 0) + 1) / (np.maximum(tgt_len, 0) + 1))
    centre = float(np.median(ratio))
    scale = 1.4826 * float(np.median(np.abs(ratio - centre)))
    if scale <= 1e-9:
        scale = float(ratio.std())
    if not math.isfinite(scale) or scale <= 1e-9:
        return None
    return (ratio - centre) / scale, centre, scale


def _skewt_moments(shape: float, loc: float, scale: float, nu: float) -> tuple[float, float]:
    b = math.sqrt(nu / math.pi) * math.exp(math.lgamma((nu - 1) / 2) - math.lgamma(nu / 2))
    d = shape / math.sqrt(1 + shape * shape)
    return loc + scale * b * d, scale * math.sqrt(max(nu / (nu - 2) - (b * d) ** 2, 1e-12))


def _null_pdf(z: np.ndarray, null: tuple, nu: float | None) -> np.ndarray:
    return _skewnorm_pdf(z, *null) if nu is None else _skewt_pdf(z, *null, nu)


def _null_moments(null: tuple, nu: float | None) -> tuple[float, float]:
    return _moments(*null) if nu is None else _skewt_moments(*null, nu)


def _moments(shape: float, loc: float, scale: float) -> tuple[float, float]:
    d = shape / math.sqrt(1 + shape * shape)
    return loc + scale * d * math.sqrt(2 / math.pi), scale * math.sqrt(1 - 2 * d * d / math.pi)


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Two parts on standardised scores ``z = (score - centre) / spread``: the non-translations a
    skew-normal (``nu`` None) or a skew-t with ``nu`` degrees of freedom, the translations a
    skew-normal; with ``length`` (fitted to scores and lengths), each part's standardised log
    length ratio a Student-t (``LENGTH_NU``) with ``(centre, scale)`` of the non-translations, then
    of the translations, and ``length_scale`` the feature's ``(median, scale)``
    (:func:`length_feature`)."""

    share: float  # weight of the translations' part
    null: tuple[float, float, float]  # (shape, loc, scale) of the non-translations
    trans: tuple[float, float, float]  # (shape, loc, scale) of the translations
    centre: float
    spread: float
    bic_gain: float = math.inf  # BIC of one skew-normal minus BIC of the two parts (> 0: two parts fit better)
    nu: float | None = None  # degrees of freedom of a skew-t null; None: skew-normal
    length: tuple[float, float, float, float] | None = None
    length_scale: tuple[float, float] | None = None

    def parts(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted densities (per unit score) of the two parts at ``scores``."""
        z = (np.asarray(scores, dtype=np.float64) - self.centre) / self.spread
        null = (1 - self.share) * _null_pdf(z, self.null, self.nu) / self.spread
        trans = self.share * _skewnorm_pdf(z, *self.trans) / self.spread
        return null, trans

    def posterior(self, scores: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """P(translation | score), made non-decreasing in the score (a higher score never makes a
        pair less likely to be a translation, whatever the tails of the fitted parts do); with
        ``lengths`` (standardised, :func:`length_feature`) and a fit that modelled them,
        P(translation | score, length ratio): those odds times the two parts' length-ratio density
        ratio (still non-decreasing in the score at a given length ratio)."""
        post = self._score_posterior(scores)
        if lengths is None or self.length is None:
            return post
        m0, s0, m1, s1 = self.length
        post = np.clip(post, 1e-12, 1 - 1e-12)
        odds = post / (1 - post) * (_t_pdf(lengths, m1, s1, LENGTH_NU) / _t_pdf(lengths, m0, s0, LENGTH_NU))
        return odds / (1 + odds)

    def _score_posterior(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        null, trans = self.parts(scores)
        with np.errstate(invalid="ignore", divide="ignore"):
            post = np.where(null + trans > 0, trans / (null + trans), (scores > self.centre).astype(float))
        # The density ratio of two fitted tails says little far from the data: below the
        # non-translations' mean the probability may only fall, above it only rise.
        order = np.argsort(scores, kind="stable")
        ranked = post[order]
        split = int(np.searchsorted(scores[order], self.mean("null")))
        if split < ranked.size:
            ranked[split:] = np.maximum.accumulate(ranked[split:])
            ranked[:split] = np.minimum.accumulate(np.r_[ranked[:split], ranked[split]][::-1])[::-1][:-1]
        else:
            ranked = np.minimum.accumulate(ranked[::-1])[::-1]
        post[order] = ranked
        return post

    def mean(self, which: str) -> float:
        """Mean score of a part (``null`` or ``trans``)."""
        moments = _null_moments(self.null, self.nu) if which == "null" else _moments(*self.trans)
        return self.centre + self.spread * moments[0]

    def component(self, which: str) -> dict:
        shape, loc, scale = self.null if which == "null" else self.trans
        heavy = which == "null" and self.nu is not None
        mean, sd = _null_moments(self.null, self.nu) if which == "null" else _moments(shape, loc, scale)
        return {
            "name": "non-translations" if which == "null" else "translations",
            "family": "skew-t" if heavy else "skew-normal",
            **({"nu": round(self.nu, 3)} if heavy else {}),
            "weight": round(1 - self.share if which == "null" else self.share, 6),
            "mean": round(self.centre + self.spread * mean, 6),
            "sd": round(self.spread * sd, 6),
            "shape": round(shape, 6),
            "loc": round(self.centre + self.spread * loc, 6),
            "scale": round(self.spread * scale, 6),
        }

    def length_parts(self) -> dict | None:
        """The two parts' length ratios as fitted (source chars / target chars: the median ratio
        and the factor that spans the middle half), or None when lengths were not modelled."""
        if self.length is None or self.length_scale is None:
            return None
        m0, s0, m1, s1 = self.length
        centre, scale = self.length_scale
        from scipy import stats

        q = float(stats.t.ppf(0.75, LENGTH_NU))
        return {"feature": "log((source chars + 1) / (target chars + 1))",
                "non-translations": {"median_ratio": round(math.exp(centre + scale * m0), 4),
                                     "quartile_factor": round(math.exp(scale * s0 * q), 4)},
                "translations": {"median_ratio": round(math.exp(centre + scale * m1), 4),
                                 "quartile_factor": round(math.exp(scale * s1 * q), 4)}}

    def ashman_d(self) -> float:
        m0, s0 = _null_moments(self.null, self.nu)
        m1, s1 = _moments(*self.trans)
        return math.sqrt(2) * abs(m1 - m0) / math.sqrt(s0 * s0 + s1 * s1)


def _fit_sample(scores: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """Indices of the candidates the fit uses, in score order (ties by length, so the sample does
    not depend on the candidates' order): all, or MAX_FIT at evenly spaced ranks."""
    order = np.argsort(scores, kind="stable") if lengths is None else np.lexsort((lengths, scores))
    if order.size <= MAX_FIT:
        return order
    return order[np.linspace(0, order.size - 1, MAX_FIT).round().astype(np.int64)]


def fit_mixture(scores: np.ndarray, null_anchor: tuple[float, float] | None = None,
                heavy_tail: bool = False, anchor_bounds: tuple[tuple[float, float], tuple[float, float]] = (
                    ANCHOR_MEAN, ANCHOR_SD), start: Mixture | None = None,
                lengths: tuple[np.ndarray, float, float] | None = None) -> Mixture:
    """Maximum-likelihood fit of two parts (non-translations low, translations high): skew-normal
    parts, or with ``heavy_tail`` a skew-t null whose degrees of freedom are fitted in ``NU_BOUNDS``.

    The scores are standardised by their median and standard deviation, so the same constraints
    serve every margin; the translations' location is kept ``MIN_SEPARATION`` above the
    non-translations'. With ``null_anchor`` (median, interquartile range of the decoys), the
    non-translations' mean lies within ``anchor_bounds[0]`` and its sd within ``anchor_bounds[1]``
    of it (in interquartile ranges). Several starting shares are tried, or only ``start`` (a fit of
    the same family to the same scores) when given; the best likelihood wins (deterministic).
    With ``lengths`` (:func:`length_feature`, one per score) each part also models the pairs'
    length ratios, and the two parts are fitted to scores and lengths together (the test of a
    second mode, ``bic_gain``, still compares the scores' likelihoods alone).
    """
    from scipy import optimize

    scores = np.asarray(scores, dtype=np.float64)
    ratios = None if lengths is None else np.asarray(lengths[0], dtype=np.float64)
    sample = _fit_sample(scores, ratios)
    x = scores[sample]
    dz = None if ratios is None else ratios[sample]
    centre = float(np.median(x))
    spread = float(x.std()) or 1.0
    z = (x - centre) / spread
    lo, hi = float(z.min()), float(z.max())
    anchor = None
    if null_anchor is not None:
        anchor = ((null_anchor[0] - centre) / spread, null_anchor[1] / spread)
    bound_mean, bound_sd = anchor_bounds

    def nll(p):
        w, ln, sn, an, lt, st, at = p[:7]
        nu = float(p[7]) if heavy_tail else None
        f_null = _null_pdf(z, (an, ln, sn), nu)
        f_trans = _skewnorm_pdf(z, at, lt, st)
        if dz is not None:
            m0, s0, m1, s1 = p[-4:]
            f_null = f_null * _t_pdf(dz, m0, s0, LENGTH_NU)
            f_trans = f_trans * _t_pdf(dz, m1, s1, LENGTH_NU)
        f = (1 - w) * f_null + w * f_trans
        mean_n, sd_n = _null_moments((an, ln, sn), nu)
        mean_t, sd_t = _moments(at, lt, st)
        # Roles: translations lie higher, and spread wider (their scores vary with translation
        # quality and length; a non-translation's score is a maximum over many sentences, which
        # concentrates). Measured on the shared data: sd 0.10-0.12 against 0.13-0.22 (ratio margin).
        penalty = 1e4 * max(0.0, ln + MIN_SEPARATION - lt) ** 2 + 1e4 * max(0.0, sd_n - sd_t) ** 2
        if dz is not None:
            penalty += 1e4 * max(0.0, p[-1] - p[-3]) ** 2
        if anchor is not None:
            a_med, a_iqr = anchor
            penalty += 1e4 * (max(0.0, a_med + bound_mean[0] * a_iqr - mean_n) ** 2
                              + max(0.0, mean_n - a_med - bound_mean[1] * a_iqr) ** 2
                              + max(0.0, bound_sd[0] * a_iqr - sd_n) ** 2
                              + max(0.0, sd_n - bound_sd[1] * a_iqr) ** 2)
        return -float(np.sum(np.log(f + 1e-300))) + penalty

    # Non-translations skew right (a maximum over many unrelated sentences: a long upper tail);
    # translations skew left (their lower tail is the partial and poor translations).
    bounds = [(0.002, 0.998), (lo - 2, hi), (0.1, 2.5), (0.0, 8.0), (lo, hi + 2), (0.1, 4.0), (-8.0, 0.0)]
    if start is not None:
        starts = [[start.share, start.null[1], start.null[2], start.null[0], start.trans[1], start.trans[2],
                   start.trans[0]] + ([start.nu] if heavy_tail else [])
                  + ([] if dz is None else list(start.length or LENGTH_START))]
    else:
        starts = []
        for w0 in START_SHARES:
            ln0 = float(np.quantile(z, max(0.02, (1 - w0) * 0.4)))
            lt0 = float(np.quantile(z, min(0.98, 1 - w0 * 0.4)))
            starts.append([w0, ln0, 0.5, 1.0, lt0, 1.0, -1.0] + [8.0] * heavy_tail
                          + ([] if dz is None else list(LENGTH_START)))
    all_bounds = bounds + [NU_BOUNDS] * heavy_tail + ([] if dz is None else list(LENGTH_BOUNDS))
    best = None
    for x0 in starts:
        x0 = [min(max(v, lo_b), hi_b) for v, (lo_b, hi_b) in zip(x0, all_bounds)]
        result = optimize.minimize(nll, x0, method="L-BFGS-B", bounds=all_bounds, options=FIT_OPTIONS)
        if best is None or result.fun < best.fun:
            best = result
    for _ in range(RESTARTS):
        # A restart drops L-BFGS-B's curvature estimate, which the penalties' kinks mislead.
        again = optimize.minimize(nll, best.x, method="L-BFGS-B", bounds=all_bounds, options=FIT_OPTIONS)
        if again.fun >= best.fun - 1e-6:
            break
        best = again
    w, ln, sn, an, lt, st, at = (float(v) for v in best.x[:7])
    nu = float(best.x[7]) if heavy_tail else None
    # One skew-normal alone, for the test of a second mode (BIC of one part against two, on the
    # scores alone).
    from scipy import stats

    shape1, loc1, scale1 = stats.skewnorm.fit(z, 1.0, loc=float(np.median(z)), scale=1.0)
    single = float(np.sum(stats.skewnorm.logpdf(z, shape1, loc1, scale1)))
    if dz is None:
        two = -float(best.fun)
    else:
        two = float(np.sum(np.log((1 - w) * _null_pdf(z, (an, ln, sn), nu) + w * _skewnorm_pdf(z, at, lt, st)
                                  + 1e-300)))
    bic_gain = 2 * (two - single) - 4 * math.log(z.size)
    length = None if dz is None else tuple(float(v) for v in best.x[-4:])
    return Mixture(w, (an, ln, sn), (at, lt, st), centre, spread, bic_gain, nu, length,
                   None if lengths is None else (float(lengths[1]), float(lengths[2])))


def decoy_scores(inputs: CutInputs) -> np.ndarray | None:
    """Each candidate's decoy: the best score its sentences would have without this pair.

    For a candidate ``(i, j)``, the source's competitor is its decoy score when ``j`` is its best
    target, else its own best score (another target); the same for the target; the decoy is the
    higher of the two. When the pair is a translation this is a draw from the scores that
    sentences without a translation get in this job: on the shared data the decoys' median lies
    within 0.1 below to 0.8 above the non-translations' mean, in units of the decoys' interquartile
    range, dense and sparse alike. None when the decoys were not stored.
    """
    if inputs.fwd_decoy is None or inputs.bwd_decoy is None:
        return None
    src = np.asarray(inputs.src, dtype=np.int64)
    tgt = np.asarray(inputs.tgt, dtype=np.int64)
    direction = np.asarray(inputs.direction, dtype=np.int64)
    fwd_decoy, bwd_decoy = np.asarray(inputs.fwd_decoy, float), np.asarray(inputs.bwd_decoy, float)
    src_side = np.where(direction & 1, fwd_decoy[src], np.asarray(inputs.fwd_scores, float)[src])
    tgt_side = np.where(direction & 2, bwd_decoy[tgt], np.asarray(inputs.bwd_scores, float)[tgt])
    return np.fmax(src_side, tgt_side)


def _anchor(decoys: np.ndarray | None) -> tuple[float, float] | None:
    """(median, interquartile range) of the finite decoys, or None when there are too few."""
    if decoys is None:
        return None
    finite = decoys[np.isfinite(decoys)]
    if finite.size < MIN_CANDIDATES:
        return None
    q1, median, q3 = (float(v) for v in np.quantile(finite, [0.25, 0.5, 0.75]))
    return (median, q3 - q1) if q3 > q1 else None


def translation_decoys(decoys: np.ndarray | None, posterior: np.ndarray) -> dict | None:
    """The decoys of the candidates that the first fit takes for translations: their median and
    interquartile range, each decoy weighted by its candidate's probability of being a translation,
    and the weight (estimated translations with a finite decoy). None when the weight is below
    ``REFINE_MIN_TRANSLATIONS`` or the quartiles coincide."""
    if decoys is None:
        return None
    finite = np.isfinite(decoys)
    x, w = np.asarray(decoys, float)[finite], np.asarray(posterior, float)[finite]
    weight = float(w.sum())
    if weight < REFINE_MIN_TRANSLATIONS:
        return None
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    at = (np.cumsum(w) - 0.5 * w) / weight
    q1, median, q3 = (float(np.interp(q, at, x)) for q in (0.25, 0.5, 0.75))
    return {"median": median, "iqr": q3 - q1, "weight": weight} if q3 > q1 else None


def _fit(scores: np.ndarray, anchor: tuple[float, float] | None,
         bounds: tuple[tuple[float, float], tuple[float, float]],
         starts: tuple[Mixture, Mixture] | None = None,
         lengths: tuple[np.ndarray, float, float] | None = None) -> tuple[Mixture, dict, tuple[Mixture, Mixture]]:
    """Both null families (see ``NU_BOUNDS``, ``TAIL_GUARD``): the mixture used, the choice, and
    both fits (skew-normal, skew-t), each started from ``starts`` when given."""
    light = fit_mixture(scores, anchor, anchor_bounds=bounds, start=starts[0] if starts else None, lengths=lengths)
    heavy = fit_mixture(scores, anchor, heavy_tail=True, anchor_bounds=bounds, start=starts[1] if starts else None,
                        lengths=lengths)
    mixture = heavy if TAIL_GUARD * light.share <= heavy.share <= light.share else light
    return mixture, {"chosen": "skew-t" if mixture is heavy else "skew-normal",
                     "share_skew_t": round(heavy.share, 4), "share_skew_normal": round(light.share, 4)}, (light, heavy)


def best_cut(scores: np.ndarray, posterior: np.ndarray) -> tuple[float, dict]:
    """The cut that maximises the expected F1 given each candidate's probability of being a
    translation: expected true pairs above t / (pairs above t + expected translations)."""
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], posterior[order]
    expected_tp = np.cumsum(p)
    exported = np.arange(1, s.size + 1)
    total = float(p.sum())
    f1 = 2 * expected_tp / (exported + total)
    # Ties: a cut keeps every candidate at its score, so only the last of a run of equal scores counts.
    last = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    tp = float(expected_tp[i])
    return float(s[i]), {
        "above": int(exported[i]),
        "translations": round(total, 1),
        "precision": round(tp / exported[i], 4),
        "recall": round(tp / total, 4) if total else None,
        "f1": round(float(f1[i]), 4),
    }


def decide(inputs: CutInputs, margin: str, fixed: float) -> Decision:
    """Pick the cut of one job (deterministic: the same inputs give the same cut).

    The scores of the one-to-one candidates are modelled as a mixture of two parts,
    non-translations (the low bulk with its right tail: a skew-t or a skew-normal, see
    ``TAIL_GUARD``) and translations (the high part with its left tail: a skew-normal), fitted by
    maximum likelihood, the non-translations' part anchored on the decoys; with the sentences'
    lengths, each part also models the pairs' length ratios (``LENGTH_NU``), fitted together with
    the scores. When that fit finds enough translations, a second fit anchors the
    non-translations on their decoys alone (:func:`translation_decoys`). Each candidate's
    probability of being a translation follows (from its score and its length ratio), and the cut
    is the score that maximises the F1 expected under those probabilities; it moves up as
    translations get rarer (sparse corpora) and down as they get commoner.

    Args:
        inputs: the job's candidates and per-sentence scores.
        margin: ``ratio``, ``distance`` or ``absolute`` (the fit is scale-free; recorded only).
        fixed: the model's fixed default threshold, used when the distribution does not allow an
            estimate (too few candidates, one mode only, all scores equal).
    """
    scores = np.asarray(inputs.scores, dtype=np.float64)
    n = int(scores.size)
    if n < MIN_CANDIDATES:
        return fallback(inputs, fixed, f"only {n} candidates (auto needs at least {MIN_CANDIDATES})")
    if not np.isfinite(scores).all():
        return fallback(inputs, fixed, "some candidate scores are not finite")
    if float(np.ptp(scores)) <= 1e-9 * max(1.0, float(np.abs(scores).max())):
        return fallback(inputs, fixed, "all candidate scores are equal")
    decoys = decoy_scores(inputs)
    anchor = _anchor(decoys)
    lengths = length_feature(inputs)
    mixture, family, first_fits = _fit(scores, anchor, (ANCHOR_MEAN, ANCHOR_SD), lengths=lengths)
    if mixture.share * n < MIN_TRANSLATIONS:
        return fallback(inputs, fixed, f"no second mode: about {mixture.share * n:.1f} translations estimated")
    if mixture.bic_gain < MIN_BIC_GAIN:
        return fallback(inputs, fixed, f"one mode only (one skew-normal explains the scores as well as two parts: "
                                       f"BIC gain {mixture.bic_gain:.1f} < {MIN_BIC_GAIN:g})")
    bic_gain = mixture.bic_gain
    # Second pass: the non-translations' part anchored on the first fit's translations' decoys.
    # The tests for a second mode above stay the first pass's (the tighter anchor lowers the
    # likelihood of two parts; it refines where the null lies, not whether there are two modes).
    refined = translation_decoys(decoys, mixture.posterior(scores))
    if refined is not None:
        # Started from the first fits (a refinement: five fresh starts cost five times as much).
        second, second_family, _ = _fit(scores, (refined["median"], refined["iqr"]), (REFINE_MEAN, REFINE_SD),
                                        first_fits, lengths)
        if second.share * n >= MIN_TRANSLATIONS:
            mixture, family = second, second_family
        else:
            refined = None
    posterior = mixture.posterior(scores, None if lengths is None else lengths[0])
    value, at_cut = best_cut(scores, posterior)
    lo, hi = float(scores.min()), float(scores.max())
    xs = np.linspace(lo, hi, GRID)
    null, trans = mixture.parts(xs)
    evidence = {
        "margin": margin,
        "candidates": n,
        **at_cut,
        "share": round(mixture.share, 4),
        "separation": round(mixture.ashman_d(), 3),
        "bic_gain": round(bic_gain, 1),  # the first fit's, which the test for one mode used
        "null_family": family,
        "components": [mixture.component("null"), mixture.component("trans")],
        "length": mixture.length_parts(),
        "decoys": ({"median": round(anchor[0], 6), "iqr": round(anchor[1], 6)} if anchor else None),
        "translation_decoys": ({k: round(v, 6 if k != "weight" else 1) for k, v in refined.items()}
                               if refined else None),
        "density": {"x": xs.round(6).tolist(), "null": (n * null).round(4).tolist(),
                    "translation": (n * trans).round(4).tolist()},
        "fixed_default": fixed,
    }
    return Decision(value, "auto", None, evidence, posterior)
