"""Language identification of exported sentences with ``py3langid``.

``py3langid`` (a maintained fork of langid.py) ships its naive Bayes model inside the PyPI package
(``py3langid/data/model.npz.xz``), so nothing is downloaded at run time. The model knows about 140
languages, labelled with ISO 639-1 codes where one exists and ISO 639-3 otherwise.

Decision rule: a sentence passes as language L when the model's probability of L is at least
``min_share`` times the probability of the most likely language (default 0.25). Plain "most likely
language is L" rejects too many short, correct sentences among the model's 140 languages: on the
shared Tatoeba data it rejected 5.3% of the Spanish sentences (as Galician, Portuguese, Catalan,
Asturian/Extremaduran ...), against 0.6% with the share rule, which still rejects 99-100% of the
English, German, French and Spanish sentences put on a side of another of these languages.
A sentence with no letters the model knows (``123``, ``OK``) gets a flat distribution and passes.
"""

from __future__ import annotations

import functools

import langcodes

from miner.io.languages import base_language, normalise_code

DEFAULT_MIN_SHARE = 0.25

# The model labels Norwegian Bokmål (nb, nob) with its macrolanguage's code, no. Other codes whose
# label differs from our normalised code are synonyms for langcodes (see _same_language).
_MACROLANGUAGE_LABELS = {"nb": "no"}


@functools.lru_cache(maxsize=1)
def identifier():
    """The py3langid identifier with normalised probabilities (loaded once per process, ~1 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    loader = getattr(LanguageIdentifier, "from_model_file", None) or LanguageIdentifier.from_pickled_model
    return loader(MODEL_FILE, norm_probs=True)


def labels() -> frozenset[str]:
    """The language labels the model knows."""
    return frozenset(identifier().nb_classes)


def _standard_tag(code: str) -> str:
    """langcodes' standard form of a code (deprecated and three-letter codes replaced:
    ``iw`` -> ``he``, ``kik`` -> ``ki``, ``tl`` -> ``fil``); the code itself when it is not a tag."""
    try:
        return langcodes.standardize_tag(code)
    except ValueError:
        return code


@functools.lru_cache(maxsize=1)
def _same_language() -> dict[str, str]:
    """Each model label by its standard form, to find the label of a synonym: ``fil`` -> ``tl``,
    ``ki`` -> ``kik``, and deprecated codes (``iw`` -> ``he``, ``in`` -> ``id``, ``mo``/``mol`` -> ``ro``)."""
    return {_standard_tag(label): label for label in sorted(labels())}


def langid_label(code: str) -> str | None:
    """The model's label for a language code (``deu``, ``de``, ``de-AT`` -> ``de``; ``nb`` -> ``no``),
    or None when the model does not know the language."""
    known = labels()
    base = base_language(code)
    synonym = _same_language().get(_standard_tag(base)) if base else None
    for candidate in (base, synonym, _MACROLANGUAGE_LABELS.get(base), normalise_code(code)):
        if candidate and candidate in known:
            return candidate
    return None


class LanguageChecker:
    """Checks that a text is in an expected language (see the module docstring for the rule)."""

    def __init__(self, min_share: float = DEFAULT_MIN_SHARE) -> None:
        if not 0.0 < min_share <= 1.0:
            from miner.runtime.errors import UsageError

            raise UsageError(f"--langid-min-share must be in (0, 1], got {min_share}")
        self.min_share = min_share
        self._ident = identifier()

    def probabilities(self, text: str) -> dict[str, float]:
        """Probability of each language the model knows."""
        return dict(self._ident.rank(text))

    def detect(self, text: str) -> tuple[str, float]:
        """The most likely language and its probability."""
        return self._ident.classify(text)

    def is_language(self, text: str, label: str) -> bool:
        """True when ``label`` (a model label, see :func:`langid_label`) is plausible for ``text``."""
        ranked = self._ident.rank(text)
        top = ranked[0][1]
        for lang, prob in ranked:
            if lang == label:
                return prob >= self.min_share * top
            if prob < self.min_share * top:
                return False
        return False
