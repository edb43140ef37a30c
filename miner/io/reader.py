"""Streaming reader for one-sentence-per-line corpora (plain, gzip or xz).

This is the I/O half of the ingest step. It never holds a whole file in
memory: lines are read in bounded chunks, decoded one by one (so one bad line
does not poison the rest), normalised, filtered and yielded with their
0-based physical line number.

Typical use::

    check_input_file(path)                 # cheap preflight, one-line errors
    stats = ReadStats()
    for batch in batched(read_sentences(path, stats=stats), 1024):
        ...                                 # [(line_no, text), ...]
    print(stats.as_dict())

Every dropped line is counted in :class:`ReadStats` under the first reason
found for it, checked in this order: invalid UTF-8 (policy ``skip``), blank,
too long, duplicate. With policy ``replace`` a line with invalid UTF-8 is
counted in ``decode_errors`` *and* carries on through the other checks, so
``lines == sentences + blank + too_long + duplicates`` holds for ``replace``
and ``fail``, and ``lines == sentences + blank + too_long + duplicates +
decode_errors`` for ``skip`` (plus ``bad_rows`` for TSV/JSONL rows that
:mod:`miner.io.records` skipped, counted before the other checks).
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import gzip
import hashlib
import itertools
import lzma
import os
import re
import stat
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar, Union

from miner.runtime.errors import InputFileError, UsageError
from miner.io.storage import input_digest, input_size, is_url, open_input

__all__ = ["DecodeErrorPolicy", "ReadStats", "batched", "check_input_file", "file_digest", "normalise",
           "open_text_stream", "read_sentences"]

T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_SNIFF_BYTES = 64 * 1024  # decompressed bytes looked at by check_input_file
_BINARY_RATIO = 0.30  # share of non-text bytes (with a NUL) that means "binary"
DIGEST_BLOCK = 1024 * 1024

# readline() limit: lines up to this many bytes are read in one call; longer
# ones are streamed chunk by chunk. 4 bytes per character is the UTF-8 worst
# case, so a line that could still be short enough is normally read in one go.
_MIN_CHUNK = 64 * 1024
_MAX_CHUNK = 4 * 1024 * 1024

# Errors the decompressors (and the OS) raise on a broken or unreadable file.
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)

# One run of whitespace and/or control characters (C0 except tab -- tab is
# whitespace anyway --, DEL and C1). Replacing every control character with a
# space and then collapsing whitespace runs is the same as replacing each run
# of this class with one space. ``\s`` on str patterns is str.isspace(), so it
# covers \t \r \n \v \f, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
# U+202F, U+205F and U+3000.
_SPACE_RUN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_BOM = "\ufeff"
_UTF8_DECODER = codecs.getincrementaldecoder("utf-8")


class DecodeErrorPolicy(str, enum.Enum):
    """What :func:`read_sentences` does with a line that is not valid UTF-8."""

    SKIP = "skip"  # drop the line, count it
    REPLACE = "replace"  # keep it with U+FFFD for the bad bytes, count it
    FAIL = "fail"  # raise InputFileError


@dataclass
class ReadStats:
    """Counters filled in place by :func:`read_sentences`.

    Attributes:
        lines: physical lines read.
        sentences: sentences yielded.
        blank: lines that are empty after normalisation.
        duplicates: exact duplicates (after normalisation) of an earlier kept
            sentence of the same file.
        too_long: lines longer than ``max_chars`` after normalisation.
        decode_errors: lines with invalid UTF-8 (skipped or replaced).
        bad_rows: TSV/JSONL rows that could not be read (:mod:`miner.io.records`;
            skipped under ``--on-bad-row skip``).
    """

    lines: int = 0
    sentences: int = 0
    blank: int = 0
    duplicates: int = 0
    too_long: int = 0
    decode_errors: int = 0
    bad_rows: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict.

        Returns:
            ``{"lines": ..., "sentences": ..., ...}`` in field order.
        """
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------
# small helpers


def _show(path: PathLike) -> str:
    """Path for a one-line message (repr() if it holds control characters)."""
    text = os.fsdecode(path)
    return repr(text) if _has_control(text) else text


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def _one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    msg = " ".join(str(exc).split())
    return msg or type(exc).__name__


def _compression(path: str) -> str | None:
    """``"gz"``, ``"xz"`` or None, by extension, else by magic bytes.

    Magic bytes are only sniffed on regular files (sniffing a pipe would eat
    its first bytes). Neither magic is valid UTF-8, so sniffing never mistakes
    a real text file for a compressed one.
    """
    lower = path.lower()
    if lower.endswith(".gz"):
        return "gz"
    if lower.endswith(".xz"):
        return "xz"
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None
    with open(path, "rb") as raw:
        head = raw.read(len(_XZ_MAGIC))
    if head.startswith(_GZIP_MAGIC):
        return "gz"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    return None


def coerce_policy(value: DecodeErrorPolicy | str) -> DecodeErrorPolicy:
    if isinstance(value, DecodeErrorPolicy):
        return value
    try:
        return DecodeErrorPolicy(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in DecodeErrorPolicy)
        raise UsageError(
            f"invalid on_decode_error {value!r}; choose one of: {choices}"
        ) from None


# --------------------------------------------------------------------------
# public API


def open_text_stream(path: PathLike) -> IO[bytes]:
    """Open an input corpus for reading bytes, decompressing if needed.

    ``.gz`` is read with gzip and ``.xz`` with lzma (extension, any case).
    For any other name, gzip and xz are recognised by their magic bytes.

    Args:
        path: the file to open, or an fsspec URL (``s3://bucket/de.txt.gz``).

    Returns:
        A binary file object (use it as a context manager); ``readline`` and
        ``read`` return decompressed bytes.

    Raises:
        InputFileError: the file cannot be opened (missing, a directory, no
            permission, ...). Corrupt compressed data only shows up on read.
    """
    spath = os.fsdecode(path)
    if is_url(spath):  # s3://... (miner.io.storage)
        return open_input(spath)
    try:
        kind = _compression(spath)
        if kind == "gz":
            return gzip.open(spath, "rb")
        if kind == "xz":
            return lzma.open(spath, "rb")
        return open(spath, "rb", buffering=1024 * 1024)
    except OSError as exc:
        raise open_error(path, exc) from exc


def open_error(path: PathLike, exc: Exception) -> InputFileError:
    """The one-line InputFileError for an error raised opening or reading ``path``."""
    shown = _show(path)
    if isinstance(exc, FileNotFoundError):
        return InputFileError(f"input file not found: {shown} -- check the path")
    if isinstance(exc, IsADirectoryError):
        return InputFileError(f"input path is a directory: {shown} -- pass a text file with one sentence per line")
    if isinstance(exc, PermissionError):
        return InputFileError(f"input file is not readable (permission denied): {shown} -- check its permissions")
    return InputFileError(f"cannot read input file {shown}: {_one_line(exc)}")


def check_input_file(path: PathLike) -> None:
    """Cheap preflight of an input corpus; raises a one-line error if unusable.

    Reads at most the first 64 KiB of (decompressed) content. Non-regular
    files (pipes, devices) are only checked for existence and readability,
    since peeking at them would consume their data.

    Args:
        path: the file to check (plain, ``.gz`` or ``.xz``).

    Raises:
        InputFileError: the path does not exist, is a directory, cannot be
            read, is empty (0 bytes, or compressed data that decompresses to
            0 bytes), does not look like a text file (a NUL byte and more than
            30% non-text bytes in the first 64 KiB), or is a corrupt
            gzip/xz file. The message names the path and says what to do.
    """
    shown = _show(path)
    spath = os.fsdecode(path)
    if is_url(spath):
        regular, size = True, input_size(spath)
    else:
        try:
            st = os.stat(spath)
        except OSError as exc:
            raise open_error(path, exc) from exc
        if stat.S_ISDIR(st.st_mode):
            raise open_error(path, IsADirectoryError(spath))
        regular, size = stat.S_ISREG(st.st_mode), st.st_size
    if regular and size == 0:
        raise InputFileError(f"input file is empty (0 bytes): {shown} -- pass a text file with one sentence per line")
    if not regular:
        if not os.access(spath, os.R_OK):
            raise open_error(path, PermissionError(spath))
        return

    stream = open_text_stream(spath)  # raises InputFileError if unreadable
    try:
        with stream:
            head = stream.read(_SNIFF_BYTES)
    except READ_ERRORS as exc:
        if isinstance(stream, gzip.GzipFile):
            label = "gzip"
        elif isinstance(stream, lzma.LZMAFile):
            label = "xz"
        else:
            raise open_error(path, exc) from exc
        raise InputFileError(
            f"input file {shown} is not a valid {label} file or is corrupt "
            f"({_one_line(exc)}) -- re-create it, or decompress it and pass "
            "the plain text"
        ) from exc
    if not head:
        raise InputFileError(
            f"input file is empty (decompresses to 0 bytes): {shown} -- pass a "
            "file with one sentence per line"
        )
    if b"\x00" in head:
        ratio = _non_text_ratio(head)
        if ratio > _BINARY_RATIO:
            hint = ""
            if head.startswith((b"\xff\xfe", b"\xfe\xff")):
                hint = " (it looks like UTF-16: convert it with iconv -f UTF-16 -t UTF-8)"
            raise InputFileError(
                f"input file {shown} does not look like a text file "
                f"({ratio:.0%} non-text bytes in its first 64 KiB){hint} -- "
                "pass UTF-8 text with one sentence per line"
            )


def _non_text_ratio(sample: bytes) -> float:
    """Share of bytes in ``sample`` that are not text.

    Non-text bytes are bytes of invalid UTF-8 sequences and control
    characters other than tab, LF, VT, FF and CR (NUL included).
    """
    text = sample.decode("utf-8", errors="surrogateescape")
    bad = 0
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # one undecodable byte
            bad += 1
        elif (o < 0x20 and ch not in "\t\n\v\f\r") or o == 0x7F:
            bad += 1
    return bad / len(sample)


def file_digest(path: PathLike) -> str:
    """SHA-256 of the raw (still compressed, if it is) file bytes.

    Args:
        path: the file to hash, read in 1 MiB blocks; or a URL (its object's bytes, streamed).

    Returns:
        The lowercase hex digest.

    Raises:
        InputFileError: the file cannot be opened or read.
    """
    h, spath = hashlib.sha256(), os.fsdecode(path)
    if is_url(spath):
        return input_digest(spath)
    try:
        with open(spath, "rb") as f:
            while block := f.read(DIGEST_BLOCK):
                h.update(block)
    except OSError as exc:
        raise open_error(path, exc) from exc
    return h.hexdigest()


def normalise(text: str, *, strip_bom: bool = True) -> str:
    """Normalise one line of text for storage (TSV safe).

    No Unicode normalisation (no NFC/NFKC) is done; characters are left as
    they are except that: a leading BOM (U+FEFF) is removed (when
    ``strip_bom``); NUL and every other C0/C1 control character (and DEL) is
    replaced with a space; every run of whitespace -- tab, CR, LF, U+00A0,
    U+2028/U+2029 and the other Unicode spaces -- becomes one ASCII space;
    both ends are stripped. The result has no tab, CR or LF.

    Args:
        text: one line (a trailing ``\\r`` or ``\\n`` is fine).
        strip_bom: remove one leading U+FEFF. :func:`read_sentences` passes
            True for the file's first line only.

    Returns:
        The normalised text, possibly empty.
    """
    if strip_bom and text.startswith(_BOM):
        text = text[1:]
    return _SPACE_RUN.sub(" ", text).strip(" ")


def read_sentences(
    path: PathLike,
    *,
    max_chars: int = 2000,
    on_decode_error: DecodeErrorPolicy | str = DecodeErrorPolicy.SKIP,
    stats: ReadStats | None = None,
) -> Iterator[tuple[int, str]]:
    """Stream the kept sentences of a one-sentence-per-line file.

    Lines are split on ``b"\\n"`` only and each line is decoded as UTF-8 on
    its own, then passed through :func:`normalise`. Blank lines, lines longer
    than ``max_chars`` characters (after normalisation) and exact duplicates
    of an earlier kept sentence are dropped and counted. Lines are read in
    bounded chunks, so a huge line costs bounded memory: once its normalised
    prefix is over ``max_chars`` the rest of it is read and thrown away
    without being decoded (so a decode error after that point goes
    unnoticed). Duplicate detection keeps a set of 16-byte BLAKE2b digests
    (about 100 bytes of memory per distinct sentence).

    Arguments are checked when this function is called; the file is opened on
    the first ``next()``.

    Args:
        path: the corpus (plain, ``.gz`` or ``.xz``, see
            :func:`open_text_stream`).
        max_chars: longest sentence kept, in characters; must be >= 1.
        on_decode_error: ``"skip"`` drops lines with invalid UTF-8,
            ``"replace"`` keeps them with U+FFFD for the bad bytes, ``"fail"``
            raises. Both count the line in ``stats.decode_errors``.
        stats: filled in place while iterating; read it once the iterator is
            exhausted.

    Returns:
        An iterator of ``(line_no, text)``, ``line_no`` being the 0-based
        physical line number in the (decompressed) file.

    Raises:
        UsageError: ``max_chars < 1`` or an unknown ``on_decode_error``
            (raised by the call itself).
        InputFileError: while iterating: the file cannot be opened or
            decompressed, or (policy ``fail``) a line is not valid UTF-8; the
            message names the path and the 1-based line number.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int):
        raise UsageError(f"max_chars must be an integer, got {max_chars!r}")
    if max_chars < 1:
        raise UsageError(f"max_chars must be at least 1, got {max_chars}")
    policy = coerce_policy(on_decode_error)
    if stats is None:
        stats = ReadStats()
    return (record[:2] for record in read_record_stream(path, max_chars, policy, stats, None, False))


def batched(iterable: Iterable[T], n: int) -> Iterator[list[T]]:
    """Lists of up to ``n`` items of ``iterable`` (the last may be short; consumed lazily), like
    Python 3.12's ``itertools.batched`` but with lists. ``n < 1``: UsageError from the call itself."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"batch size must be a positive integer, got {n!r}")
    it = iter(iterable)
    return iter(lambda: list(itertools.islice(it, n)), [])


# --------------------------------------------------------------------------
# the reading loop

# Outcomes of reading one line.
_KEEP, _SKIP_DECODE, _TOO_LONG = 0, 1, 2


def _decode_error(
    path: PathLike, line_no: int, offset: int, exc: UnicodeDecodeError
) -> InputFileError:
    bad = exc.object[exc.start : exc.end][:4].hex(" ")
    return InputFileError(
        f"{_show(path)}: line {line_no + 1} is not valid UTF-8 (byte "
        f"{offset + 1} of the line: {bad}) -- fix the file, or rerun with "
        "--on-decode-error skip (drop such lines) or --on-decode-error "
        "replace (keep them with U+FFFD)"
    )


def read_record_stream(
    path: PathLike,
    max_chars: int,
    policy: DecodeErrorPolicy,
    stats: ReadStats,
    parse: Callable[[str, int], tuple | None] | None,
    duplicates: bool,
) -> Iterator[tuple[int, str, str | None, dict | None, int | None]]:
    """Records ``(line_no, text, ext_id, meta, duplicate_of)`` of ``path`` in bounded chunks (also for miner.io.records)."""
    chunk = min(max(4 * max_chars + 8, _MIN_CHUNK), _MAX_CHUNK)
    seen: dict[bytes, int] = {}  # text digest -> index of its sentence
    ext_id = meta = None
    line_no = -1
    try:
        with open_text_stream(path) as f:
            readline = f.readline
            while True:
                first = readline(chunk)
                if not first:
                    break
                line_no += 1
                stats.lines += 1
                bom = line_no == 0
                second = b"" if first.endswith(b"\n") else readline(chunk)
                if not second:
                    # The whole line is in `first` (the common case).
                    try:
                        raw = first.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        if policy is DecodeErrorPolicy.FAIL:
                            raise _decode_error(path, line_no, exc.start, exc) from None
                        stats.decode_errors += 1
                        if policy is DecodeErrorPolicy.SKIP:
                            continue
                        raw = first.decode("utf-8", errors="replace")
                    if parse is not None:
                        row = parse(raw[1:] if bom and raw.startswith(_BOM) else raw, line_no)
                        if row is None:
                            continue
                        raw, ext_id, meta = row
                    text = normalise(raw, strip_bom=bom)
                    if len(text) > max_chars:
                        stats.too_long += 1
                        continue
                elif parse is not None:  # a row longer than a chunk: not parsed
                    while not second.endswith(b"\n") and second:
                        second = readline(chunk)
                    stats.too_long += 1
                    continue
                else:
                    outcome, text = _read_long_line(
                        path, readline, chunk, first, second, line_no,
                        bom, max_chars, policy, stats,
                    )
                    if outcome == _SKIP_DECODE:
                        continue
                    if outcome == _TOO_LONG:
                        stats.too_long += 1
                        continue
                if not text:
                    stats.blank += 1
                    continue
                key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                first_idx = seen.get(key)
                if first_idx is not None:
                    stats.duplicates += 1
                    if duplicates:
                        yield line_no, text, ext_id, meta, first_idx
                    continue
                seen[key] = stats.sentences
                stats.sentences += 1
                yield line_no, text, ext_id, meta, None
    except READ_ERRORS as exc:
        where = f" at line {line_no + 1}" if line_no >= 0 else ""
        raise InputFileError(
            f"cannot read input file {_show(path)}{where}: {_one_line(exc)} -- "
            "check that the file is complete and not corrupt"
        ) from exc


def _read_long_line(
    path: PathLike,
    readline: Callable[[int], bytes],
    chunk: int,
    first: bytes,
    second: bytes,
    line_no: int,
    bom: bool,
    max_chars: int,
    policy: DecodeErrorPolicy,
    stats: ReadStats,
) -> tuple[int, str]:
    """Read a line longer than one chunk with bounded memory.

    Keeps only the collapsed (but not yet stripped) text read so far, which
    stays under ``max_chars + 2`` characters plus one chunk: collapsing
    whitespace commutes with concatenation, and the normalised length of a
    prefix never exceeds that of the whole line, so the line is known to be
    too long as soon as a prefix is.
    """

    def pieces() -> Iterator[bytes]:
        yield first
        last = second
        yield last
        while not last.endswith(b"\n"):
            last = readline(chunk)
            if not last:
                return
            yield last

    it = pieces()
    decoder = _UTF8_DECODER("strict")
    replacing = False
    acc = ""  # collapsed text so far, ends not stripped
    at_start = True
    consumed = 0  # bytes of the line fed to the decoder before this piece

    def decode(data: bytes, final: bool) -> str | None:
        """Decoded text, or None if the line is to be skipped."""
        nonlocal decoder, replacing
        if replacing:
            return decoder.decode(data, final)
        state = decoder.getstate()
        try:
            return decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            if policy is DecodeErrorPolicy.FAIL:
                offset = consumed - len(state[0]) + exc.start
                raise _decode_error(path, line_no, offset, exc) from None
            stats.decode_errors += 1
            if policy is DecodeErrorPolicy.SKIP:
                return None
            replacing = True
            decoder = _UTF8_DECODER("replace")
            decoder.setstate(state)
            return decoder.decode(data, final)

    for data in it:
        text = decode(data, False)
        consumed += len(data)
        if text is None:
            for _ in it:  # drain the rest of the line
                pass
            return _SKIP_DECODE, ""
        if at_start and text:
            at_start = False
            if bom and text.startswith(_BOM):
                text = text[1:]
        acc = _SPACE_RUN.sub(" ", acc + text)
        if len(acc.strip(" ")) > max_chars:
            for _ in it:
                pass
            return _TOO_LONG, ""
    text = decode(b"", True)
    if text is None:
        return _SKIP_DECODE, ""
    # `text` is at most a few U+FFFD here; the line is short enough so far.
    acc = _SPACE_RUN.sub(" ", acc + text).strip(" ")
    if len(acc) > max_chars:
        return _TOO_LONG, ""
    return _KEEP, acc
