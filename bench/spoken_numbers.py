"""Build selflearn/spoken_numbers.json: the number words the PII scrubber reads as digits
(selflearn.core.privacy; English also has its own rule there, with "double" and "triple").

A phone or account number said aloud in German is "null eins sieben zwei ..." and reaches
the log as words, not digits; the digit rules cannot see it. The table comes from
`num2words` (PyPI, LGPL-2.1; 0.5.14 when this table was built), a run-time dependency of
nothing: this script is run by hand when a language is added, and its output is package data.

For each MASSIVE language that num2words spells (36 of the 51 languages: not af, el, hi,
hy, jv, ka, km, ml, mn, ms, my, sq, sw, ta, tl, ur; zh through the Han numerals):
- `spaced`: {word: value} of the language's words for 0-9 (the scrubber counts one digit
  each), the single-word forms of 10-99 (two digits each: "zwanzig", "vingt",
  "diecisiete") and of the hundreds 100-900 (three each: "девятьсот", "quinientos": a
  Russian mobile is said "восемь девятьсот шестнадцать сто двадцать три ..."; not French,
  `NO_HUNDREDS`),
  case-folded; a number written in
  several words ("vingt-sept", "treinta y dos") is not in the table, its parts that are
  ("vingt", "sept") count on their own. Every word is NFKC-normalised, as the scrubber's
  input is (num2words' Kannada and Telugu tens are not). Beside num2words' words, the
  forms people say or type that it does not give (`VARIANTS`): English "oh", "o" and
  "nought" for 0; the feminine forms of 1 and 2 (fr "une", pt "uma", "duas") and German
  "zwo"; Arabic as MASSIVE's Arabic writes it (the alef without hamza, a final ه for ة,
  "اثنين" for 2: 89 times in MASSIVE ar-SA against 16 for num2words' "اثنان", and the
  short forms used with feminine nouns, "ثلاث"); Romanian without diacritics or with the
  older cedilla letters ("noua" 121 times against 137 for "nouă", "sapte", "şase").
- `unspaced`: what spells a digit where words are not spaced: the Han numerals
  〇零一二三四五六七八九幺 (num2words' Japanese 0-9, U+3007, and the 'one' of Mandarin phone
  numbers), which Japanese and Chinese read digit by digit in phone numbers, the Thai digit words, and the
  Sino-Korean digit syllables (num2words' 영 일 이 ..., plus 공, the zero of phone numbers).

    python -m bench.spoken_numbers     # needs: pip install num2words==0.5.14
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "selflearn" / "spoken_numbers.json"
# MASSIVE's languages (locale prefixes) -> num2words' language code; nb-NO is Norwegian 'no'.
SPACED = {"am": "am", "ar": "ar", "az": "az", "en": "en", "bn": "bn", "ca": "ca", "cy": "cy", "da": "da", "de": "de", "es": "es",
          "fa": "fa", "fi": "fi", "fr": "fr", "he": "he", "hu": "hu", "id": "id", "is": "is", "it": "it",
          "kn": "kn", "lv": "lv", "nb": "no", "nl": "nl", "pl": "pl", "pt": "pt", "ro": "ro", "ru": "ru",
          "sl": "sl", "sv": "sv", "te": "te", "tr": "tr", "vi": "vi"}
UNSPACED = {"th": "th", "ko": "ko"}
# Languages whose hundreds are left out: French says 70-99 as compounds ("cent quatre vingt
# dix neuf", 199), which read as more digits after a hundred; its radio frequencies in
# MASSIVE were masked (7 utterances), and its phone numbers are said in pairs anyway.
NO_HUNDREDS = {"fr"}
# Forms of a number word num2words does not give (see the docstring), {language: {word: value}}.
EXTRA_WORDS = {"en": {"oh": 0, "o": 0, "nought": 0, "niner": 9}, "fr": {"une": 1}, "pt": {"uma": 1, "duas": 2},
               "de": {"zwo": 2}, "ar": {"اثنين": 2, "إثنين": 2, "ثلاث": 3, "أربع": 4, "خمس": 5, "ست": 6, "سبع": 7,
                                      "ثمان": 8, "تسع": 9}}
_AR_SPELLING = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا"})
_RO_CEDILLA = str.maketrans({"ș": "ş", "ț": "ţ"})
_RO_PLAIN = str.maketrans({"ș": "s", "ş": "s", "ț": "t", "ţ": "t", "ă": "a", "â": "a", "î": "i"})


def variants(lang: str, word: str) -> set[str]:
    """The other spellings of one word that a log holds for it (see the docstring)."""
    if lang == "ar":
        plain = word.translate(_AR_SPELLING)
        return {plain, plain[:-1] + "ه" if plain.endswith("ة") else plain, word[:-1] + "ه" if word.endswith("ة") else word}
    if lang == "ro":
        return {word.translate(_RO_CEDILLA), word.translate(_RO_PLAIN)}
    return set()


def spaced_words(lang: str) -> dict[str, int]:
    """{word: its value} for the language's one-word numbers 0-99 (the first value a word
    spells, should two spell alike)."""
    from num2words import num2words

    words: dict[str, int] = {}
    for n in list(range(100)) + (list(range(100, 1000, 100)) if lang not in NO_HUNDREDS else []):
        w = unicodedata.normalize("NFKC", num2words(n, lang=lang)).casefold().strip()
        if w and len(w.split()) == 1 and "-" not in w and w not in words:
            words[w] = n
    for w, n in list(EXTRA_WORDS.get(lang, {}).items()) + [(v, n) for w, n in words.items() for v in variants(lang, w)]:
        words.setdefault(unicodedata.normalize("NFKC", w).casefold(), n)
    return dict(sorted(words.items()))


def main() -> None:
    from importlib.metadata import version

    from num2words import num2words

    table = {"source": f"num2words {version('num2words')} (bench/spoken_numbers.py)",
             "spaced": {loc: spaced_words(lang) for loc, lang in sorted(SPACED.items())}}
    # Han: the numerals Japanese (num2words' ja) and Chinese write for 0-9, plus U+3007 (the
    # ideographic zero) and 幺 (the 'one' of Mandarin phone numbers); not the financial forms
    # (壹, 伍, 陆, 参...), which are everyday words too.
    han = sorted({num2words(n, lang="ja").strip() for n in range(10)} | {"\u3007", "幺"})
    unspaced = {"han": han}
    for loc, lang in UNSPACED.items():
        unspaced[loc] = sorted({num2words(n, lang=lang).strip() for n in range(10)})
    unspaced["ko"] = sorted(set(unspaced["ko"]) | {"공"})  # zero as Koreans read it in phone numbers
    table["unspaced"] = unspaced
    OUT.write_text(json.dumps(table, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{OUT}: {sum(map(len, table['spaced'].values()))} spaced words in {len(table['spaced'])} languages; "
          + ", ".join(f"{k} {len(v)}" for k, v in unspaced.items()))


if __name__ == "__main__":
    main()
