#!/usr/bin/env python3
"""How long ``--threshold auto`` takes to decide a cut, in process (no database, no workers).

Synthetic jobs of 20,000 and 1,000,000 one-to-one candidates (10% translations; decoys as a real job
has them: a translation's a draw of the non-translations' scores, a non-translation's a little below
its own score), each decided three times; the best time is reported. Goals (issue: "cheap"): the cut
of 20k candidates in <= 2 s and of 1M in <= 20 s. Exits 1 when a goal is missed.

Usage (from the repository root)::

    python bench/autocut_speed.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miner.core import autocut  # noqa: E402

GOALS = {20_000: 2.0, 1_000_000: 20.0}


def job(n: int, share: float = 0.1, seed: int = 0) -> autocut.CutInputs:
    from scipy import stats

    rng = np.random.default_rng(seed)
    n_t = int(n * share)
    neg = stats.skewnorm.rvs(2, 1.0, 0.12, n - n_t, random_state=rng)
    scores = np.r_[neg, rng.normal(1.5, 0.15, n_t)]
    decoys = np.r_[neg - rng.exponential(0.03, n - n_t), stats.skewnorm.rvs(2, 1.0, 0.12, n_t, random_state=rng)]
    ids = np.arange(n, dtype=np.int64)
    return autocut.CutInputs(scores=scores, direction=np.full(n, 3, np.int8), src=ids, tgt=ids, fwd_scores=scores,
                             bwd_scores=scores, fwd_decoy=decoys, bwd_decoy=decoys)


def main() -> int:
    ok = True
    for n, goal in GOALS.items():
        inputs = job(n)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            decision = autocut.decide(inputs, "ratio", 1.05)
            times.append(time.perf_counter() - started)
        best = min(times)
        ok &= best <= goal
        print(f"{n:>9,} candidates: {best:6.3f} s (goal <= {goal:g} s), cut {decision.value:.4f}, "
              f"{decision.evidence.get('rounds')} rounds, {n / best:,.0f} candidates/s")
    print(f"autocut speed: {'goals met' if ok else 'a goal missed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
