#!/usr/bin/env python3
"""Offline evaluation of ``--threshold auto`` on the cases that ``bench/threshold.py --work DIR`` mined.

``extract``: for each case of a ``bench/threshold.py --work DIR --json DIR/base.json`` run, rebuild the
exact :class:`miner.core.autocut.CutInputs` that the finish step gives :func:`miner.core.autocut.decide` (from the
job's stored score artifacts, as :func:`miner.pipeline.steps.finish` does) plus, per candidate, whether it is a
gold pair (text key match, as ``bench/threshold.py`` scores an export) and both sentences' lengths,
into ``DIR/npz/CASE.npz``.

``eval``: runs :func:`miner.core.autocut.decide` (the code on ``PYTHONPATH``) on every stored case and
prints F1 at its cut against the oracle F1 (best cut over the same scores), tuning and extra cases
apart, with the bench run's gap beside it ("base"). No mining: about 40 s instead of 10 minutes
on 2 cores, so a method can be iterated on. On the current method it reproduces the bench's
per-case cut, F1 and oracle exactly (22 cases, 2026-12-01).

Usage (from the repository root)::

    python bench/threshold.py --extra --work DIR --json DIR/base.json
    python bench/threshold_offline.py extract DIR
    python bench/threshold_offline.py eval DIR [--json out.json]
    python bench/threshold_offline.py floor DIR
    python bench/threshold_offline.py draws DIR   # DIR also holds CASE-sN jobs (bench/threshold.py --seeds)
    python bench/threshold_offline.py goal DIR    # the same DIR: how often a bench run meets the goal
    python bench/threshold_offline.py lolo DIR    # lambda chosen leave-one-language-out (>= 3 draws a case)
    python bench/threshold_offline.py ablate DIR  # which estimate the gap comes from (the gold stands in)
    python bench/threshold_offline.py uncertain DIR  # how the cuts marked uncertain fare against the others

``DIR/npz`` comes from ``extract`` (jobs mined by ``bench/threshold.py``) or from
``bench/threshold_cases.py DIR`` (the same cases mined in one process: many draws in minutes).

``floor``: how noisy each case's oracle is. The candidates are split at random into two halves
(gold pairs outside the candidates split evenly); the best cut of one half, found *with* the
gold, is scored on the other half against that half's own oracle. The mean gap over 40 splits is
what even a gold-tuned cut loses to chance on a case of half this size (it overstates the noise of
the full case: see ``draws``).

``draws``: for each case mined with several seeds (``bench/threshold.py --seeds``, jobs named
``CASE-sN`` beside ``CASE``), the auto cut's mean and worst gap over the draws, against two floors
found with the gold: each draw's oracle cut scored on the other draws (``cross``), and the one cut
that maximises the mean F1 over all the draws (``fixed``). One draw of a 50-pair case says little
about a method; the mean over draws says more.

``ablate``: where the gap to the gold-calibrated cut comes from. The method's last step (each
candidate's probability ``1 - pi0 f0 / f``, then the cut of best expected F1) is run three ways:
as the method runs it; with the true share of non-translations ``pi0`` (from the gold) in place
of the estimated one, the null ``f0`` still the job's decoys; and with both the true share and the
true null (a kernel density of the non-translations' scores). Per case the mean over its draws of
calibrated - auto, as ``bench/threshold.py`` scores it.

``goal``: how often one run of ``bench/threshold.py`` (one draw of each tuning case) meets the
issue's goal (every case within 2 F1 of its oracle, the mean within 1), for the auto cut and for
two references that use the gold: the per-case ``fixed`` cut of ``draws``, and exporting exactly
as many top candidates as there are translations among them (``top-K``). Runs are assembled from
the stored draws (one per case, at random, ``--runs`` times); a case with one draw only enters
every run with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

EXTRA = {"tatoeba-fra-20k-distractors-20pct", "tatoeba-spa-1pct", "tatoeba-deu-no-distractors-50pct",
         "un-fr-es-sparse", "un-ru-zh-30pct", "un-ar-fr-dense"}


def extract(work: Path) -> None:
    from threshold import key  # bench/threshold.py: the same text key as the bench

    os.environ["MINER_HOME"] = str(work / "home")
    from sqlalchemy import select

    from miner.core import mining
    from miner.pipeline import steps
    from miner.runtime.config import Config
    from miner.runtime.db import Job, Sentence, session_scope
    from miner.pipeline.orchestration import job_sides

    cfg = Config.from_env()
    rows = _rows(work, cfg)
    out_dir = work / "npz"
    out_dir.mkdir(exist_ok=True)
    for row in rows:
        if (out_dir / f"{row['case']}.npz").exists():
            continue
        with session_scope(cfg.db_url) as s:
            job = s.get(Job, row["job"])
            if job.state != "done":
                continue
        sides = job_sides(cfg, job)
        fwd_best, fwd_scores, fwd_decoy = steps._best(cfg, job, "fwd", sides["src"])
        bwd_best, bwd_scores, bwd_decoy = steps._best(cfg, job, "bwd", sides["tgt"])
        src, tgt, scores, direction = mining.retrieve(fwd_best, fwd_scores, bwd_best, bwd_scores,
                                                      job.options["retrieval"], threshold=None)
        texts = {}
        with session_scope(cfg.db_url) as s:
            for side in ("src", "tgt"):
                corpus_id = sides[side].corpus_id
                got = dict(s.execute(select(Sentence.idx, Sentence.text).where(Sentence.corpus_id == corpus_id)).all())
                texts[side] = [got[i] for i in range(sides[side].n)]
        folder = work / "cases" / row["case"]
        gold = set()
        for line in (folder / "gold.tsv").read_text(encoding="utf-8").splitlines():
            if line:
                a, b = line.split("\t")[:2]
                gold.add((key(a), key(b)))
        label = np.array([(key(texts["src"][i]), key(texts["tgt"][j])) in gold for i, j in zip(src.tolist(), tgt.tolist())])
        src_len = np.array([len(texts["src"][i]) for i in src.tolist()])
        tgt_len = np.array([len(texts["tgt"][j]) for j in tgt.tolist()])
        np.savez(out_dir / f"{row['case']}.npz", scores=scores, direction=direction, src=src, tgt=tgt,
                 fwd_best=fwd_best, bwd_best=bwd_best, fwd_scores=fwd_scores, bwd_scores=bwd_scores,
                 fwd_decoy=fwd_decoy, bwd_decoy=bwd_decoy, label=label, src_len=src_len, tgt_len=tgt_len,
                 n_gold=len(gold), fixed=float(job.options.get("fallback_threshold") or 1.05),
                 margin=job.options["margin"])
        print(f"{row['case']}: {len(scores)} candidates, {int(label.sum())} gold among them of {len(gold)}", flush=True)


def _rows(work: Path, cfg=None) -> list[dict]:
    """The bench's rows (``base.json``), or while it still runs, one row per job in its MINER_HOME
    (the case is the name of the folder of the job's source file)."""
    path = work / "base.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    from sqlalchemy import select

    from miner.runtime.db import Job, session_scope

    with session_scope(cfg.db_url) as s:
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
    return [{"case": Path(job.src_path).parent.name, "job": job.id, "gap": float("nan")} for job in jobs]


def load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def inputs_of(case: dict, lengths: bool = True):
    """The case's CutInputs, with the candidates' sentence lengths unless ``lengths`` is False
    (``--no-lengths``: the method as it was before it modelled them)."""
    from miner.core.autocut import CutInputs

    def decoy(a):
        return None if a.dtype == object or a.shape == () else a

    return CutInputs(scores=case["scores"], direction=case["direction"], src=case["src"], tgt=case["tgt"],
                     fwd_scores=case["fwd_scores"], bwd_scores=case["bwd_scores"],
                     fwd_decoy=decoy(case["fwd_decoy"]), bwd_decoy=decoy(case["bwd_decoy"]),
                     src_len=case["src_len"] if lengths else None, tgt_len=case["tgt_len"] if lengths else None)


def f1_at(scores: np.ndarray, label: np.ndarray, n_gold: int, cut: float) -> float:
    keep = scores >= cut
    hits, exported = int(label[keep].sum()), int(keep.sum())
    p = hits / exported if exported else 0.0
    r = hits / n_gold if n_gold else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def oracle(scores: np.ndarray, label: np.ndarray, n_gold: int) -> tuple[float, float]:
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], label[order]
    hits = np.cumsum(y)
    exported = np.arange(1, s.size + 1)
    f1 = 2 * hits / (exported + n_gold)
    last = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(s[i])


def evaluate(work: Path, only: str = "", lengths: bool = True) -> list[dict]:
    from miner.core import autocut

    path = work / "base.json"
    rows = (json.loads(path.read_text(encoding="utf-8")) if path.exists() else
            [{"case": p.stem, "gap": float("nan")} for p in sorted((work / "npz").glob("*.npz"))])
    out = []
    for row in rows:
        if not (work / "npz" / f"{row['case']}.npz").exists():
            continue
        if only and row["case"] not in only.split(","):
            continue
        case = load(work / "npz" / f"{row['case']}.npz")
        started = time.monotonic()
        decision = autocut.decide(inputs_of(case, lengths), str(case["margin"]), float(case["fixed"]))
        seconds = time.monotonic() - started
        n_gold = int(case["n_gold"])
        f = f1_at(case["scores"], case["label"], n_gold, decision.value)
        best, best_t = oracle(case["scores"], case["label"], n_gold)
        out.append({"case": row["case"], "extra": family(row["case"]) in EXTRA, "method": decision.method,
                    "cut": decision.value, "share": decision.evidence.get("share"),
                    "true_share": float(case["label"].mean()), "precision": decision.evidence.get("precision"),
                    "f1": f, "oracle_f1": best, "oracle_cut": best_t, "gap": best - f,
                    "base_gap": row["gap"], "seconds": round(seconds, 2)})
    return out


def floor(work: Path, splits: int = 40, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for path in sorted((work / "npz").glob("*.npz")):
        case = load(path)
        scores, label, n_gold = case["scores"], case["label"].astype(bool), int(case["n_gold"])
        gaps = []
        for _ in range(splits):
            half = rng.random(scores.size) < 0.5
            gold_a = n_gold // 2
            _, cut_a = oracle(scores[half], label[half], gold_a)
            best_b, _ = oracle(scores[~half], label[~half], n_gold - gold_a)
            gaps.append(best_b - f1_at(scores[~half], label[~half], n_gold - gold_a, cut_a))
        out.append({"case": path.stem, "extra": path.stem in EXTRA, "translations": int(label.sum()),
                    "floor": float(np.mean(gaps))})
    return out


def family(case: str) -> str:
    """``tatoeba-deu-sparse-s3`` -> ``tatoeba-deu-sparse`` (the draws of one case, ``bench/threshold.py --seeds``)."""
    head, _, tail = case.rpartition("-s")
    return head if head and tail.isdigit() else case


def best_fixed_cut(members: list[dict], cases: list[dict]) -> float:
    """The one cut that maximises the mean F1 over the draws of a case (found with their gold), among
    their scores within 0.2 of their oracle cuts."""
    grid = np.unique(np.concatenate([c["scores"] for c in cases]))
    grid = grid[(grid > min(m["oracle_cut"] for m in members) - 0.2)
                & (grid < max(m["oracle_cut"] for m in members) + 0.2)]
    mean_f1 = [np.mean([f1_at(c["scores"], c["label"], int(c["n_gold"]), t) for c in cases]) for t in grid]
    return float(grid[int(np.argmax(mean_f1))])


def draws(work: Path, rows: list[dict]) -> list[dict]:
    """Per case drawn with several seeds: the auto cut's mean gap over the draws, and two floors.

    ``cross``: each draw's oracle cut (found with its gold) scored on every other draw, mean gap.
    ``fixed``: the one cut that maximises the mean F1 over the draws, found with all their gold,
    mean gap: no cut that ignores which draw it is given does better on these draws.
    """
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(family(r["case"]), []).append(r)
    out = []
    for name, members in groups.items():
        if len(members) < 2:
            continue
        cases = [load(work / "npz" / f"{m['case']}.npz") for m in members]
        cross = [c_b["oracle_f1"] - f1_at(b["scores"], b["label"], int(b["n_gold"]), c_a["oracle_cut"])
                 for c_a in members for c_b, b in zip(members, cases) if c_a is not c_b]
        best = best_fixed_cut(members, cases)
        fixed = [m["oracle_f1"] - f1_at(c["scores"], c["label"], int(c["n_gold"]), best) for m, c in zip(members, cases)]
        out.append({"case": name, "draws": len(members), "auto": float(np.mean([m["gap"] for m in members])),
                    "auto_max": float(max(m["gap"] for m in members)),
                    "within2": sum(m["gap"] <= 0.02 for m in members),
                    "cross": float(np.mean(cross)), "fixed": float(np.mean(fixed)), "fixed_cut": float(best)})
    return out


def goal(work: Path, rows: list[dict], runs: int = 20_000, seed: int = 0) -> list[dict]:
    """Share of assembled bench runs that meet the goal, per method (see the module docstring)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if not r["extra"]:
            groups.setdefault(family(r["case"]), []).append(r)
    gaps: dict[str, list[np.ndarray]] = {"auto": [], "fixed": [], "top-K": []}
    for members in groups.values():
        cases = [load(work / "npz" / f"{m['case']}.npz") for m in members]
        best = best_fixed_cut(members, cases)
        fixed, top = [], []
        for m, c in zip(members, cases):
            n_gold = int(c["n_gold"])
            fixed.append(m["oracle_f1"] - f1_at(c["scores"], c["label"], n_gold, best))
            k = max(1, int(c["label"].sum()))
            top.append(m["oracle_f1"] - f1_at(c["scores"], c["label"], n_gold, np.sort(c["scores"])[::-1][k - 1]))
        gaps["auto"].append(100 * np.array([m["gap"] for m in members]))
        gaps["fixed"].append(100 * np.array(fixed))
        gaps["top-K"].append(100 * np.array(top))
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, len(g), runs) for g in gaps["auto"]]
    out = []
    for name, per_case in gaps.items():
        run = np.stack([g[p] for g, p in zip(per_case, picks)], axis=1)  # (runs, cases)
        worst, mean = run.max(axis=1), run.mean(axis=1)
        out.append({"method": name, "cases": run.shape[1], "met": float(np.mean((worst <= 2) & (mean <= 1))),
                    "all_within2": float(np.mean(worst <= 2)), "mean_within1": float(np.mean(mean <= 1)),
                    "mean_gap": float(mean.mean()), "case_within2": float(np.mean(run <= 2))})
    return out


def curve(scores: np.ndarray, label: np.ndarray, n_gold: int) -> list[float]:
    """F1 at every cut of ``bench/threshold.py``'s ``CUTS`` (for the gold-calibrated cut)."""
    from threshold import CUTS

    s = np.sort(scores)[::-1]
    hits = np.r_[0, np.cumsum(label[np.argsort(-scores, kind="stable")])]
    kept = np.searchsorted(-s, -np.asarray(CUTS), side="right")
    tp = hits[kept]
    return [float(2 * t / (k + n_gold)) if k + n_gold else 0.0 for t, k in zip(tp, kept)]


def language(case: str) -> str:
    """The language a case is held out with: ``tatoeba-deu-sparse-s2`` -> ``deu``, UN cases by
    their first language (``un-fr-es-sparse`` -> ``un-fr``)."""
    parts = case.split("-")
    return parts[1] if parts[0] == "tatoeba" else f"un-{parts[1]}"


def lolo(work: Path, values: list[float]) -> tuple[list[dict], list[str]]:
    """Leave-one-language-out choice of ``autocut.NULL_QUANTILE`` among ``values``.

    For each value, every stored case (with at least 3 draws) is decided and scored as
    ``bench/threshold.py`` scores it: per case the mean over its draws of (F1 at the gold-calibrated
    cut of the other draws - F1 at auto), plus, for a dense case, what it loses beyond 1 F1 to the
    fixed 1.05 (the issue's goals). For each language, the value that minimises that loss over the
    *other* languages' cases is chosen and its result on the language's own cases reported."""
    import threshold as bench

    from miner.core import autocut

    paths = sorted((work / "npz").glob("*.npz"))
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(family(path.stem), []).append(path)
    groups = {k: v for k, v in groups.items() if len(v) >= 3}
    data = {p.stem: load(p) for members in groups.values() for p in members}
    saved = autocut.NULL_QUANTILE
    per_value: dict[float, dict[str, dict]] = {}
    try:
        for value in values:
            autocut.NULL_QUANTILE = value
            rows = []
            for name, case in data.items():
                cut = autocut.decide(inputs_of(case, False), str(case["margin"]), float(case["fixed"])).value
                n_gold = int(case["n_gold"])
                rows.append({"case": name, "curve": curve(case["scores"], case["label"], n_gold),
                             "f1": f1_at(case["scores"], case["label"], n_gold, cut),
                             "f1_at_1.05": f1_at(case["scores"], case["label"], n_gold, 1.05),
                             "oracle_f1": oracle(case["scores"], case["label"], n_gold)[0]})
            bench.calibrate(rows)
            fams: dict[str, dict] = {}
            for name in groups:
                members = [r for r in rows if family(r["case"]) == name]
                auto = 100 * np.mean([r["f1"] for r in members])
                cal = 100 * np.mean([r["calibrated_f1"] for r in members])
                fixed = 100 * np.mean([r["f1_at_1.05"] for r in members])
                loss = cal - auto + (max(0.0, fixed - auto - 1.0) if "dense" in name else 0.0)
                fams[name] = {"auto": auto, "calibrated": cal, "fixed": fixed, "loss": loss}
            per_value[value] = fams
    finally:
        autocut.NULL_QUANTILE = saved
    out, lines = [], []
    for lang in sorted({language(name) for name in groups}):
        score = {v: np.mean([f["loss"] for n, f in fams.items() if language(n) != lang]) for v, fams in per_value.items()}
        chosen = min(score, key=lambda v: (score[v], v))
        for name, f in per_value[chosen].items():
            if language(name) == lang:
                out.append({"case": name, "value": chosen, **f})
    for value, fams in per_value.items():
        gaps = [f["calibrated"] - f["auto"] for f in fams.values()]
        below = [f["fixed"] - f["auto"] for n, f in fams.items() if "dense" in n]
        lines.append(f"NULL_QUANTILE {value:g} on every case: calibrated - auto mean {np.mean(gaps):.2f}, max "
                     f"{max(gaps):.2f}; dense cases at most {max(below):.2f} below 1.05")
    return out, lines


def ablate(work: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The decomposition of ``ablate`` (module docstring): per case and variant, calibrated - auto."""
    import threshold as bench

    from miner.core import autocut

    variants = ("method", "true share", "true share and null")
    rows = {v: [] for v in variants}
    for path in sorted((work / "npz").glob("*.npz")):
        case = load(path)
        inputs = inputs_of(case, False)
        scores, label, n_gold = case["scores"], case["label"].astype(bool), int(case["n_gold"])
        decoys = autocut.decoy_scores(inputs)
        finite = decoys[np.isfinite(decoys)]
        h = autocut.bandwidth(scores)
        grid = autocut.Grid(min(scores.min(), finite.min()) - 4 * h, max(scores.max(), finite.max()) + 4 * h, h)
        est = autocut.estimate(scores, decoys, grid)
        pi0 = float((~label).mean())
        with np.errstate(divide="ignore", invalid="ignore"):
            with_share = np.where(est.total > 0, np.minimum(1.0, pi0 * est.null / est.total), 1.0)
            true_null = grid.density(scores[~label])
            with_null = np.where(est.total > 0, np.minimum(1.0, pi0 * true_null / est.total), 1.0)
        probabilities = {
            "method": est.probability,
            "true share": autocut._monotone(1.0 - with_share, grid.x, est.low, grid.h),
            "true share and null": np.maximum.accumulate(np.clip(1.0 - with_null, 0.0, 1.0)),
        }
        common = {"curve": curve(scores, label, n_gold), "f1_at_1.05": f1_at(scores, label, n_gold, 1.05)}
        for variant, probability in probabilities.items():
            cut = autocut.best_cut(scores, grid.at(probability, scores))[0]
            rows[variant].append({"case": path.stem, **common, "f1": f1_at(scores, label, n_gold, cut)})
    table: dict[str, dict[str, float]] = {}
    for variant, members in rows.items():
        bench.calibrate(members)
        for name in dict.fromkeys(family(r["case"]) for r in members):
            draws = [r for r in members if family(r["case"]) == name and r["calibrated_f1"] is not None]
            if len(draws) >= 3:
                table.setdefault(name, {})[variant] = 100 * float(np.mean([r["calibrated_f1"] - r["f1"] for r in draws]))
                table[name].setdefault("below 1.05 " + variant, 100 * float(np.mean([r["f1_at_1.05"] - r["f1"] for r in draws])))
    lines = [f"{'case':<28} " + " ".join(f"{v:>20}" for v in variants)]
    for name, gaps in table.items():
        lines.append(f"{name:<28} " + " ".join(f"{gaps[v]:>20.2f}" for v in variants))
    for v in variants:
        gaps = [t[v] for t in table.values()]
        dense = [t["below 1.05 " + v] for n, t in table.items() if "dense" in n]
        lines.append(f"{v}: calibrated - auto mean {np.mean(gaps):.2f}, max {max(gaps):.2f}, over 2 F1: "
                     f"{sum(g > 2 for g in gaps)}; dense cases at most {max(dense):.2f} below 1.05")
    return lines, table


def uncertain(work: Path) -> list[str]:
    """Per case: the draws whose cut :func:`miner.core.autocut.decide` marks uncertain (fewer than
    ``FEW_TRANSLATIONS`` estimated translations or an expected F1 below ``LOW_EXPECTED_F1``), the estimated and true translations, and the mean
    calibrated - auto of the marked and of the other draws: whether the mark points at the cuts
    that miss."""
    import threshold as bench

    from miner.core import autocut

    rows = []
    for path in sorted((work / "npz").glob("*.npz")):
        case = load(path)
        scores, label, n_gold = case["scores"], case["label"].astype(bool), int(case["n_gold"])
        decision = autocut.decide(inputs_of(case, False), "ratio", 1.05)
        rows.append({"case": path.stem, "curve": curve(scores, label, n_gold), "f1_at_1.05": f1_at(scores, label, n_gold, 1.05),
                     "f1": f1_at(scores, label, n_gold, decision.value), "true": int(label.sum()),
                     "estimated": decision.evidence.get("translations", float("nan")),
                     "uncertain": bool(decision.evidence.get("uncertain"))})
    bench.calibrate(rows)
    lines = [f"{'case':<24} {'draws':>5} {'marked':>6} | {'est. transl.':>12} {'true':>5} | "
             f"{'gap marked':>10} {'gap other':>9}"]

    def mean_gap(members):
        gaps = [100 * (r["calibrated_f1"] - r["f1"]) for r in members if r["calibrated_f1"] is not None]
        return f"{np.mean(gaps):>.2f}" if gaps else "-"

    for name in dict.fromkeys(family(r["case"]) for r in rows):
        members = [r for r in rows if family(r["case"]) == name]
        marked = [r for r in members if r["uncertain"]]
        lines.append(f"{name:<24} {len(members):>5} {len(marked):>6} | {np.mean([r['estimated'] for r in members]):>12.1f} "
                     f"{np.mean([r['true'] for r in members]):>5.1f} | {mean_gap(marked):>10} "
                     f"{mean_gap([r for r in members if not r['uncertain']]):>9}")
    marked = [r for r in rows if r["uncertain"]]
    lines.append(f"all draws: {len(marked)} of {len(rows)} marked uncertain; calibrated - auto {mean_gap(marked)} "
                 f"on them, {mean_gap([r for r in rows if not r['uncertain']])} on the others")
    return lines


def offsets(work: Path) -> list[dict]:
    """Where the null rests, with the gold: per draw, how far the translations' decoys (the method's
    null) lie from the non-translations' scores (what the null stands for), at the null's lambda
    quantile and its median, in the non-translations' sd; beside the estimated and true share.
    The spread over a case's draws is the noise that ~45 decoys leave in a small sparse case."""
    from miner.core import autocut

    out = []
    for path in sorted((work / "npz").glob("*.npz")):
        case = load(path)
        inputs = inputs_of(case, False)
        decoys = autocut.decoy_scores(inputs)
        label = case["label"].astype(bool)
        if decoys is None or label.sum() < 3 or (~label).sum() < 3:
            continue
        gold_decoys = decoys[label & np.isfinite(decoys)]
        null_scores = case["scores"][~label]
        sd = float(np.std(null_scores))
        decision = autocut.decide(inputs, str(case["margin"]), float(case["fixed"]))
        out.append({"case": path.stem, "family": family(path.stem), "decoys": int(gold_decoys.size),
                    "q30": (np.quantile(gold_decoys, 0.3) - np.quantile(null_scores, 0.3)) / sd,
                    "q50": (np.quantile(gold_decoys, 0.5) - np.quantile(null_scores, 0.5)) / sd,
                    "q97": (np.quantile(gold_decoys, 0.97) - np.quantile(null_scores, 0.97)) / sd,
                    "share": decision.evidence.get("share"), "true_share": float(label.mean())})
    return out


def show(rows: list[dict]) -> str:
    lines = [(f"{'case':<34} {'method':<8} {'cut':>6} {'est%':>5} {'true%':>5} | {'F1':>5} {'oracle':>6} {'at':>6} | "
              f"{'gap':>5} {'base':>5} {'s':>5}")]
    for extra in (False, True):
        part = [r for r in rows if r["extra"] == extra]
        if not part:
            continue
        for r in part:
            est = f"{100 * r['share']:.1f}" if isinstance(r["share"], (int, float)) else "-"
            lines.append(f"{r['case']:<34} {r['method']:<8} {r['cut']:>6.3f} {est:>5} {100 * r['true_share']:>5.1f} | "
                         f"{100 * r['f1']:>5.1f} {100 * r['oracle_f1']:>6.1f} {r['oracle_cut']:>6.3f} | "
                         f"{100 * r['gap']:>5.1f} {100 * r['base_gap']:>5.1f} {r['seconds']:>5.2f}")
        gaps = [100 * r["gap"] for r in part]
        base = [100 * r["base_gap"] for r in part]
        lines.append(f"{'extra' if extra else 'tuning'}: mean gap {np.mean(gaps):.2f} (base {np.mean(base):.2f}), "
                     f"max {max(gaps):.2f}, within 2 F1: {sum(g <= 2 for g in gaps)}/{len(gaps)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("extract", "eval", "floor", "draws", "goal", "lolo", "offsets", "ablate",
                                           "uncertain"))
    ap.add_argument("work", type=Path)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default=None)
    ap.add_argument("--runs", type=int, default=20_000, help="goal: bench runs assembled from the draws")
    ap.add_argument("--no-lengths", action="store_true",
                    help="leave the sentence lengths out of the inputs (the method before it modelled them)")
    args = ap.parse_args(argv)
    if args.command == "extract":
        extract(args.work)
        return 0
    if args.command == "lolo":
        held, lines = lolo(args.work, [0.2, 0.3, 0.4, 0.5, 0.6])
        print(f"{'case (held out with its language)':<36} {'lambda':>6} | {'auto':>5} {'calib':>5} {'1.05':>5} | {'calib-auto':>10}")
        for r in held:
            print(f"{r['case']:<36} {r['value']:>6g} | {r['auto']:>5.1f} {r['calibrated']:>5.1f} {r['fixed']:>5.1f} | "
                  f"{r['calibrated'] - r['auto']:>10.2f}")
        gaps = [r["calibrated"] - r["auto"] for r in held]
        print(f"held out: calibrated - auto mean {np.mean(gaps):.2f}, max {max(gaps):.2f}; chosen: "
              + ", ".join(f"{v:g} x{sum(r['value'] == v for r in held)}" for v in sorted({r['value'] for r in held})))
        print("\n".join(lines))
        return 0
    if args.command == "ablate":
        print("\n".join(ablate(args.work)[0]))
        return 0
    if args.command == "uncertain":
        print("\n".join(uncertain(args.work)))
        return 0
    if args.command == "offsets":
        rows = offsets(args.work)
        print(f"{'case':<34} {'draws':>5} {'decoys':>6} | {'q30 mean':>8} {'sd':>5} {'q50 mean':>8} {'sd':>5} "
              f"{'q97 mean':>8} | "
              f"{'est/true share':>14} {'min':>5} {'max':>5}")
        for fam in dict.fromkeys(r["family"] for r in rows):
            members = [r for r in rows if r["family"] == fam]
            q30, q50 = np.array([r["q30"] for r in members]), np.array([r["q50"] for r in members])
            q97 = np.mean([r["q97"] for r in members])
            ratio = np.array([(r["share"] or 0.0) / r["true_share"] for r in members])
            print(f"{fam:<34} {len(members):>5} {np.mean([r['decoys'] for r in members]):>6.0f} | "
                  f"{q30.mean():>8.2f} {q30.std():>5.2f} {q50.mean():>8.2f} {q50.std():>5.2f} {q97:>8.2f} | "
                  f"{ratio.mean():>14.2f} {ratio.min():>5.2f} {ratio.max():>5.2f}")
        print("q30/q50/q97: the translations' decoys' quantile minus the non-translations' scores' quantile, in the "
              "non-translations' sd (0: the null sits where it should); est/true: the estimated share of translations "
              "over the true one")
        return 0
    if args.command == "floor":
        for row in floor(args.work):
            print(f"{row['case']:<34} {row['translations']:>5} translations among the candidates: "
                  f"cross-half gap {100 * row['floor']:5.2f} F1")
        return 0
    rows = evaluate(args.work, args.only, lengths=not args.no_lengths)
    if args.command == "goal":
        print(f"{'method':<7} {'cases':>5} | {'goal met':>8} {'all <=2':>8} {'mean <=1':>8} | {'mean gap':>8} {'case <=2':>8}")
        for g in goal(args.work, rows, args.runs):
            print(f"{g['method']:<7} {g['cases']:>5} | {100 * g['met']:>7.1f}% {100 * g['all_within2']:>7.1f}% "
                  f"{100 * g['mean_within1']:>7.1f}% | {g['mean_gap']:>8.2f} {100 * g['case_within2']:>7.1f}%")
        print(f"share of {args.runs} bench runs (one draw of each tuning case, at random) that meet the goal "
              "(every case within 2 F1 of its oracle, mean within 1); fixed and top-K use the gold")
        return 0
    if args.command == "draws":
        print(f"{'case':<26} {'draws':>5} | {'auto gap':>8} {'max':>5} {'<=2':>4} | {'cross':>6} {'fixed':>6} {'at':>6}")
        for d in draws(args.work, rows):
            print(f"{d['case']:<26} {d['draws']:>5} | {100 * d['auto']:>8.2f} {100 * d['auto_max']:>5.1f} {d['within2']:>4} | "
                  f"{100 * d['cross']:>6.2f} {100 * d['fixed']:>6.2f} {d['fixed_cut']:>6.3f}")
        tuning = [100 * r["gap"] for r in rows if not r["extra"]]
        print(f"all {len(tuning)} jobs of the tuning cases: mean gap {np.mean(tuning):.2f}, "
              f"within 2 F1: {sum(g <= 2 for g in tuning)}/{len(tuning)}")
        return 0
    print(show(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
