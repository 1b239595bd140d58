"""validate_rows (pure pandas): every row-level reason code, valid rows, and a property test."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from conftest import massive_records
from selflearn.config import Settings
from selflearn.spark.ingest import LOG_COLUMNS, output_arrow_schema, parse_ts_us, validate_rows
from selflearn.schema import REASON_CODES, arrow_schema

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
CFG = Settings(max_utterance_chars=200)
RECS = massive_records("en-US", 40)
JA = massive_records("ja-JP", 5)


def base_row(i: int = 0, **over) -> dict:
    rec = RECS[i % len(RECS)]
    row = {"event_id": f"e{i}", "user_id": "u1", "ts": "2026-11-24T10:00:00.123456Z",
           "locale": rec["locale"], "utterance": rec["utt"], "response_status": "success"}
    row.update(over)
    return {k: v for k, v in row.items() if v is not _DROP}


_DROP = object()


def run(raws: list[str], cfg: Settings = CFG) -> pd.DataFrame:
    pdf = pd.DataFrame({"raw": raws, "source": [f"t.jsonl:{i + 1}" for i in range(len(raws))],
                        "order": list(range(len(raws)))})
    return validate_rows(pdf, cfg, NOW)


def reason_of(row, cfg: Settings = CFG):
    raw = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)
    return run([raw], cfg)["reason"].iloc[0]


def test_full_valid_row_is_typed():
    rec = RECS[0]
    row = base_row(device_id="d1", session_id="s1", asr_confidence=0.91, nlu_domain=rec["scenario"],
                   nlu_intent=rec["intent"], nlu_slots=[{"name": "time", "value": "five am", "x": 1}],
                   nlu_confidence=1, barge_in=True, feedback=-1, dwell_ms=4200,
                   rewritten_from=RECS[1]["utt"], nlu_model_version="v3", unknown_extra={"a": 1})
    out = run([json.dumps(row)])
    assert list(out.columns) == list(LOG_COLUMNS) + ["reason", "raw", "source", "order"]
    r = out.iloc[0]
    assert r["reason"] is None
    assert r["utterance"] == rec["utt"]
    assert r["ts"] == pd.Timestamp("2026-11-24T10:00:00.123456Z")
    assert r["nlu_slots"] == [{"name": "time", "value": "five am"}]
    assert (r["feedback"], r["dwell_ms"], r["barge_in"], r["nlu_confidence"]) == (-1, 4200, True, 1.0)
    table = pa.Table.from_pandas(out, schema=output_arrow_schema(), preserve_index=False)
    assert table.num_rows == 1
    assert table.select(list(LOG_COLUMNS)).cast(arrow_schema("log")).num_rows == 1


def test_minimal_rows_and_non_latin_text_accepted():
    rows = [base_row(i) for i in range(5)]
    rows += [base_row(10 + i, locale=r["locale"], utterance=r["utt"]) for i, r in enumerate(JA)]
    raws = [json.dumps(r, ensure_ascii=bool(i % 2)) for i, r in enumerate(rows)]
    out = run(raws)
    assert out["reason"].isna().all()
    assert out["utterance"].tolist() == [r["utterance"] for r in rows]
    assert out["order"].tolist() == list(range(len(rows)))
    assert out["nlu_slots"].isna().all() and out["feedback"].isna().all()


@pytest.mark.parametrize("raw, reason", [
    ('{"event_id": "e1", "user_id": "u1", "ts": "2026-11-24T10:00', "unparseable"),
    ("[1, 2, 3]", "unparseable"),
    ("", "unparseable"),
    (None, "unparseable"),
    ('{"event_id": "e1", "asr_confidence": NaN}', "unparseable"),
])
def test_unparseable(raw, reason):
    assert reason_of(raw) == reason


def test_bad_encoding():
    utt = RECS[2]["utt"]
    broken = json.dumps(base_row(utterance=utt[:4] + "\ufffd" + utt[4:]), ensure_ascii=False)
    assert reason_of(broken) == "bad_encoding"
    escaped = json.dumps(base_row(utterance=utt)).replace(utt[:3], utt[:3] + "\\ud800", 1)
    assert reason_of(escaped) == "bad_encoding"
    assert reason_of(json.dumps(base_row(nlu_slots=[{"name": "x", "value": "\udfff"}]))) == "bad_encoding"
    # a lone surrogate even with a field missing: encoding comes first
    assert reason_of(json.dumps(base_row(user_id=_DROP, device_id="\ud83d"))) == "bad_encoding"
    # an escaped backslash followed by "ud800" is plain text
    assert reason_of(json.dumps(base_row(device_id="\\ud800"))) is None


@pytest.mark.parametrize("field", ["event_id", "user_id", "ts", "locale", "utterance", "response_status"])
def test_missing_field(field):
    assert reason_of(base_row(**{field: _DROP})) == "missing_field"
    assert reason_of(base_row(**{field: None})) == "missing_field"


def test_empty_ids_are_missing():
    assert reason_of(base_row(user_id="")) == "missing_field"


@pytest.mark.parametrize("over", [
    {"event_id": 17}, {"utterance": ["a"]}, {"locale": 5}, {"response_status": True},
    {"device_id": 3}, {"nlu_intent": {"x": 1}},
    {"asr_confidence": "high"}, {"asr_confidence": 7.5}, {"asr_confidence": -0.1},
    {"asr_confidence": True}, {"nlu_confidence": 1.01},
    {"feedback": 2}, {"feedback": 0.5}, {"feedback": True}, {"feedback": "1"},
    {"barge_in": "true"}, {"barge_in": 1},
    {"dwell_ms": -1}, {"dwell_ms": 1.5}, {"dwell_ms": -100.0}, {"dwell_ms": 2**63},
    {"nlu_slots": {"name": "a", "value": "b"}}, {"nlu_slots": ["time"]},
    {"nlu_slots": [{"name": "time"}]}, {"nlu_slots": [{"name": "time", "value": 5}]},
])
def test_bad_type(over):
    assert reason_of(base_row(**over)) == "bad_type"


@pytest.mark.parametrize("ts", [
    "1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "2026-11-25T12:00:01Z", "2999-01-01T00:00:00Z",
    "yesterday", "2026-11-24", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-24T25:00:00Z",
    "2026-11-24T10:00:00+25:00", 1764000000, "２０２６-11-24T10:00:00Z",
])
def test_bad_timestamp(ts):
    assert reason_of(base_row(ts=ts)) == "bad_timestamp"


def test_timestamp_forms():
    assert parse_ts_us("2026-11-24T10:00:00Z") == parse_ts_us("2026-11-24 10:00:00")
    assert parse_ts_us("2026-11-24T12:00:00+02:00") == parse_ts_us("2026-11-24T10:00:00Z")
    assert parse_ts_us("2026-11-24T10:00:00.1234569Z") - parse_ts_us("2026-11-24T10:00Z") == 123456
    assert reason_of(base_row(ts="2000-01-01T00:00:00Z")) is None
    assert reason_of(base_row(ts="2026-11-25T12:00:00Z")) is None  # now + 1 day, inclusive
    out = run([json.dumps(base_row(ts="2026-11-24T10:00:00-05:00"))])
    assert out["ts"].iloc[0] == pd.Timestamp("2026-11-24T15:00:00Z")


@pytest.mark.parametrize("locale", ["english!", "en_US", "e", "en-", "", "en-US\n", "1en"])
def test_bad_locale(locale):
    assert reason_of(base_row(locale=locale)) == "bad_locale"


def test_good_locales():
    for loc in ["en-US", "sw", "zh-Hant-TW", "fil-PH"]:
        assert reason_of(base_row(locale=loc)) is None


def test_empty_too_long_unknown_status():
    assert reason_of(base_row(utterance="   ")) == "empty_utterance"
    assert reason_of(base_row(utterance="\u3000\t")) == "empty_utterance"
    long_utt = " ".join(r["utt"] for r in RECS)[:201]
    assert reason_of(base_row(utterance=long_utt)) == "utterance_too_long"
    assert reason_of(base_row(utterance=long_utt[:200])) is None
    assert reason_of(base_row(response_status="maybe")) == "unknown_status"
    assert reason_of(base_row(response_status="Success")) == "unknown_status"


def test_precedence():
    # missing beats bad type, bad type beats bad timestamp, ... status comes last
    assert reason_of(base_row(user_id=_DROP, asr_confidence="x")) == "missing_field"
    assert reason_of(base_row(asr_confidence="x", ts="1970-01-01T00:00:00Z")) == "bad_type"
    assert reason_of(base_row(ts="junk", locale="english!")) == "bad_timestamp"
    assert reason_of(base_row(locale="english!", utterance=" ")) == "bad_locale"
    assert reason_of(base_row(utterance=" ", response_status="maybe")) == "empty_utterance"


def test_type_errors_hint_from_parquet_reader():
    pdf = pd.DataFrame({"raw": [json.dumps(base_row(dwell_ms=5)), json.dumps(base_row()),
                                json.dumps(base_row())],
                        "source": ["a:0", "a:1", "b:0"], "order": [0, 1, 2],
                        "type_errors": ["dwell_ms", "dwell_ms", "ts"]})
    assert validate_rows(pdf, CFG, NOW)["reason"].tolist() == [
        "bad_type", None, "bad_timestamp"]


def test_empty_batch():
    out = run([])
    assert len(out) == 0 and list(out.columns)[-4:] == ["reason", "raw", "source", "order"]


# --- property test --------------------------------------------------------------------
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.integers(),
                    st.floats(allow_nan=False), st.text(max_size=8),
                    st.sampled_from([r["utt"] for r in RECS[:5]]))
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=6)
_field_values = {
    "event_id": st.one_of(st.text(max_size=6), _scalar), "user_id": st.one_of(st.text(max_size=6), _scalar),
    "ts": st.one_of(st.sampled_from(["2026-11-24T10:00:00Z", "2026-11-24 10:00", "1970-01-01T00:00:00Z",
                                     "2026-11-24T10:00:00.5+01:00"]), _scalar),
    "locale": st.one_of(st.sampled_from(["en-US", "ja-JP", "sw", "english!"]), _scalar),
    "utterance": st.one_of(st.sampled_from([r["utt"] for r in RECS[:5]] + ["  "]), _scalar),
    "response_status": st.one_of(st.sampled_from(["success", "error", "unhandled", "maybe"]), _scalar),
    "asr_confidence": _scalar, "nlu_confidence": _scalar, "barge_in": _scalar, "feedback": _scalar,
    "dwell_ms": _scalar, "device_id": _scalar, "nlu_intent": _scalar,
    "nlu_slots": st.one_of(_json, st.lists(st.fixed_dictionaries({"name": st.text(max_size=4),
                                                                  "value": st.text(max_size=4)}), max_size=2)),
    "whatever": _json,
}
_rows = st.fixed_dictionaries({}, optional=_field_values)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_rows, _json), max_size=8))
def test_property_one_row_out_per_row_in(rows):
    raws = [json.dumps(r) for r in rows]
    out = run(raws)
    assert len(out) == len(rows)
    assert out["raw"].tolist() == raws
    assert set(out["reason"].dropna()) <= set(REASON_CODES)
    ok = out[out["reason"].isna()]
    for col in arrow_schema("log"):
        if not col.nullable:
            assert ok[col.name].notna().all()
    table = pa.Table.from_pandas(ok[list(LOG_COLUMNS)], preserve_index=False)
    assert table.cast(arrow_schema("log")).num_rows == len(ok)
    for r in ok.itertuples():
        assert r.response_status in ("success", "error", "unhandled")
        assert r.utterance.strip() and len(r.utterance) <= CFG.max_utterance_chars
        assert pd.isna(r.asr_confidence) or 0 <= r.asr_confidence <= 1
        assert pd.isna(r.feedback) or r.feedback in (-1, 0, 1)
        assert pd.Timestamp("2000-01-01", tz="UTC") <= r.ts <= pd.Timestamp(NOW) + pd.Timedelta(days=1)
    rejected = out[out["reason"].notna()]
    assert rejected[list(LOG_COLUMNS)].isna().all().all()


def test_integral_floats_count_as_integers():
    """pandas writes nullable integer columns as 4200.0 in JSON; that is still an integer."""
    rec = RECS[0]
    row = dict(event_id="e1", user_id="u1", ts="2026-11-24T10:00:00Z", locale="en-US", utterance=rec["utt"],
               response_status="success", feedback=-1.0, dwell_ms=4200.0)
    r = run([json.dumps(row)]).iloc[0]
    assert r["reason"] is None and (r["feedback"], r["dwell_ms"]) == (-1, 4200)


def test_system_act_known_values_kept_others_read_as_unknown():
    """Contract v3: `system_act` is optional; a value (or type) it does not name is read
    as unknown (null), never quarantined."""
    acts = ["inform", "reprompt", "elicit", "confirm", "goodbye", 7, None, ["elicit"]]
    rows = [base_row(i, system_act=a) for i, a in enumerate(acts)] + [base_row(9)]
    out = run([json.dumps(r) for r in rows])
    assert out["reason"].isna().all()
    assert out["system_act"].tolist() == ["inform", "reprompt", "elicit", "confirm", None, None, None, None, None]
    # a parquet column of another type: the reader's type hint does not quarantine it
    pdf = pd.DataFrame({"raw": [json.dumps(base_row(0, system_act=3))], "source": ["t.parquet:0"],
                        "order": [0], "type_errors": ["system_act"]})
    assert validate_rows(pdf, CFG, NOW)["reason"].iloc[0] is None


def test_system_act_with_broken_text_is_unknown_not_quarantined():
    """Broken text in `system_act` alone (U+FFFD from undecodable bytes, a lone surrogate
    escape, a nested one) reads as unknown; the same damage in another field still
    quarantines the row as `bad_encoding`."""
    raws = [json.dumps(base_row(0, system_act="inf\ufffdrm"), ensure_ascii=False),
            json.dumps(base_row(1, system_act="\ud800")),
            json.dumps(base_row(2, system_act={"act": "\ufffd"}), ensure_ascii=False)]
    out = run(raws)
    assert out["reason"].isna().all() and out["system_act"].isna().all()
    both = json.dumps(base_row(3, system_act="\ufffd", utterance="wake me \ufffd up"), ensure_ascii=False)
    assert reason_of(both) == "bad_encoding"
    assert reason_of('{"system_act": "\ufffd", ') == "bad_encoding"  # broken and not JSON


def test_locale_case_is_canonical():
    """BCP-47 tags are case-insensitive: "EN-us" once became a locale of its own, splitting
    en-US's users (and its rewrites) in two."""
    tags = ["EN-us", "en-us", "en-US", "ZH-hant-tw", "es-419", "pt-br"]
    out = run([json.dumps(base_row(i, locale=t)) for i, t in enumerate(tags)])
    assert out["reason"].isna().all()
    assert out["locale"].tolist() == ["en-US", "en-US", "en-US", "zh-Hant-TW", "es-419", "pt-BR"]


def test_blank_ids_are_missing_and_a_leap_second_is_a_time():
    """A probe's last two: "   " as a user id identifies nobody (it would pool every such
    row as one user); 23:59:60Z is a leap second, not a bad timestamp."""
    assert reason_of(json.dumps(base_row(0, user_id="   "))) == "missing_field"
    assert reason_of(json.dumps(base_row(0, event_id="\t"))) == "missing_field"
    out = run([json.dumps(base_row(0, ts="2016-12-31T23:59:60Z"))])
    assert out["reason"].iloc[0] is None
    assert pd.Timestamp(out["ts"].iloc[0]).strftime("%Y-%m-%dT%H:%M:%S") == "2017-01-01T00:00:00"
