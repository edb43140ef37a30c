"""``--threshold auto``: a job picks its own cut from its own scores, with no gold.

The method is a two-groups model with an *empirical null*, in the spirit of target-decoy
estimation in proteomics and of Efron's local false discovery rate:

1. **The null from the job's own decoys.** A candidate's decoy is the best score its sentences
   would have without this pair (:func:`decoy_scores`). When the pair is a translation, the decoy
   is what a sentence *without* a translation scores in this job: a draw from the
   non-translations' distribution, measured in the same corpora, model and margin. So the
   non-translations' density ``f0`` is a kernel density of the decoys, each weighted by the
   probability that its candidate is a translation.
2. **How many non-translations.** First Storey's estimator: translations rarely score below the
   null's lower quantiles, so ``pi0 = F(l) / 0.3`` with ``l`` the 30% quantile of ``f0`` and ``F``
   the (smoothed) distribution of all scores (Storey 2002, with lambda = 0.3). Then, once there
   are probabilities, the moment version of the same idea: a non-translation's ``F0(score)`` is
   uniform, a translation's has the mean ``m1`` the probabilities give, so
   ``mean F0(s) = pi0 / 2 + (1 - pi0) m1`` (:func:`_moment_share`). It sees the translations'
   lower tail, which on dense data reaches well into the non-translations.
3. **Each candidate's probability** of being a translation is ``1 - pi0 f0(s) / f(s)`` (one minus
   the local false discovery rate), ``f`` the kernel density of all scores, made non-decreasing
   in the score and 0 below ``l``. Steps 1-3 repeat until the probabilities settle: the first
   round weighs every decoy alike, later rounds the translations' decoys.
4. **The cut** maximises the F1 expected under those probabilities (:func:`best_cut`).

Nothing is fitted by an optimiser: densities are binned kernel sums on a fixed grid, so the cut is
a smooth function of the scores (a perturbation of 1e-6 moves it by about as much), cheap (linear
in the candidates), and the same on every machine. Its constants: Silverman's bandwidth (a textbook
default), lambda = 0.3 (chosen leave-one-language-out among 0.3-0.6, with Storey's or the moment
share), half steps once the rounds start; docs/quality.md shows the choices and what the method
gets on each shared case.

Plain functions on arrays: no database, no Celery.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

#: Fewer candidates than this: too few for a density, fall back to the fixed default.
MIN_CANDIDATES = 50
#: Fewer estimated translations than this: no translations worth a cut.
MIN_TRANSLATIONS = 3.0
#: When the cut is marked uncertain (``evidence["uncertain"]``, with a warning): fewer estimated
#: translations than FEW_TRANSLATIONS, or an expected F1 at the cut below LOW_EXPECTED_F1. Where
#: translations are few, or overlap much with the rest, the null's upper tail decides the cut, and
#: the method can only take it from the translations' own decoys. On the 240 shared draws the mark
#: falls on all 70 draws of the small sparse Tatoeba cases and on no other: the cut missed the
#: gold-calibrated one by 2.9 F1 there on average, by 0.6 elsewhere (docs/quality.md, "When the cut
#: is uncertain"). Round numbers, not fitted: 100-120 translations with 70-75% mark the same 70 draws.
FEW_TRANSLATIONS = 100.0
LOW_EXPECTED_F1 = 0.75
#: Storey's lambda, as a quantile of the null: below it (almost) only non-translations score, and
#: every candidate's probability of a translation is 0. Chosen leave-one-language-out among 0.3-0.6
#: (docs/quality.md, "Constants"): the lower, the fewer translations fall below it.
NULL_QUANTILE = 0.3
#: Points of the density grid (the report draws every GRID_STEP-th of them).
BINS = 2048
GRID = 64
#: Rounds of steps 1-3 at most; they stop once no probability moves by more than TOLERANCE.
ROUNDS = 100
TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class CutInputs:
    """Arrays from the finish step.

    Attributes:
        scores: float ``(n,)`` margin scores of the one-to-one candidates (what is stored).
        direction: int ``(n,)`` 1 forward, 2 backward, 3 both (as :func:`miner.core.mining.retrieve`).
        src: int ``(n,)`` source sentence ids of the candidates.
        tgt: int ``(n,)`` target sentence ids of the candidates.
        fwd_scores: float ``(n_src,)`` best margin score of each source sentence.
        bwd_scores: float ``(n_tgt,)`` best margin score of each target sentence.
        fwd_decoy: float ``(n_src,)`` decoy score of each source sentence: its best score without
            its best candidate (:func:`miner.core.mining.best_candidates_with_decoy`; ``nan`` with one
            neighbour only), or None when not available.
        bwd_decoy: the same for the target sentences, or None.
        src_len, tgt_len: characters of each candidate's sentences, or None (accepted for callers
            of earlier versions; the method does not use them).
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
            and F1 at the cut, ``uncertain`` (few translations or a low expected F1), the share of
            non-translations, the score of the null's lambda quantile, the bandwidth, the rounds,
            and ``density`` (a grid
            of expected counts per unit score for the report:
            ``{"x": [...], "null": [...], "translation": [...]}``).
        probability: float ``(n,)`` estimated probability that each candidate is a translation
            (same order as ``CutInputs.scores``), or None on fallback.
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


def decoy_scores(inputs: CutInputs) -> np.ndarray | None:
    """Each candidate's decoy: the best score its sentences would have without this pair.

    For a candidate ``(i, j)``, the source's competitor is its decoy score when ``j`` is its best
    target, else its own best score (another target); the same for the target; the decoy is the
    higher of the two. When the pair is a translation this is a draw from the scores that
    sentences without a translation get in this job. None when the decoys were not stored.
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


def bandwidth(scores: np.ndarray) -> float:
    """Silverman's rule of thumb, ``0.9 min(sd, IQR / 1.34) n^(-1/5)`` (the sd when the IQR is 0)."""
    q1, q3 = np.quantile(scores, [0.25, 0.75])
    spread = min(float(scores.std()), float(q3 - q1) / 1.34) or float(scores.std())
    return 0.9 * spread * scores.size ** -0.2


@dataclasses.dataclass(frozen=True)
class Grid:
    """A fixed grid of ``BINS`` bin centres over ``[lo, hi]`` and a Gaussian kernel of width ``h``."""

    lo: float
    hi: float
    h: float

    @property
    def step(self) -> float:
        return (self.hi - self.lo) / BINS

    @property
    def x(self) -> np.ndarray:
        return self.lo + self.step * (np.arange(BINS) + 0.5)

    def density(self, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Kernel density of ``values`` (optionally weighted) on the grid: the values binned
        linearly between the two nearest centres (no jump when a value moves a little), then
        convolved with the kernel. Integrates to 1 over the grid (zeros when the weights are 0)."""
        pos = np.clip((np.asarray(values, float) - self.lo) / self.step - 0.5, 0, BINS - 1)
        left = np.minimum(pos.astype(np.int64), BINS - 2)
        frac = pos - left
        w = np.ones(pos.size) if weights is None else np.asarray(weights, float)
        counts = np.bincount(left, w * (1 - frac), BINS) + np.bincount(left + 1, w * frac, BINS)
        reach = int(math.ceil(4 * self.h / self.step))
        offsets = np.arange(-reach, reach + 1) * self.step / self.h
        kernel = np.exp(-0.5 * offsets ** 2)
        dens = np.convolve(counts, kernel / kernel.sum(), mode="same")
        total = float(dens.sum()) * self.step
        return dens / total if total > 0 else dens

    def at(self, curve: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``curve`` (on the grid) read at ``values`` (linear interpolation)."""
        return np.interp(values, self.x, curve)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The two-groups estimate: the share of non-translations, the null's and all scores' densities
    on the grid, the probability of a translation on the grid, the score of the null's lambda
    quantile (below it every probability is 0), the rounds."""

    pi0: float
    null: np.ndarray
    total: np.ndarray
    probability: np.ndarray
    low: float
    rounds: int


def estimate(scores: np.ndarray, decoys: np.ndarray, grid: Grid) -> Estimate:
    """Steps 1-3 of the module docstring, repeated until the probabilities settle. ``decoys`` has
    one value per candidate (``nan``: none); each decoy is weighted by the probability that *its
    candidate* is a translation."""
    finite = np.isfinite(decoys)
    decoys = decoys[finite]
    total = grid.density(scores)
    x = grid.x
    total_cdf = np.cumsum(total) * grid.step
    total_cdf /= total_cdf[-1]
    weights = np.ones(decoys.size)
    probability = None
    tail = []
    for rounds in range(1, ROUNDS + 1):
        null = grid.density(decoys, weights)
        cdf = np.cumsum(null) * grid.step
        cdf /= cdf[-1]
        low = float(np.interp(NULL_QUANTILE, cdf, x))  # Storey's lambda, as a score
        if probability is None:
            # Storey: below ``low`` only non-translations. The share of scores below it is read
            # off their smoothed distribution, not counted: a count jumps when one score crosses.
            pi0 = min(1.0, float(np.interp(low, x, total_cdf)) / NULL_QUANTILE)
        else:
            pi0 = _moment_share(scores, grid.at(cdf, scores), grid.at(probability, scores), pi0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lfdr = np.where(total > 0, np.minimum(1.0, pi0 * null / total), 1.0)
        probability = _monotone(1.0 - lfdr, x, low, grid.h)
        new = grid.at(probability, scores[finite])
        # Half steps after the first rounds: the fixed point is the same, the path does not
        # oscillate between a null that takes too many decoys and one that takes too few.
        step = new if rounds <= 5 else 0.5 * (weights + new)
        moved = float(np.max(np.abs(step - weights))) if weights.size else 0.0
        weights = step
        if moved < TOLERANCE:
            break
        if rounds > ROUNDS // 2:  # the second half of the rounds, kept in case they do not settle
            tail.append((pi0, null, probability, low))
    else:
        # No fixed point within ROUNDS (seen on a job with ~5 translations among 500 candidates,
        # where a handful of decoys make the null and the rounds keep circling): the average of the
        # second half's estimates, which moves smoothly with the scores where the last round does not.
        pi0 = float(np.mean([t[0] for t in tail]))
        null = np.mean([t[1] for t in tail], axis=0)
        probability = np.mean([t[2] for t in tail], axis=0)
        low = float(np.mean([t[3] for t in tail]))
    return Estimate(pi0, null, total, probability, low, rounds)


def _moment_share(scores: np.ndarray, null_cdf: np.ndarray, probability: np.ndarray, previous: float) -> float:
    """The share of non-translations from the mean of ``F0(score)`` over all candidates.

    A non-translation's ``F0(score)`` is uniform (mean 1/2); a translation's has the mean ``m1``
    that the current probabilities give. So ``mean F0(s) = pi0 / 2 + (1 - pi0) m1``. Storey's
    estimator is the special case that puts every translation above lambda; this one counts the
    translations' lower tail where the probabilities see it (on dense data 5-10% of the
    translations score below the non-translations' median, and Storey's share took them for
    non-translations: 30% estimated where 19% are, in tatoeba-spa-dense)."""
    weight = float(probability.sum())
    if weight <= 0:
        return previous
    m1 = float((probability * null_cdf).sum()) / weight
    if m1 <= 0.5 + 1e-6:
        return previous
    return float(np.clip((m1 - float(null_cdf.mean())) / (m1 - 0.5), 0.0, 1.0))


def _monotone(p: np.ndarray, x: np.ndarray, low: float, h: float) -> np.ndarray:
    """Non-decreasing in the score: a higher score never makes a pair less likely a translation.
    Below the null's lambda quantile ``low`` 0, the assumption that Storey's estimator makes (and
    the density ratio of two kernel estimates says little in the far lower tail, where a non-zero
    value would also let the many low candidates' decoys into the null); the step to 0 is a ramp
    one bandwidth ``h`` wide, so that the probabilities move smoothly with ``low`` and the rounds
    settle instead of cycling."""
    ramp = np.clip((x - low) / h + 0.5, 0.0, 1.0)
    return np.maximum.accumulate(np.clip(p, 0.0, 1.0) * ramp)


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
    """Pick the cut of one job (deterministic, and smooth in the scores: see the module docstring).

    Args:
        inputs: the job's candidates and per-sentence scores and decoys.
        margin: ``ratio``, ``distance`` or ``absolute`` (the method is scale-free; recorded only).
        fixed: the model's fixed default threshold, used when the scores do not allow an estimate
            (too few candidates, no decoys, all scores equal, no translations found).
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
    if decoys is None:
        return fallback(inputs, fixed, "the job's scores have no decoys (scored by an older version: "
                                       "`miner retry` re-scores it)")
    finite = decoys[np.isfinite(decoys)]
    if finite.size < MIN_CANDIDATES:
        return fallback(inputs, fixed, f"only {finite.size} decoy scores (each sentence needs k >= 2 neighbours)")
    h = bandwidth(scores)
    if not h > 0:
        return fallback(inputs, fixed, "the candidate scores have no spread")
    lo = min(float(scores.min()), float(finite.min())) - 4 * h
    hi = max(float(scores.max()), float(finite.max())) + 4 * h
    grid = Grid(lo, hi, h)
    est = estimate(scores, decoys, grid)
    posterior = grid.at(est.probability, scores)
    if float(posterior.sum()) < MIN_TRANSLATIONS:
        return fallback(inputs, fixed, f"no translations found: about {posterior.sum():.1f} estimated")
    value, at_cut = best_cut(scores, posterior)
    every = BINS // GRID
    xs = grid.x[every // 2::every]
    null = n * est.pi0 * est.null[every // 2::every]
    trans = np.maximum(n * est.total[every // 2::every] - null, 0.0)
    evidence = {
        "margin": margin,
        "candidates": n,
        **at_cut,
        "uncertain": bool(posterior.sum() < FEW_TRANSLATIONS or at_cut["f1"] < LOW_EXPECTED_F1),
        "share": round(float(posterior.mean()), 4),
        "null_share": round(est.pi0, 4),
        "null_low": round(est.low, 6),
        "bandwidth": round(h, 6),
        "decoys": int(finite.size),
        "rounds": est.rounds,
        "density": {"x": xs.round(6).tolist(), "null": null.round(4).tolist(),
                    "translation": trans.round(4).tolist()},
        "fixed_default": fixed,
    }
    return Decision(value, "auto", None, evidence, posterior)
