"""Checks that run before a job exists, on a sample of each side (miner.io.reader.count_sentences /
sample_sentences, miner.io.langid.side_language_warning): cheap whatever the file's size."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from miner.io.inputs import SAMPLE_LINES, count_sentences, sample_sentences, side_language_warning

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TATOEBA = Path(__file__).parent / "data" / "tatoeba"


def test_swapped_language_codes_are_warned_about():
    """`--src-lang en --tgt-lang de` for a German source passed silently, and `export --langid`
    then wrote 0 pairs."""
    de, en = EXAMPLES / "sample.de", EXAMPLES / "sample.en"
    src = side_language_warning(de, "en", "src", "de")
    tgt = side_language_warning(en, "de", "tgt", "en")
    assert src.startswith("--src-lang en, but ") and f"of the first {SAMPLE_LINES} sentences of {de} read as 'de'" in src
    assert src.endswith("-- are --src-lang and --tgt-lang swapped?")
    assert tgt.startswith("--tgt-lang de, but ") and "read as 'en'" in tgt
    # A wrong code that is not the other side's: no talk of swapping.
    assert side_language_warning(de, "fr", "src", "en").endswith("-- check --src-lang (the code is a label for "
                                                                 "the export's --langid filter)")


def test_right_codes_and_unknown_ones_pass_silently(tmp_path):
    for lang, code in (("deu", "de"), ("fra", "fr"), ("spa", "es")):
        assert side_language_warning(TATOEBA / f"tatoeba.{lang}-eng.{lang}", code, "src", "en") is None
        assert side_language_warning(TATOEBA / f"tatoeba.{lang}-eng.eng", "en", "tgt", code) is None
    assert side_language_warning(EXAMPLES / "sample.de", "deu", "src", "en") is None  # ISO 639-3 works too
    assert side_language_warning(EXAMPLES / "sample.de", "xx", "src", "en") is None  # a label the identifier lacks
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert side_language_warning(fifo, "en", "src") is None  # never read twice


def test_counting_stops_early_and_skips_blank_lines(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("\n \t\nfirst\n\nsecond\n" + "more\n" * 100_000, encoding="utf-8")
    assert count_sentences(path, 3) == 3
    assert sample_sentences(path, 2) == ["first", "second"]
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"\n\n \xc2\xa0 \n\r\n")
    assert count_sentences(blank, 5) == 0
    two = tmp_path / "two.txt.gz"
    two.write_bytes(gzip.compress(b"eins\nzwei\n"))
    assert count_sentences(two, 5) == 2  # compressed files are counted decompressed
