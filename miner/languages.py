"""Language codes. Codes are labels for the user: an unknown one gives a warning, never an error.

Every command accepts ISO 639-1 (``de``), ISO 639-3 / 639-2/T (``deu``) and 639-2/B (``ger``)
codes, in any case, with ``_`` or ``-`` before a region or script (``pt_BR``, ``zh-Hant``).
:func:`normalise_code` stores the two-letter form where one exists, so ``deu`` and ``de`` name the
same language everywhere (jobs, reports, Moses file names, language ID).
"""

from __future__ import annotations

from miner.iso639 import INDIVIDUAL_TO_1, ISO639_1, ISO639_2B_TO_1, ISO639_3
from miner.iso639 import ISO639_3_TO_1 as _T_TO_1

# ISO 639-3 (T and B forms, and a few individual languages) mapped to ISO 639-1.
ISO639_3_TO_1 = {**_T_TO_1, **ISO639_2B_TO_1, **INDIVIDUAL_TO_1}

# Regional variants that models name explicitly.
VARIANTS = frozenset({"zh-tw", "zh-cn", "zh-hans", "zh-hant", "pt-br", "pt-pt", "en-us", "en-gb"})

MUSE_LANGUAGES = frozenset("ar de en es fr it ja ko nl pl pt ru th tr zh zh-tw".split())


def normalise_code(code: str) -> str:
    """Lower-case, ``_`` to ``-``, and ISO 639-3/639-2 mapped to 639-1 where one exists
    (``deu`` -> ``de``, ``ger`` -> ``de``, ``pt_BR`` -> ``pt-br``, ``zho-hant`` -> ``zh-hant``)."""
    code = code.strip().lower().replace("_", "-")
    base, sep, rest = code.partition("-")
    return ISO639_3_TO_1.get(base, base) + sep + rest


def base_language(code: str) -> str:
    """The language part of a code, normalised: ``pt_BR`` -> ``pt``, ``deu`` -> ``de``."""
    return normalise_code(code).split("-")[0]


def is_known(code: str) -> bool:
    """True for an ISO 639-1 or ISO 639-3 code (with or without a region or script suffix)."""
    base = base_language(code)
    return base in ISO639_1 or base in ISO639_3


def language_warnings(code: str, model_languages: frozenset | None, model_name: str) -> list[str]:
    """Warnings (never errors) about a language code and a model's coverage of it."""
    norm = normalise_code(code)
    if not is_known(code):
        return [f"unknown language code {code!r} (not ISO 639-1/639-3); codes are labels only, going on"]
    if model_languages is not None and norm not in model_languages and norm.split("-")[0] not in model_languages:
        supported = " ".join(sorted(model_languages))
        return [f"model {model_name!r} was not trained on {code!r} (it covers: {supported}); expect poor pairs"]
    return []
