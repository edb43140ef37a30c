"""Language codes. Codes are labels for the user: an unknown one gives a warning, never an error."""

from __future__ import annotations

# ISO 639-1 (all 183 two-letter codes).
ISO639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de
    dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id
    ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu
    lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu
    rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr
    ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)

# ISO 639-3 / 639-2 codes of the languages users mine most often, mapped to ISO 639-1.
ISO639_3_TO_1 = {
    "ara": "ar", "bul": "bg", "ben": "bn", "cat": "ca", "ces": "cs", "cze": "cs", "dan": "da",
    "deu": "de", "ger": "de", "ell": "el", "gre": "el", "eng": "en", "spa": "es", "est": "et",
    "eus": "eu", "fas": "fa", "per": "fa", "fin": "fi", "fra": "fr", "fre": "fr", "gle": "ga",
    "glg": "gl", "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "hye": "hy", "ind": "id",
    "isl": "is", "ita": "it", "jpn": "ja", "kat": "ka", "kaz": "kk", "kor": "ko", "lit": "lt",
    "lav": "lv", "mkd": "mk", "mar": "mr", "msa": "ms", "mlt": "mt", "nld": "nl", "dut": "nl",
    "nob": "nb", "nor": "no", "pol": "pl", "por": "pt", "ron": "ro", "rum": "ro", "rus": "ru",
    "slk": "sk", "slv": "sl", "sqi": "sq", "srp": "sr", "swe": "sv", "swa": "sw", "tam": "ta",
    "tel": "te", "tha": "th", "tgl": "tl", "tur": "tr", "ukr": "uk", "urd": "ur", "vie": "vi",
    "zho": "zh", "chi": "zh", "cmn": "zh",
}

# Regional variants that models name explicitly.
VARIANTS = frozenset({"zh-tw", "zh-cn", "zh-hans", "zh-hant", "pt-br", "pt-pt", "en-us", "en-gb"})

MUSE_LANGUAGES = frozenset("ar de en es fr it ja ko nl pl pt ru th tr zh zh-tw".split())


def normalise_code(code: str) -> str:
    """Lower-case, ``_`` to ``-``, and ISO 639-3 mapped to 639-1 where known (``deu`` -> ``de``)."""
    code = code.strip().lower().replace("_", "-")
    return ISO639_3_TO_1.get(code, code)


def is_known(code: str) -> bool:
    """True for an ISO 639-1 code, a mapped ISO 639-3 code or a known regional variant."""
    norm = normalise_code(code)
    return norm in ISO639_1 or norm in VARIANTS or norm.split("-")[0] in ISO639_1


def language_warnings(code: str, model_languages: frozenset | None, model_name: str) -> list[str]:
    """Warnings (never errors) about a language code and a model's coverage of it."""
    norm = normalise_code(code)
    if not is_known(code):
        return [f"unknown language code {code!r} (not ISO 639-1/639-3); codes are labels only, going on"]
    if model_languages is not None and norm not in model_languages and norm.split("-")[0] not in model_languages:
        supported = " ".join(sorted(model_languages))
        return [f"model {model_name!r} was not trained on {code!r} (it covers: {supported}); expect poor pairs"]
    return []
