#!/usr/bin/env python3
"""Variants of ``--threshold auto`` tried and rejected (2026-12-06), scored as ``threshold_offline.py ablate``.

Each variant changes one piece of :func:`miner.core.autocut.estimate` or of the cut, runs on every
draw of ``bench/threshold_cases.py DIR --seeds 1,...,9 --knn 8`` (24 cases x 10 draws; ``--knn`` keeps
the neighbours that the decoy variants need) and prints, per case, the mean over its draws of F1 at
the gold-calibrated cut minus F1 at the variant's cut, then per variant the mean, the max, the cases
over 2 F1 and the dense cases' worst loss to the fixed 1.05. ``lolo`` picks among the lower-tail
variants leave-one-language-out (the loss of ``threshold_offline.py lolo``) and scores each language
with the variant chosen without it. Two diagnostics: ``share floor``, Storey's share with the gold
translations' decoys as the null (how noisy the share is even with perfect weights), and
``second-order``, the share that a third neighbour per sentence would give (docs/quality.md,
"Where the gap comes from").

Usage (from the repository root)::

    python bench/threshold_cases.py DIR --seeds 1,2,3,4,5,6,7,8,9 --knn 8
    python bench/threshold_variants.py DIR [--bagging]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import threshold as bench  # noqa: E402
from threshold_offline import curve, f1_at, family, inputs_of, language, load  # noqa: E402

from miner.core import autocut as A  # noqa: E402
from miner.core import mining  # noqa: E402
from miner.runtime.defaults import K  # noqa: E402


def cases(work: Path) -> list[dict]:
    out = []
    for path in sorted((work / "npz").glob("*.npz")):
        case = load(path)
        case["name"], case["label"] = path.stem, case["label"].astype(bool)
        case["curve"] = curve(case["scores"], case["label"], int(case["n_gold"]))
        case["f105"] = f1_at(case["scores"], case["label"], int(case["n_gold"]), 1.05)
        out.append(case)
    return out


def grid_of(scores: np.ndarray, decoys: np.ndarray) -> A.Grid:
    finite = decoys[np.isfinite(decoys)]
    h = A.bandwidth(scores)
    return A.Grid(min(scores.min(), finite.min()) - 4 * h, max(scores.max(), finite.max()) + 4 * h, h)


# --- pieces the variants swap in -------------------------------------------------------------

def smoother_share(x, total_cdf, null_cdf, levels=np.arange(0.05, 0.951, 0.05)) -> float:
    """Storey and Tibshirani (2003), qvalue's default: Storey's share at many null quantiles,
    a quadratic through them, read at the lowest (least contaminated by translations)."""
    pis = np.interp(np.interp(levels, null_cdf, x), x, total_cdf) / levels
    return float(np.clip(np.polyval(np.polyfit(levels, pis, 2), levels[0]), 0.0, 1.0))


def exponential_tail(null, grid, q=0.7):
    """The null above its q quantile replaced by an exponential tail of the same mean excess (the
    Gumbel law of a best score has an exponential upper tail)."""
    x = grid.x
    cdf = np.cumsum(null) * grid.step
    cdf /= cdf[-1]
    m = float(np.interp(q, cdf, x))
    above = x > m
    mass = float(null[above].sum())
    beta = float(((x[above] - m) * null[above]).sum() / mass) if mass > 0 else grid.h
    out = null.copy()
    out[above] = (1 - q) / beta * np.exp(-(x[above] - m) / beta)
    return out / (out.sum() * grid.step)


def adaptive_null(grid, decoys, weights):
    """Abramson's adaptive kernel: each decoy's bandwidth ``h sqrt(g / pilot(decoy))`` (``pilot`` the
    fixed-bandwidth estimate, ``g`` its weighted geometric mean over the decoys): wider kernels in
    the tails, where ~45 decoys leave the fixed kernel's tail to one or two of them."""
    pilot = grid.density(decoys, weights)
    at = np.maximum(grid.at(pilot, decoys), 1e-12)
    share = weights / weights.sum() if weights.sum() > 0 else weights
    widths = grid.h * np.sqrt(np.exp(np.sum(share * np.log(at))) / at)
    out = np.zeros(grid.x.size)
    for lo in range(0, decoys.size, 256):
        d, w, h = decoys[lo:lo + 256, None], weights[lo:lo + 256, None], widths[lo:lo + 256, None]
        out += (w * np.exp(-0.5 * ((grid.x[None, :] - d) / h) ** 2) / h).sum(axis=0)
    total = out.sum() * grid.step
    return out / total if total > 0 else out


def runner_up_null(grid, scores, decoys, weights):
    """The non-translations' null built from their own runner-ups: each candidate's decoy plus the
    spacing ``score - decoy`` of another candidate (the two taken as independent, as the top two of
    a best score's Gumbel law nearly are), both weighted by ``weights``: the density of
    ``decoy_i + spacing_j``, a convolution on the grid. Its tail comes from the bulk of ~500
    non-translations instead of ~45 translations' decoys (with the gold, the quantiles q95-q99 it
    gives sit within 0.02 of the non-translations' own on sparse cases)."""
    if weights.sum() <= 0:
        return np.zeros(grid.x.size)
    runner_up = grid.density(decoys, weights)
    spacing = (scores - decoys) / grid.step
    reach = int(np.ceil(np.abs(spacing).max())) + 1
    pos = spacing + reach
    left = np.floor(pos).astype(np.int64)
    frac = pos - left
    hist = (np.bincount(left, weights * (1 - frac), 2 * reach + 2)
            + np.bincount(left + 1, weights * frac, 2 * reach + 2))[:2 * reach + 1]
    out = np.convolve(runner_up, hist)[reach:reach + grid.x.size]
    total = out.sum() * grid.step
    return out / total if total > 0 else out


def moment_share(u, p, previous, extension=None, window=2.0, gated=False, lam=A.NULL_QUANTILE):
    """:func:`miner.core.autocut._moment_share`, optionally adding the translations the ramp hides
    below lambda: their density in the null's quantile scale continued from the window
    [lambda, window * lambda] down to 0, flat or falling linearly to 0 (``tri``); ``gated`` scales
    that by the mean probability in the window (how clearly translations are there)."""
    weight, num = float(p.sum()), float((p * u).sum())
    if weight <= 0:
        return previous
    if extension:
        inside = (u >= lam) & (u < window * lam)
        per_lambda = float(p[inside].sum()) / (window - 1.0)
        if gated:
            per_lambda *= float(p[inside].mean()) if inside.any() else 0.0
        count, mean_u = (per_lambda, lam / 2) if extension == "flat" else (per_lambda / 2, 2 * lam / 3)
        num, weight = num + count * mean_u, weight + count
    m1 = num / weight
    if m1 <= 0.5 + 1e-6:
        return previous
    return float(np.clip((m1 - float(u.mean())) / (m1 - 0.5), 0.0, 1.0))


def estimate(scores, decoys, grid, share="moment", tail=None, true_pi0=None, adaptive=False, runner_up=None,
             labels=None, **moment):
    """:func:`miner.core.autocut.estimate` with the pieces above (same rounds, steps and ramp).
    ``runner_up``: ``pooled`` (the translations' decoys, weighted by the probabilities, and
    :func:`runner_up_null`, weighted by one minus them, each by its total weight) or ``alone``
    (:func:`runner_up_null` only); ``labels``: the gold, to weigh :func:`runner_up_null` by it."""
    finite = np.isfinite(decoys)
    decoys = decoys[finite]
    kept = np.asarray(scores, float)[finite]
    gold_null = None if labels is None else (~np.asarray(labels, bool)[finite]).astype(float)
    total, x = grid.density(scores), grid.x
    total_cdf = np.cumsum(total) * grid.step
    total_cdf /= total_cdf[-1]
    weights, probability, tail_rounds, pi0 = np.ones(decoys.size), None, [], 1.0
    for rounds in range(1, A.ROUNDS + 1):
        null = adaptive_null(grid, decoys, weights) if adaptive else grid.density(decoys, weights)
        if runner_up:
            others = 1.0 - weights if gold_null is None else gold_null
            own = runner_up_null(grid, kept, decoys, others)
            if runner_up == "alone" and others.sum() > 0:
                null = own
            elif runner_up == "pooled":
                null = (weights.sum() * null + others.sum() * own) / (weights.sum() + others.sum())
        if tail is not None:
            null = exponential_tail(null, grid, tail)
        cdf = np.cumsum(null) * grid.step
        cdf /= cdf[-1]
        low = float(np.interp(A.NULL_QUANTILE, cdf, x))
        if share == "smoother":
            pi0 = smoother_share(x, total_cdf, cdf)
        elif probability is None:
            pi0 = min(1.0, float(np.interp(low, x, total_cdf)) / A.NULL_QUANTILE)
        else:
            pi0 = moment_share(grid.at(cdf, scores), grid.at(probability, scores), pi0, **moment)
        if true_pi0 is not None:
            pi0 = true_pi0
        with np.errstate(divide="ignore", invalid="ignore"):
            lfdr = np.where(total > 0, np.minimum(1.0, pi0 * null / total), 1.0)
        probability = A._monotone(1.0 - lfdr, x, low, grid.h)
        new = grid.at(probability, scores[finite])
        step = new if rounds <= 5 else 0.5 * (weights + new)
        moved = float(np.max(np.abs(step - weights))) if weights.size else 0.0
        weights = step
        if moved < A.TOLERANCE:
            break
        if rounds > A.ROUNDS // 2:
            tail_rounds.append(probability)
    else:
        probability = np.mean(tail_rounds, axis=0)
    return probability


def margins_over(sims: np.ndarray, target_mean: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Ratio margins of each query's neighbours with the query's mean taken over the ``kept``
    neighbours only (``-inf`` for the others), as ``mining.best_candidates_with_decoy`` leaves the
    best one out for the decoy."""
    mean = np.where(kept, sims, 0).sum(1) / np.maximum(kept.sum(1), 1)
    return np.where(kept, sims / ((mean[:, None] + target_mean) / 2), -np.inf)


def decoys_with_one_more_neighbour(case: dict) -> np.ndarray:
    """Decoys whose neighbourhood mean has k values, as a sentence without a translation has: the
    other k neighbours of k + 1 (needs ``--knn``)."""
    mx, my = mining.knn_mean(case["SX"][:, :K]), mining.knn_mean(case["SY"][:, :K])

    def side(sims, ids, target_mean):
        s, i = np.asarray(sims[:, :K + 1], float), np.asarray(ids[:, :K + 1])
        tm = np.asarray(target_mean)[i]
        kept = np.zeros(s.shape, bool)
        kept[:, :K] = True
        best = margins_over(s, tm, kept).argmax(1)
        kept[:] = True
        kept[np.arange(len(s)), best] = False
        return margins_over(s, tm, kept).max(1)

    cut = dict(case, fwd_decoy=side(case["SX"], case["IX"], my), bwd_decoy=side(case["SY"], case["IY"], mx))
    return A.decoy_scores(inputs_of(cut, False))


# --- variants ----------------------------------------------------------------------------------

def variant(rule="f1", decoys="stored", bagging=0, truth=False, gold_runner_up=False, **options):
    def cut(case):
        kw = dict(options, true_pi0=float((~case["label"]).mean())) if truth else dict(options)
        if gold_runner_up:
            kw["labels"] = case["label"]
        scores = np.asarray(case["scores"], float)
        d = A.decoy_scores(inputs_of(case, False)) if decoys == "stored" else decoys_with_one_more_neighbour(case)
        grid = grid_of(scores, d)
        if bagging:
            rng = np.random.default_rng(0)
            runs = [estimate(scores[idx], d[idx], grid, **kw)
                    for idx in (rng.integers(0, scores.size, scores.size) for _ in range(bagging))]
            probability = np.mean(runs, axis=0)
        else:
            probability = estimate(scores, d, grid, **kw)
        p = grid.at(probability, scores)
        if rule == "f1":
            return A.best_cut(scores, p)[0]
        keep = p >= rule
        return float(scores[keep].min()) if keep.any() else float(scores.max())
    return cut


def table(all_cases, cut) -> dict[str, tuple[float, float]]:
    rows = [{"case": c["name"], "curve": c["curve"], "f1_at_1.05": c["f105"],
             "f1": f1_at(c["scores"], c["label"], int(c["n_gold"]), cut(c))} for c in all_cases]
    bench.calibrate(rows)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(family(r["case"]), []).append(r)
    return {name: (100 * float(np.mean([r["calibrated_f1"] - r["f1"] for r in m])),
                   100 * float(np.mean([r["f1_at_1.05"] - r["f1"] for r in m]))) for name, m in groups.items()}


def summary(name: str, tab: dict) -> str:
    gaps = [v[0] for v in tab.values()]
    dense = [v[1] for n, v in tab.items() if "dense" in n]
    return (f"{name:<44} mean {np.mean(gaps):5.2f}  max {max(gaps):5.2f}  over 2: {sum(g > 2 for g in gaps):2d}  "
            f"dense worst below 1.05 {max(dense):5.2f}")


def lolo(tabs: dict[str, dict], names: list[str]) -> dict:
    def loss(tab, fams):
        return np.mean([tab[f][0] + (max(0.0, tab[f][1] - 1.0) if "dense" in f else 0.0) for f in fams])
    fams = list(tabs[names[0]])
    held = {}
    for lang in sorted({language(f) for f in fams}):
        train = [f for f in fams if language(f) != lang]
        best = min(names, key=lambda n: loss(tabs[n], train))
        print(f"  lolo: without {lang:<6} -> {best}")
        held.update({f: tabs[best][f] for f in fams if language(f) == lang})
    return held


def second_order(all_cases) -> list[str]:
    """The share of sources whose best is their translation, from the moment of their decoys:
    ``mean F0(decoy) = tau / 2 + (1 - tau) mu2``, ``mu2`` the translations' third-best in F0 terms
    (what a third neighbour per sentence would give). With the gold's weights and the method's."""
    lines, per = [], {}
    for case in all_cases:
        sims, ids = np.asarray(case["SX"][:, :K], float), np.asarray(case["IX"][:, :K])
        tm = np.asarray(mining.knn_mean(case["SY"][:, :K]))[ids]
        n = len(sims)
        alive, order = np.ones((n, K), bool), []
        for _ in range(3):
            m = margins_over(sims, tm, alive)
            col = m.argmax(1)
            order.append((m[np.arange(n), col], ids[np.arange(n), col]))
            alive[np.arange(n), col] = False
        src, tgt, y = case["src"], case["tgt"], case["label"]
        own = order[0][1][src] == tgt
        decision = A.decide(inputs_of(case, False), "ratio", 1.05)
        taus = []
        for w_c in (y & own, np.where(own, decision.probability, 0.0)):
            w = np.zeros(n)
            w[src] = w_c
            o = np.argsort(order[1][0])
            cw = np.cumsum(w[o] + 1e-12)
            f0 = lambda v: np.interp(v, order[1][0][o], cw / cw[-1])  # noqa: E731
            mu2 = float((w * f0(order[2][0])).sum() / w.sum())
            taus.append((float(f0(order[1][0]).mean()) - mu2) / (0.5 - mu2))
        per.setdefault(family(case["name"]), []).append((float((y & own).sum()) / n, *taus))
    lines.append(f"{'case':<24} {'true':>6} {'gold w':>7} {'method w':>8}")
    for name, v in per.items():
        v = np.array(v)
        lines.append(f"{name:<24} {v[:, 0].mean():6.3f} {v[:, 1].mean():7.3f} {v[:, 2].mean():8.3f}")
    return lines


def share_floor(all_cases) -> list[str]:
    """How noisy the share is even with a perfect null *sample*: Storey's share (lambda 0.3) with the
    null from the gold translations' decoys only, per case: min, mean and max over the draws
    against the true share of non-translations."""
    per: dict[str, list[tuple[float, float]]] = {}
    for case in all_cases:
        scores = np.asarray(case["scores"], float)
        decoys = A.decoy_scores(inputs_of(case, False))
        grid, finite = grid_of(scores, decoys), np.isfinite(decoys)
        null = grid.density(decoys[finite], case["label"][finite].astype(float))
        cdf = np.cumsum(null) * grid.step
        total = np.cumsum(grid.density(scores)) * grid.step
        low = float(np.interp(A.NULL_QUANTILE, cdf / cdf[-1], grid.x))
        pi0 = float(np.interp(low, grid.x, total / total[-1])) / A.NULL_QUANTILE
        per.setdefault(family(case["name"]), []).append((pi0, float((~case["label"]).mean())))
    lines = [f"{'case':<24} {'true':>6} {'min':>6} {'mean':>6} {'max':>6}"]
    for name, v in per.items():
        v = np.array(v)
        lines.append(f"{name:<24} {v[:, 1].mean():6.3f} {v[:, 0].min():6.3f} {v[:, 0].mean():6.3f} {v[:, 0].max():6.3f}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--bagging", action="store_true", help="also 20 bootstrap fits averaged (4 minutes)")
    args = ap.parse_args(argv)
    all_cases = cases(args.work)
    if not all_cases:
        raise SystemExit(f"no cases in {args.work / 'npz'}: run bench/threshold_cases.py {args.work} --knn 8 first")
    has_knn = "SX" in all_cases[0]
    variants = {
        "the method": variant(),
        "true share (gold)": variant(truth=True),
        "share: qvalue smoother": variant(share="smoother"),
        "null: exponential tail above its 70% quantile": variant(tail=0.7),
        "null: exponential tail, true share (gold)": variant(tail=0.7, truth=True),
        "null: adaptive kernel (Abramson)": variant(adaptive=True),
        "null: pooled with the non-translations' runner-ups": variant(runner_up="pooled"),
        "null: pooled with runner-ups, gold weights": variant(runner_up="pooled", gold_runner_up=True),
        "null: runner-ups alone, gold weights": variant(runner_up="alone", gold_runner_up=True),
        "cut: probability >= 0.5": variant(rule=0.5),
        "cut: probability >= 0.4": variant(rule=0.4),
        "lower tail: tri, window 2": variant(extension="tri"),
        "lower tail: tri, window 2, gated": variant(extension="tri", gated=True),
        "lower tail: tri, window 1.5, gated": variant(extension="tri", window=1.5, gated=True),
        "lower tail: flat, window 2, gated": variant(extension="flat", gated=True),
        "lower tail: flat, window 1.5, gated": variant(extension="flat", window=1.5, gated=True),
    }
    if has_knn:
        variants["decoys over k other neighbours"] = variant(decoys="k+1")
        variants["decoys over k other neighbours, true share"] = variant(decoys="k+1", truth=True)
    if args.bagging:
        variants["bagging: 20 bootstrap fits, mean probability"] = variant(bagging=20)
    tabs = {}
    for name, cut in variants.items():
        tabs[name] = table(all_cases, cut)
        print(summary(name, tabs[name]), flush=True)
    lower = ["the method"] + [n for n in tabs if n.startswith("lower tail") and "gated" in n]
    tabs["lower tail chosen leave-one-language-out"] = lolo(tabs, lower)
    print(summary("lower tail chosen leave-one-language-out", tabs["lower tail chosen leave-one-language-out"]))
    print("\nper case, calibrated - auto (F1 points, mean over draws):")
    names = list(tabs)
    print(f"{'case':<26}" + "".join(f"{i:>7}" for i in range(len(names))))
    for fam in tabs["the method"]:
        print(f"{fam:<26}" + "".join(f"{tabs[n][fam][0]:>7.2f}" for n in names))
    print("columns: " + "; ".join(f"{i} {n}" for i, n in enumerate(names)))
    print("\nshare floor: Storey's share of non-translations with the gold translations' decoys as the null")
    print("\n".join(share_floor(all_cases)))
    if has_knn:
        print("\nsecond-order decoys: share of sources whose best is their translation, mean over draws")
        print("\n".join(second_order(all_cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
