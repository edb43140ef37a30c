"""Tests for miner.io.reader: the streaming corpus reader."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import random
import struct
import tracemalloc
import zlib
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miner.io import reader
from miner.runtime.errors import InputFileError, MinerError, UsageError
from miner.io.reader import (
    DecodeErrorPolicy,
    ReadStats,
    batched,
    check_input_file,
    file_digest,
    normalise,
    open_text_stream,
    read_sentences,
)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_all(path, **kw) -> tuple[list[tuple[int, str]], ReadStats]:
    stats = ReadStats()
    out = list(read_sentences(path, stats=stats, **kw))
    return out, stats


def tiny_png() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


SIMPLE = b"Hello world.\nSecond line.\n\nThird line.\n"
SIMPLE_OUT = [(0, "Hello world."), (1, "Second line."), (3, "Third line.")]


# --------------------------------------------------------------------------
# formats


@pytest.mark.parametrize(
    "name, encode",
    [
        ("c.txt", lambda b: b),
        ("c", lambda b: b),
        ("c.gz", gzip.compress),
        ("c.txt.GZ", gzip.compress),
        ("c.xz", lzma.compress),
        ("c_gzip_no_ext", gzip.compress),
        ("c_xz_no_ext", lzma.compress),
        ("c_gzip_named.txt", gzip.compress),
    ],
)
def test_formats(tmp_path, name, encode):
    p = write(tmp_path / name, encode(SIMPLE))
    check_input_file(p)
    out, stats = read_all(p)
    assert out == SIMPLE_OUT
    assert stats.as_dict() == {
        "lines": 4, "sentences": 3, "blank": 1,
        "duplicates": 0, "too_long": 0, "decode_errors": 0, "bad_rows": 0,
    }
    with open_text_stream(p) as f:
        assert f.read() == SIMPLE


def test_multi_member_gzip(tmp_path):
    p = write(tmp_path / "m.gz", gzip.compress(b"a\nb\n") + gzip.compress(b"c\n"))
    assert read_all(p)[0] == [(0, "a"), (1, "b"), (2, "c")]


def test_last_line_without_newline_and_line_counting(tmp_path):
    p = write(tmp_path / "a.txt", b"one\ntwo")
    out, stats = read_all(p)
    assert out == [(0, "one"), (1, "two")]
    assert stats.lines == 2
    out, stats = read_all(write(tmp_path / "b.txt", b"\n"))
    assert out == [] and stats.lines == 1 and stats.blank == 1


def test_path_objects_and_str_paths(tmp_path):
    p = write(tmp_path / "a.txt", b"x\n")
    assert read_all(str(p))[0] == read_all(p)[0] == [(0, "x")]


# --------------------------------------------------------------------------
# normalisation


def test_bom_stripped_on_first_line_only(tmp_path):
    data = "\ufeffFirst\nsecond\n\ufeffthird\n".encode()
    out, _ = read_all(write(tmp_path / "bom.txt", data))
    assert out == [(0, "First"), (1, "second"), (2, "\ufeffthird")]
    out, _ = read_all(write(tmp_path / "bom.gz", gzip.compress(data)))
    assert out[0] == (0, "First")


def test_crlf(tmp_path):
    out, stats = read_all(write(tmp_path / "crlf.txt", b"a b\r\n\r\nc\r\n"))
    assert out == [(0, "a b"), (2, "c")]
    assert stats.blank == 1 and stats.lines == 3


def test_lone_cr_is_not_a_line_break(tmp_path):
    out, stats = read_all(write(tmp_path / "cr.txt", b"a\rb\n"))
    assert out == [(0, "a b")] and stats.lines == 1


def test_tabs_and_unicode_spaces_collapsed(tmp_path):
    line = "\t a\t\tb\u00a0\u00a0c\u2028d\u2029e\u3000f\u2009g\u202fh\u0085i \x0b\x0cj  \n"
    out, _ = read_all(write(tmp_path / "ws.txt", line.encode()))
    assert out == [(0, "a b c d e f g h i j")]


def test_nul_and_control_chars(tmp_path):
    data = "a\x00b\x01c\x1bd\x7fe\x80f\x9fg\n\x00\x00\n\x07x\x07\n".encode()
    out, stats = read_all(write(tmp_path / "ctl.txt", data))
    assert out == [(0, "a b c d e f g"), (2, "x")]
    assert stats.blank == 1


def test_normalise_unit():
    assert normalise("\ufeff  Hello,\tworld!\r\n") == "Hello, world!"
    assert normalise("\ufeffx", strip_bom=False) == "\ufeffx"
    assert normalise("e\u0301 é") == "e\u0301 é"  # no NFC
    assert normalise("a\u200bb") == "a\u200bb"  # zero-width space is not whitespace
    assert normalise(" \t\r\n\u00a0") == ""
    assert normalise("a\x00\x00b") == "a b"


@given(st.text())
def test_normalise_properties(s):
    out = normalise(s)
    assert not any(c in out for c in "\t\r\n")
    assert out == out.strip() and "  " not in out
    assert not any(c.isspace() and c != " " for c in out)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    assert normalise(out) == out
    table = {i: " " for i in [*range(0x20), *range(0x7F, 0xA0)]}
    body = s[1:] if s.startswith("\ufeff") else s
    assert out == " ".join(body.translate(table).split())


# --------------------------------------------------------------------------
# filtering


def test_duplicates_keep_first_line_number(tmp_path):
    data = b"a\nb\n a\t\n\na\nc\nb\r\n"
    out, stats = read_all(write(tmp_path / "d.txt", data))
    assert out == [(0, "a"), (1, "b"), (5, "c")]
    assert stats.as_dict() == {
        "lines": 7, "sentences": 3, "blank": 1,
        "duplicates": 3, "too_long": 0, "decode_errors": 0, "bad_rows": 0,
    }


def test_duplicates_are_per_file(tmp_path):
    p1 = write(tmp_path / "1.txt", b"a\n")
    p2 = write(tmp_path / "2.txt", b"a\n")
    assert read_all(p1)[0] == read_all(p2)[0] == [(0, "a")]


def test_one_megabyte_line_skipped(tmp_path):
    data = b"before\n" + b"x" * 1_000_000 + b"\nafter\n"
    out, stats = read_all(write(tmp_path / "big.txt", data))
    assert out == [(0, "before"), (2, "after")]
    assert stats.too_long == 1 and stats.lines == 3 and stats.sentences == 2
    out, stats = read_all(write(tmp_path / "big.gz", gzip.compress(data)))
    assert out == [(0, "before"), (2, "after")] and stats.too_long == 1


def test_one_megabyte_line_without_final_newline(tmp_path):
    out, stats = read_all(write(tmp_path / "big.txt", b"a\n" + "é".encode() * 500_000))
    assert out == [(0, "a")] and stats.too_long == 1 and stats.lines == 2


def test_long_raw_line_that_normalises_short_is_kept(tmp_path):
    # 1 MB of whitespace around two words: raw bytes are huge, text is not.
    data = b"a\n" + b" \t" * 250_000 + b"hello" + b"\t " * 250_000 + b"world \r\nb\n"
    out, stats = read_all(write(tmp_path / "ws.txt", data), max_chars=11)
    assert out == [(0, "a"), (1, "hello world"), (2, "b")]
    assert stats.too_long == 0


def test_long_line_with_bom_on_first_line(tmp_path):
    data = "\ufeff".encode() + b" " * 200_000 + b"x\n"
    assert read_all(write(tmp_path / "b.txt", data))[0] == [(0, "x")]


def test_huge_line_uses_bounded_memory(tmp_path):
    size = 8 * 1024 * 1024
    p = tmp_path / "huge.txt"
    with open(p, "wb") as f:
        f.write(b"first\n")
        f.write(b"y" * size)
        f.write(b"\n" + b" " * size + b"z\nlast\n")
    tracemalloc.start()
    try:
        out, stats = read_all(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [(0, "first"), (2, "z"), (3, "last")]
    assert stats.too_long == 1
    assert peak < 4 * 1024 * 1024, peak


@pytest.mark.parametrize("max_chars", [1, 5, 100])
def test_max_chars_boundary(tmp_path, max_chars):
    exact = "é" * max_chars  # characters, not bytes
    over = "é" * (max_chars + 1)
    data = f"{exact}\n{over}\n  {exact}  \n".encode()
    out, stats = read_all(write(tmp_path / "m.txt", data), max_chars=max_chars)
    assert out == [(0, exact)]
    assert stats.too_long == 1 and stats.duplicates == 1


def test_max_chars_counts_normalised_text(tmp_path):
    out, stats = read_all(write(tmp_path / "m.txt", b"  a \t b  \n"), max_chars=3)
    assert out == [(0, "a b")] and stats.too_long == 0


@pytest.mark.parametrize("bad", [0, -1])
def test_max_chars_below_one_is_usage_error(tmp_path, bad):
    p = write(tmp_path / "a.txt", b"a\n")
    with pytest.raises(UsageError):
        read_sentences(p, max_chars=bad)  # raised by the call, not on next()


def test_unknown_policy_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="skip, replace, fail"):
        read_sentences(tmp_path / "whatever", on_decode_error="ignore")


# --------------------------------------------------------------------------
# decode errors

BAD = b"good one\nbad \xff\xfe here\n\xc3\xa9t\xc3\xa9\ntruncated \xe2\x82\n"


def test_decode_error_skip(tmp_path):
    out, stats = read_all(write(tmp_path / "bad.txt", BAD), on_decode_error="skip")
    assert out == [(0, "good one"), (2, "été")]
    assert stats.decode_errors == 2 and stats.lines == 4 and stats.sentences == 2


def test_decode_error_replace(tmp_path):
    out, stats = read_all(
        write(tmp_path / "bad.txt", BAD), on_decode_error=DecodeErrorPolicy.REPLACE
    )
    assert out == [
        (0, "good one"),
        (1, "bad \ufffd\ufffd here"),
        (2, "été"),
        (3, "truncated \ufffd"),
    ]
    assert stats.decode_errors == 2 and stats.sentences == 4


def test_decode_error_fail(tmp_path):
    p = write(tmp_path / "bad.txt", BAD)
    it = read_sentences(p, on_decode_error="fail")
    assert next(it) == (0, "good one")
    with pytest.raises(InputFileError) as ei:
        next(it)
    msg = str(ei.value)
    assert "line 2" in msg and str(p) in msg and "--on-decode-error" in msg
    assert "\n" not in msg
    assert ei.value.exit_code == 3


def test_decode_error_fail_in_long_line(tmp_path):
    data = b"ok\n" + b"a" * 200_000 + b"\xff\n"
    with pytest.raises(InputFileError, match="line 2 .*byte 200001"):
        list(read_sentences(write(tmp_path / "b.txt", data), max_chars=10**6, on_decode_error="fail"))


def test_decode_error_in_long_line_skip_and_replace(tmp_path):
    data = b"ok\n" + b"a " * 100_000 + b"\xff\nend\n"
    p = write(tmp_path / "b.txt", data)
    out, stats = read_all(p, max_chars=10**6, on_decode_error="skip")
    assert out == [(0, "ok"), (2, "end")] and stats.decode_errors == 1
    out, stats = read_all(p, max_chars=10**6, on_decode_error="replace")
    assert out[1] == (1, "a " * 99_999 + "a \ufffd") and stats.decode_errors == 1


def test_encoded_surrogates_are_invalid(tmp_path):
    out, stats = read_all(write(tmp_path / "s.txt", b"\xed\xa0\x80x\n"), on_decode_error="replace")
    assert stats.decode_errors == 1 and out[0][1].endswith("x")
    assert "\ud800" not in out[0][1]


# --------------------------------------------------------------------------
# check_input_file


def test_check_missing(tmp_path):
    with pytest.raises(InputFileError, match="not found: .*nope.txt"):
        check_input_file(tmp_path / "nope.txt")


def test_check_directory(tmp_path):
    with pytest.raises(InputFileError, match="is a directory"):
        check_input_file(tmp_path)


@pytest.mark.parametrize(
    "name, data",
    [
        ("e.txt", b""),
        ("e.gz", b""),
        ("e.gz", gzip.compress(b"")),
        ("e.xz", lzma.compress(b"")),
        ("e_nogz", gzip.compress(b"")),
    ],
)
def test_check_empty(tmp_path, name, data):
    p = write(tmp_path / name, data)
    with pytest.raises(InputFileError, match="empty") as ei:
        check_input_file(p)
    assert str(p) in str(ei.value)


def test_check_not_readable(tmp_path, monkeypatch):
    p = write(tmp_path / "locked.txt", b"a\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(reader, "open", denied, raising=False)
    with pytest.raises(InputFileError, match="not readable .*locked.txt"):
        check_input_file(p)
    with pytest.raises(InputFileError, match="not readable"):
        list(read_sentences(p))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_check_not_readable_real(tmp_path):
    p = write(tmp_path / "locked.txt", b"a\n")
    p.chmod(0)
    try:
        with pytest.raises(InputFileError, match="not readable"):
            check_input_file(p)
    finally:
        p.chmod(0o600)


@pytest.mark.parametrize(
    "name, data",
    [
        ("random.bin", random.Random(0).randbytes(4096) + b"\x00"),
        ("image.png", tiny_png()),
        ("image.txt.gz", gzip.compress(tiny_png())),
        ("utf16.txt", "hello world\n".encode("utf-16") * 50),
    ],
)
def test_check_binary(tmp_path, name, data):
    p = write(tmp_path / name, data)
    with pytest.raises(InputFileError, match="does not look like a text file") as ei:
        check_input_file(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_check_utf16_hint(tmp_path):
    p = write(tmp_path / "u.txt", "hello\n".encode("utf-16"))
    with pytest.raises(InputFileError, match="iconv"):
        check_input_file(p)


def test_check_accepts_text_with_few_nuls_and_bad_bytes(tmp_path):
    p = write(tmp_path / "ok.txt", b"hello\x00 world\n" * 10 + b"\xff\n")
    check_input_file(p)  # a NUL but mostly text: accepted
    p = write(tmp_path / "latin1.txt", "caf\xe9\n".encode("latin-1") * 10)
    check_input_file(p)  # invalid UTF-8 but no NUL: left to the decode policy


@pytest.mark.parametrize(
    "name, data",
    [
        ("bad.gz", b"\x1f\x8b\x08\x00garbage garbage garbage"),
        ("notgz.gz", b"plain text, not gzip\n"),
        ("trunc.gz", gzip.compress(os.urandom(2000))[:100]),
        ("bad.xz", b"\xfd7zXZ\x00garbage garbage"),
        ("bad_noext", b"\x1f\x8b\x08\x00garbage garbage garbage"),
    ],
)
def test_check_corrupt_compressed(tmp_path, name, data):
    p = write(tmp_path / name, data)
    with pytest.raises(InputFileError, match="corrupt") as ei:
        check_input_file(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(InputFileError):
        list(read_sentences(p))


def test_corruption_after_first_block_raises_input_file_error(tmp_path):
    payload = b"".join(b"line %d\n" % i for i in range(50_000))
    p = write(tmp_path / "late.gz", gzip.compress(payload)[:-200])
    check_input_file(p)  # the first 64 KiB decompress fine
    with pytest.raises(InputFileError, match="at line"):
        list(read_sentences(p))


def test_read_missing_file_raises_input_file_error(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        list(read_sentences(tmp_path / "nope.txt"))
    with pytest.raises(InputFileError, match="not found"):
        file_digest(tmp_path / "nope.txt")


# --------------------------------------------------------------------------
# file_digest, batched, stats


def test_file_digest(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    p = write(tmp_path / "x.gz", data)
    assert file_digest(p) == hashlib.sha256(data).hexdigest()
    assert file_digest(write(tmp_path / "e", b"")) == hashlib.sha256(b"").hexdigest()


def test_batched():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    assert list(batched(iter("ab"), 5)) == [["a", "b"]]
    with pytest.raises(UsageError):
        batched([1], 0)


def test_stats_filled_while_iterating(tmp_path):
    p = write(tmp_path / "a.txt", b"a\n\nb\n")
    stats = ReadStats()
    it = read_sentences(p, stats=stats)
    assert next(it) == (0, "a") and stats.sentences == 1 and stats.lines == 1
    assert list(it) == [(2, "b")]
    assert stats == ReadStats(lines=3, sentences=2, blank=1)


def test_errors_are_miner_errors():
    assert issubclass(InputFileError, MinerError) and InputFileError.exit_code == 3
    assert UsageError.exit_code == 2


# --------------------------------------------------------------------------
# fuzzing

FRAGMENTS = [
    b"\n", b"\r\n", b"\r", b"\t", b" ", b"a", b"abc", b"\x00", b"\xff", b"\xc3",
    b"\xc3\xa9", b"\xef\xbb\xbf", "\u00a0".encode(), "\u2028".encode(),
    b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x1f\x8b", b"\x85",
]
fuzz_bytes = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=6)), max_size=60
).map(b"".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=fuzz_bytes,
    policy=st.sampled_from(["skip", "replace"]),
    max_chars=st.integers(1, 40),
    gz=st.booleans(),
)
def test_fuzz_read_sentences(tmp_path_factory, data, policy, max_chars, gz):
    p = tmp_path_factory.mktemp("fuzz") / ("f.gz" if gz else "f")
    p.write_bytes(gzip.compress(data) if gz else data)
    stats = ReadStats()
    try:
        out = list(read_sentences(p, max_chars=max_chars, on_decode_error=policy, stats=stats))
    except InputFileError:
        return  # e.g. plain bytes that start with the gzip magic
    nums = [n for n, _ in out]
    assert nums == sorted(set(nums))
    texts = [t for _, t in out]
    assert len(set(texts)) == len(texts)
    for t in texts:
        assert t and not any(c in t for c in "\t\n\r")
        assert len(t) <= max_chars and normalise(t, strip_bom=False) == t
    assert stats.sentences == len(out)
    dropped = stats.blank + stats.duplicates + stats.too_long
    if policy == "skip":
        dropped += stats.decode_errors
    assert stats.lines == stats.sentences + dropped
    if gz or not data.startswith(b"\x1f\x8b"):
        expected_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        assert stats.lines == expected_lines


@settings(max_examples=150, deadline=None)
@given(data=fuzz_bytes, policy=st.sampled_from(["skip", "replace"]), chunk=st.integers(1, 9))
def test_fuzz_long_line_path_matches_fast_path(tmp_path_factory, data, policy, chunk):
    """Forcing tiny read chunks (the long-line path) gives the same result."""
    p = tmp_path_factory.mktemp("eq") / "f.txt"
    p.write_bytes(b"x" + data)  # never gzip magic
    fast = read_all(p, on_decode_error=policy)
    with mock.patch.object(reader, "_MIN_CHUNK", chunk), mock.patch.object(reader, "_MAX_CHUNK", chunk):
        slow = read_all(p, on_decode_error=policy)
    assert slow == fast


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80), max_chars=st.integers(1, 12), chunk=st.integers(1, 9))
def test_fuzz_long_line_path_too_long(tmp_path_factory, text, max_chars, chunk):
    p = tmp_path_factory.mktemp("eq") / "f.txt"
    p.write_bytes(text.encode("utf-8"))
    fast = read_all(p, max_chars=max_chars, on_decode_error="replace")
    with mock.patch.object(reader, "_MIN_CHUNK", chunk), mock.patch.object(reader, "_MAX_CHUNK", chunk):
        slow = read_all(p, max_chars=max_chars, on_decode_error="replace")
    assert slow == fast
