"""``miner report``: one self-contained HTML page and a PNG to look at a job before exporting.

The PNG (matplotlib, Agg, no display needed) has two panels: the histogram of the scores of all
stored one-to-one candidates, split at the job's threshold (the cut it uses, labelled with how it
was chosen: auto, fallback, fixed, calibrated), with the number of pairs at or above it and, for an
automatic threshold, the two fitted parts (non-translations, translations) as curves; and a scatter of score against length ratio (source characters / target characters, log
scale). The HTML embeds the same PNG as a data URI, a summary of the job, the pairs per score band
and a random sample of pairs from each band (fixed seed). It loads nothing from anywhere and has
no script.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from miner.io.artifacts import as_user_file, atomic_path
from miner.runtime.config import Config
from miner.runtime.db import Candidate, Corpus, Sentence, session_scope
from miner.runtime.errors import UsageError
from miner.io.export import load_done_job
from miner.faces.quality import progress
from miner.pipeline.spec import job_spec

BELOW_COLOUR = "#8da0cb"  # histogram bars below the threshold
ABOVE_COLOUR = "#1b9e77"  # histogram bars at or above the threshold
THRESHOLD_COLOUR = "#d62728"
NULL_FIT_COLOUR = "#3a3a3a"  # fitted non-translation part
TRANSLATION_FIT_COLOUR = "#e6ab02"  # fitted translation part
MAX_SCATTER_POINTS = 20_000


@dataclass
class Band:
    name: str
    lo: float
    hi: float  # exclusive, except the last band
    count: int
    sample: list[dict]


def _load(cfg: Config, job) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """score, source length, target length, source idx, target idx of every candidate."""
    src, tgt = aliased(Sentence), aliased(Sentence)
    with session_scope(cfg.db_url) as s:
        total = s.scalar(select(func.count()).select_from(Candidate).where(Candidate.job_id == job.id))
        rows = list(progress(s.execute(
            select(Candidate.score, func.length(src.text), func.length(tgt.text), Candidate.src_idx, Candidate.tgt_idx)
            .join(src, (src.corpus_id == job.src_corpus_id) & (src.idx == Candidate.src_idx))
            .join(tgt, (tgt.corpus_id == job.tgt_corpus_id) & (tgt.idx == Candidate.tgt_idx))
            .where(Candidate.job_id == job.id)
            .execution_options(yield_per=50000)
        ), total, f"job {job.id} candidates", "pair"))
    if not rows:
        raise UsageError(f"job {job.id} has no candidates; nothing to report")
    arr = np.array(rows, dtype=np.float64)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3].astype(np.int64), arr[:, 4].astype(np.int64)


def band_edges(scores: np.ndarray, threshold: float) -> list[tuple[str, float, float]]:
    """Five bands around the threshold: well below, just below, just above, above, highest."""
    lo, hi = float(scores.min()), float(scores.max())
    q99 = float(np.quantile(scores, 0.99))
    width = (q99 - threshold) / 3 if q99 > threshold else (hi - lo) / 6
    width = float(f"{max(width, 1e-6):.2g}")
    t = threshold
    return [
        ("well below the threshold", -math.inf, t - width),
        ("just below the threshold", t - width, t),
        ("just above the threshold", t, t + width),
        ("above the threshold", t + width, t + 2 * width),
        ("highest (check for boilerplate)", t + 2 * width, math.inf),
    ]


def _sample_pairs(cfg: Config, job, src_idx: np.ndarray, tgt_idx: np.ndarray, scores: np.ndarray) -> list[dict]:
    if len(src_idx) == 0:
        return []
    wanted = {"src": {int(i) for i in src_idx}, "tgt": {int(i) for i in tgt_idx}}
    found: dict[str, dict[int, tuple[int, str]]] = {}
    with session_scope(cfg.db_url) as s:
        for side, corpus_id in (("src", job.src_corpus_id), ("tgt", job.tgt_corpus_id)):
            rows = s.execute(select(Sentence.idx, Sentence.line_no, Sentence.text)
                             .where(Sentence.corpus_id == corpus_id, Sentence.idx.in_(sorted(wanted[side])))).all()
            found[side] = {int(idx): (int(line), text) for idx, line, text in rows}
    out = []
    for s_i, t_i, score in sorted(zip(src_idx.tolist(), tgt_idx.tolist(), scores.tolist()), key=lambda r: -r[2]):
        (s_line, s_text), (t_line, t_text) = found["src"][s_i], found["tgt"][t_i]
        out.append({"score": score, "src": s_text, "tgt": t_text, "src_line": s_line + 1, "tgt_line": t_line + 1})
    return out


def fitted_curves(density) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(x, null, translation)`` float arrays from a threshold record's ``density`` (expected
    candidates per unit score), or None when it is missing or malformed."""
    if not isinstance(density, dict):
        return None
    try:
        arrays = [np.array([np.nan if v is None else v for v in density[key]], dtype=np.float64)
                  for key in ("x", "null", "translation")]
    except (KeyError, TypeError, ValueError):
        return None
    x = arrays[0]
    if x.ndim != 1 or len(x) < 2 or any(a.shape != x.shape for a in arrays):
        return None
    return arrays[0], arrays[1], arrays[2]


def draw(scores: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, threshold: float, title: str,
         seed: int = 0, method: str | None = None, density: dict | None = None) -> bytes:
    """The two-panel PNG (histogram with threshold, length-ratio scatter) as bytes. ``method`` labels
    the threshold line; ``density`` (``{"x", "null", "translation"}``, expected candidates per unit
    score) adds the fitted parts, scaled by the bin width to candidates per bar."""
    fig = figure(scores, src_len, tgt_len, threshold, title, seed, method, density)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Title": title, "Description": "score histogram with threshold; "
                                              "length-ratio scatter"})
    return buf.getvalue()


def figure(scores: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, threshold: float, title: str,
           seed: int = 0, method: str | None = None, density: dict | None = None):
    """The matplotlib figure :func:`draw` renders."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    above = scores >= threshold
    n_above = int(above.sum())
    fig = Figure(figsize=(12, 4.6), dpi=100, layout="constrained")
    hist, scatter = fig.subplots(1, 2, width_ratios=[1.15, 1])
    bins = np.histogram_bin_edges(scores, bins=min(80, max(10, int(math.sqrt(len(scores))))))
    width = float(bins[1] - bins[0]) if len(bins) > 1 else 1.0
    if threshold > scores.min() and threshold < scores.max():
        bins = np.unique(np.sort(np.append(bins, threshold)))  # a bar edge on the threshold: no mixed bar
    hist.hist(scores[~above], bins=bins, color=BELOW_COLOUR, label=f"below: {len(scores) - n_above:,}")
    hist.hist(scores[above], bins=bins, color=ABOVE_COLOUR, label=f"at or above: {n_above:,} pairs")
    curves = fitted_curves(density)
    if curves is not None:
        x, null, translation = curves
        hist.plot(x, null * width, color=NULL_FIT_COLOUR, linewidth=1.4, label="non-translations (estimated)")
        hist.plot(x, translation * width, color=TRANSLATION_FIT_COLOUR, linewidth=1.6, label="translations (estimated)")
        hist.set_xlim(min(float(scores.min()), float(np.nanmin(x))), max(float(scores.max()), float(np.nanmax(x))))
    how = f" ({method})" if method else ""
    hist.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.5,
                 label=f"threshold {threshold:g}{how}")
    hist.set_title(f"Scores of {len(scores):,} candidates; {n_above:,} pairs \u2265 {threshold:g}{how}")
    hist.set_xlabel("margin score")
    hist.set_ylabel("candidates")
    # Below the panel, not on it: inside, the legend covered the bars of a dense job's high scores.
    hist.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False, fontsize="small")

    ratio = np.maximum(src_len, 1) / np.maximum(tgt_len, 1)
    idx = np.arange(len(scores))
    if len(idx) > MAX_SCATTER_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_SCATTER_POINTS, replace=False))
    sub_above = above[idx]
    scatter.scatter(scores[idx][~sub_above], ratio[idx][~sub_above], s=5, alpha=0.6, color="#7570b3",
                    linewidths=0, label="below threshold")
    scatter.scatter(scores[idx][sub_above], ratio[idx][sub_above], s=5, alpha=0.5, color="#d95f02",
                    linewidths=0, label="at or above")
    scatter.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2)
    scatter.axhline(1.0, color="#555555", linewidth=0.8)
    scatter.set_yscale("log", base=2)
    lo_exp = int(math.floor(math.log2(max(ratio.min(), 1e-3))))
    hi_exp = int(math.ceil(math.log2(ratio.max())))
    ticks = [2.0**k for k in range(lo_exp, hi_exp + 1)]
    scatter.yaxis.set_major_locator(FixedLocator(ticks))
    scatter.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v >= 1 else f"1/{1 / v:g}"))
    scatter.yaxis.set_minor_formatter(NullFormatter())
    scatter.set_xlabel("margin score")
    scatter.set_ylabel("length ratio (source / target characters)")
    shown = f" ({len(idx):,} of {len(scores):,} shown)" if len(idx) < len(scores) else ""
    scatter.set_title(f"Length ratio against score{shown}")
    scatter.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False, markerscale=3,
                   fontsize="small")
    fig.suptitle(title)
    return fig


def build_report(cfg: Config, job_id: int, html_path: str | Path, png_path: str | Path | None = None, *,
                 per_band: int = 10, seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """Write the HTML (and the PNG, default: the HTML name with .png). Returns a summary dict."""
    html_path = Path(html_path)
    png_path = Path(png_path) if png_path else html_path.with_suffix(".png")
    for path in (html_path, png_path):
        if not path.parent.exists():
            raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    page, png, summary = render_report(cfg, job_id, per_band=per_band, seed=seed, log=log)
    summary.update(html=str(html_path), png=str(png_path))
    with atomic_path(png_path) as tmp:
        tmp.write_bytes(png)
        as_user_file(tmp)
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
        as_user_file(tmp)
    return summary


def render_report(cfg: Config, job_id: int, *, per_band: int = 10, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> tuple[str, bytes, dict]:
    """The report's HTML page, its PNG and a summary dict (``bands`` with their samples in
    ``samples``), without writing anything (``miner report`` and :mod:`miner.faces.api`)."""
    log = log or (lambda message: None)
    if per_band < 0:
        raise UsageError(f"--per-band must be at least 0, got {per_band}")
    job = load_done_job(cfg, job_id, "report")
    log(f"report job {job_id}: reading the candidates")
    scores, src_len, tgt_len, src_idx, tgt_idx = _load(cfg, job)
    from miner.pipeline.threshold import effective_threshold, threshold_status

    threshold = effective_threshold(job)
    info = threshold_status(job)
    if threshold is None:
        threshold = float(np.median(scores))
        info = {"value": threshold, "method": "median (the job keeps every candidate)"}
    with session_scope(cfg.db_url) as s:
        corpora = {side: s.get(Corpus, cid) for side, cid in (("src", job.src_corpus_id), ("tgt", job.tgt_corpus_id))}
    log(f"report job {job_id}: drawing {len(scores):,} scores")
    title = f"job {job.id}: {job.src_lang}-{job.tgt_lang}, model {job.model}, margin {job_spec(job).margin}"
    density = (job.threshold_info or {}).get("density") if isinstance(job.threshold_info, dict) else None
    png = draw(scores, src_len, tgt_len, threshold, title, seed, method=info.get("method"), density=density)
    rng = np.random.default_rng(seed)
    bands = []
    for name, lo, hi in band_edges(scores, threshold):
        in_band = np.flatnonzero((scores >= lo) & (scores < hi))
        pick = np.sort(rng.choice(in_band, min(per_band, len(in_band)), replace=False)) if len(in_band) else in_band
        bands.append(Band(name, lo, hi, int(len(in_band)),
                          _sample_pairs(cfg, job, src_idx[pick], tgt_idx[pick], scores[pick])))
    n_above = int((scores >= threshold).sum())
    ratio = np.maximum(src_len, 1) / np.maximum(tgt_len, 1)
    above = scores >= threshold
    summary = {
        "job": job.id,
        "threshold": threshold,
        "threshold_method": info.get("method"),
        "threshold_info": info,
        "fitted": fitted_curves(density) is not None,
        "candidates": int(len(scores)),
        "above_threshold": n_above,
        "bands": [{"name": b.name, "lo": b.lo, "hi": b.hi, "count": b.count, "sampled": len(b.sample)} for b in bands],
        "extreme_length_ratio_above": int(((ratio[above] > 2) | (ratio[above] < 0.5)).sum()),
    }
    page = _html(job, corpora, summary, bands, png, scores)
    summary["samples"] = {b.name: b.sample for b in bands}
    return page, png, summary


def _fmt_range(lo: float, hi: float) -> str:
    if math.isinf(lo):
        return f"< {hi:.4g}"
    if math.isinf(hi):
        return f">= {lo:.4g}"
    return f"{lo:.4g} to < {hi:.4g}"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; } h3 { font-size: 1em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.pairs td.text { max-width: 36em; overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 .3em; }
.note { color: #555; font-size: .9em; }
"""


def _percent(value) -> str | None:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and math.isfinite(value) else None


def _threshold_rows(info: dict) -> list[tuple[str, str]]:
    """Summary rows about how the threshold was chosen: the method and, for auto, its evidence."""
    method = info.get("method") or "none"
    described = {"auto": "auto (estimated from this job's score distribution)",
                 "fallback": "fallback (auto could not estimate; the model's fixed default)",
                 "fixed": "fixed (--threshold)", "calibrated": "calibrated (`miner calibrate`)"}
    rows = [("threshold method", described.get(method, method))]
    if method == "fallback":
        rows.append(("why auto fell back", str(info.get("reason") or "no reason recorded")))
    if method == "auto":
        rows.append(("estimated share of translations among the candidates",
                     _percent(info.get("share")) or "not estimated"))
        rows.append(("estimated precision at the threshold", _percent(info.get("precision")) or "not estimated"))
        recall = _percent(info.get("recall"))
        if recall:
            rows.append(("estimated recall at the threshold", recall))
        if info.get("uncertain"):
            rows.append(("uncertain cut", "few translations, or much overlap with the rest: the cut can miss the "
                                          "best one by 4-10 F1; calibrate it on a judged sample "
                                          "(`miner calibrate --sample`)"))
    return rows


def _html(job, corpora: dict, summary: dict, bands: list[Band], png: bytes, scores: np.ndarray) -> str:
    e = html.escape
    opts = job_spec(job)
    threshold = summary["threshold"]
    rows = [
        ("languages", f"{job.src_lang} → {job.tgt_lang}"),
        ("source", f"{job.src_path} ({corpora['src'].n_sentences:,} sentences)" if corpora["src"] else job.src_path),
        ("target", f"{job.tgt_path} ({corpora['tgt'].n_sentences:,} sentences)" if corpora["tgt"] else job.tgt_path),
        ("model", job.model),
        ("margin / k / retrieval", f"{opts.margin} / {opts.k} / {opts.retrieval}"),
        ("threshold", f"{threshold:g}"),
        *_threshold_rows(summary["threshold_info"]),
        ("candidates stored", f"{summary['candidates']:,}"),
        ("pairs at or above the threshold", f"{summary['above_threshold']:,}"),
        ("scores (min / median / max)", f"{scores.min():.4f} / {np.median(scores):.4f} / {scores.max():.4f}"),
        ("pairs above the threshold with a length ratio over 2 or under 1/2",
         f"{summary['extreme_length_ratio_above']:,}"),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>bitext-miner report: job {job.id}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Job {job.id}: {e(job.src_lang)} → {e(job.tgt_lang)}</h1>",
        f'<p class="note">Generated {dt.datetime.now().strftime("%Y-%m-%d %H:%M")} by <code>miner report</code>.</p>',
        "<table>",
        *(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows),
        "</table>",
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
        'alt="Histogram of candidate scores with the threshold, and length ratio against score">',
        f"<p>Export the pairs at this threshold with <code>miner export {job.id} -o pairs.tsv</code>; try another "
        f"with <code>--min-score S</code>; see <code>miner export --help</code> for filters.</p>",
        "<h2>Pairs per score band</h2>",
        '<table><tr><th>band</th><th>scores</th><th class="num">pairs</th><th class="num">share</th></tr>',
    ]
    total = max(summary["candidates"], 1)
    for b in bands:
        out.append(f"<tr><td>{e(b.name)}</td><td>{e(_fmt_range(b.lo, b.hi))}</td><td class=\"num\">{b.count:,}</td>"
                   f"<td class=\"num\">{100 * b.count / total:.1f}%</td></tr>")
    out.append("</table>")
    out.append("<h2>Random sample per band</h2>")
    out.append('<p class="note">Line numbers are 1-based lines of the input files.</p>')
    for b in bands:
        out.append(f"<h3>{e(b.name)}: scores {e(_fmt_range(b.lo, b.hi))} ({b.count:,} pair{'' if b.count == 1 else 's'})</h3>")
        if not b.sample:
            out.append('<p class="note">no pairs in this band</p>')
            continue
        out.append('<table class="pairs"><tr><th class="num">score</th><th class="num">src line</th>'
                   '<th>source</th><th class="num">tgt line</th><th>target</th></tr>')
        for p in b.sample:
            out.append(f"<tr><td class=\"num\">{p['score']:.4f}</td><td class=\"num\">{p['src_line']}</td>"
                       f"<td class=\"text\" lang=\"{e(job.src_lang)}\" dir=\"auto\">{e(p['src'])}</td>"
                       f"<td class=\"num\">{p['tgt_line']}</td>"
                       f"<td class=\"text\" lang=\"{e(job.tgt_lang)}\" dir=\"auto\">{e(p['tgt'])}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
