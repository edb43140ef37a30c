"""``--threshold auto``: a job picks its own cut from its own score distribution, with no gold.

(Work in progress: the interface below is fixed; the estimator inside is being tuned.)

Plain functions on arrays: no database, no Celery.  :func:`decide` takes what the finish step has
in memory (the one-to-one candidates and the per-sentence best and second-best margin scores) and
returns a :class:`Decision`: the cut, how it was found, the evidence, and a per-candidate estimated
probability of being a translation.
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
        fwd_second: float ``(n_src,)`` second-best margin score of each source sentence among its
            k neighbours (``nan`` when it has one neighbour only), or None when not available.
        bwd_second: the same for the target sentences, or None.
    """

    scores: np.ndarray
    direction: np.ndarray
    src: np.ndarray
    tgt: np.ndarray
    fwd_scores: np.ndarray
    bwd_scores: np.ndarray
    fwd_second: np.ndarray | None = None
    bwd_second: np.ndarray | None = None


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
    n = int(np.asarray(inputs.scores).size)
    return Decision(float(value), "fallback", reason, {"candidates": n}, None)


def decide(inputs: CutInputs, margin: str, fixed: float) -> Decision:
    """Pick the cut of one job (deterministic: the same inputs give the same cut).

    Args:
        inputs: the job's candidates and per-sentence scores.
        margin: ``ratio``, ``distance`` or ``absolute``.
        fixed: the model's fixed default threshold, used when the distribution does not allow an
            estimate (too few candidates, one mode only, all scores equal).
    """
    scores = np.asarray(inputs.scores, dtype=np.float64)
    n = scores.size
    if n < MIN_CANDIDATES:
        return fallback(inputs, fixed, f"only {n} candidates (auto needs at least {MIN_CANDIDATES})")
    if not np.isfinite(scores).all():
        return fallback(inputs, fixed, "scores are not all finite")
    if float(scores.max() - scores.min()) < 1e-9:
        return fallback(inputs, fixed, "all candidate scores are equal")
    # Placeholder estimator (replaced by the tuned one): cut at the median.
    value = float(np.median(scores))
    prob = (scores >= value).astype(np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    xs = np.linspace(lo, hi, 64)
    evidence = {
        "candidates": int(n),
        "above": int((scores >= value).sum()),
        "share": 0.5,
        "precision": None,
        "recall": None,
        "f1": None,
        "components": [],
        "density": {"x": xs.tolist(), "null": [0.0] * 64, "translation": [0.0] * 64},
    }
    if math.isnan(value):
        return fallback(inputs, fixed, "no estimate")
    return Decision(value, "auto", None, evidence, prob)
