#!/usr/bin/env python3
"""Mutation fuzzer for the ingest reader (``miner.io.reader``), with a kept corpus.

    python bench/fuzz_reader.py --seconds 180 --seed 1            # fuzz for 3 minutes
    python bench/fuzz_reader.py --seconds 600 --save-new 10       # ... and keep 10 new inputs
    python bench/fuzz_reader.py --write-seeds                     # (re)write the seed files

Every input is a file on disk (the reader takes paths; the name's ``.gz``/``.xz`` suffix matters).
It is run through :func:`check_input_file` and through :func:`read_sentences` with every
``on_decode_error`` policy and several ``max_chars`` (see :func:`examine`). A ``MinerError``
(subclass) is an acceptable outcome. A crash is anything else:

* any other exception, or a run longer than ``--timeout`` seconds (a hang);
* an error message on more than one line;
* a yielded sentence that breaks what :func:`miner.io.reader.normalise` promises: empty, longer than
  ``max_chars``, a tab, CR, LF, NUL or any other C0/C1 control character or DEL, any whitespace
  other than single ASCII spaces, a leading or trailing space; or a sentence yielded twice, line
  numbers not increasing, stats that do not add up as the module docstring says;
* a result that differs from a straightforward reference reading of the same bytes (split on
  ``b"\\n"``, decode each line, normalise, drop blank / too long / duplicates in that order), up to
  what the reader documents as unspecified (a line over ``max_chars`` that also has invalid UTF-8
  and is longer than one read chunk may be counted either way).

Inputs are mutations of the corpus files (``tests/fuzz_corpus``, including ``crashes/``): bit flips,
interesting byte sequences inserted or overwritten (BOM, CR, NUL, C1, overlong encodings,
surrogates, code points above U+10FFFF, truncated sequences, gzip/xz magic, long runs), splices of
two files, deletions, duplications, truncation; and wrapping in gzip or xz (also truncated,
multi-member, with trailing bytes, or under a name without the suffix), and unwrapping, mutating
and re-wrapping compressed inputs. The run is seeded (``--seed``); with ``--inputs`` it is
reproducible exactly.

Each crashing input is written to ``tests/fuzz_corpus/crashes/`` (named by its hash, keeping the
suffix). ``--save-new N`` adds up to N inputs (< 4 KB) whose outcome signature (exception type and
message kind of every check, and which stats counters are non-zero for each policy) no corpus
file had. ``tests/test_fuzz_corpus.py`` replays the whole corpus through the same :func:`examine`.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import lzma
import multiprocessing
import os
import random
import re
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from miner.io import reader  # noqa: E402
from miner.runtime.errors import MinerError  # noqa: E402
from miner.io.reader import ReadStats, check_input_file, normalise, read_sentences  # noqa: E402

CORPUS = ROOT / "tests" / "fuzz_corpus"
CRASHES = CORPUS / "crashes"
POLICIES = ("skip", "replace", "fail")
MAX_CHARS = (1, 7, 80, 2000)
SIGNATURE_MAX_CHARS = 80  # the max_chars whose stats enter the outcome signature
MAX_INPUT = 1 << 20
SEED_LIMIT = 4096  # committed corpus files stay under this size

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
# C0 controls, DEL and C1 controls: normalise() replaces each with a space.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Crash(Exception):
    """An input broke a promise of the reader."""


# --------------------------------------------------------------------------- the checks


def _message_kind(exc: BaseException, path: Path) -> str:
    """The kind of an error message: path and numbers blanked, cut short."""
    msg = str(exc).replace(str(path), "<path>")
    msg = re.sub(r"\(.*", "", msg)  # the decompressor's own words vary with the bytes
    return re.sub(r"\d+", "N", msg)[:60].strip()


def _check_error(exc: MinerError, where: str) -> None:
    msg = str(exc)
    if not msg or "\n" in msg or "\r" in msg:
        raise Crash(f"{where}: {type(exc).__name__} message is not one line: {msg!r}")


def check_sentence(line_no: int, text: str, max_chars: int, where: str) -> None:
    """What normalise() and read_sentences() promise about one yielded sentence."""
    if not isinstance(line_no, int) or line_no < 0:
        raise Crash(f"{where}: bad line number {line_no!r}")
    if not isinstance(text, str) or not text:
        raise Crash(f"{where}: line {line_no}: empty sentence {text!r}")
    if len(text) > max_chars:
        raise Crash(f"{where}: line {line_no}: {len(text)} characters > max_chars {max_chars}")
    bad = CONTROL.search(text)
    if bad:
        raise Crash(f"{where}: line {line_no}: control character {bad.group()!r} in {text[:80]!r}")
    odd = [c for c in text if c.isspace() and c != " "]
    if odd:
        raise Crash(f"{where}: line {line_no}: whitespace {odd[0]!r} other than a space in {text[:80]!r}")
    if text != text.strip() or "  " in text:
        raise Crash(f"{where}: line {line_no}: leading/trailing or doubled space in {text[:80]!r}")
    if normalise(text, strip_bom=False) != text:
        raise Crash(f"{where}: line {line_no}: normalise() is not idempotent on {text[:80]!r}")


def _compression(path: Path, raw: bytes) -> str | None:
    lower = path.name.lower()
    if lower.endswith(".gz"):
        return "gz"
    if lower.endswith(".xz"):
        return "xz"
    if raw.startswith(GZIP_MAGIC):
        return "gz"
    if raw.startswith(XZ_MAGIC):
        return "xz"
    return None


def decompressed(path: Path) -> bytes | None:
    """The text bytes the reader should see, or None if the file is corrupt (the reader must fail)."""
    raw = path.read_bytes()
    kind = _compression(path, raw)
    try:
        if kind == "gz":
            return gzip.decompress(raw)
        if kind == "xz":
            return lzma.decompress(raw)
    except (OSError, EOFError, zlib.error, lzma.LZMAError):
        return None
    return raw


class Expected:
    """A reference reading of ``data`` (the module docstring of miner.io.reader, done the simple way)."""

    def __init__(self, data: bytes, policy: str, max_chars: int):
        chunk = min(max(4 * max_chars + 8, reader._MIN_CHUNK), reader._MAX_CHUNK)
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        self.yields: list[tuple[int, str]] = []
        self.lines = len(lines)
        self.blank = self.duplicates = self.too_long = self.decode_errors = 0
        self.ambiguous: list[int] = []  # too long AND invalid UTF-8 AND longer than a chunk
        self.fail_at: int | None = None  # policy fail: the line that must raise (1-based)
        self.fail_offset: int | None = None
        self.stop = self.lines  # lines processed before a certain failure
        seen: set[str] = set()
        for i, raw in enumerate(lines):
            newline = i < len(lines) - 1 or data.endswith(b"\n")
            whole = raw + (b"\n" if newline else b"")
            long = len(whole) > chunk if newline else len(raw) > chunk
            try:
                text = whole.decode("utf-8")
                error = None
            except UnicodeDecodeError as exc:
                error = exc
                text = whole.decode("utf-8", errors="replace")
            text = normalise(text, strip_bom=i == 0)
            if error is not None:
                if long and len(text) > max_chars:
                    self.ambiguous.append(i)
                    continue
                if policy == "fail":
                    self.fail_at, self.fail_offset, self.stop = i + 1, error.start, i
                    break
                self.decode_errors += 1
                if policy == "skip":
                    continue
            if len(text) > max_chars:
                self.too_long += 1
            elif not text:
                self.blank += 1
            elif text in seen:
                self.duplicates += 1
            else:
                seen.add(text)
                self.yields.append((i, text))

    def compare(self, out, stats: ReadStats, err: MinerError | None, policy: str, where: str) -> None:
        def wrong(what: str) -> Crash:
            return Crash(f"{where}: {what} (reference: {self.summary()}; reader: {stats.as_dict()}, "
                         f"error {err!r})")

        if err is not None:
            m = re.search(r": line (\d+) is not valid UTF-8 \(byte (\d+) of the line", str(err))
            if policy != "fail" or not m:
                raise wrong("unexpected error")
            line, offset = int(m.group(1)), int(m.group(2)) - 1
            if line == self.fail_at:
                if offset != self.fail_offset:
                    raise wrong(f"decode error reported at byte {offset + 1}, the first bad byte is "
                                f"{self.fail_offset + 1}")
            elif line - 1 not in self.ambiguous:
                raise wrong(f"decode error reported on line {line}")
            if out != [y for y in self.yields if y[0] < line - 1]:
                raise wrong("other sentences before the decode error")
            return
        if self.fail_at is not None:
            raise wrong(f"no error for the invalid UTF-8 on line {self.fail_at}")
        if out != self.yields:
            first = next((a, b) for a, b in zip(out + [None], self.yields + [None]) if a != b)
            raise wrong(f"other sentences: reader {first[0]!r}, reference {first[1]!r}")
        got = stats.as_dict()
        for name in ("lines", "blank", "duplicates"):
            if got[name] != getattr(self, name):
                raise wrong(f"stats.{name}")
        amb = len(self.ambiguous)
        extra_tl, extra_de = got["too_long"] - self.too_long, got["decode_errors"] - self.decode_errors
        ok = {
            "skip": 0 <= extra_tl <= amb and extra_tl + extra_de == amb,
            "replace": extra_tl == amb and 0 <= extra_de <= amb,
            "fail": extra_tl == amb and extra_de == 0,
        }[policy]
        if not ok:
            raise wrong("stats.too_long / decode_errors")

    def summary(self) -> str:
        return (f"lines {self.lines}, sentences {len(self.yields)}, blank {self.blank}, duplicates "
                f"{self.duplicates}, too_long {self.too_long}, decode_errors {self.decode_errors}, "
                f"ambiguous {self.ambiguous[:5]}, fail_at {self.fail_at}")


def check_stats(out, stats: ReadStats, err, policy: str, where: str) -> None:
    s = stats.as_dict()
    if any(v < 0 for v in s.values()):
        raise Crash(f"{where}: negative stats {s}")
    if s["sentences"] != len(out):
        raise Crash(f"{where}: stats.sentences {s['sentences']} but {len(out)} sentences yielded")
    dropped = s["blank"] + s["duplicates"] + s["too_long"] + (s["decode_errors"] if policy == "skip" else 0)
    counted = s["sentences"] + dropped
    # After an error the line being read is counted in `lines` but under no reason.
    if not (s["lines"] == counted or (err is not None and s["lines"] == counted + 1)):
        raise Crash(f"{where}: stats do not add up: {s}")
    if policy == "fail" and s["decode_errors"]:
        raise Crash(f"{where}: policy fail counted decode errors: {s}")
    numbers = [n for n, _ in out]
    if numbers != sorted(set(numbers)) or (numbers and numbers[-1] >= s["lines"]):
        raise Crash(f"{where}: line numbers not increasing / past stats.lines: {numbers[:10]}")
    texts = [t for _, t in out]
    if len(set(texts)) != len(texts):
        raise Crash(f"{where}: a sentence yielded twice")


def examine(path: Path) -> tuple:
    """Run every check on one input file; return its outcome signature, raise Crash on a crash."""
    path = Path(path)
    signature: list = []
    try:
        check_input_file(path)
        signature.append(("check", "ok"))
    except MinerError as exc:
        _check_error(exc, "check_input_file")
        signature.append(("check", type(exc).__name__, _message_kind(exc, path)))
    except Exception as exc:
        raise Crash(f"check_input_file raised {type(exc).__name__}: {exc}") from exc

    data = decompressed(path)
    for policy in POLICIES:
        for max_chars in MAX_CHARS:
            where = f"read_sentences(on_decode_error={policy!r}, max_chars={max_chars})"
            stats, out, err = ReadStats(), [], None
            try:
                for line_no, text in read_sentences(path, max_chars=max_chars, on_decode_error=policy,
                                                    stats=stats):
                    check_sentence(line_no, text, max_chars, where)
                    out.append((line_no, text))
            except MinerError as exc:
                _check_error(exc, where)
                err = exc
            except Crash:
                raise
            except Exception as exc:
                raise Crash(f"{where} raised {type(exc).__name__}: {exc}") from exc
            check_stats(out, stats, err, policy, where)
            if data is None:
                if err is None:
                    raise Crash(f"{where}: no error for a corrupt compressed file")
            else:
                Expected(data, policy, max_chars).compare(out, stats, err, policy, where)
            if max_chars == SIGNATURE_MAX_CHARS:
                nonzero = tuple(k for k, v in stats.as_dict().items() if v and k != "lines")
                kind = "ok" if err is None else (type(err).__name__, _message_kind(err, path))
                signature.append((policy, kind, nonzero))
    return tuple(signature)


# --------------------------------------------------------------------------- seeds

def _rng_bytes(seed: int, n: int, alphabet: bytes | None = None) -> bytes:
    rng = random.Random(seed)
    if alphabet is None:
        return bytes(rng.randrange(256) for _ in range(n))
    return bytes(rng.choice(alphabet) for _ in range(n))


def _png() -> bytes:
    import struct

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def seeds() -> dict[str, bytes]:
    """The committed seed files of tests/fuzz_corpus (each under 4 KB)."""
    simple = "Hello world.\nSecond line.\n\nThird line.\nDas ist gut.\n".encode()
    gz = gzip.compress(simple, mtime=0)
    xz = lzma.compress(simple)
    spaces = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
    c0 = "".join(chr(c) for c in range(0x20)) + "\x7f"
    c1 = "".join(chr(c) for c in range(0x80, 0xA0))
    bad_crc = bytearray(gz)
    bad_crc[-8] ^= 0xFF
    return {
        "empty.txt": b"",
        "simple.txt": simple,
        "only_newline.txt": b"\n",
        "only_cr.txt": b"\r",
        "no_final_newline.txt": b"first\nsecond",
        "blank_lines.txt": b"\n\n\n\n",
        "whitespace_only.txt": " \t \u00a0\u3000\n   \n\t\n\u2028\u2029\n".encode(),
        "bom.txt": b"\xef\xbb\xbfHello.\nWorld.\n",
        "bom_twice.txt": b"\xef\xbb\xbf\xef\xbb\xbfHello.\n",
        "bom_only.txt": b"\xef\xbb\xbf",
        "bom_then_space.txt": b"\xef\xbb\xbf  \t Hello.\r\n",
        "bom_later_lines.txt": "a\n\ufeffb\nc \ufeff d\n\ufeff\n".encode(),
        "crlf.txt": b"one\r\ntwo\r\n\r\nthree\r\n",
        "lone_cr.txt": b"one\rtwo\r\rthree\r",
        "mixed_eol.txt": b"a\r\nb\nc\rd\n\r\n\n\r",
        "unicode_spaces.txt": ("x" + "y".join(spaces) + "z\n" + spaces + "\n").encode(),
        "nul_bytes.txt": b"a\x00b\n\x00\nc\x00\x00\x00d\n",
        "nul_heavy.txt": b"\x00" * 200 + b"text\n",
        "control_chars.txt": (c0 + "\n" + "a" + c0 + "b\n" + "c" + c1 + "d\n" + c1 + "\n").encode(),
        "c1_raw_bytes.txt": b"a" + bytes(range(0x80, 0xA0)) + b"b\nplain\n",
        "escape_sequences.txt": b"\x1b[31mred\x1b[0m\n\x08\x08back\x07bell\n",
        "tabs_tsv.txt": b"col1\tcol2\tcol3\n\t\tlead\n trail\t\n",
        "invalid_continuation.txt": b"ok\n\x80\x81 lone continuation\nmid \xbf dle\n",
        "invalid_truncated.txt": b"trunc \xc3\nend \xe2\x82\nok\nlast \xf0\x9f\x98",
        "invalid_ff_fe.txt": b"\xff\xfe\n\xfe\xff\nx\xffy\n",
        "overlong.txt": b"slash \xc0\xaf\n3 \xe0\x80\xaf\n4 \xf0\x80\x80\xaf\nnul \xc0\x80\nc1 \xc1\xbf\n",
        "surrogates.txt": b"hi \xed\xa0\x80\nlo \xed\xbf\xbf\ncesu \xed\xa0\xbd\xed\xb8\x80\nok\n",
        "above_max_codepoint.txt": b"a \xf4\x90\x80\x80\nb \xf5\x80\x80\x80\nc \xf8\x88\x80\x80\x80\nd \xfc\x84\x80\x80\x80\x80\n",
        "latin1.txt": "caf\u00e9 na\u00efve\nStra\u00dfe\n".encode("latin-1"),
        "cp1252_quotes.txt": b"\x93quoted\x94 \x96 dash\n",
        "utf16le_bom.txt": "\ufeffHello\nWorld\n".encode("utf-16-le"),
        "utf16be_bom.txt": "\ufeffHello\nWorld\n".encode("utf-16-be"),
        "utf32le_bom.txt": "\ufeffHi\n".encode("utf-32-le"),
        "long_line.txt": ("word " * 700).encode() + b"\nshort\n",
        "max_chars_edges.txt": b"\n".join(b"x" * n for n in (1, 2, 6, 7, 8, 79, 80, 81)) + b"\n",
        "duplicates.txt": b"same\nsame\n same \nsame\t\nSAME\nsame\r\n",
        "emoji_combining.txt": "\U0001F600 grin\ne\u0301 combining\n\U0001F468\u200D\U0001F469 zwj\n".encode(),
        "zero_width_rtl.txt": "a\u200bb\n\u200e\u202eevil\u202c\n\u200b\n".encode(),
        "nel_line_separators.txt": "one\u0085two\u2028three\u2029four\n".encode(),
        "random_bytes.bin": _rng_bytes(1, 2000),
        "random_text_bytes.txt": _rng_bytes(2, 2000, b"ab \t\r\n\x00\xc3\xa9\xff\xe2\x82\xac"),
        "png_image.txt": _png(),
        "gz_simple.gz": gz,
        "gz_empty.gz": gzip.compress(b"", mtime=0),
        "gz_zero_bytes.gz": b"",
        "gz_truncated.gz": gz[: len(gz) // 2],
        "gz_header_only.gz": gz[:10],
        "gz_bad_crc.gz": bytes(bad_crc),
        "gz_of_binary.gz": gzip.compress(_rng_bytes(3, 1500), mtime=0),
        "gz_of_invalid_utf8.gz": gzip.compress(b"ok\n\xff\xfe bad\n\xc0\xaf\n", mtime=0),
        "gz_multimember.gz": gz + gzip.compress(b"member two\n", mtime=0),
        "gz_trailing_garbage.gz": gz + b"garbage",
        "gz_zero_padding.gz": gz + b"\x00" * 16,
        "gz_in_gz.gz": gzip.compress(gz, mtime=0),
        "gz_named_txt.txt": gz,
        "gz_uppercase.GZ": gz,
        "plain_named.gz": simple,
        "gz_magic_then_text.txt": b"\x1f\x8bnot really gzip\n",
        "xz_simple.xz": xz,
        "xz_truncated.xz": xz[: len(xz) // 2],
        "xz_named_txt.txt": xz,
        "xz_trailing_garbage.xz": xz + b"junk",
        "lzma_alone.xz": lzma.compress(simple, format=lzma.FORMAT_ALONE),
        "xz_magic_then_text.txt": XZ_MAGIC + b"text\n",
    }


def large_inputs() -> dict[str, bytes]:
    """Inputs too big to commit, generated when needed: lines longer than one read chunk (64 KiB),
    so the reader's bounded-memory long-line path runs, with multi-byte characters and invalid
    UTF-8 across the chunk boundaries."""
    chunk = reader._MIN_CHUNK
    euro = "\u20ac".encode()
    return {
        "long_too_long.txt": b"ab " * 100_000 + b"\nafter\n",
        "long_whitespace_short_text.txt": b" " * (3 * chunk) + b"kept" + b"\t" * chunk + b"\nnext\n",
        "long_multibyte_straddle.txt": b"x" + euro * (chunk // 3 + 5) + b"\nshort\n",
        "long_invalid_after_limit.txt": b"y" * (chunk + 10) + b"\xff\n",
        "long_invalid_at_boundary.txt": b" " * (chunk - 1) + b"\xe2\x82" + b" " * chunk + b"ok\n",
        "long_truncated_at_eof.txt": b" " * (2 * chunk) + b"z\xf0\x9f\x98",
        "long_bom_first.txt": b"\xef\xbb\xbf" + b" " * (2 * chunk) + b"bom\n",
        "long_exact_chunk.txt": b"a" * (chunk - 1) + b"\n" + b"b" * chunk + b"\n" + b"c" * chunk,
        "long_gz.gz": gzip.compress(b" " * (5 * chunk) + b"gz long\n" + b"q" * (2 * chunk), mtime=0),
        "big_many_lines.xz": lzma.compress(b"".join(b"line %d\r\n" % (i % 1000) for i in range(6_000))),
    }


def write_seeds(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "crashes").mkdir(exist_ok=True)
    for name, data in seeds().items():
        assert len(data) < SEED_LIMIT, name
        (folder / name).write_bytes(data)
    print(f"wrote {len(seeds())} seed files to {folder}")


def corpus_files(folder: Path = CORPUS) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


# --------------------------------------------------------------------------- mutations

TOKENS = [
    b"\xef\xbb\xbf", b"\r\n", b"\r", b"\n", b"\n\n", b"\x00", b"\t", b"\x0b", b"\x0c", b"\x1b", b"\x7f",
    b"\xc2\x85", b"\x85", b"\xc2\xa0", "\u2028".encode(), "\u2029".encode(), "\u3000".encode(),
    "\u200b".encode(), b"\xff", b"\xfe", b"\xc0\xaf", b"\xc0\x80", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xe2\x82",
    b"\xf0\x9f\x98", b"\x80", b"\xbf", "\U0001F600".encode(), "e\u0301".encode(), GZIP_MAGIC, XZ_MAGIC,
    b"\xff\xfe", b"\xfe\xff", b" " * 40, b"a" * 90, b"same\n", b"same\r\n",
]
BIG_TOKENS = [b"x" * 70_000, b" " * 70_000, "\u20ac".encode() * 25_000, b"\t" * 66_000 + b"\xff"]
SUFFIXES = [".txt", ".gz", ".xz", ".GZ", "", ".tsv"]


def _pos(rng: random.Random, data: bytes) -> int:
    return rng.randrange(len(data) + 1)


def _unwrap(data: bytes) -> bytes | None:
    try:
        if data.startswith(GZIP_MAGIC):
            return gzip.decompress(data)
        if data.startswith(XZ_MAGIC):
            return lzma.decompress(data)
    except (OSError, EOFError, zlib.error, lzma.LZMAError):
        return None
    return None


def mutate_bytes(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One mutation of the bytes."""
    op = rng.randrange(11)
    if op == 0 and data:  # bit flips
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == 1:  # insert an interesting token (rarely a huge one)
        tok = rng.choice(BIG_TOKENS) if rng.random() < 0.02 else rng.choice(TOKENS)
        i = _pos(rng, data)
        return data[:i] + tok * rng.choice((1, 1, 1, 2, 5)) + data[i:]
    if op == 2 and data:  # overwrite with a token
        tok = rng.choice(TOKENS)
        i = rng.randrange(len(data))
        return data[:i] + tok + data[i + len(tok):]
    if op == 3 and data:  # set random bytes
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if op == 4 and data:  # delete a range
        i = rng.randrange(len(data))
        return data[:i] + data[i + rng.randint(1, 64):]
    if op == 5 and data:  # duplicate a range
        i = rng.randrange(len(data))
        j = min(len(data), i + rng.randint(1, 256))
        k = _pos(rng, data)
        return data[:k] + data[i:j] * rng.randint(1, 4) + data[k:]
    if op == 6:  # truncate
        return data[: _pos(rng, data)]
    if op == 7 and pool:  # splice with another input
        other = rng.choice(pool)
        return data[: _pos(rng, data)] + other[_pos(rng, other):]
    if op == 8 and data:  # swap lines / shuffle a few lines
        lines = data.split(b"\n")
        rng.shuffle(lines)
        return b"\n".join(lines)
    if op == 9:  # random bytes
        i = _pos(rng, data)
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 32))) + data[i:]
    return data + rng.choice(TOKENS)


def wrap(rng: random.Random, data: bytes) -> tuple[bytes, str | None]:
    """Compress ``data`` in some (sometimes broken) way; returns the bytes and a suffix (or None
    to keep the current one)."""
    op = rng.randrange(8)
    if op <= 2:
        out, suffix = gzip.compress(data, mtime=0, compresslevel=rng.choice((1, 6, 9))), ".gz"
    elif op == 3:
        out, suffix = lzma.compress(data), ".xz"
    elif op == 4:
        half = _pos(rng, data)
        out, suffix = gzip.compress(data[:half], mtime=0) + gzip.compress(data[half:], mtime=0), ".gz"
    elif op == 5:
        out, suffix = lzma.compress(data, format=rng.choice((lzma.FORMAT_XZ, lzma.FORMAT_ALONE))), ".xz"
    else:
        out, suffix = gzip.compress(data, mtime=0), ".gz"
    r = rng.random()
    if r < 0.15:
        out = out[: _pos(rng, out)]  # truncated
    elif r < 0.25:
        out = out + rng.choice((b"\x00" * 8, b"trailing", GZIP_MAGIC, out))
    if rng.random() < 0.2:
        suffix = rng.choice((".txt", "", ".data"))  # sniffed by magic bytes
    return out, suffix


def mutate(rng: random.Random, data: bytes, suffix: str, pool: list[bytes]) -> tuple[bytes, str]:
    inner = _unwrap(data)
    if inner is not None and rng.random() < 0.75:
        # Mutate the text inside, then compress again.
        for _ in range(rng.randint(1, 4)):
            inner = mutate_bytes(rng, inner, pool)
        out, new_suffix = wrap(rng, inner[:MAX_INPUT])
        return out[:MAX_INPUT], new_suffix or suffix
    for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
        data = mutate_bytes(rng, data, pool)
    data = data[:MAX_INPUT]
    r = rng.random()
    if r < 0.12:
        data, new_suffix = wrap(rng, data)
        suffix = new_suffix or suffix
    elif r < 0.17:
        suffix = rng.choice(SUFFIXES)
    return data[:MAX_INPUT], suffix


# --------------------------------------------------------------------------- the runner


def _suffix_of(path: Path) -> str:
    return path.suffix  # decides compression (.gz/.xz, any case); kept by mutations


def _worker(conn) -> None:
    while True:
        path = conn.recv()
        if path is None:
            return
        try:
            conn.send(("ok", examine(Path(path))))
        except Crash as exc:
            conn.send(("crash", str(exc)))
        except BaseException as exc:  # noqa: BLE001 - a bug in the checks is worth seeing too
            conn.send(("crash", f"checker error {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


class Runner:
    """Runs examine() in a child process, so a hang can be cut off and reported."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.proc = None
        self.conn = None

    def start(self) -> None:
        parent, child = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        self.conn = parent

    def run(self, path: Path) -> tuple[str, object]:
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.conn.send(str(path))
        if not self.conn.poll(self.timeout):
            self.proc.kill()
            self.proc.join()
            self.proc = None
            return "crash", f"hang: no result within {self.timeout:g} s"
        try:
            return self.conn.recv()
        except EOFError:
            self.proc = None
            return "crash", "the checking process died"

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()


def _name(data: bytes, suffix: str) -> str:
    return hashlib.sha1(data).hexdigest()[:16] + suffix


def fuzz(args) -> int:
    rng = random.Random(args.seed)
    corpus = Path(args.corpus)
    crashes = corpus / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.timeout)
    work = Path(tempfile.mkdtemp(prefix="fuzz_reader_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    outcomes: collections.Counter = collections.Counter()
    known: set = set()
    found: dict[str, str] = {}
    saved = 0
    started = time.monotonic()

    # Replay the corpus first: its outcomes are "known", and its crashes are reported again.
    entries: list[tuple[bytes, str]] = []
    for path in corpus_files(corpus):
        status, result = runner.run(path)
        if status == "crash":
            found[str(path.relative_to(corpus))] = str(result)
        else:
            known.add(result)
        entries.append((path.read_bytes(), _suffix_of(path)))
    if not entries:  # an empty corpus folder: start from the built-in seeds
        entries = [(data, _suffix_of(Path(name))) for name, data in seeds().items()]
    pool = [d for d, _ in entries]
    print(f"corpus: {len(entries)} files, {len(known)} distinct outcomes, {len(found)} crashing", flush=True)

    tried, last_report = 0, time.monotonic()
    deadline = started + args.seconds if args.seconds else None
    try:
        while (deadline is None or time.monotonic() < deadline) and (args.inputs is None or tried < args.inputs):
            data, suffix = rng.choice(entries)
            data, suffix = mutate(rng, data, suffix, pool)
            path = work / ("input" + suffix)
            path.write_bytes(data)
            status, result = runner.run(path)
            tried += 1
            if status == "crash":
                name = _name(data, suffix)
                outcomes[("crash", str(result).split(":")[0])] += 1
                if name not in found:
                    (crashes / name).write_bytes(data)
                    found[name] = str(result)
                    print(f"CRASH {crashes / name}: {str(result)[:400]}", flush=True)
            else:
                outcomes[result] += 1
                if result not in known:
                    known.add(result)
                    if saved < args.save_new and len(data) < SEED_LIMIT:
                        (corpus / ("new-" + _name(data, suffix))).write_bytes(data)
                        saved += 1
                    if len(data) < 64 * 1024:
                        entries.append((data, suffix))  # explore from it
                        pool.append(data)
            if time.monotonic() - last_report > 15 and not args.quiet:
                last_report = time.monotonic()
                print(f"  {tried} inputs, {tried / (last_report - started):.0f}/s, {len(known)} outcomes, "
                      f"{len(found)} crashes", flush=True)
    finally:
        runner.close()
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    seconds = time.monotonic() - started
    print(f"\ninputs tried: {tried} in {seconds:.0f} s ({tried / max(seconds, 1e-9):.0f}/s), seed {args.seed}")
    print(f"distinct outcomes: {len(known)} ({len(outcomes)} seen this run); new inputs saved: {saved}")
    for outcome, count in outcomes.most_common(args.show):
        print(f"  {count:7d}  {_describe(outcome)}")
    print(f"crashes: {len(found)}")
    for name, why in found.items():
        print(f"  {name}: {why[:600]}")
    return 1 if found else 0


def _describe(outcome) -> str:
    if outcome and outcome[0] == "crash":
        return f"CRASH {outcome[1]}"
    parts = []
    for item in outcome:
        if item[0] == "check":
            parts.append("check " + ("ok" if item[1] == "ok" else f"{item[1]}[{item[2][:50]}]"))
        else:
            policy, kind, nonzero = item
            kind = "ok" if kind == "ok" else f"{kind[0]}[{kind[1][:50]}]"
            parts.append(f"{policy}: {kind} {','.join(nonzero) or '-'}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (0: no limit)")
    parser.add_argument("--inputs", type=int, default=None, help="stop after this many inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-new", type=int, default=0, metavar="N",
                        help="add up to N inputs with a new outcome to the corpus")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before an input counts as a hang")
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--show", type=int, default=15, help="outcomes listed at the end")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--write-seeds", action="store_true", help="write the seed files and exit")
    args = parser.parse_args(argv)
    if args.write_seeds:
        write_seeds(Path(args.corpus))
        return 0
    return fuzz(args)


if __name__ == "__main__":
    sys.exit(main())
