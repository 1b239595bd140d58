"""The PII scrubber (selflearn.core.privacy) on real MASSIVE utterances of six scripts, into
which e-mail addresses, phone numbers and digit runs are inserted; and its place in the
pipeline: before the text key, on slot values and served rewrites too."""
from __future__ import annotations

import pandas as pd
import pytest

from selflearn.config import Settings
from selflearn.core.privacy import EMAIL_MASK, MASKS, NUMBER_MASK, PHONE_MASK, scrub_utterance
from selflearn.core.sessions import enrich_turns
from selflearn.core.text import normalize_text

# locale -> the script's own decimal digits (None: ASCII), unspaced script or not
LOCALES = {
    "en-US": None,                      # Latin
    "ru-RU": None,                      # Cyrillic
    "zh-CN": "０１２３４５６７８９",     # CJK, full-width digits
    "ja-JP": "０１２３４５６７８９",
    "ar-SA": "٠١٢٣٤٥٦٧٨٩",             # Arabic-Indic
    "fa-IR": "۰۱۲۳۴۵۶۷۸۹",             # Extended Arabic-Indic (Persian)
    "th-TH": "๐๑๒๓๔๕๖๗๘๙",             # Thai
    "hi-IN": "०१२३४५६७८९",             # Devanagari
}


def _digits(s: str, table: str | None) -> str:
    return s if table is None else s.translate(str.maketrans("0123456789", table))


def _pii(table):
    return [
        ("jane.doe+1987@example.org", EMAIL_MASK),
        ("ＪＡＮＥ＠ＥＸＡＭＰＬＥ．ＯＲＧ", EMAIL_MASK),  # full-width: NFKC first
        ("+49 30 1234 5678", PHONE_MASK),
        ("(555) 123-4567", PHONE_MASK),
        (_digits("+1 415 555 2671", table), PHONE_MASK),
        (_digits("07700900123", table), NUMBER_MASK),
    ]


def _insert(utt: str, piece: str) -> str:
    """The piece in the middle of a real utterance (between words, or between characters
    of an unspaced script)."""
    words = utt.split(" ")
    if len(words) > 1:
        return " ".join(words[: len(words) // 2] + [piece] + words[len(words) // 2 :])
    mid = len(utt) // 2
    return utt[:mid] + piece + utt[mid:]


def test_masks_survive_normalize_text_unchanged():
    for mask in MASKS:
        assert normalize_text(mask) == mask
        assert scrub_utterance(mask) == (mask, 0)


@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_pii_inserted_into_real_utterances_is_masked_and_nothing_else_changes(massive, locale):
    records = massive(locale, 40)[::4]
    for r in records:
        utt = r["utt"]
        for piece, mask in _pii(LOCALES[locale]):
            dirty = _insert(utt, piece)
            scrubbed, n = scrub_utterance(dirty)
            key = normalize_text(scrubbed)
            assert n == 1, (dirty, scrubbed)
            assert mask in key.split(), (dirty, key)
            # no digit and no '@' of the PII is left, and the rest of the utterance is intact
            assert not any(ch.isdecimal() for ch in key) and "@" not in scrubbed
            assert " ".join(key.replace(mask, " ").split()) == normalize_text(_insert(utt, " "))


@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_times_years_amounts_and_dates_survive(massive, locale):
    table = LOCALES[locale]
    keep = ["7 am", "2019", "10:30", "1,000,000", "12/03/2019", "2019-03-12", "24.12.2026", "15 30 45"]
    for r in massive(locale, 20)[::5]:
        for piece in keep:
            piece = _digits(piece, table)
            dirty = _insert(r["utt"], piece)
            assert scrub_utterance(dirty) == (scrub_utterance(dirty)[0], 0), dirty
            assert normalize_text(scrub_utterance(dirty)[0]) == normalize_text(dirty)


def test_digit_threshold_is_a_setting(massive):
    utt = massive("en-US", 1)[0]["utt"]
    dirty = _insert(utt, "12345")
    assert scrub_utterance(dirty, min_digits=7)[1] == 0
    assert NUMBER_MASK in scrub_utterance(dirty, min_digits=5)[0].split()


def test_spoken_email_and_spoken_digits_in_real_massive_utterances(massive):
    """MASSIVE's own spoken e-mail addresses (email_addcontact / sendemail records) are
    masked; a spoken phone number inserted into a real utterance too."""
    spoken = [r["utt"] for r in massive("en-US") if " at " in r["utt"] and r["utt"].endswith(" dot com")][:10]
    assert spoken
    for utt in spoken:
        scrubbed, n = scrub_utterance(utt)
        assert n >= 1 and EMAIL_MASK in scrubbed.split() and " dot com" not in scrubbed, utt
    utt = massive("en-US", 3)[2]["utt"]
    scrubbed, n = scrub_utterance(_insert(utt, "five five five two six seven one"))
    assert n == 1 and NUMBER_MASK in scrubbed.split()
    assert scrub_utterance(_insert(utt, "five five five"))[1] == 0  # three digit words: a count, not a number


def _turns(massive):
    recs = massive("en-US", 3)
    base = dict(user_id="u1", device_id="d1", session_id=None, locale="en-US", asr_confidence=0.9,
                response_status="success", barge_in=False, feedback=None, dwell_ms=20000, nlu_intent="email_addcontact",
                nlu_domain="email")
    rows = []
    for i, r in enumerate(recs):
        rows.append(dict(base, event_id=f"e{i}", ts=pd.Timestamp("2026-11-02 08:00", tz="UTC") + pd.Timedelta(seconds=30 * i),
                         order=i, utterance=_insert(r["utt"], "jane.doe@example.org"),
                         nlu_slots=[{"name": "personal_info", "value": "jane.doe@example.org"},
                                    {"name": "phone", "value": "+44 20 7946 0958"}],
                         rewritten_from=_insert(r["utt"], "+44 20 7946 0958") if i == 2 else None))
    return pd.DataFrame(rows)


def test_enrich_turns_keys_slots_and_served_rewrites_are_scrubbed(massive):
    out = enrich_turns(_turns(massive), Settings())
    assert out["text"].str.contains(EMAIL_MASK).all()
    assert not out["text"].str.contains("example|jane", regex=True).any()
    values = [s["value"] for slots in out["nlu_slots"] for s in slots]
    assert set(values) == {EMAIL_MASK, PHONE_MASK}
    assert PHONE_MASK in out["rewritten_from"].dropna().iloc[0].split()
    # the masked slot value still projects onto the masked key (weak labels keep working)
    from selflearn.core.labels import project_slots

    assert project_slots(out["text"].iloc[0], [{"name": "personal_info", "value": values[0]}]) is not None


def test_scrubbing_can_be_turned_off(massive):
    out = enrich_turns(_turns(massive), Settings(scrub_pii=False))
    assert out["text"].str.contains("jane doe example org").all()
    assert not out["text"].str.contains(EMAIL_MASK).any()
