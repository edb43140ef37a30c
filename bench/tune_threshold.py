#!/usr/bin/env python3
"""Tune the default ``--threshold`` of a model on the shared Tatoeba data.

For each language L in deu, fra, spa this builds one BUCC-style case:

* source: ``tatoeba.L-eng.L`` (all 1,000 lines);
* target: ``tatoeba.L-eng.eng`` mixed with the first N lines of
  ``distractors.eng`` (English sentences that translate nothing), shuffled
  with a fixed seed;
* gold: the 1,000 Tatoeba pairs, as (normalised source, normalised target).

Both sides are read with :func:`miner.io.reader.read_sentences` (the product's
normalisation and de-duplication), embedded with the model through
:mod:`miner.embedding.encoders` (loaded once; every distinct text is embedded once), and
mined with :func:`miner.core.mining.mine` (retrieval ``max``, no threshold) for each
margin (ratio, distance, absolute).  Thresholding is the last step of mining,
so the pairs exported at threshold ``t`` are exactly the candidates scoring
``>= t``; a threshold sweep over the candidate scores gives:

* per language: precision / recall / F1 at that language's best threshold;
* per margin: ONE threshold maximising the mean F1 over the languages,
  rounded (ratio and absolute to 2 decimals, distance to 3) and re-evaluated
  at the rounded value.  Of the two grid values around the optimum the one
  with the higher mean F1 is taken (on a tie, the nearer one).

Recall = distinct gold pairs exported / 1,000 (all gold pairs, including any
that de-duplication made unreachable); precision = gold pairs exported /
pairs exported.

Usage (from the repository root)::

    python bench/tune_threshold.py [--model muse] [--distractors 5000] [--seed 0] [--k 4]
    python bench/tune_threshold.py --json            # JSON on stdout instead of the table
    python bench/tune_threshold.py --json out.json   # table on stdout, JSON to out.json

Progress goes to stderr.  The data is read from ``../shared/data`` relative to
the repository root (``--data``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

from miner.core import mining  # noqa: E402
from miner.embedding.encoders import encode, load_model, resolve_model  # noqa: E402
from miner.io.reader import normalise, read_sentences  # noqa: E402

LANGUAGES = ("deu", "fra", "spa")
MARGINS = ("ratio", "distance", "absolute")
#: decimals of the recommended threshold per margin
DECIMALS = {"ratio": 2, "distance": 3, "absolute": 2}
DEFAULT_DATA = REPO.parent / "shared" / "data"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def raw_lines(path: Path) -> list[str]:
    """Physical lines of a UTF-8 file, split on ``\\n`` only (as the reader does)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.decode("utf-8") for line in lines]


def read_side(path: Path) -> list[str]:
    return [text for _, text in read_sentences(path)]


# --------------------------------------------------------------------------
# cases


class Case:
    """One language's mining case, read back through the product's reader."""

    def __init__(self, lang: str, src: list[str], tgt: list[str], gold: set, n_gold: int) -> None:
        self.lang = lang
        self.src = src  # normalised, de-duplicated source sentences
        self.tgt = tgt  # normalised, de-duplicated target sentences
        self.gold = gold  # {(src text, tgt text)}
        self.n_gold = n_gold  # recall denominator: all gold lines
        src_set, tgt_set = set(src), set(tgt)
        self.n_reachable = sum(1 for s, t in gold if s in src_set and t in tgt_set)


def build_case(lang: str, data: Path, distractors: list[str], seed: int, workdir: Path) -> Case:
    src_path = data / "tatoeba" / f"tatoeba.{lang}-eng.{lang}"
    eng_path = data / "tatoeba" / f"tatoeba.{lang}-eng.eng"
    src_raw, eng_raw = raw_lines(src_path), raw_lines(eng_path)
    if len(src_raw) != len(eng_raw):
        raise SystemExit(f"{src_path} and {eng_path} have different line counts")
    target = eng_raw + distractors
    random.Random(seed).shuffle(target)
    tgt_path = workdir / f"target.{lang}-eng.eng"
    tgt_path.write_text("".join(line + "\n" for line in target), encoding="utf-8")
    gold = {(normalise(s), normalise(t)) for s, t in zip(src_raw, eng_raw)}
    gold = {(s, t) for s, t in gold if s and t}
    return Case(lang, read_side(src_path), read_side(tgt_path), gold, len(src_raw))


# --------------------------------------------------------------------------
# threshold sweep


# Curve (P/R/F1 of a candidate list as a function of the threshold) and prf are the product's own
# (miner.faces.quality), so `miner eval`/`calibrate` and this script count the same way.
from miner.faces.quality import Curve  # noqa: E402


def best_single(curve: Curve) -> dict:
    cands = np.unique(curve.desc)
    f1 = curve.f1(cands)
    return curve.at(float(cands[int(np.argmax(f1))]))


def grid_neighbours(t: float, decimals: int) -> list[float]:
    scale = 10**decimals
    lo = math.floor(t * scale)
    return [round(lo / scale, decimals), round((lo + 1) / scale, decimals)]


def best_shared(curves: dict[str, Curve], decimals: int) -> dict:
    cands = np.unique(np.concatenate([c.desc for c in curves.values()]))
    mean = np.mean([c.f1(cands) for c in curves.values()], axis=0)
    i = int(np.argmax(mean))
    raw_t, raw_mean = float(cands[i]), float(mean[i])
    options = []
    for t in grid_neighbours(raw_t, decimals):
        m = float(np.mean([c.f1([t])[0] for c in curves.values()]))
        options.append((-m, abs(t - raw_t), t))
    options.sort()
    t = options[0][2]
    per_lang = {lang: c.at(t) for lang, c in curves.items()}
    return {
        "threshold_unrounded": raw_t,
        "mean_f1_unrounded": raw_mean,
        "threshold": t,
        "mean_f1": float(np.mean([v["f1"] for v in per_lang.values()])),
        "per_language": per_lang,
    }


# --------------------------------------------------------------------------
# output


def pct(x: float) -> str:
    return f"{100 * x:5.1f}"


def fmt_t(t: float) -> str:
    return f"{t:.4f}"


def table(result: dict) -> str:
    cfg = result["config"]
    out = [
        f"model {cfg['model']} | k={cfg['k']} | retrieval max | {cfg['distractors']} distractors "
        f"| seed {cfg['seed']}",
        "",
        "case   src   tgt   gold  reachable",
    ]
    for lang, c in result["cases"].items():
        out.append(f"{lang:<5} {c['n_src']:>4} {c['n_tgt']:>5} {c['n_gold']:>6} {c['n_reachable']:>10}")
    for margin, m in result["margins"].items():
        sh = m["shared"]
        t = f"{sh['threshold']:.{cfg['decimals'][margin]}f}"
        out += [
            "",
            f"margin {margin}",
            f"  {'lang':<5} | {'best thr':>8} {'P':>5} {'R':>5} {'F1':>5} | "
            f"{'shared':>8} {'P':>5} {'R':>5} {'F1':>5}  exported",
        ]
        for lang, b in m["per_language"].items():
            s = sh["per_language"][lang]
            out.append(
                f"  {lang:<5} | {fmt_t(b['threshold']):>8} {pct(b['precision'])} {pct(b['recall'])} "
                f"{pct(b['f1'])} | {t:>8} {pct(s['precision'])} {pct(s['recall'])} {pct(s['f1'])}"
                f"  {s['exported']:>4} ({s['gold_found']} gold)"
            )
        mean_best = np.mean([b["f1"] for b in m["per_language"].values()])
        out.append(
            f"  {'mean':<5} | {'':>8} {'':>5} {'':>5} {pct(mean_best)} | {t:>8} {'':>5} {'':>5} "
            f"{pct(sh['mean_f1'])}"
        )
        out.append(
            f"  shared optimum {fmt_t(sh['threshold_unrounded'])} (mean F1 "
            f"{pct(sh['mean_f1_unrounded']).strip()}) -> recommended {t} (mean F1 "
            f"{pct(sh['mean_f1']).strip()})"
        )
    out += ["", "recommended THRESHOLDS[" + repr(cfg["model"]) + "] = " + json.dumps(result["recommended"])]
    return "\n".join(out)


# --------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="muse", help="muse (default), minilm, a model directory or a hub id")
    ap.add_argument("--distractors", type=int, default=5000, help="English distractor lines mixed in (default 5000)")
    ap.add_argument("--seed", type=int, default=0, help="shuffle seed of the target side (default 0)")
    ap.add_argument("--k", type=int, default=4, help="neighbourhood size (default 4)")
    ap.add_argument("--languages", default=",".join(LANGUAGES), help="comma-separated (default deu,fra,spa)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the model and faiss (default 2)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data directory (default {DEFAULT_DATA})")
    ap.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="machine output: JSON on stdout instead of the table, or written to PATH",
    )
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    if args.distractors < 0:
        raise SystemExit("--distractors must be >= 0")
    distractors = raw_lines(args.data / "distractors.eng")
    if args.distractors > len(distractors):
        raise SystemExit(f"--distractors {args.distractors}: the file has only {len(distractors)} lines")
    distractors = distractors[: args.distractors]

    with tempfile.TemporaryDirectory(prefix="tune_threshold-") as tmp:
        cases = {lang: build_case(lang, args.data, distractors, args.seed, Path(tmp)) for lang in languages}

    spec = resolve_model(args.model)
    t0 = time.perf_counter()
    model = load_model(spec, threads=args.threads)
    log(f"loaded model {spec.name} ({spec.key}) in {time.perf_counter() - t0:.1f}s")
    texts = sorted({t for c in cases.values() for t in c.src + c.tgt})
    t0 = time.perf_counter()
    emb = encode(model, texts, batch_size=args.batch_size)
    log(f"embedded {len(texts)} distinct sentences in {time.perf_counter() - t0:.1f}s")
    row = {t: i for i, t in enumerate(texts)}

    margins: dict = {m: {"per_language": {}, "curves": {}} for m in MARGINS}
    for lang, c in cases.items():
        x = emb[[row[t] for t in c.src]]
        y = emb[[row[t] for t in c.tgt]]
        for margin in MARGINS:
            src, tgt, scores, _ = mining.mine(x, y, k=args.k, margin=margin, retrieval="max", threshold=None)
            hits = np.fromiter(((c.src[s], c.tgt[t]) in c.gold for s, t in zip(src, tgt)), bool, len(src))
            curve = Curve(scores, hits, c.n_gold)
            margins[margin]["curves"][lang] = curve
            margins[margin]["per_language"][lang] = best_single(curve)
        log(f"mined {lang}: {len(c.src)} x {len(c.tgt)}")

    for margin, m in margins.items():
        m["shared"] = best_shared(m.pop("curves"), DECIMALS[margin])

    return {
        "config": {
            "model": args.model,
            "model_key": spec.key,
            "k": args.k,
            "retrieval": "max",
            "distractors": args.distractors,
            "seed": args.seed,
            "languages": languages,
            "decimals": DECIMALS,
        },
        "cases": {
            lang: {
                "n_src": len(c.src),
                "n_tgt": len(c.tgt),
                "n_gold": c.n_gold,
                "n_gold_distinct": len(c.gold),
                "n_reachable": c.n_reachable,
            }
            for lang, c in cases.items()
        },
        "margins": margins,
        "recommended": {m: margins[m]["shared"]["threshold"] for m in MARGINS},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json == "-":
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
