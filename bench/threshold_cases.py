#!/usr/bin/env python3
"""Many draws of the threshold bench's cases, mined in one process (for method work).

``bench/threshold.py`` mines each case through ``miner mine`` (10-30 s a job, mostly process start
and model load). Choosing a method leave-one-language-out needs many draws of every case, so this
script builds the same cases with the shared ``tools/mining_bench.py build`` and mines them with
the product's own functions in one process: each distinct sentence is embedded once (a draw only
changes which sentences a case holds), then kNN both ways (exact, ``k`` = the default), the ratio
margin with decoys and ``max`` retrieval, as the finish step gives them to
:func:`miner.core.autocut.decide`. It writes ``DIR/npz/CASE.npz`` in the format of
``bench/threshold_offline.py extract`` (the candidates, per-sentence scores and decoys, gold
labels and lengths), so ``threshold_offline.py eval / draws`` read either.

Usage (from the repository root)::

    python bench/threshold_cases.py DIR [--seeds 13,1,2,3,4] [--extra] [--knn 8]

``--knn K`` also keeps each sentence's K nearest neighbours both ways (``SX``, ``IX``, ``SY``, ``IY``,
K >= the default k) and the gold pairs as sentence indices (``gold_pairs``), for variants that need
more than the per-sentence best and decoy (``bench/threshold_variants.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from threshold import DATA, TOOL, build, cases, key  # noqa: E402


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--seeds", default="1,2,3,4", help="draws besides seed 13 (CASE-sN)")
    ap.add_argument("--extra", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--knn", type=int, default=0, metavar="K", help="also store K neighbours both ways and the gold indices")
    args = ap.parse_args(argv)
    if not TOOL.exists():
        raise SystemExit(f"{TOOL} not found: this bench needs the shared data beside the repository")
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    from miner.core import mining
    from miner.runtime import defaults
    from miner.embedding.encoders import encode, load_model, resolve_model
    from miner.core.neighbours import knn

    model = load_model(resolve_model("muse"), threads=2)
    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in cache})
        for lo in range(0, len(new), 2048):
            part = new[lo:lo + 2048]
            for t, v in zip(part, encode(model, part, batch_size=256)):
                cache[t] = v
        return np.stack([cache[t] for t in texts]).astype(np.float32)

    out_dir = args.work / "npz"
    out_dir.mkdir(parents=True, exist_ok=True)
    k = defaults.K
    for case in cases(args.extra, seeds):
        if args.only and case["name"] not in args.only.split(","):
            continue
        path = out_dir / f"{case['name']}.npz"
        if path.exists():
            continue
        folder = build(case, args.work)
        src_text = [t for t in read(next(folder.glob("src.*")))]
        tgt_text = [t for t in read(folder / "tgt.eng")]
        x, y = embed(src_text), embed(tgt_text)
        kx, ky = min(k, len(tgt_text)), min(k, len(src_text))
        extra = {}
        if args.knn > k:
            big_x, big_ix = knn(x, y, min(args.knn, len(tgt_text)))
            big_y, big_iy = knn(y, x, min(args.knn, len(src_text)))
            sx, ix, sy, iy = big_x[:, :kx], big_ix[:, :kx], big_y[:, :ky], big_iy[:, :ky]
            extra = {"SX": big_x, "IX": big_ix, "SY": big_y, "IY": big_iy}
        else:
            sx, ix = knn(x, y, kx)
            sy, iy = knn(y, x, ky)
        mx, my = mining.knn_mean(sx), mining.knn_mean(sy)
        fb, fs, fd = mining.best_candidates_with_decoy(sx, ix, mx, my, defaults.MARGIN)
        bb, bs, bd = mining.best_candidates_with_decoy(sy, iy, my, mx, defaults.MARGIN)
        src, tgt, scores, direction = mining.retrieve(fb, fs, bb, bs, defaults.RETRIEVAL, threshold=None)
        gold = set()
        for line in read(folder / "gold.tsv"):
            if line:
                a, b = line.split("\t")[:2]
                gold.add((key(a), key(b)))
        label = np.array([(key(src_text[i]), key(tgt_text[j])) in gold for i, j in zip(src.tolist(), tgt.tolist())])
        if extra:
            targets: dict[str, list[int]] = {}
            for j, t in enumerate(tgt_text):
                targets.setdefault(key(t), []).append(j)
            partners: dict[str, list[str]] = {}
            for a, b in gold:
                partners.setdefault(a, []).append(b)
            pairs = sorted({(i, j) for i, t in enumerate(src_text) for b in partners.get(key(t), ())
                            for j in targets.get(b, ())})
            extra["gold_pairs"] = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        np.savez(path, scores=scores, direction=direction, src=src, tgt=tgt, fwd_best=fb, bwd_best=bb,
                 fwd_scores=fs, bwd_scores=bs, fwd_decoy=fd, bwd_decoy=bd, label=label,
                 src_len=np.array([len(src_text[i]) for i in src.tolist()]),
                 tgt_len=np.array([len(tgt_text[j]) for j in tgt.tolist()]),
                 n_gold=len(gold), fixed=1.05, margin=defaults.MARGIN, **extra)
        print(f"{case['name']}: {len(scores)} candidates, {int(label.sum())} gold among them of {len(gold)}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
