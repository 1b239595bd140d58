"""The PII scrubber: masks e-mail addresses, phone numbers and long digit runs in an
utterance before its text key is made, so no published output (keys, slot values,
rewrites, clusters, graph, report) can carry them.

It must run on the raw utterance: normalize_text turns '@', '.', '+' and '-' into
spaces, after which an e-mail or a formatted phone number is no longer recognisable.

Masks are whole tokens of lower-case ASCII letters framed by 'xx' (fastai's convention):
normalize_text leaves them unchanged (no punctuation, already case-folded), they are one
token for the similarity features, and no ASR system transcribes a user saying
"xxphonexx", so a mask is never confused with a word:

    xxemailxx   an e-mail address, written (a@b.co; ASCII, Latin or Cyrillic letters) or
                spoken in English (a at b dot com)
    xxphonexx   a digit sequence with phone punctuation (+, spaces, -, ., parentheses)
                holding at least `min_digits` digits
    xxnumberxx  an unbroken run of at least `min_digits` digits, or as many English digit
                words in a row ("five five five one two ...")

Digits are any Unicode decimal digits (category Nd: Arabic-Indic, Devanagari, Thai,
Myanmar...); full-width digits and '＠' become ASCII under NFKC first. Times, dates,
amounts and years have fewer than `min_digits` digits in one run (default 7) and stay.
"""
from __future__ import annotations

import re
import unicodedata

EMAIL_MASK, PHONE_MASK, NUMBER_MASK = "xxemailxx", "xxphonexx", "xxnumberxx"
MASKS = (EMAIL_MASK, PHONE_MASK, NUMBER_MASK)

# Address characters: ASCII, Latin and Cyrillic letters. Not \w: in an unspaced script
# (Japanese, Chinese, Thai) the words around an address touch it and would be eaten.
_ADDR = r"0-9A-Za-z\u00c0-\u024f\u0400-\u04ff"
_EMAIL = re.compile(rf"[{_ADDR}.%+'-]+@[{_ADDR}-]+(?:\.[{_ADDR}-]+)+")
# Spoken e-mail in an English ASR transcript: "john dot smith at gmail dot com".
# A part is a word or spelled letters ("a. o. l.").
_PART = r"(?:(?:\w\.\s?)+|\w+)"
_SPOKEN_EMAIL = re.compile(
    rf"\b{_PART}(?:\s*(?:dot|underscore|dash) {_PART})*\s*at {_PART}(?:\s*dot {_PART})*\s*dot (?:com|net|org|edu|gov|co|io|de|uk|fr|in|ru|jp)\b",
    re.IGNORECASE,
)
# Digits joined by phone punctuation: '+44 20 7946 0958', '(555) 123-4567', '090.1234.5678'.
_DIGIT_SEQ = re.compile(r"\+?\(?\d[\d()\-. \u00a0]*\d")
# Dates have 8 digits but are no phone number: 2019-03-12, 12.03.2019, 2019.03.12.
_DATE = re.compile(r"\d{4}([-.])\d{1,2}\1\d{1,2}|\d{1,2}([-.])\d{1,2}\2\d{4}")
_SPOKEN_DIGIT = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|double|triple)"


def _spoken_digits(min_digits: int) -> re.Pattern:
    return re.compile(rf"\b{_SPOKEN_DIGIT}(?:[ -]{_SPOKEN_DIGIT}){{{max(min_digits - 1, 0)},}}\b", re.IGNORECASE)


_SPOKEN_CACHE: dict[int, re.Pattern] = {}


def scrub_utterance(text: str, min_digits: int = 7) -> tuple[str, int]:
    """(masked text, number of masks applied). The text is NFKC-normalised (as the text
    key would be anyway); everything else is left as it was."""
    if not isinstance(text, str) or not text:
        return text, 0
    s = unicodedata.normalize("NFKC", text)
    n = 0

    def sub(pattern: re.Pattern, mask, s: str) -> str:
        nonlocal n

        def one(m: re.Match) -> str:
            nonlocal n
            out = mask(m) if callable(mask) else mask
            if out is None:
                return m.group(0)
            n += 1
            return f" {out} "

        return pattern.sub(one, s)

    s = sub(_EMAIL, EMAIL_MASK, s)
    s = sub(_SPOKEN_EMAIL, EMAIL_MASK, s)

    def digits(m: re.Match):
        seq = m.group(0)
        count = sum(ch.isdecimal() for ch in seq)
        if count < min_digits or _DATE.fullmatch(seq.strip()):
            return None
        return NUMBER_MASK if seq.isdecimal() else PHONE_MASK

    s = sub(_DIGIT_SEQ, digits, s)
    spoken = _SPOKEN_CACHE.get(min_digits) or _SPOKEN_CACHE.setdefault(min_digits, _spoken_digits(min_digits))
    s = sub(spoken, NUMBER_MASK, s)
    if n:
        s = " ".join(s.split())
    return s, n


def scrub_text(text, min_digits: int = 7):
    """scrub_utterance without the count (None stays None)."""
    return scrub_utterance(text, min_digits)[0] if isinstance(text, str) else text


def scrub_slots(slots, min_digits: int = 7):
    """A list of {name, value} slots with every value scrubbed like the utterance, so a
    masked value still projects onto the masked utterance."""
    if slots is None or (not isinstance(slots, (list, tuple)) and not hasattr(slots, "__len__")):
        return slots
    return [{"name": s["name"], "value": scrub_text(s["value"], min_digits)} for s in slots]


# Published tables that describe every turn, single-user texts included (contract v3,
# section 4): the operator's own data, never to be handed on. Every other published table
# holds only texts behind at least `min_users` distinct users.
OPERATOR_DATA = ("turns", "rephrase_pairs")
FLOORED = ("rewrites", "training", "paraphrase_clusters", "rewrite_graph")


def privacy_block(settings) -> dict:
    """The manifest's `privacy` block: the floor the run kept, whether it went below the
    documented one (min_users_override), and which tables are operator data."""
    from .config import MIN_USERS_FLOOR

    return {
        "min_users": int(settings.min_users),
        "min_users_override": bool(settings.min_users_override),
        "below_floor": int(settings.min_users) < MIN_USERS_FLOOR,
        "floored_tables": list(FLOORED),
        "operator_data": list(OPERATOR_DATA),
        "operator_data_note": "turns/ and rephrase_pairs/ describe every turn, texts of one user included: "
                              "operator data, not to be handed on",
    }
