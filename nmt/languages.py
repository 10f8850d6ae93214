"""Language codes: what `data.src_lang`, `data.tgt_lang`, corpus `columns` and Tatoeba files
name a language by.

A code is a two- or three-letter ISO 639 code, optionally with a region or script subtag
(`en`, `pt`, `por`, `pt-BR`). The three-letter ISO 639-3 codes of the table below stand for
their two-letter codes (`por` is `pt`), so `eng`/`por` and `en`/`pt` name one pair; codes
outside the table are taken as they are written.
"""

from __future__ import annotations

import re

CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]+)?")

# ISO 639-3 -> ISO 639-1 for common languages (the codes Tatoeba files and archives carry).
ISO3_TO_ISO1 = {
    "afr": "af", "ara": "ar", "bel": "be", "ben": "bn", "bul": "bg", "cat": "ca", "ces": "cs",
    "cmn": "zh", "dan": "da", "deu": "de", "ell": "el", "eng": "en", "epo": "eo", "est": "et",
    "eus": "eu", "fas": "fa", "fin": "fi", "fra": "fr", "gle": "ga", "glg": "gl", "heb": "he",
    "hin": "hi", "hrv": "hr", "hun": "hu", "hye": "hy", "ind": "id", "isl": "is", "ita": "it",
    "jpn": "ja", "kat": "ka", "kor": "ko", "lat": "la", "lit": "lt", "lvs": "lv", "lav": "lv",
    "mkd": "mk", "nld": "nl", "nob": "nb", "nor": "no", "pes": "fa", "pol": "pl", "por": "pt",
    "ron": "ro", "rus": "ru", "slk": "sk", "slv": "sl", "spa": "es", "sqi": "sq", "srp": "sr",
    "swe": "sv", "tha": "th", "tur": "tr", "ukr": "uk", "urd": "ur", "vie": "vi", "zho": "zh",
}
ISO1_TO_ISO3 = {two: three for three, two in ISO3_TO_ISO1.items()  # as Tatoeba writes them
                if three not in ("zho", "fas", "lav", "nor")}
ENGLISH = "en"
# English names of the two-letter codes above, for messages, the page and plots.
NAMES = {
    "af": "Afrikaans", "ar": "Arabic", "be": "Belarusian", "bn": "Bengali", "bg": "Bulgarian",
    "ca": "Catalan", "cs": "Czech", "zh": "Chinese", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "eo": "Esperanto", "et": "Estonian", "eu": "Basque",
    "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish", "gl": "Galician",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ka": "Georgian",
    "ko": "Korean", "la": "Latin", "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian",
    "nl": "Dutch", "nb": "Norwegian Bokmål", "no": "Norwegian", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "es": "Spanish", "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "th": "Thai",
    "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese",
}


def is_code(text: str) -> bool:
    return CODE.fullmatch(text) is not None


def canonical(code: str) -> str:
    """The code a language is known by here: `por` -> `pt`, `por-BR` -> `pt-BR`, `de` -> `de`.
    A Tatoeba script suffix (`srp_Cyrl`) is dropped."""
    base, sep, rest = code.split("_")[0].partition("-")
    return ISO3_TO_ISO1.get(base, base) + sep + rest


def name(code: str) -> str:
    """A language's English name (`pt-BR` -> "Portuguese (BR)"); the code itself where the
    table does not know it."""
    base, _, region = canonical(code).partition("-")
    known = NAMES.get(base, canonical(code))
    return f"{known} ({region})" if region and base in NAMES else known


def same(a: str, b: str) -> bool:
    return canonical(a) == canonical(b)


def key_side(src: str, tgt: str) -> int:
    """The side (0: source, 1: target) whose language code sorts first: the split hashes it,
    so both directions of a pair of languages share one split (en-pt: the English side)."""
    return 0 if canonical(src) <= canonical(tgt) else 1


def default_columns(src: str, tgt: str) -> tuple[str, str]:
    """The languages of a two-column corpus file's columns when its `columns` is not set:
    English first when one side is English (as in every Tatoeba/Anki export and in the en-pt
    corpora, so one file trains both directions), else source first."""
    if same(tgt, ENGLISH):
        return tgt, src
    return src, tgt
