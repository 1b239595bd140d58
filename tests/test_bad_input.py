"""Bad input, beyond tests/test_ingest.py and tests/test_ingest_spark.py: damage of every
kind the issue lists, applied by hypothesis to real rows, must give its contract reason
code; arbitrary raw text never breaks the one-row-out-per-row-in rule; and Spark ingest
over a damaged directory (broken UTF-8 in parquet strings, NaN confidences, timestamps
outside Spark's range, a file of another schema, empty files) accounts for every row."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st

from conftest import massive_records
from damaged import damaged_parquet_dir, table as _table
from selflearn.config import Settings
from selflearn.spark.ingest import LOG_COLUMNS, validate_rows
from selflearn.spark.readers import check_input, ingest
from selflearn.schema import REASON_CODES, arrow_schema
from selflearn.core.text import normalize_text

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
CFG = Settings()  # the contract's defaults: max_utterance_chars 1000
RECS = massive_records("en-US", 30) + massive_records("ja-JP", 10) + massive_records("de-DE", 10)
TEXT_FIELDS = ("event_id", "user_id", "locale", "utterance", "device_id", "nlu_intent")
REQUIRED = ("event_id", "user_id", "ts", "locale", "utterance", "response_status")
CONTROLS = [chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), *range(0x7F, 0xA0)]]
HYP = hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _clean(text: str) -> bool:
    """No damage of another kind (encoding, control characters) in a generated string."""
    return not any(c in CONTROLS or c == "\ufffd" or 0xD800 <= ord(c) <= 0xDFFF for c in text)


def good_row(i: int) -> dict:
    rec = RECS[i % len(RECS)]
    return {"event_id": f"e{i}", "user_id": f"u{i % 7}", "device_id": "kitchen",
            "ts": "2026-11-24T10:00:00.123456Z", "locale": rec["locale"], "utterance": rec["utt"],
            "nlu_intent": rec["intent"], "response_status": "success", "asr_confidence": 0.9}


def validate(raws: list) -> pd.DataFrame:
    pdf = pd.DataFrame({"raw": raws, "source": [f"t.jsonl:{i + 1}" for i in range(len(raws))],
                        "order": list(range(len(raws)))})
    return validate_rows(pdf, CFG, NOW)


def reason(raw) -> str | None:
    return validate([raw])["reason"].iloc[0]


rows = st.integers(0, len(RECS) - 1).map(good_row)


# --- each kind of damage gives its reason code -------------------------------------------

@HYP
@given(rows, st.data())
def test_a_line_cut_anywhere_is_unparseable(row, data):
    line = json.dumps(row, ensure_ascii=data.draw(st.booleans()))
    cut = data.draw(st.integers(1, len(line) - 1))
    assert reason(line[:cut]) == "unparseable"


@HYP
@given(rows, st.sampled_from(TEXT_FIELDS), st.integers(0, 40),
       st.one_of(st.integers(0xD800, 0xDFFF).map(chr), st.just("\ufffd")), st.booleans())
def test_broken_utf8_and_lone_surrogates_are_bad_encoding(row, field, at, bad, ascii_):
    v = row[field]
    row[field] = v[:at] + bad + v[at:]
    assert reason(json.dumps(row, ensure_ascii=ascii_)) == "bad_encoding"


@HYP
@given(rows, st.sampled_from(TEXT_FIELDS), st.integers(0, 40), st.sampled_from(CONTROLS), st.booleans())
def test_control_characters_are_bad_encoding(row, field, at, ctl, ascii_):
    v = row[field]
    row[field] = v[:at] + ctl + v[at:]
    assert reason(json.dumps(row, ensure_ascii=ascii_)) == "bad_encoding"


@HYP
@given(rows, st.sampled_from(["\t", "\n", "\r", " \t\r\n "]), st.integers(0, 40))
def test_whitespace_controls_in_an_utterance_are_plain_whitespace(row, ws, at):
    u = row["utterance"]
    row["utterance"] = u[:at] + ws + u[at:]
    out = validate([json.dumps(row)])
    assert out["reason"].iloc[0] is None and out["utterance"].iloc[0] == row["utterance"]


@HYP
@given(rows, st.sampled_from(REQUIRED), st.booleans())
def test_missing_or_null_required_field_is_missing_field(row, field, null):
    if null:
        row[field] = None
    else:
        del row[field]
    assert reason(json.dumps(row)) == "missing_field"


_wrong = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@HYP
@given(rows, st.sampled_from(["event_id", "user_id", "locale", "utterance", "response_status", "device_id",
                              "nlu_intent", "asr_confidence", "barge_in", "feedback", "dwell_ms", "nlu_slots"]),
       _wrong)
def test_wrong_types_are_bad_type(row, field, value):
    ok = {"asr_confidence": lambda v: type(v) in (int, float) and 0 <= v <= 1,
          "barge_in": lambda v: type(v) is bool,
          "feedback": lambda v: type(v) in (int, float) and v in (-1, 0, 1) and type(v) is not bool,
          "dwell_ms": lambda v: type(v) in (int, float) and float(v).is_integer() and 0 <= v < 2**63,
          "nlu_slots": lambda v: v == []}
    assume(not ok.get(field, lambda v: False)(value))
    row[field] = value
    assert reason(json.dumps(row)) == "bad_type"


_far = st.one_of(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1999, 12, 31, 23, 59, 59)),
                 st.datetimes(min_value=datetime(2026, 11, 25, 12, 1), max_value=datetime(9999, 12, 31)))


@HYP
@given(rows, _far, st.sampled_from(["%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%MZ"]))
def test_timestamps_far_past_or_future_are_bad_timestamp(row, when, fmt):
    assume(when.year >= 1000)  # four-digit years: the ISO form itself
    row["ts"] = when.strftime(fmt)
    assert reason(json.dumps(row)) == "bad_timestamp"


@HYP
@given(rows, st.text(max_size=30))
def test_unparseable_timestamps_are_bad_timestamp(row, junk):
    assume(_clean(junk))
    from selflearn.spark.ingest import parse_ts_us

    assume(parse_ts_us(junk) is None)
    row["ts"] = junk
    assert reason(json.dumps(row)) == "bad_timestamp"


@HYP
@given(rows, st.text(min_size=0, max_size=12))
def test_malformed_locales_are_bad_locale(row, loc):
    import re

    assume(_clean(loc))
    assume(re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", loc) is None)
    row["locale"] = loc
    assert reason(json.dumps(row)) == "bad_locale"


_punct = st.characters(categories=["Po", "Ps", "Pe", "Pd", "Sm", "Sc", "Sk", "So", "Zs"], exclude_characters=["\ufffd"])


@HYP
@given(rows, st.text(_punct, min_size=1, max_size=20))
def test_utterances_without_a_text_key_are_empty_utterance(row, text):
    assume(not normalize_text(text))
    row["utterance"] = text
    assert reason(json.dumps(row)) == "empty_utterance"


@HYP
@given(rows, st.integers(1001, 100_000))
def test_long_utterances_up_to_100kb_are_utterance_too_long(row, n):
    base = row["utterance"] + " "
    row["utterance"] = (base * (n // len(base) + 1))[:n]
    assert reason(json.dumps(row, ensure_ascii=False)) == "utterance_too_long"


@HYP
@given(rows, st.text(max_size=12))
def test_other_statuses_are_unknown_status(row, status):
    assume(status not in ("success", "error", "unhandled"))
    assume(_clean(status))
    row["response_status"] = status
    assert reason(json.dumps(row)) == "unknown_status"


# --- no damage, no rejection ---------------------------------------------------------------

_clean_text = st.text(st.characters(exclude_categories=["Cc", "Cs"], exclude_characters=["\ufffd"]),
                      min_size=1, max_size=80)


@HYP
@given(rows, _clean_text, st.booleans())
def test_any_clean_text_with_a_key_is_accepted_verbatim(row, text, ascii_):
    assume(text.strip() and normalize_text(text))
    row["utterance"] = text
    out = validate([json.dumps(row, ensure_ascii=ascii_)])
    assert out["reason"].iloc[0] is None and out["utterance"].iloc[0] == text


# --- arbitrary raw text: one row out per row in ------------------------------------------

_raw = st.one_of(
    st.text(max_size=60),  # anything, lone surrogates and controls included
    st.binary(max_size=60).map(lambda b: b.decode("utf-8", "replace")),  # as the JSONL reader decodes
    rows.map(json.dumps),
    st.tuples(rows, st.integers(0, 200)).map(lambda t: json.dumps(t[0])[: t[1]]),
)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_raw, max_size=10))
def test_arbitrary_raw_lines_each_give_one_row(raws):
    out = validate(raws)
    assert len(out) == len(raws) and out["order"].tolist() == list(range(len(raws)))
    assert set(out["reason"].dropna()) <= set(REASON_CODES)
    ok = out[out["reason"].isna()]
    table = pa.Table.from_pandas(ok[list(LOG_COLUMNS)], preserve_index=False)
    assert table.cast(arrow_schema("log")).num_rows == len(ok)  # accepted rows fit the contract
    for r in ok.itertuples():
        assert normalize_text(r.utterance)
        assert not any(c in r.utterance for c in CONTROLS)


# --- Spark: a damaged directory of parquet files -------------------------------------------

def test_damaged_parquet_directory_every_row_accounted(spark, tmp_path):
    root, expected = damaged_parquet_dir(tmp_path / "log")
    check_input(root)  # row damage is not "cannot be a log"
    res = ingest(spark, root, CFG, now=NOW)
    got = {r["source"]: r["reason"] for r in res.annotated.select("source", "reason").collect()}
    want = {f"{root}/dt=2026-11-20/{name}:{i}": r for name, rs in expected.items() for i, r in enumerate(rs)}
    assert got == want  # every row once, with its reason; nothing lost, nothing invented
    c = res.counts()
    assert c["rows_in"] == len(want) == c["rows_accepted"] + c["rows_quarantined"]
    assert res.accepted.count() == sum(r is None for r in want.values())
    res.unpersist()


def test_only_empty_files_is_an_empty_log(spark, tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"")
    pq.write_table(_table([]), tmp_path / "b.parquet")
    res = ingest(spark, tmp_path, CFG, now=NOW)
    assert res.counts()["rows_in"] == 0


# --- gzip JSONL: damaged streams -----------------------------------------------------------

def _jsonl_rows(n: int) -> list[bytes]:
    return [json.dumps(good_row(i) | {"event_id": f"z{i}", "user_id": f"u{i % 50}"},
                       ensure_ascii=False).encode() for i in range(n)]


def test_gzip_lines_are_numbered_as_in_the_plain_file(spark, tmp_path):
    """The gzip reader (Python zlib) and Hadoop's text reader agree line for line: LF, CRLF
    and CR line ends, a BOM, blank lines, broken bytes, and two concatenated gzip members."""
    import gzip

    from selflearn.spark.readers import read_raw

    rows = _jsonl_rows(40)
    data = (b"\xef\xbb\xbf" + rows[0] + b"\r\n" + rows[1] + b"\r" + rows[2] + b"\n\n  \n"
            + rows[3].replace(b"wake", b"wa\xffke") + b"\n" + b"\n".join(rows[4:]))  # no final newline
    plain = tmp_path / "plain" / "log.jsonl"
    plain.parent.mkdir()
    plain.write_bytes(data)
    gz = tmp_path / "gz" / "log.jsonl.gz"
    gz.parent.mkdir()
    cut = len(data) // 2
    gz.write_bytes(gzip.compress(data[:cut]) + gzip.compress(data[cut:]))  # two members

    def lines(path):
        return [(r["raw"], r["source"].rsplit(":", 1)[1], r["order"])
                for r in read_raw(spark, path).orderBy("order").collect()]

    got, want = lines(gz), lines(plain)
    assert len(want) == 40 and got == want


@pytest.mark.parametrize("cut_at", [0.37, 0.81])
def test_truncated_gzip_keeps_every_line_before_the_cut(spark, tmp_path, cut_at):
    import gzip
    import zlib

    rows = _jsonl_rows(3000)
    blob = gzip.compress(b"\n".join(rows) + b"\n")
    cut = blob[: int(len(blob) * cut_at)]
    (tmp_path / "log.jsonl.gz").write_bytes(cut)
    readable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)
    complete = readable.count(b"\n")  # lines whole before the cut
    assert 0 < complete < len(rows)
    res = ingest(spark, tmp_path, Settings(), now=NOW)
    c = res.counts()
    assert c["rows_accepted"] == complete
    assert c["by_reason"] == {"unparseable": 1}  # the cut line, on record
    assert c["rows_in"] == complete + 1
    q = res.quarantine.collect()[0]
    assert q["source"].endswith(f"log.jsonl.gz:{complete + 1}")
    assert rows[complete].decode().startswith(q["raw"])
    res.unpersist()


def test_corrupt_gzip_completes_and_accounts_for_every_row(spark, tmp_path):
    import gzip

    rows = _jsonl_rows(3000)
    blob = bytearray(gzip.compress(b"\n".join(rows) + b"\n"))
    mid = len(blob) // 2
    blob[mid: mid + 64] = bytes(64)  # a damaged block in the middle
    (tmp_path / "log.jsonl.gz").write_bytes(bytes(blob))
    res = ingest(spark, tmp_path, Settings(), now=NOW)
    c = res.counts()
    assert c["rows_quarantined"] >= 1 and 0 < c["rows_accepted"] < len(rows)
    # Counted independently of the counts: every line the reader saw, numbered 1..n without
    # a gap or a repeat, is one annotated row; every accepted row is an original row intact.
    lines = sorted(int(r["source"].rsplit(":", 1)[1]) for r in res.annotated.select("source").collect())
    assert lines == list(range(1, len(lines) + 1)) and len(lines) == c["rows_in"]
    original = {json.loads(r)["event_id"]: json.loads(r)["utterance"] for r in rows}
    accepted = res.accepted.select("event_id", "utterance").collect()
    assert len({a["event_id"] for a in accepted}) == len(accepted) == c["rows_accepted"]
    assert all(original[a["event_id"]] == a["utterance"] for a in accepted)
    assert len(res.quarantine.collect()) == c["rows_quarantined"]
    res.unpersist()


def test_a_gz_file_that_is_not_gzip_cannot_be_a_log(tmp_path):
    from selflearn.spark.readers import InputError

    (tmp_path / "log.jsonl.gz").write_bytes(b"\n".join(_jsonl_rows(3)))
    with pytest.raises(InputError, match="not a gzip file"):
        check_input(tmp_path)
