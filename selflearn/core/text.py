"""Text keys (contract section 3) and the lexical similarity features rephrase scoring uses.

Everything here is pure Python over strings, so the Spark path calls these very functions
in batches: the JVM's lower-casing and regexes differ from Python's (ß, Unicode versions).
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from rapidfuzz.distance import Levenshtein

# Bumped whenever normalize_text changes: embedding caches are keyed by it.
NORMALIZER_VERSION = "1"

_APOSTROPHES = ("'", "\u2019")


class _PunctuationToSpace(dict):
    """str.translate table filled lazily: P*/S* -> space; apostrophes are left for the
    context rule in normalize_text."""

    def __missing__(self, cp: int):
        ch = chr(cp)
        value = cp if ch in _APOSTROPHES or unicodedata.category(ch)[0] not in "PS" else " "
        self[cp] = value
        return value


_TABLE = _PunctuationToSpace()


def _is_letter_or_mark(ch: str) -> bool:
    return unicodedata.category(ch)[0] in ("L", "M")


def normalize_text(text: str) -> str:
    """The contract's text key: NFKC, casefold, punctuation/symbols to spaces (but an
    apostrophe between two letters/marks, kept as U+0027), whitespace collapsed."""
    s = unicodedata.normalize("NFKC", text).casefold().translate(_TABLE)
    if "'" in s or "\u2019" in s:
        n = len(s)
        s = "".join(
            ("'" if 0 < i < n - 1 and _is_letter_or_mark(s[i - 1]) and _is_letter_or_mark(s[i + 1]) else " ")
            if ch in _APOSTROPHES else ch
            for i, ch in enumerate(s)
        )
    # str.split() with no argument splits on Unicode whitespace, as "collapsed" means.
    return " ".join(s.split())


# --- script-aware tokens -------------------------------------------------------------

# Control characters but the whitespace ones (tab, LF, CR): C0, DEL, C1. Ingest quarantines
# a turn holding one (`bad_encoding`); `serve` refuses a request holding one, for the same
# reason: no key the pipeline learned can hold it.
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# An alphanumeric character survives normalize_text: no need to normalize to know the key
# is not empty.
_ALNUM = re.compile(r"[^\W_]")


def is_empty_utterance(text: str) -> bool:
    """True for a text with no key: empty after `str.strip`, or only punctuation and symbols
    (which no turn can be compared or counted by). Ingest quarantines it (`empty_utterance`)."""
    return not text.strip() or (_ALNUM.search(text) is None and not normalize_text(text))


# Scripts written without spaces between words: there a "token" is a character bigram.
# (Korean Hangul is written with spaces between words, so it is not listed.)
_UNSPACED_PREFIXES = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


@lru_cache(maxsize=65536)
@lru_cache(maxsize=4096)
def canonical_locale(locale: str) -> str:
    """A BCP-47 tag in its canonical case (tags are case-insensitive): the language lower
    case, a four-letter script title case, a two-letter region upper case, the rest lower
    case. "EN-us" and "en-US" are one locale, whose evidence must not split in two."""
    parts = locale.split("-")
    out = [parts[0].lower()]
    for p in parts[1:]:
        if len(p) == 4 and p.isalpha():
            out.append(p.title())
        elif len(p) == 2 and p.isalpha():
            out.append(p.upper())
        else:
            out.append(p.lower())
    return "-".join(out)


def is_unspaced_char(ch: str) -> bool:
    """A character of a script written without spaces between words."""
    try:
        return unicodedata.name(ch).startswith(_UNSPACED_PREFIXES)
    except ValueError:
        return False


def token_occurrences(value: str, text: str):
    """Start offsets, left to right, where `value` occurs in `text` as a token sequence: a
    substring whose ends sit at the text's ends, at spaces, or next to a character of a
    script written without spaces (Chinese, Japanese, Thai...), where every character
    boundary is a token boundary ("five" in "wake me at five am", not in "fifteen"; "uber"
    in "uberってなに"; "5点" in "明天早上5点", not in "15点"). Overlapping candidates are all
    yielded: a caller placing several values picks a free one."""
    if not value:
        return
    n, m = len(text), len(value)
    i = text.find(value)
    while i >= 0:
        j = i + m
        left = i == 0 or text[i - 1] == " " or is_unspaced_char(text[i - 1]) or is_unspaced_char(value[0])
        right = j == n or text[j] == " " or is_unspaced_char(text[j]) or is_unspaced_char(value[-1])
        if left and right:
            yield i
        i = text.find(value, i + 1)


def occurs_in(value: str, text: str) -> bool:
    """A value (a text key) is said in `text`: as whole tokens, or, in a script written
    without spaces (Japanese, Chinese, Thai...), inside a "word"."""
    if not value:
        return False
    return f" {value} " in f" {text} " or (any(is_unspaced_char(c) for c in value) and value in text)


def tokens(key: str) -> list[str]:
    """Word tokens of a key; runs of unspaced-script characters become character
    bigrams (Japanese, Chinese, Thai...), so overlap means the same thing in every script."""
    out: list[str] = []
    for word in key.split():
        run: list[str] = []
        run_unspaced = False
        for ch in word:
            unspaced = is_unspaced_char(ch)
            if run and unspaced != run_unspaced:
                out.extend(_bigrams(run) if run_unspaced else ["".join(run)])
                run = []
            run.append(ch)
            run_unspaced = unspaced
        if run:
            out.extend(_bigrams(run) if run_unspaced else ["".join(run)])
    return out


def _bigrams(chars: list[str]) -> list[str]:
    if len(chars) == 1:
        return [chars[0]]
    return [chars[i] + chars[i + 1] for i in range(len(chars) - 1)]


def char_ngrams(key: str, n: int = 3) -> set[str]:
    """Character n-grams over the key with word boundaries marked; works for any script
    because it never needs to know where words end."""
    s = f" {key} "
    if len(s) <= n:
        return {s}
    return {s[i : i + n] for i in range(len(s) - n + 1)}


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute), in C++ via rapidfuzz."""
    return Levenshtein.distance(a, b)


def _dice(x: set, y: set) -> float:
    if not x and not y:
        return 1.0
    return 2.0 * len(x & y) / (len(x) + len(y))


def similarity_features(a: str, b: str) -> dict[str, float]:
    """Lexical similarity of two text keys, each in [0, 1]: token overlap (Dice over
    script-aware tokens), character-trigram Dice and normalized edit similarity."""
    ta, tb = set(tokens(a)), set(tokens(b))
    longest = max(len(a), len(b)) or 1
    return {
        "token_dice": _dice(ta, tb),
        "char3_dice": _dice(char_ngrams(a), char_ngrams(b)),
        "edit_sim": 1.0 - levenshtein(a, b) / longest,
    }
