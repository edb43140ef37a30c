"""Replay the reader's fuzz corpus (issue 5): every file of ``tests/fuzz_corpus`` (including
``crashes/``, where ``bench/fuzz_reader.py`` writes crashing inputs) goes through the fuzzer's own
checks -- ``check_input_file`` and ``read_sentences`` with every ``on_decode_error`` policy and
several ``max_chars``: only ``MinerError`` may be raised, every yielded sentence keeps the promises
of ``normalise``, the stats add up, and the result equals a reference reading of the bytes.
A few inputs too large to commit (lines longer than one read chunk) are generated here."""

from __future__ import annotations

import functools
import importlib.util
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fuzz_corpus"


def _load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_reader", ROOT / "bench" / "fuzz_reader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzzer()
large_inputs = functools.lru_cache(maxsize=1)(fuzz.large_inputs)

#: Corpus files (relative to tests/fuzz_corpus) that crash the reader today, with the reason; they
#: are expected to fail until miner/io/reader.py is fixed (then delete the entry).
KNOWN_CRASHES: dict[str, str] = {}

FILES = [p.relative_to(CORPUS).as_posix() for p in fuzz.corpus_files(CORPUS)]
TIMEOUT_S = 20


def _params():
    for name in FILES:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_CRASHES[name])] if name in KNOWN_CRASHES else []
        yield pytest.param(name, id=name, marks=marks)


def examine_with_timeout(path: Path) -> tuple:
    """fuzz.examine(path), failing the test (not hanging the run) after TIMEOUT_S seconds."""

    def alarm(signum, frame):
        raise fuzz.Crash(f"hang: no result within {TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(TIMEOUT_S)
    try:
        return fuzz.examine(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_corpus_is_there():
    seeds = fuzz.seeds()
    assert len(seeds) >= 30 and set(seeds) <= set(FILES), "run: python bench/fuzz_reader.py --write-seeds"
    for name in FILES:
        if not name.startswith("crashes/"):
            assert (CORPUS / name).stat().st_size < fuzz.SEED_LIMIT, name
    # Each plain seed on disk is what the fuzzer would write (compressed ones depend on the zlib /
    # liblzma build, so only their names are checked).
    for name, data in seeds.items():
        if not (name.lower().endswith((".gz", ".xz")) or name.startswith(("gz_", "xz_"))):
            assert (CORPUS / name).read_bytes() == data, name
    assert set(KNOWN_CRASHES) <= set(FILES)


@pytest.mark.parametrize("name", list(_params()))
def test_replay_corpus_file(name):
    try:
        examine_with_timeout(CORPUS / name)
    except fuzz.Crash as exc:
        pytest.fail(f"{name}: {exc}", pytrace=False)


@pytest.mark.parametrize("name", sorted(large_inputs()))
def test_replay_generated_large_input(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(large_inputs()[name])
    try:
        examine_with_timeout(path)
    except fuzz.Crash as exc:
        pytest.fail(f"{name}: {exc}", pytrace=False)


def test_the_checks_catch_a_broken_reader(tmp_path, monkeypatch):
    """The oracle is not vacuous: a reader that forgets to replace control characters, or that
    loses the last character of a long line, is caught on the corpus."""
    import re

    from miner.io import reader

    control = CORPUS / "control_chars.txt"
    monkeypatch.setattr(reader, "_SPACE_RUN", re.compile(r"\s+"))
    with pytest.raises(fuzz.Crash, match="control character"):
        fuzz.examine(control)
    monkeypatch.undo()

    original = reader._read_long_line

    def truncating(*args):
        outcome, text = original(*args)
        return outcome, text[:-1]

    monkeypatch.setattr(reader, "_read_long_line", truncating)
    path = tmp_path / "long_whitespace_short_text.txt"
    path.write_bytes(large_inputs()[path.name])
    with pytest.raises(fuzz.Crash, match="other sentences"):
        fuzz.examine(path)
