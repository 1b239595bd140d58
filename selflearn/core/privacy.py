"""The PII scrubber: masks e-mail addresses, phone numbers and long digit runs in an
utterance before its text key is made, so no published output (keys, slot values,
rewrites, clusters, graph, report) can carry them.

It must run on the raw utterance: normalize_text turns '@', '.', '+' and '-' into
spaces, after which an e-mail or a formatted phone number is no longer recognisable.

Masks are whole tokens of lower-case ASCII letters framed by 'xx' (fastai's convention):
normalize_text leaves them unchanged (no punctuation, already case-folded), they are one
token for the similarity features, and no ASR system transcribes a user saying
"xxphonexx", so a mask is never confused with a word:

    xxemailxx   an e-mail address, written in any script (a@b.co, राम@example.com,
                علي@مثال.com), spelled with brackets (jane(at)example(dot)com), or spoken in
                English (a at b dot com) or in any MASSIVE language whose dictated
                addresses MASSIVE holds (juan arroba gmail punto com: the words of
                selflearn/spoken_email.json, from bench/spoken_email.py), or with a
                written '@' and its dots said or lost (joe@aol dot com, dan@dancom)
    xxphonexx   a digit sequence with separators (any space, zero-width space, dash, minus,
                U+30FC, '/', ',', '_', '.', parentheses) holding at least `min_digits` digits
    xxnumberxx  an unbroken run of at least `min_digits` digits, or number words in a row
                that spell as many digits: English ("five five five one two ...", with
                "double", "triple"; "five five five twelve thirty four") and 35 other
                MASSIVE languages from the table selflearn/spoken_numbers.json
                (bench/spoken_numbers.py builds it from num2words, with the spellings
                MASSIVE writes that num2words does not: "اثنين", "sapte"): a spaced
                language's words for 0-9 count one digit, its 10-99 words two ("null eins
                siebenundzwanzig ...", "zéro six vingt-deux ..."; "treinta y cuatro" is
                one), within one language, and a digit group among them its digits
                ("555 one two three four"); Han numerals, Thai digit words and Sino-Korean
                digit syllables count one each, spaced or not ("〇九〇一二三四五六七八")

Digits are any Unicode decimal digits (category Nd: Arabic-Indic, Devanagari, Thai,
Myanmar...); full-width digits and '＠' become ASCII under NFKC first. Times, dates,
amounts and years have fewer than `min_digits` digits in one run (default 7) and stay; a
thousands-grouped amount stays up to 7 integral digits or when round (1.500.000.000).
"""
from __future__ import annotations

import functools
import json
import unicodedata

import regex as re  # \p{...} classes: letters, marks and digits of every script

EMAIL_MASK, PHONE_MASK, NUMBER_MASK = "xxemailxx", "xxphonexx", "xxnumberxx"
MASKS = (EMAIL_MASK, PHONE_MASK, NUMBER_MASK)

# An e-mail address in any script. Each part (the local part, each domain label) is a run of
# ONE script's letters and marks (plus digits of any script and the address punctuation):
# in an unspaced script (Japanese, Chinese, Thai) the words around a Latin address touch it,
# and a run of one script never reaches into them. A non-Latin local part in an unspaced
# script takes the words before it too (no segmenter says where a name begins): the mask is
# then wider than the address, never narrower. Marks count by their script extension
# (a Devanagari vowel sign is Devanagari): a Thai tone mark after a Latin address stays Thai.
_SCRIPTS = ("Latin", "Greek", "Cyrillic", "Armenian", "Georgian", "Hebrew", "Arabic", "Syriac", "Thaana",
            "Devanagari", "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil", "Telugu", "Kannada", "Malayalam",
            "Sinhala", "Thai", "Lao", "Tibetan", "Myanmar", "Ethiopic", "Khmer", "Mongolian", "Hangul",
            "Han}\\p{scx=Hiragana}\\p{scx=Katakana}\\p{scx=Bopomofo")


def _runs(extra: str) -> str:
    return "(?:" + "|".join(rf"[\p{{scx={sc}}}\p{{Nd}}{extra}]+" for sc in _SCRIPTS) + ")"


_LOCAL = _runs(r"._%+'\-")
_LABEL = _runs(r"\-")
# '@' written, or spelled in brackets: jane(at)example(dot)com, jane [at] example [dot] com
_AT = r"(?:@|\s*[(\[{<]\s*(?i:at)\s*[)\]}>]\s*)"
_DOT = r"(?:\.|\s*[(\[{<]\s*(?i:dot)\s*[)\]}>]\s*)"
_EMAIL = re.compile(rf"{_LOCAL}{_AT}{_LABEL}(?:{_DOT}{_LABEL})+")
_MAYBE_EMAIL = re.compile(r"@|[(\[{<]\s*(?i:at)\s*[)\]}>]")
# Spoken e-mail in an English ASR transcript: "john dot smith at gmail dot com".
# A part is a word or spelled letters ("a. o. l.").
_PART = r"(?:(?:\w\.\s?)+|\w+)"
_SPOKEN_EMAIL = re.compile(
    rf"\b{_PART}(?:\s*(?:dot|underscore|dash) {_PART})*\s*at {_PART}(?:\s*dot {_PART})*\s*dot (?:com|net|org|edu|gov|co|io|de|uk|fr|in|ru|jp)\b",
    re.IGNORECASE,
)


def _package_table(name: str) -> dict:
    """One of the word tables shipped as package data (spoken_email.json, spoken_numbers.json)."""
    from importlib import resources

    return json.loads(resources.files("selflearn").joinpath(name).read_text("utf-8"))


@functools.lru_cache(maxsize=1)
def _spoken_email_table() -> dict:
    """{locale: {"at", "dot", "tld": words}} of selflearn/spoken_email.json, read once."""
    return _package_table("spoken_email.json")["locales"]


def _alt(words) -> str:
    """A regex alternation of words, longest first; a two-word one ("snabel a.") takes any spacing."""
    return "(?:" + "|".join(re.escape(w).replace("\\ ", r"\s+") for w in sorted(words, key=lambda w: (-len(w), w))) + ")"


@functools.lru_cache(maxsize=1)
def _spoken_email_any() -> tuple[re.Pattern, re.Pattern]:
    """(gate, rule): spoken e-mail addresses in the 52 MASSIVE languages, from
    selflearn/spoken_email.json (bench/spoken_email.py reads MASSIVE's own dictated
    addresses: "juan arroba gmail punto com", "иван собака gmail точка com", "jan małpa gmail
    kropka com", "john 골뱅이 지메일 닷컴으로"). One alternative per language, its own words
    together: its '@' words, its '.' words, its top-level domains plus com, net, org and its
    country code, or a spelled domain ("punkt d. e."). A word common in one language
    ("point", "à", "et") so never pairs with another language's words ("at this point in").
    The gate (a '.' word right before a domain) is what almost every text fails, cheaply."""
    table = _spoken_email_table()
    every_dot = set().union(*(v["dot"] for v in table.values()))
    every_tld = set().union(*(v["tld"] for v in table.values()))

    part = r"(?:(?:\w\.\s?)+|\w+(?:['\u2019\-]\w+)*)"  # a word (o'neil, t-online) or spelled letters
    spelled = r"(?:\w\.\s?){2,3}"
    groups, tlds = set(), set()
    for locale, words in sorted(table.items()):
        at = set(words["at"]) - every_dot - every_tld  # "dot" and "點" are some language's '.'
        tld = set(words["tld"]) | {"com", "net", "org", locale.split("-")[1].casefold()}
        tlds |= tld
        if at and words["dot"]:
            dot = _alt(words["dot"])
            # the '.' word may touch the domain: Korean "닷컴으로" (dot-com + a particle)
            groups.add(rf"{part}(?:\s+{dot}\s+{part})*\s+{_alt(at)}\s+{part}(?:\s+{dot}\s+{part})*?"
                       rf"\s+{dot}\s*(?:{_alt(tld)}|{spelled})")
    gate = re.compile(rf"{_alt(every_dot)}\s*(?:{_alt(tlds)}|{spelled})(?!\w)", re.IGNORECASE)
    rule = re.compile(r"(?<!\w)(?:" + "|".join(sorted(groups)) + r")(?!\w)", re.IGNORECASE)
    return gate, rule


@functools.lru_cache(maxsize=1)
def _written_at_email() -> re.Pattern:
    """An address with a written '@' whose dots are said, or lost: "joe@aol dot com",
    "juan@gmail punto com", "johndoe@yahoocom" (real SLURP and HWU64 transcripts: a typed
    '@' in a dictated address). The '@' is what makes it an address, so a domain may be
    one label; a '.' word is any MASSIVE language's (spoken_email.json) or English "dot"."""
    dots = set().union(*(v["dot"] for v in _spoken_email_table().values())) | {"dot"}
    return re.compile(rf"{_LOCAL}@{_LABEL}(?:(?:\s*\.\s*|\s+{_alt(dots)}\s+){_LABEL})*(?!\w)", re.IGNORECASE)


# Where a Latin word (or a digit) touches a script written without spaces between words:
# Han, kana, Thai, Lao, Khmer, Myanmar, and Hangul (a Korean particle attaches to the word).
_UNSPACED = r"\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Hangul}\p{scx=Thai}\p{scx=Lao}\p{scx=Khmer}\p{scx=Myanmar}"
_ASCII_ALNUM = re.compile(r"[A-Za-z0-9]")
_SEAM = re.compile(rf"(?<=[\p{{Latin}}\p{{Nd}}])(?=[{_UNSPACED}])|(?<=[{_UNSPACED}])(?=[\p{{Latin}}\p{{Nd}}])")


# What may stand between two digits of one number: spaces of every kind (NBSP, narrow NBSP,
# ideographic), zero-width characters, every dash (Unicode Pd: U+2010 hyphen, en/em dash,
# wave dash...), U+2212 minus, U+30FC (the katakana long mark, typed as a dash in Japanese
# phone numbers), middle dots, '/', ',', '_', '.', parentheses and the Arabic separators.
_SEP = r"[\s\p{Pd}\u2212\u30fc\u30fb\u00b7\u200b-\u200d\u2060\ufeff/,_.()\u060c\u066b\u066c\u3001]"
_DIGIT_SEQ = re.compile(rf"\+?\(?\p{{Nd}}(?:{_SEP}{{0,3}}\p{{Nd}})*")
# On the sequence's ASCII shadow (digits as ASCII, every separator as itself or '-'):
# dates have 8 digits but are no phone number: 2019-03-12, 12.03.2019, 12/03/2019; an
# amount grouped by thousands (1,000,000; 1.000.000) is no number of a person.
_DATE = re.compile(r"\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{4}")
_DECIMALS = re.compile(r"(?:(?<=\d{3}),\d{1,2}|(?<=\d{3})\.\d{1,2})$")  # ",50" / ".00" after the last group
_THOUSANDS = re.compile(r"[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|[1-9]\d{0,2}(?:\.\d{3})+(?:,\d+)?")
_SPOKEN_DIGIT = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|double|triple)"


def _amount_like(shadow: str) -> bool:
    """A thousands-grouped number (_THOUSANDS) reads as an amount when its integral part has
    up to 7 digits (9,999,999.50) or is round (1.500.000.000); "612.345.678", a Spanish
    mobile number as written, is 9 digits that round to nothing."""
    integral = _DECIMALS.sub("", shadow)
    return sum(ch.isdigit() for ch in integral) <= 7 or integral.endswith("000")


def _shadow(seq: str) -> str:
    """The sequence with every digit as its ASCII digit and every dash-like separator as '-'
    (same length), so one date/amount rule holds for every script and separator."""
    out = []
    for ch in seq:
        d = unicodedata.decimal(ch, None)
        if d is not None:
            out.append(str(d))
        elif ch in "/.,":
            out.append(ch)
        elif unicodedata.category(ch) == "Pd" or ch in "\u2212\u30fc":
            out.append("-")
        else:
            out.append(" ")
    return "".join(out)


# Number words outside English (spoken_numbers.json). A token continues a run when only
# spaces, dashes, commas or full stops stand between it and the one before.
_WORD_OR_DIGITS = re.compile(r"[\p{L}\p{M}]+|\p{Nd}+")
_GAP = r"[\s\p{Pd},.]"  # what may stand between two number words of one run
_RUN_GAP = re.compile(_GAP + "+")
_DASH = re.compile(r"\p{Pd}")


@functools.lru_cache(maxsize=1)
def _number_words() -> tuple[dict[str, dict[str, int]], str]:
    """({word: {language: digits}} of the spaced languages, the unspaced digit words as one
    regex alternation, longest first)."""
    table = _package_table("spoken_numbers.json")
    words: dict[str, dict[str, int]] = {}
    for lang, ws in table["spaced"].items():
        for w, value in ws.items():
            words.setdefault(w, {})[lang] = 1 if int(value) < 10 else 2 if int(value) < 100 else 3
    unspaced = sorted({w for ws in table["unspaced"].values() for w in ws}, key=lambda w: (-len(w), w))
    return words, "|".join(re.escape(w) for w in unspaced)


@functools.lru_cache(maxsize=8)
def _unspaced_digits(min_digits: int) -> re.Pattern:
    digit = f"(?:{_number_words()[1]})"
    return re.compile(rf"{digit}(?:{_GAP}*{digit}){{{max(min_digits - 1, 0)},}}")


def _unit_digits(unit: list[str], lang: str, table: dict[str, dict[str, int]]) -> int:
    """Digits one unit spells in `lang` (0: not a number of that language). A unit is a word
    or words joined by dashes ("vingt-sept", "quarante-et-un", "dix-neuf"): one number, two
    digits at most when it holds a 10-99 word; otherwise one digit per digit word."""
    if lang not in table.get(unit[0], {}) or lang not in table.get(unit[-1], {}):
        return 0
    digits = [table[w][lang] for w in unit if lang in table.get(w, {})]
    return max(digits) if max(digits) > 1 else len(digits)


def _run_digits(units: list[list[str]], table: dict[str, dict[str, int]]) -> int:
    """The most digits consecutive units of one language spell. A digit word right after a
    10-99 word is that number's unit ("vingt sept", "mười bảy": 27, 17) and adds nothing,
    as does a 10-99 or digit word right after a hundreds word ("сто двадцать три": 123); a
    hundreds word right after a digit word is that digit's hundred ("üç yüz": 300).
    A group of digits among the words ("555 one two three four") counts its digits, in a
    run that holds at least two number words: "170 to 190" (Norwegian 'to', 2) stays."""
    best = 0
    for lang in {lang for u in units for w in u for lang in table.get(w, {})}:
        run, prev, words, written = 0, 0, 0, False
        for u in units:
            digits_as_written = u[0].isdecimal()
            if digits_as_written:
                d, written = len(u[0]), True
            else:
                d = _unit_digits(u, lang, table)
                words = words + 1 if d else 0
            if d == 0:
                run, words, written = 0, 0, False
            else:
                part_of_prev = len(u) == 1 and ((d == 1 and prev == 2) or (d < 3 and prev == 3))
                multiplier = d == 3 and prev == 1  # "üç yüz", "fünf hundert": the digit was the hundreds' place
                run += 0 if part_of_prev and not digits_as_written else 2 if multiplier else d
            prev = 0 if digits_as_written else d  # "555" is three digits, not a hundred
            if words >= 2 or not written:
                best = max(best, run)
    return best


_AND_LANGS = {"y": ("es",), "e": ("pt",), "et": ("fr",), "și": ("ro",), "şi": ("ro",), "si": ("ro",)}


def _spoken_number_spans(s: str, min_digits: int) -> list[tuple[int, int]]:
    """Spans of runs of spaced number words (one language) that spell >= min_digits digits."""
    table = _number_words()[0]
    units: list[tuple[int, int, list[str]]] = []  # words joined by a single dash are one unit
    for m in _WORD_OR_DIGITS.finditer(s):
        if units and m.start() - units[-1][1] == 1 and _DASH.fullmatch(s[units[-1][1]]) \
                and not m.group().isdecimal() and not units[-1][2][-1].isdecimal():
            units[-1] = (units[-1][0], m.end(), units[-1][2] + [m.group().casefold()])
        else:
            units.append((m.start(), m.end(), [m.group().casefold()]))

    def numeric(u) -> bool:
        return (u[2][0] in table and u[2][-1] in table) or u[2][0].isdecimal()

    # "treinta y cuatro", "trinta e quatro", "douăzeci și trei", "vingt et un": a 10-99 word,
    # the language's 'and', a digit word, said as one number (two digits), like "vingt-et-un".
    k = 0
    while k + 2 < len(units):
        (a0, a1, a), (_, _, c), (_, b1, b) = units[k:k + 3]
        langs = _AND_LANGS.get(c[0], ()) if len(c) == 1 else ()
        if any(table.get(a[-1], {}).get(lang) == 2 and table.get(b[0], {}).get(lang) == 1 for lang in langs) \
                and s[a1:units[k + 2][0]].casefold().replace(c[0], "", 1).isspace():
            units[k:k + 3] = [(a0, b1, a + c + b)]
        k += 1

    spans, i = [], 0
    while i < len(units):
        if not numeric(units[i]):
            i += 1
            continue
        j = i
        while j + 1 < len(units) and numeric(units[j + 1]) and _RUN_GAP.fullmatch(s, units[j][1], units[j + 1][0]):
            j += 1
        if _run_digits([u[2] for u in units[i:j + 1]], table) >= min_digits:
            spans.append((units[i][0], units[j][1]))
        i = j + 1
    return spans


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

        def one(m) -> str:
            nonlocal n
            out = mask(m) if callable(mask) else mask
            if out is None:
                return m.group(0)
            n += 1
            return f" {out} "

        return pattern.sub(one, s)

    if _MAYBE_EMAIL.search(s):
        s = sub(_EMAIL, EMAIL_MASK, s)
        if "@" in s:
            s = sub(_written_at_email(), EMAIL_MASK, s)
    gate, spoken_any = _spoken_email_any()

    def spoken_emails(s: str) -> str:
        s = sub(_SPOKEN_EMAIL, EMAIL_MASK, s)
        return sub(spoken_any, EMAIL_MASK, s) if gate.search(s) else s

    s = spoken_emails(s)
    if max(s, default="") >= "\u0e00" and _ASCII_ALNUM.search(s) and _SEAM.search(s):  # cheap tests first
        # a spoken address touching the words of a script written without spaces ("john at
        # gmail dot com最後の…", MASSIVE ja-JP) is a word of its own: read it again with a
        # space at each such seam, and keep that reading only if it masks more
        before = n
        seamed = spoken_emails(_SEAM.sub(" ", s))
        if n > before:
            s = seamed

    def digits(m):
        seq = m.group(0)
        count = sum(ch.isdecimal() for ch in seq)
        if count < min_digits:
            return None
        shadow = _shadow(seq).strip()
        if _DATE.fullmatch(shadow) or (_THOUSANDS.fullmatch(shadow) and _amount_like(shadow)):
            return None
        return NUMBER_MASK if seq.isdecimal() else PHONE_MASK

    s = sub(_DIGIT_SEQ, digits, s)
    spoken = _SPOKEN_CACHE.get(min_digits) or _SPOKEN_CACHE.setdefault(min_digits, _spoken_digits(min_digits))
    s = sub(spoken, NUMBER_MASK, s)
    s = sub(_unspaced_digits(min_digits), NUMBER_MASK, s)
    for start, end in reversed(_spoken_number_spans(s, min_digits)):
        s = f"{s[:start]} {NUMBER_MASK} {s[end:]}"
        n += 1
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
    from selflearn.config import MIN_USERS_FLOOR
    from selflearn.core.keys import key_fingerprint

    return {
        "key_fingerprint": key_fingerprint(),  # the keying code the run's keys were made with
        "min_users": int(settings.min_users),
        "min_users_override": bool(settings.min_users_override),
        "below_floor": int(settings.min_users) < MIN_USERS_FLOOR,
        "floored_tables": list(FLOORED),
        "operator_data": list(OPERATOR_DATA),
        "operator_data_note": "turns/ and rephrase_pairs/ describe every turn, texts of one user included: "
                              "operator data, not to be handed on",
    }
