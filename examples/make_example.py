#!/usr/bin/env python3
"""Make the quick-start example corpus (sample.de, sample.en, gold.tsv) from the shared Tatoeba data.

Deterministic (fixed seed).  Reads ``../shared/data`` relative to the repository root:

* 300 German-English pairs drawn from ``tatoeba/tatoeba.deu-eng.*``; their German sides, in a
  shuffled order, are ``sample.de``;
* ``sample.en`` holds the English partners of the first 240 of those German lines (gold pairs;
  the other 60 German lines have no partner), plus 60 + 100 = 160 lines drawn from
  ``distractors.eng`` (English sentences that translate nothing in the German file), shuffled;
* ``gold.tsv`` lists the 240 gold pairs as ``de<TAB>en``, in the order of ``sample.de``.

Run from anywhere: ``python examples/make_example.py`` (writes next to this script).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"

SEED = 20240601
N_PAIRS = 300  # German lines
N_GOLD = 240  # of which have their English partner in sample.en
N_UNPAIRED_EN = 60  # English lines without a German partner ...
N_EXTRA_DISTRACTORS = 100  # ... and 100 more distractor lines


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n") for line in f]


def write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED, help=f"shared data directory (default {SHARED})")
    ap.add_argument("--out", type=Path, default=HERE, help=f"output directory (default {HERE})")
    args = ap.parse_args(argv)

    de = read_lines(args.shared / "tatoeba" / "tatoeba.deu-eng.deu")
    en = read_lines(args.shared / "tatoeba" / "tatoeba.deu-eng.eng")
    assert len(de) == len(en), "the Tatoeba files must be line-parallel"
    distractors = read_lines(args.shared / "distractors.eng")

    def clean(s: str) -> str:
        return " ".join(s.split())

    rng = random.Random(SEED)
    # Pairs with unique, non-empty, tab-free sides (all of them in the shared data).
    seen_de, seen_en, pairs = set(), set(), []
    for d, e in zip(de, en):
        d, e = clean(d), clean(e)
        if d and e and d not in seen_de and e not in seen_en:
            seen_de.add(d)
            seen_en.add(e)
            pairs.append((d, e))
    chosen = rng.sample(pairs, N_PAIRS)  # random order: this is the German file's order
    gold = chosen[:N_GOLD]

    all_en = {e.casefold() for _, e in pairs}
    pool = sorted({clean(x) for x in distractors if clean(x) and clean(x).casefold() not in all_en})
    extra = rng.sample(pool, N_UNPAIRED_EN + N_EXTRA_DISTRACTORS)

    sample_de = [d for d, _ in chosen]
    sample_en = [e for _, e in gold] + extra
    rng.shuffle(sample_en)

    args.out.mkdir(parents=True, exist_ok=True)
    write_lines(args.out / "sample.de", sample_de)
    write_lines(args.out / "sample.en", sample_en)
    write_lines(args.out / "gold.tsv", [f"{d}\t{e}" for d, e in gold])
    print(
        f"sample.de: {len(sample_de)} lines, sample.en: {len(sample_en)} lines, "
        f"gold.tsv: {len(gold)} pairs -> {args.out}"
    )


if __name__ == "__main__":
    main()
