"""Contract section 4.1: how published rewrites apply to a text key. Carrier phrases and
slot values are real MASSIVE utterances (en-US and ja-JP records 0-2 and 93 of alarm_set)."""
from __future__ import annotations

import random

import pandas as pd
import pytest

from selflearn.core.rewrite_apply import (
    Pattern, RewriteIndex, best_pattern, has_literal_text, literal_chars, pattern_regex, placeholder_names,
)


def _index(exact_rows=(), pattern_rows=()):
    rewrites = pd.DataFrame(list(exact_rows), columns=["locale", "source", "target", "confidence"])
    patterns = pd.DataFrame(list(pattern_rows), columns=["locale", "source", "target", "confidence"])
    return RewriteIndex.from_frames(rewrites, patterns)


def test_regex_escapes_literals_and_binds_placeholders_lazily():
    rx = pattern_regex("wake me up at {time} on {date}")
    m = rx.fullmatch("wake me up at nine am on friday")
    assert m.groupdict() == {"time": "nine am", "date": "friday"}
    # literal parts are escaped: a regex metacharacter in fixed text matches itself only
    assert pattern_regex("a.b {x}").fullmatch("a.b c") and not pattern_regex("a.b {x}").fullmatch("axb c")
    assert placeholder_names("{time} and {date} or {time}") == ["time", "date"]
    assert literal_chars("wake me up at {time}") == len("wake me up at ")
    assert has_literal_text("wake me up at {time}") and not has_literal_text("{time} {date}")


def test_a_repeated_placeholder_must_bind_the_same_text():
    p = Pattern.make("en-US", "{time} or {time}", "set an alarm for {time}", 0.9)
    assert p.apply("twelve or twelve") == "set an alarm for twelve"
    assert p.apply("twelve or five am") is None


def test_exact_wins_over_any_pattern():
    idx = _index([("en-US", "wake me up at nine am on friday", "set an alarm for nine am", 0.5)],
                 [("en-US", "wake me up at {time} on {date}", "set an alarm for {time} {date}", 0.99)])
    hit = idx.lookup("en-US", "wake me up at nine am on friday")
    assert (hit.kind, hit.rewrite, hit.confidence) == ("exact", "set an alarm for nine am", 0.5)
    hit = idx.lookup("en-US", "wake me up at five am on monday")
    assert (hit.kind, hit.rewrite) == ("pattern", "set an alarm for five am monday")
    assert idx.lookup("de-DE", "wake me up at five am on monday") is None


def test_most_literal_characters_then_confidence_then_smaller_source():
    rows = [
        ("en-US", "wake me up at {time}", "set an alarm for {time}", 0.99),
        ("en-US", "wake me up at {time} on {date}", "set an alarm for {time} {date}", 0.30),
    ]
    # more fixed text ("... on ") wins although its confidence is lower
    assert _index(pattern_rows=rows).lookup("en-US", "wake me up at nine am on friday").rewrite == \
        "set an alarm for nine am friday"
    # equal fixed text (11 characters each): the higher confidence wins
    tie = [("en-US", "wake me up {x}", "set an alarm {x}", 0.4), ("en-US", "wake {y} up at", "set {y} alarm", 0.8)]
    assert literal_chars(tie[0][1]) == literal_chars(tie[1][1]) == 11
    assert _index(pattern_rows=tie).lookup("en-US", "wake me up at").rewrite == "set me alarm"
    # equal fixed text and confidence: the smaller source in code-point order ("m" < "{")
    same = [("en-US", "wake {x} at", "a {x}", 0.5), ("en-US", "wake me {x}", "b {x}", 0.5)]
    assert literal_chars(same[0][1]) == literal_chars(same[1][1]) == 8
    assert _index(pattern_rows=same).lookup("en-US", "wake me up at").rewrite == "b up at"


def test_an_identity_result_is_no_rewrite_and_the_next_pattern_is_tried():
    rows = [("en-US", "set an alarm for {time}", "set an alarm for {time}", 0.99),
            ("en-US", "set an {what} for {time}", "set an alarm for {time}", 0.5)]
    idx = _index(pattern_rows=rows)
    assert idx.lookup("en-US", "set an alarm for twelve") is None  # both results equal the key
    assert idx.lookup("en-US", "set an timer for twelve").rewrite == "set an alarm for twelve"


def test_unspaced_script_binds_inside_words():
    # ja-JP alarm_set records 0 and 1: "[date : 今週] は [time : 午前五時] に起こして",
    # "[date : 金曜日] の [time : 午前九時] に起こしてください" (keys carry no spaces there)
    p = ("ja-JP", "{date}の{time}に起こしてください", "{date}の{time}にアラームをセットする", 0.9)
    idx = _index(pattern_rows=[p])
    hit = idx.lookup("ja-JP", "金曜日の午前九時に起こしてください")
    assert hit.kind == "pattern" and hit.rewrite == "金曜日の午前九時にアラームをセットする"
    assert idx.lookup("ja-JP", "今週は午前五時に起こして") is None


def test_the_index_answers_as_trying_every_pattern_does():
    carriers = ["wake me up at {time} on {date}", "wake me up at {time}", "set an alarm for {time}",
                "{time} alarm please", "set an alarm {time}", "{date} wake me up at {time}", "{time} and {date}",
                "set an alarm for {time} {date}"]
    values = ["five am", "nine am", "twelve", "friday", "this week", "forty minutes from now", "two hours from now"]
    rng = random.Random(0)
    pats = []
    for i in range(60):
        src = rng.choice(carriers)
        tgt = rng.choice([c for c in carriers if set(placeholder_names(c)) <= set(placeholder_names(src))] or [src])
        pats.append(Pattern.make("en-US", src, tgt, round(rng.random(), 2)))
    idx = RewriteIndex({}, pats)
    for _ in range(400):
        tpl = rng.choice(carriers)
        key = tpl.replace("{time}", rng.choice(values)).replace("{date}", rng.choice(values))
        brute = best_pattern(pats, key)
        got = idx.lookup("en-US", key)
        assert (got.rewrite if got else None) == (brute[1] if brute else None), key


@pytest.mark.parametrize("key", ["", "wake me up at", "at nine am"])
def test_a_placeholder_binds_at_least_one_character(key):
    p = Pattern.make("en-US", "wake me up at {time}", "set an alarm for {time}", 0.9)
    assert p.apply(key) is None


def test_one_placeholder_patterns_answer_as_the_regex_does_without_compiling_it():
    # The string fast path (head, tail, at least one character between) against the
    # contract's regex itself, on carriers of MASSIVE en-US records 0-2 and 93, where
    # the fixed ends can overlap or fill the whole key.
    from selflearn.core.rewrite_apply import fill

    sources = ["wake me up at {time}", "{time} alarm", "set an alarm for {time} please", "a{x}a", "set {x}set"]
    keys = ["wake me up at five am", "wake me up at", "wake me up at ", "five am alarm", " alarm", "alarm", "aa", "aba",
            "a", "set an alarm for twelve please", "set an alarm for  please", "setset", "set set", "set x set"]
    for src in sources:
        p = Pattern.make("en-US", src, "set an alarm " + ("{time}" if "{time}" in src else "{x}"), 0.5)
        assert p.single is not None and p._regex is None
        for key in keys:
            m = pattern_regex(src).fullmatch(key)
            want = fill(p.target, m.groupdict()) if m else None
            assert p.apply(key) == (None if want == key else want), (src, key)
        assert p._regex is None  # never compiled


def test_bindings_are_the_regexs_own():
    """Pattern.bindings against the contract's regular expression itself: random sources
    of 1-4 placeholders, some names repeated ((?P=name)), over a small alphabet (so
    literal parts recur, overlap and touch), and random keys, including keys built from
    the source: the same bindings, or none, every time."""
    from selflearn.core.rewrite_apply import fill, repeated_bindings

    rng = random.Random(7)
    alphabet = "ab "
    checked = matched = repeated = 0
    for _ in range(5000):
        k = rng.randint(1, 4)
        names = [f"p{rng.randint(0, k - 1) if rng.random() < 0.3 else i}" for i in range(k)]
        lits = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3))) for _ in range(k + 1)]
        src = "".join(lits[i] + ("{%s}" % names[i] if i < k else "") for i in range(k + 1))
        if not src.strip("{}"):
            continue
        values = {n: "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for n in names}
        built = fill(src, values)
        p = Pattern.make("en-US", src, src, 0.5)
        repeated += p.plan is None
        for key in (built, "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))):
            m = pattern_regex(src).fullmatch(key)
            want = m.groupdict() if m else None
            assert p.bindings(key) == want, (src, key)
            if p.plan is None:
                assert repeated_bindings(p.pieces, key) == want, (src, key)
            checked += 1
            matched += m is not None
    assert checked > 9000 and matched > checked // 2 and repeated > 500, (checked, matched, repeated)


def test_a_key_built_to_make_the_regex_backtrack_never_reaches_the_regex():
    """The probe's key: a four-placeholder de-DE pattern's head, then 'a am ' to 999
    characters, on which the contract's regex backtracks for ~0.2 s before it fails
    (bench/serve_bench.py times both). The pattern answers without compiling it."""
    src = "erstelle ein {meal_type} am {date} {timeofday} mit mackenzie im {business_name}"
    p = Pattern.make("de-DE", src, "plane {meal_type} am {date} {timeofday} im {business_name}", 0.9)
    assert p.apply(("erstelle ein " + "a am " * 400)[:999]) is None
    assert p.apply("erstelle ein frühstück am montag morgen mit mackenzie im café") == "plane frühstück am montag morgen im café"
    assert p._regex is None
    # a repeated name: a bounded search in the regex's own order, never the regex
    repeated = Pattern.make("en-US", "{x} and {y} then {x} and {z} or {x}", "{x} {y} {z}", 0.5)
    assert repeated.apply(("and then " * 120)[:999]) is None and repeated._regex is None
    assert repeated.apply("ab and c then ab and d or ab") == "ab c d"
    # (a natural key of such a source is left to the regex itself: cheap by the bound)
    from selflearn.core.rewrite_apply import REGEX_WORK_LIMIT, regex_work_bound, repeated_bindings
    natural = "ab and c then ab and d or ab"
    assert regex_work_bound(repeated.pieces, natural) <= REGEX_WORK_LIMIT < regex_work_bound(repeated.pieces, ("and then " * 120)[:999])
    assert repeated_bindings(repeated.pieces, natural) == {"x": "ab", "y": "c", "z": "d"}
