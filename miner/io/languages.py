"""Language codes. Codes are labels for the user: an unknown one gives a warning, never an error.

Every command accepts ISO 639-1 (``de``), ISO 639-3 / 639-2/T (``deu``) and 639-2/B (``ger``)
codes, in any case, with ``_`` or ``-`` before a region or script (``pt_BR``, ``zh-Hant``).
:func:`normalise_code` stores the two-letter form where one exists, so ``deu`` and ``de`` name the
same language everywhere (jobs, reports, Moses file names, language ID).

The code data comes from `langcodes <https://pypi.org/project/langcodes/>`_ alone (its optional
``language_data`` package, with language names, is not needed): the IANA language subtag registry
it ships says which codes exist (the ISO 639-1 and ISO 639-3 codes, less the deprecated ones, the
collections and the private-use range ``qaa..qtz``), and its ISO 639-2/T and 639-2/B tables map
three-letter codes to two-letter ones. The registry langcodes ships can lag ISO 639-3: a code added
since is "unknown" here and gets the warning, nothing more.
"""

from __future__ import annotations

import functools

import langcodes
from langcodes.registry_parser import parse_registry

# Individual languages usually written with their macrolanguage's two-letter code (cmn -> zh,
# arb -> ar, ...); the two-letter code is langcodes' (NORMALIZED_MACROLANGUAGES). Only these: the
# stored codes of jobs use this mapping, and other members keep their own code (gug, pbu, ...).
_INDIVIDUAL = "als arb azj cmn ekk gaz khk lvs npi pes plt swh uzn ydd zsm".split()


MUSE_LANGUAGES = frozenset("ar de en es fr it ja ko nl pl pt ru th tr zh zh-tw".split())


@functools.lru_cache(maxsize=1)
def _codes() -> tuple[frozenset[str], frozenset[str]]:
    """ISO 639-1 (two letters, with the deprecated but still listed ``sh``) and ISO 639-3 codes
    (individual languages, macrolanguages and the special ``mis mul und zxx``), from the registry."""
    found = [
        entry["Subtag"]
        for entry in parse_registry()
        if entry.get("Type") == "language"
        and "Deprecated" not in entry
        and entry.get("Scope") not in ("collection", "private-use")
    ]
    return (frozenset(c for c in found if len(c) == 2), frozenset(c for c in found if len(c) == 3))


@functools.lru_cache(maxsize=1)
def _two_letter_forms() -> dict[str, str]:
    """Three-letter codes with a two-letter equivalent: ISO 639-3 / 639-2/T (``deu``), 639-2/B
    (``ger``) and the individual languages above (``cmn``), each mapped to its ISO 639-1 code."""
    ones = _codes()[0]
    mapping = {three: two for two, three in langcodes.LANGUAGE_ALPHA3.items() if two in ones}
    mapping.update({three: two for two, three in langcodes.LANGUAGE_ALPHA3_BIBLIOGRAPHIC.items() if two in ones})
    mapping.update({three: langcodes.NORMALIZED_MACROLANGUAGES[three] for three in _INDIVIDUAL})
    return mapping


def normalise_code(code: str) -> str:
    """Lower-case, ``_`` to ``-``, and ISO 639-3/639-2 mapped to 639-1 where one exists
    (``deu`` -> ``de``, ``ger`` -> ``de``, ``pt_BR`` -> ``pt-br``, ``zho-hant`` -> ``zh-hant``)."""
    code = code.strip().lower().replace("_", "-")
    base, sep, rest = code.partition("-")
    return _two_letter_forms().get(base, base) + sep + rest


def base_language(code: str) -> str:
    """The language part of a code, normalised: ``pt_BR`` -> ``pt``, ``deu`` -> ``de``."""
    return normalise_code(code).split("-")[0]


def is_known(code: str) -> bool:
    """True for an ISO 639-1 or ISO 639-3 code (with or without a region or script suffix)."""
    base = base_language(code)
    ones, threes = _codes()
    return base in ones or base in threes


def language_warnings(code: str, model_languages: frozenset | None, model_name: str) -> list[str]:
    """Warnings (never errors) about a language code and a model's coverage of it."""
    norm = normalise_code(code)
    if not is_known(code):
        return [f"unknown language code {code!r} (not ISO 639-1/639-3); codes are labels only, going on"]
    if model_languages is not None and norm not in model_languages and norm.split("-")[0] not in model_languages:
        supported = " ".join(sorted(model_languages))
        return [f"model {model_name!r} was not trained on {code!r} (it covers: {supported}); expect poor pairs"]
    return []
