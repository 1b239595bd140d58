"""Row validation of the interaction log (contract section 1): pure pandas, no Spark.

Every input row reaches `validate_rows` as a raw record: `raw` (the JSON text of the row:
a JSONL line, or a parquet row serialized by `readers.read_raw`), `source` ("path:N") and
`order` (global input order). One row comes out per row in: the log columns typed as
`arrow_schema('log')` (null where rejected), `reason` (None when accepted, else a code of
`schema.REASON_CODES`), and raw/source/order passed through.

Checks, first failing one wins:

1. `bad_encoding` for a raw text holding U+FFFD or a lone surrogate that is not JSON (or
   not a JSON object): the bytes could not be decoded, which comes before the parse error
   (a line with broken bytes is `bad_encoding` even when the damage also breaks the JSON);
2. `unparseable`: not strict JSON (NaN/Infinity rejected) or not a JSON object;
3. `bad_encoding`: U+FFFD or a lone surrogate (e.g. the escape ``\\ud800``) in any string
   of the parsed object, keys and unknown fields included, but not in the value of
   `system_act` (any value the contract does not name is read as unknown, never
   quarantined); or a control character
   (C0 but tab, LF and CR; DEL; C1) in a string field of the contract (slot names and
   values included): text no ASR or id system emits, the mark of a broken producer;
4. `missing_field`: a required field absent or null (an empty or blank `event_id`/`user_id`
   counts as missing: an id that identifies nothing);
5. `bad_type`: a field of the wrong JSON type, optional ones included: strings must be
   strings; confidences numbers in [0, 1]; `feedback` an integer in {-1, 0, 1};
   `dwell_ms` an integer in [0, 2^63) (an integral float such as 4200.0 counts); `barge_in` a boolean; `nlu_slots` a list
   of objects with string `name` and `value` (extra keys are dropped). Also any field that
   the optional input column `type_errors` (comma-separated names, set by the parquet
   reader for columns of a wrong physical type) names and that is not null;
6. `bad_timestamp`: `ts` not a string, not ISO-8601 date-time
   (`YYYY-MM-DD[T ]hh:mm[:ss[.f]][Z|+hh[:mm]]`, no offset = UTC), or outside
   [2000-01-01T00:00Z, now + 1 day]; sub-microsecond digits are truncated;
7. `bad_locale`: not `^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$`;
8. `empty_utterance` (empty after `str.strip`, or an empty text key: only punctuation
   and symbols, which no turn can be compared or counted by), 9. `utterance_too_long`
   (> `settings.max_utterance_chars` code points), 10. `unknown_status`.

`duplicate_event_id` and `user_rate_limited` need all rows and are applied with Spark
window functions afterwards (`readers.ingest`).
"""
from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from selflearn.config import Settings
from selflearn.schema import REASON_CODES, arrow_schema, required_fields
from selflearn.core.text import CONTROL_CHARS, canonical_locale, is_empty_utterance

LOG_COLUMNS: tuple[str, ...] = tuple(arrow_schema("log").names)
PASSTHROUGH = ("raw", "source", "order")
STATUSES = frozenset(("success", "error", "unhandled"))
# Contract v3: an optional field whose unknown values (or types) are read as null, never
# quarantined: a log that knows some acts the contract does not name is still a log.
SYSTEM_ACTS = frozenset(("inform", "reprompt", "elicit", "confirm"))

_EPOCH_ORD = date(1970, 1, 1).toordinal()
_US = 1_000_000
_DAY_US = 86_400 * _US
_MIN_TS_US = (date(2000, 1, 1).toordinal() - _EPOCH_ORD) * _DAY_US
_MAX_I64 = 2**63 - 1

_BAD_CHARS = re.compile("[\ud800-\udfff\ufffd]")
_BAD_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|[fF]{3}[dD])")
# Where the raw JSON text can hold a control character (core.text.CONTROL_CHARS): an escape (\\u00XX, \\b, \\f; the literal "\\" first
# keeps the scan fast), a raw DEL, or a raw C1 (UTF-8 C2 80..C2 9F).
_CONTROL_ESC = re.compile(r"\\(?:u00[0189][0-9a-fA-F]|u007[fF]|[bf])")
_C1_UTF8 = re.compile(b"\xc2[\x80-\x9f]")
_TEXT_FIELDS = ("event_id", "user_id", "device_id", "session_id", "locale", "utterance",
                "nlu_domain", "nlu_intent", "rewritten_from", "nlu_model_version")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
_TS = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?"
    r"(?:[Zz]|([+-])([0-9]{2})(?::?([0-9]{2}))?)?"
)


def _reject_constant(name: str):
    raise ValueError(f"not JSON: {name}")


_DECODE = json.JSONDecoder(parse_constant=_reject_constant).decode

_STR_OPTIONAL = ("device_id", "session_id", "nlu_domain", "nlu_intent", "rewritten_from",
                 "nlu_model_version")
_TIME_FIELD = "ts"
assert set(required_fields("log")) == {"event_id", "user_id", "ts", "locale", "utterance",
                                       "response_status"}


def output_schema():
    """Spark schema of `validate_rows`' output: the log columns (all nullable: rejected rows
    carry nulls), then reason, raw, source, order. Derived from `selflearn.schema`."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(output_arrow_schema())


def output_arrow_schema() -> pa.Schema:
    log = arrow_schema("log")
    fields = [f.with_nullable(True) for f in log]
    fields += [pa.field("reason", pa.string()), pa.field("raw", pa.string()),
               pa.field("source", pa.string()), pa.field("order", pa.int64())]
    return pa.schema(fields)


@lru_cache(maxsize=65536)
def _day_us(day: str) -> int | None:
    try:
        return (date(int(day[:4]), int(day[5:7]), int(day[8:10])).toordinal() - _EPOCH_ORD) * _DAY_US
    except ValueError:
        return None


def parse_ts_us(ts: str) -> int | None:
    """Microseconds since the epoch (UTC) of an ISO-8601 date-time string, else None."""
    m = _TS.fullmatch(ts)
    if m is None:
        return None
    day, hh, mi, ss, frac, sign, oh, om = m.groups()
    base = _day_us(day)
    h, mn, s = int(hh), int(mi), int(ss) if ss else 0
    # :60 is a leap second (ISO 8601, RFC 3339): read as the next second, as POSIX time does
    if base is None or h > 23 or mn > 59 or s > 60:
        return None
    us = base + ((h * 60 + mn) * 60 + s) * _US
    if frac:
        us += int(frac[:6].ljust(6, "0"))
    if sign:
        ohi, omi = int(oh), int(om) if om else 0
        if ohi > 23 or omi > 59:
            return None
        off = (ohi * 60 + omi) * 60 * _US
        us = us - off if sign == "+" else us + off
    return us


def _bad_strings(obj: Any) -> bool:
    t = type(obj)
    if t is str:
        return _BAD_CHARS.search(obj) is not None
    if t is dict:
        for k, v in obj.items():
            if _BAD_CHARS.search(k) is not None or _bad_strings(v):
                return True
        return False
    if t is list:
        for v in obj:
            if _bad_strings(v):
                return True
    return False


def _has_control(obj: dict) -> bool:
    for name in _TEXT_FIELDS:
        v = obj.get(name)
        if type(v) is str and CONTROL_CHARS.search(v) is not None:
            return True
    slots = obj.get("nlu_slots")
    if type(slots) is list:
        for s in slots:
            if type(s) is dict:
                for v in (s.get("name"), s.get("value")):
                    if type(v) is str and CONTROL_CHARS.search(v) is not None:
                        return True
    return False


def _check(raw: Any, type_errors: Any, max_chars: int, lo_us: int, hi_us: int):
    """The first failing reason code (str) or the tuple of typed log values."""
    if type(raw) is not str:
        return "unparseable"
    c1 = False
    broken = False  # U+FFFD or a lone surrogate somewhere in the raw text
    if not raw.isascii():
        broken = "\ufffd" in raw
        try:
            enc = raw.encode("utf-8")  # fails on a lone surrogate; faster than a regex scan
        except UnicodeEncodeError:
            broken, enc = True, raw.encode("utf-8", "surrogatepass")
        c1 = b"\xc2" in enc and _C1_UTF8.search(enc) is not None
    try:
        obj = _DECODE(raw)
    except (ValueError, RecursionError):
        return "bad_encoding" if broken else "unparseable"
    if type(obj) is not dict:
        return "bad_encoding" if broken else "unparseable"
    if (broken or ("\\u" in raw and _BAD_ESCAPE.search(raw) is not None)) and _bad_strings(
            {k: v for k, v in obj.items() if k != "system_act"}):
        # system_act is read as unknown whatever it holds (contract v3, section 1): broken
        # text there alone does not quarantine the turn.
        return "bad_encoding"
    if (c1 or "\x7f" in raw or ("\\" in raw and _CONTROL_ESC.search(raw) is not None)) and _has_control(obj):
        return "bad_encoding"
    g = obj.get
    event_id, user_id, ts = g("event_id"), g("user_id"), g("ts")
    locale, utterance, status = g("locale"), g("utterance"), g("response_status")
    if (event_id is None or user_id is None or ts is None or locale is None
            or utterance is None or status is None
            or (type(event_id) is str and not event_id.strip()) or (type(user_id) is str and not user_id.strip())):
        return "missing_field"
    if (type(event_id) is not str or type(user_id) is not str or type(locale) is not str
            or type(utterance) is not str or type(status) is not str):
        return "bad_type"
    opt = (g("device_id"), g("session_id"), g("nlu_domain"), g("nlu_intent"),
           g("rewritten_from"), g("nlu_model_version"))
    for v in opt:
        if v is not None and type(v) is not str:
            return "bad_type"
    asr, nlu_conf = g("asr_confidence"), g("nlu_confidence")
    if asr is not None and not ((type(asr) is float or type(asr) is int) and 0 <= asr <= 1):
        return "bad_type"
    if nlu_conf is not None and not (
            (type(nlu_conf) is float or type(nlu_conf) is int) and 0 <= nlu_conf <= 1):
        return "bad_type"
    barge, feedback, dwell = g("barge_in"), g("feedback"), g("dwell_ms")
    # JSON has one number type and pandas writes nullable ints as 4200.0: integral floats count.
    if type(feedback) is float and feedback.is_integer():
        feedback = int(feedback)
    if type(dwell) is float and dwell.is_integer() and abs(dwell) < 2.0**63:
        dwell = int(dwell)
    if barge is not None and type(barge) is not bool:
        return "bad_type"
    if feedback is not None and (type(feedback) is not int or feedback not in (-1, 0, 1)):
        return "bad_type"
    if dwell is not None and (type(dwell) is not int or not 0 <= dwell <= _MAX_I64):
        return "bad_type"
    slots = g("nlu_slots")
    if slots is not None:
        if type(slots) is not list:
            return "bad_type"
        clean = []
        for s in slots:
            if type(s) is not dict:
                return "bad_type"
            name, value = s.get("name"), s.get("value")
            if type(name) is not str or type(value) is not str:
                return "bad_type"
            clean.append({"name": name, "value": value})
        slots = clean
    ts_wrong = False
    if type_errors:
        for col in type_errors.split(","):
            if col != "system_act" and g(col) is not None:
                if col == _TIME_FIELD:
                    ts_wrong = True
                else:
                    return "bad_type"
    if ts_wrong or type(ts) is not str:
        return "bad_timestamp"
    us = parse_ts_us(ts)
    if us is None or not lo_us <= us <= hi_us:
        return "bad_timestamp"
    if _LOCALE.fullmatch(locale) is None:
        return "bad_locale"
    locale = canonical_locale(locale)
    if is_empty_utterance(utterance):
        return "empty_utterance"
    if len(utterance) > max_chars:
        return "utterance_too_long"
    if status not in STATUSES:
        return "unknown_status"
    act = g("system_act")
    act = act if type(act) is str and act in SYSTEM_ACTS else None
    # In LOG_COLUMNS order.
    return (event_id, user_id, opt[0], opt[1], us, locale, utterance, asr, opt[2], opt[3],
            slots, nlu_conf, status, barge, feedback, dwell, opt[4], opt[5], act)


_ORDERED = ("event_id", "user_id", "device_id", "session_id", "ts", "locale", "utterance",
            "asr_confidence", "nlu_domain", "nlu_intent", "nlu_slots", "nlu_confidence",
            "response_status", "barge_in", "feedback", "dwell_ms", "rewritten_from",
            "nlu_model_version", "system_act")
assert _ORDERED == LOG_COLUMNS, "log schema changed: update _check's value tuple"


_NULLABLE_DTYPES = {"barge_in": "boolean", "feedback": "Int8", "dwell_ms": "Int64"}


def _now_us(now: Any) -> int:
    if now is None:
        now = datetime.now(timezone.utc)
    ts = pd.Timestamp(now)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.tz_convert("UTC").value // 1000)


def validate_rows(raw_pdf: pd.DataFrame, settings: Settings, now: Any = None) -> pd.DataFrame:
    """Validate raw records (columns raw, source, order; optional type_errors).

    Returns one row per input row, in input order: LOG_COLUMNS typed as arrow_schema('log')
    (nulls where rejected), reason, raw, source, order. `now` (datetime/Timestamp, naive =
    UTC; default the current time) bounds timestamps at now + 1 day."""
    n = len(raw_pdf)
    raws = raw_pdf["raw"].tolist()
    terrs = raw_pdf["type_errors"].tolist() if "type_errors" in raw_pdf.columns else [None] * n
    hi_us = _now_us(now) + _DAY_US
    max_chars = int(settings.max_utterance_chars)
    reasons: list[Any] = [None] * n
    idx: list[int] = []
    vals: list[tuple] = []
    for i, (raw, te) in enumerate(zip(raws, terrs)):
        r = _check(raw, te if isinstance(te, str) else None, max_chars, _MIN_TS_US, hi_us)
        if type(r) is tuple:
            idx.append(i)
            vals.append(r)
        else:
            reasons[i] = r
    cols = list(zip(*vals)) if vals else [()] * len(LOG_COLUMNS)
    ia = np.asarray(idx, dtype=np.int64)
    every = len(idx) == n

    def scatter(col, fill):
        arr = np.full(n, fill, dtype=object)
        if every:
            arr[:] = col
        else:
            arr[ia] = col
        return arr

    out: dict[str, Any] = {}
    for name, col in zip(LOG_COLUMNS, cols):
        if name == "ts":
            ts = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
            ts[ia] = np.asarray(col, dtype=np.int64).view("datetime64[us]")
            out[name] = pd.Series(ts).dt.tz_localize("UTC")
        elif name in ("asr_confidence", "nlu_confidence"):
            out[name] = scatter(col, None).astype(np.float64)  # None -> NaN -> null in Arrow
        elif name in _NULLABLE_DTYPES:
            out[name] = pd.array(scatter(col, None), dtype=_NULLABLE_DTYPES[name])
        elif name == "nlu_slots":  # lists: assign one by one (numpy would broadcast them)
            arr = np.full(n, None, dtype=object)
            for i, v in zip(idx, col):
                arr[i] = v
            out[name] = arr
        else:  # strings
            out[name] = scatter(col, None)
    out["reason"] = np.asarray(reasons, dtype=object)
    out["raw"] = raw_pdf["raw"].to_numpy(dtype=object)
    out["source"] = raw_pdf["source"].to_numpy(dtype=object)
    out["order"] = raw_pdf["order"].to_numpy(dtype=np.int64)
    return pd.DataFrame(out, index=pd.RangeIndex(n))


def validate_batches(batches, settings: Settings, now: Any):
    """mapInPandas body: validate_rows over each batch (`now` fixed once per run)."""
    for pdf in batches:
        yield validate_rows(pdf, settings, now)


assert set(REASON_CODES) >= {"unparseable", "bad_encoding", "missing_field", "bad_type",
                             "bad_timestamp", "bad_locale", "empty_utterance",
                             "utterance_too_long", "unknown_status"}
