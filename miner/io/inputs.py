"""What happens to a job's inputs before the job exists: reading standard input and pipes once
(a copy by content, :func:`spool`), and the checks that read only a sample of each side (a file of
blank lines only, ``k`` against a side's size, a language code that the first sentences
contradict). Cheap whatever the files' size; no database, no Celery."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from pathlib import Path

from miner.runtime.config import Config
from miner.runtime.errors import InputFileError, UsageError
from miner.io.langid import LanguageChecker, langid_label
from miner.io.reader import DIGEST_BLOCK, READ_ERRORS, PathLike, normalise, open_error, open_text_stream
from miner.io.storage import is_url


def needs_spooling(path: PathLike) -> bool:
    """``-`` (standard input), or an existing local path that is not a regular file (a named pipe,
    ``/dev/stdin``, a process substitution): what can be read only once, while a job reads its
    inputs several times (the checks, the content hash, ingest in a worker)."""
    spath = os.fsdecode(path)
    if spath == "-":
        return True
    if is_url(spath):
        return False
    try:
        mode = os.stat(spath).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def spool_input(path: PathLike, folder: Path, limit: int) -> Path:
    """Copy standard input (``-``) or a pipe once into ``folder``, named by its content's SHA-256
    (the same stream twice is one file, and one job), and return the copy's path. Compressed data
    stays compressed (it is recognised by its magic bytes).

    Raises:
        InputFileError: nothing came (an empty stream), or more than ``limit`` bytes
            (``MINER_SPOOL_LIMIT``); the partial copy is removed.
    """
    spath = os.fsdecode(path)
    shown = "standard input" if spath == "-" else spath
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest, size = hashlib.sha256(), 0
    tmp = folder / f".spool-{os.getpid()}-{time.monotonic_ns()}.tmp"
    try:
        source = sys.stdin.buffer if spath == "-" else open(spath, "rb")
        try:
            with open(tmp, "wb") as out:
                while block := source.read(DIGEST_BLOCK):
                    size += len(block)
                    if size > limit:
                        raise InputFileError(f"{shown} gives more than MINER_SPOOL_LIMIT ({limit:,} bytes) -- "
                                             f"write it to a file and pass that, or raise the limit")
                    digest.update(block)
                    out.write(block)
        finally:
            if source is not sys.stdin.buffer:
                source.close()
        if size == 0:
            raise InputFileError(f"input is empty (0 bytes): {shown} -- pipe in a text file with one sentence per line")
        final = folder / f"{digest.hexdigest()[:32]}.txt"
        os.replace(tmp, final)
        return final
    except OSError as exc:
        raise open_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _first_sentences(path: PathLike, n: int):
    """The first ``n`` non-blank lines of a local regular file (normalised), lazily; None for
    object-store URLs and for what must not be read twice (pipes, devices). Corrupt data yields as
    far as it reads (ingest reports it)."""
    spath = os.fsdecode(path)
    if is_url(spath):
        return None
    try:
        if not stat.S_ISREG(os.stat(spath).st_mode):
            return None
    except OSError as exc:
        raise open_error(path, exc) from exc

    def lines():
        found = 0
        try:
            with open_text_stream(spath) as stream:
                for raw in stream:
                    text = normalise(raw.decode("utf-8", errors="replace"))
                    if text:
                        yield text
                        found += 1
                        if found >= n:
                            return
        except READ_ERRORS:
            return

    return lines()


def sample_sentences(path: PathLike, n: int) -> list[str] | None:
    """The first ``n`` non-blank lines of an input corpus (normalised), for checks before a job
    exists; None where :func:`count_sentences` gives None."""
    found = _first_sentences(path, n)
    return None if found is None else list(found)


def count_sentences(path: PathLike, at_most: int) -> int | None:
    """Non-blank lines of an input corpus (after :func:`normalise`), counted up to ``at_most``:
    cheap whatever the file's size, for the checks before a job exists (a file of blank lines only,
    ``k`` against a side's size). None for pipes, devices and object-store URLs."""
    found = _first_sentences(path, at_most)
    return None if found is None else sum(1 for _ in found)


def check_input_formats(src: Path, tgt: Path, options, warn) -> None:
    """Before the job exists: ``--columns`` needs a TSV side, and a plain-text side whose first lines
    all look like ``ID<TAB>TEXT`` (BUCC files) gets a warning that suggests ``--input-format tsv``."""
    from miner.io.records import looks_like_id_tsv, resolve_format

    formats = {path: resolve_format(options.input_format, path) for path in (src, tgt)}
    if options.columns is not None and "tsv" not in formats.values():
        raise UsageError("--columns names TSV columns; pass --input-format tsv")
    for path, fmt in formats.items():
        if fmt == "text" and looks_like_id_tsv(path):
            warn(f"{path} looks like ID<TAB>TEXT lines (e.g. BUCC); it is read as plain text, ids included -- "
                 "pass --input-format tsv to read the ids")


def spool(cfg: Config, path, side: str, warn):
    """``path`` itself, or for ``-`` (standard input) and pipes a copy of what they give, made once
    under ``MINER_ARTIFACTS/inputs`` (:func:`miner.io.reader.spool_input`), where the workers read it."""
    if not needs_spooling(path):
        return path
    if is_url(cfg.artifacts):
        raise UsageError(f"reading the {side} from standard input or a pipe needs MINER_ARTIFACTS on a shared "
                         f"folder (the workers read the copy there), not {cfg.artifacts}; write it to a file first")
    copy = spool_input(path, Path(cfg.artifacts) / "inputs", cfg.spool_limit)
    warn(f"{side} read from {'standard input' if str(path) == '-' else path} into {copy}")
    return copy


def check_sentence_counts(src: Path, tgt: Path, k: int) -> None:
    """Before the job exists: each side has a sentence (a file of blank lines only is bad input,
    as an empty file is), and a ``k`` above the default is smaller than each side (with ``k``
    neighbours out of ``k`` or fewer sentences the margin's neighbourhood mean is the whole side's,
    and scores leave their range: a top pair scored 1294.7 with --k 500 on 300 / 400 lines). The
    default ``k`` on a side of a few sentences keeps working: the kNN step takes every sentence
    there, and a mean over so few includes the partner. Reads at most ``k + 1`` sentences a side."""
    from miner.runtime.defaults import K
    for path in (src, tgt):
        n = count_sentences(path, k + 1)
        if n is None:
            continue
        if n == 0:
            raise InputFileError(f"input file has no sentences (every line is blank): {path} -- pass a text file "
                                 f"with one sentence per line")
        if k > K and n <= k:
            fewer = f" (at most {n - 1})" if n > 1 else ""
            raise UsageError(f"--k {k} needs more than {k} sentences on each side, and {path} has {n}; "
                             f"pass a smaller --k{fewer}")


#: Lines of each side the submit-time check looks at (:func:`side_language_warning`).
SAMPLE_LINES = 200


def side_language_warning(path, code: str, side: str, other_code: str | None = None) -> str | None:
    """A warning when a side's first lines do not read as the language its code names (swapped
    ``--src-lang`` / ``--tgt-lang`` passed silently, and ``export --langid`` then wrote 0 pairs):
    fewer than half of up to ``SAMPLE_LINES`` sentences plausible for ``code``, and most of them
    identified as one other language. None when they agree, when the identifier does not know the
    code, or when the file cannot be sampled (a pipe, an object-store URL)."""
    label = langid_label(code)
    if label is None:
        return None
    lines = sample_sentences(path, SAMPLE_LINES)
    if not lines:
        return None
    checker = LanguageChecker()
    plausible = sum(checker.is_language(line, label) for line in lines)
    if plausible * 2 >= len(lines):
        return None
    counts: dict[str, int] = {}
    for line in lines:
        found = checker.detect(line)[0]
        counts[found] = counts.get(found, 0) + 1
    top, n = max(counts.items(), key=lambda item: (item[1], item[0]))
    if top == label or n * 2 < len(lines):
        return None
    swapped = other_code is not None and langid_label(other_code) == top
    hint = (" -- are --src-lang and --tgt-lang swapped?" if swapped else
            f" -- check --{side}-lang (the code is a label for the export's --langid filter)")
    return (f"--{side}-lang {code}, but {n} of the first {len(lines)} sentences of {path} read as {top!r} "
            f"(only {plausible} as {label!r}){hint}")
