"""Sessions, defect estimation and rephrase scoring as plain pandas (no Spark), on turns
built from real MASSIVE utterances."""
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from selflearn.config import DefectModel, Settings
from selflearn.core.defects import defect_probability
from selflearn.core.sessions import enrich_turns

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def turn(event_id, utterance, at_s, status="success", user="u1", device="d1", session_id=None, **kw):
    row = dict(event_id=event_id, user_id=user, device_id=device, session_id=session_id,
               ts=T0 + timedelta(seconds=at_s), locale="en-US", utterance=utterance, asr_confidence=0.9,
               response_status=status, barge_in=False, feedback=None, dwell_ms=30000, nlu_intent=None,
               nlu_domain=None, nlu_slots=None, rewritten_from=None, order=0)
    row.update(kw)
    return row


def frame(rows):
    df = pd.DataFrame(rows)
    df["order"] = np.arange(len(df))
    return df


def by_time_value(massive, intent="alarm_set"):
    """Real MASSIVE utterances of one intent grouped by their time slot value."""
    groups = {}
    for r in massive("en-US"):
        if r["intent"] != intent:
            continue
        m = re.findall(r"\[time : ([^\]]+)\]", r["annot_utt"])
        if len(m) == 1:
            groups.setdefault(m[0].strip(), []).append(r["utt"])
    return groups


def test_sessions_cut_at_gap_and_never_span_devices():
    s = Settings(session_gap_s=300)
    df = frame([
        turn("a", "x one", 0), turn("b", "x two", 100), turn("c", "x three", 100 + 301),
        turn("d", "x four", 110, device="d2"),
    ])
    out = enrich_turns(df, s).set_index("event_id")
    assert out.loc["a", "session"] == out.loc["b", "session"]
    assert out.loc["c", "session"] != out.loc["b", "session"]
    assert out.loc["d", "session"] not in {out.loc["a", "session"], out.loc["c", "session"]}
    assert out.loc["a", "next_event_id"] == "b" and pd.isna(out.loc["b", "next_event_id"])


def test_given_session_id_wins_over_the_gap():
    df = frame([turn("a", "x one", 0, session_id="s1"), turn("b", "x two", 1000, session_id="s1")])
    out = enrich_turns(df, Settings()).set_index("event_id")
    assert out.loc["a", "session"] == out.loc["b", "session"] == "s1"
    assert out.loc["a", "next_event_id"] == "b"


def test_rephrase_after_failure_is_detected(massive):
    groups = by_time_value(massive)
    value, utts = next((v, u) for v, u in sorted(groups.items()) if len(set(u)) >= 2)
    first, second = sorted(set(utts))[:2]
    df = frame([turn("a", first, 0, status="unhandled", dwell_ms=800), turn("b", second, 6)])
    out = enrich_turns(df, Settings()).set_index("event_id")
    assert out.loc["a", "is_rephrase"], (first, second, out.loc["a", "pair_score"])


def test_hard_negative_same_kind_after_success(massive):
    """'... for six' after a served '... for five' is a new request, not a re-ask."""
    groups = by_time_value(massive)
    values = [v for v in sorted(groups) if len(v.split()) <= 2][:2]
    a, b = groups[values[0]][0], groups[values[1]][0]
    df = frame([turn("a", a, 0, dwell_ms=25000), turn("b", b, 20)])
    out = enrich_turns(df, Settings()).set_index("event_id")
    assert not out.loc["a", "is_rephrase"], (a, b, out.loc["a", "pair_score"])


def test_hard_negative_failure_then_unrelated_request(massive):
    # The fitted weights rely on the meaning veto for this case (the pipeline always has it):
    # score with the default encoder, z-scored against real en-US keys.
    from selflearn.encoders.embed import load_encoder, settings_for_locale
    from selflearn.core.rephrase import EncoderMeaning, meaning_baseline
    from selflearn.core.text import normalize_text

    enc = load_encoder(settings_for_locale(Settings(), "en-US"))  # the default routes per locale
    keys = sorted({normalize_text(r["utt"]) for r in massive("en-US", 300)})
    meaning = EncoderMeaning(enc, meaning_baseline(pd.DataFrame({"locale": "en-US", "text": keys,
                                                                  "vector": list(enc.encode(keys))})))
    weather = next(r["utt"] for r in massive("en-US") if r["intent"] == "weather_query")
    alarm = next(r["utt"] for r in massive("en-US") if r["intent"] == "alarm_set")
    df = frame([turn("a", alarm, 0, status="unhandled", dwell_ms=500), turn("b", weather, 25)])
    out = enrich_turns(df, Settings(), meaning=meaning).set_index("event_id")
    assert not out.loc["a", "is_rephrase"], (alarm, weather, out.loc["a", "pair_score"])


def test_silent_defect_is_caught_by_behaviour():
    """A wrong action reads `success`: barge-in, a short dwell and a quick re-ask reveal it."""
    served = pd.DataFrame([dict(response_status="success", barge_in=False, feedback=None, dwell_ms=40000,
                                asr_confidence=0.9, gap_s=np.nan, similarity=np.nan)])
    silent = pd.DataFrame([dict(response_status="success", barge_in=True, feedback=None, dwell_ms=1200,
                                asr_confidence=0.9, gap_s=5.0, similarity=0.6)])
    m = DefectModel()
    assert defect_probability(served, m)[0] < 0.1
    assert defect_probability(silent, m)[0] > 0.9


@pytest.mark.parametrize("status,expected_high", [("error", True), ("unhandled", True), ("success", False)])
def test_reported_failures_are_defects(status, expected_high):
    df = pd.DataFrame([dict(response_status=status, barge_in=None, feedback=None, dwell_ms=None,
                            asr_confidence=None, gap_s=np.nan, similarity=np.nan)])
    p = defect_probability(df, DefectModel())[0]
    assert (p > 0.8) == expected_high


def test_enrich_is_independent_of_batching():
    """The same users give the same result alone or batched with others."""
    rows = [turn(f"e{i}", f"play song number {i % 3}", i * 7, user=f"u{i % 4}", status="unhandled" if i % 5 == 0 else "success")
            for i in range(40)]
    df = frame(rows)
    together = enrich_turns(df, Settings()).sort_values("event_id").reset_index(drop=True)
    apart = pd.concat([enrich_turns(g, Settings()) for _, g in df.groupby("user_id")]).sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(together, apart)
