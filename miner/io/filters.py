"""Export filters: each optional, applied to the pairs of a job best first, each one counted.

A pair is removed by the first filter that rejects it, in this order (cheap checks first), so the
counts add up to the pairs removed:

==================  =========================================================================
``min-score``       score below ``--min-score`` (default: the job's threshold; done in the query)
``min-probability`` estimated probability of being a translation below ``--min-probability``
                    (``--threshold auto`` jobs only; done in the query)
``max-score``       score above ``--max-score`` (very high margins are often boilerplate)
``min-length``      either side shorter than N characters
``max-length``      either side longer than N characters
``length-ratio``    longer side / shorter side above R (in characters)
``identical``       both sides equal once case, spaces, punctuation and symbols are ignored
``digits``          both sides have numbers in digits and they differ (``1,000`` = ``1.000`` =
                    ``1000``; a side with no digits is not compared: numbers may be spelled out)
``langid``          a side is not in the job's language for that side (py3langid, see miner.io.langid)
``duplicates``      same source and target as a pair already written (same normalisation as
                    ``identical``); the best scoring copy is kept
==================  =========================================================================

Lengths are Unicode characters of the stored (whitespace-normalised) text, so ratios between a
language written with Han characters and one written with Latin letters are naturally far from 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from typing import Callable

from miner.runtime.errors import UsageError

ORDER = ("min-score", "min-probability", "max-score", "min-length", "max-length", "length-ratio", "identical", "digits",
         "langid", "duplicates")

# Digits joined by group, decimal or time separators form one number: 1,000 = 1.000 = 1 000 (no-break
# space) = 1000; 3,5 = 3.5; 8:30 = 8h30 = 8.30.
_NUMBER = re.compile(r"\d+(?:[.,:h'\u2019\u00a0\u202f]\d+)*")


@dataclasses.dataclass
class FilterOptions:
    """The filters of one export; None / False means off."""

    min_score: float | None = None
    max_score: float | None = None
    min_probability: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    max_length_ratio: float | None = None
    drop_identical: bool = False
    drop_digit_mismatch: bool = False
    langid: bool = False
    langid_min_share: float = 0.25
    dedup: bool = False

    def __post_init__(self) -> None:
        if self.min_score is not None and self.max_score is not None and self.max_score < self.min_score:
            raise UsageError(f"--max-score {self.max_score} is below --min-score {self.min_score}: nothing would be kept")
        if self.min_probability is not None and not 0 <= self.min_probability <= 1:
            raise UsageError(f"--min-probability must be between 0 and 1, got {self.min_probability}")
        for name in ("min_length", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 0, got {value}")
        if self.min_length is not None and self.max_length is not None and self.max_length < self.min_length:
            raise UsageError(f"--max-length {self.max_length} is below --min-length {self.min_length}")
        if self.max_length_ratio is not None and self.max_length_ratio < 1:
            raise UsageError(f"--max-length-ratio must be at least 1 (longer side / shorter side), "
                             f"got {self.max_length_ratio}")

    @property
    def any_beyond_min_score(self) -> bool:
        """True when a filter other than the score floor is on."""
        return any((self.max_score is not None, self.min_probability is not None, self.min_length is not None, self.max_length is not None,
                    self.max_length_ratio is not None, self.drop_identical, self.drop_digit_mismatch,
                    self.langid, self.dedup))


def comparison_key(text: str) -> str:
    """Text for the identical / duplicate checks: case-folded, only letters, digits and marks kept
    (NFKC first, so full-width and compatibility forms compare equal). A text with none of those
    (``...``) is compared as it is."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    key = "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LNM")
    return key or text


def numbers(text: str) -> frozenset[str]:
    """The numbers written in digits in ``text``, separators removed (any Unicode digits, as ASCII)."""
    found = set()
    for match in _NUMBER.finditer(text):
        found.add("".join(str(unicodedata.decimal(ch)) for ch in match.group() if ch.isdecimal()))
    return frozenset(found)


def digit_mismatch(source: str, target: str, score: float = 0.0) -> bool:
    """True when both sides have numbers written in digits and they differ. A side without digits
    is not compared: numbers are often spelled out ("a las dos y media" / "at 2:30")."""
    a, b = numbers(source), numbers(target)
    return bool(a) and bool(b) and a != b


class FilterChain:
    """Applies the filters of :class:`FilterOptions` to (source, target, score) and counts removals.

    ``warn`` receives warnings (unknown language codes for language ID)."""

    def __init__(self, options: FilterOptions, src_lang: str, tgt_lang: str,
                 warn: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.counts: dict[str, int] = {}
        self.langid_sides = {"src": 0, "tgt": 0}
        self._seen: set[bytes] = set()
        self._checks: list[tuple[str, Callable[[str, str, float], bool]]] = []  # returns True to remove
        o = options
        if o.min_score is not None:
            self.counts["min-score"] = 0  # filled in by the caller (done in the query)
        if o.min_probability is not None:
            self.counts["min-probability"] = 0  # likewise
        if o.max_score is not None:
            self._add("max-score", lambda s, t, score: score > o.max_score)
        if o.min_length is not None:
            self._add("min-length", lambda s, t, score: min(len(s), len(t)) < o.min_length)
        if o.max_length is not None:
            self._add("max-length", lambda s, t, score: max(len(s), len(t)) > o.max_length)
        if o.max_length_ratio is not None:
            self._add("length-ratio",
                      lambda s, t, score: max(len(s), len(t)) > o.max_length_ratio * max(min(len(s), len(t)), 1))
        if o.drop_identical:
            self._add("identical", lambda s, t, score: comparison_key(s) == comparison_key(t))
        if o.drop_digit_mismatch:
            self._add("digits", digit_mismatch)
        if o.langid:
            self._setup_langid(src_lang, tgt_lang, warn or (lambda message: None))
        if o.dedup:
            self._add("duplicates", self._duplicate)

    def _add(self, name: str, check: Callable[[str, str, float], bool]) -> None:
        self.counts[name] = 0
        self._checks.append((name, check))

    def _setup_langid(self, src_lang: str, tgt_lang: str, warn: Callable[[str], None]) -> None:
        from miner.io.langid import LanguageChecker, langid_label

        checker = LanguageChecker(self.options.langid_min_share)
        labels = {}
        for side, code in (("src", src_lang), ("tgt", tgt_lang)):
            label = langid_label(code)
            if label is None:
                warn(f"language ID does not know {code!r} (the job's {side} language); that side is not checked")
            else:
                labels[side] = label
        src_label, tgt_label = labels.get("src"), labels.get("tgt")

        def wrong_language(s: str, t: str, score: float) -> bool:
            if src_label is not None and not checker.is_language(s, src_label):
                self.langid_sides["src"] += 1
                return True
            if tgt_label is not None and not checker.is_language(t, tgt_label):
                self.langid_sides["tgt"] += 1
                return True
            return False

        self._add("langid", wrong_language)

    def _duplicate(self, s: str, t: str, score: float) -> bool:
        key = hashlib.blake2b(f"{comparison_key(s)}\t{comparison_key(t)}".encode(), digest_size=16).digest()
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def keep(self, source: str, target: str, score: float) -> bool:
        """True to write the pair; otherwise the first filter that rejects it is counted."""
        for name, remove in self._checks:
            if remove(source, target, score):
                self.counts[name] += 1
                return False
        return True

    def summary(self, candidates: int, written: int) -> str:
        """One line: every active filter with the pairs it removed, then what is left."""
        parts = []
        o = self.options
        settings = {"min-score": o.min_score, "min-probability": o.min_probability, "max-score": o.max_score, "min-length": o.min_length,
                    "max-length": o.max_length, "length-ratio": o.max_length_ratio}
        for name in ORDER:
            if name not in self.counts:
                continue
            label = f"{name} {settings[name]:g}" if settings.get(name) is not None else name
            extra = ""
            if name == "langid" and self.counts[name]:
                extra = f" (src {self.langid_sides['src']:,}, tgt {self.langid_sides['tgt']:,})"
            parts.append(f"{label}: -{self.counts[name]:,}{extra}")
        return f"filters: {candidates:,} candidates; " + "; ".join(parts) + f"; {written:,} written"
