"""A damaged directory of parquet log files, every row's expected reason code known:
used by Spark ingest tests and by the end-to-end fault runs."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import massive_records

RECS = massive_records("en-US", 10)


def table(ids, **over):
    n = len(ids)
    cols = {"event_id": list(ids), "user_id": [f"u{i % 3}" for i in range(n)],
            "ts": pa.array([datetime(2026, 11, 20, 8, tzinfo=timezone.utc) + timedelta(minutes=i) for i in range(n)],
                           pa.timestamp("us", tz="UTC")),
            "locale": [RECS[i]["locale"] for i in range(n)], "utterance": [RECS[i]["utt"] for i in range(n)],
            "response_status": ["success"] * n}
    cols.update(over)
    return pa.table(cols)


def damaged_parquet_dir(root):
    """(directory, {file name: [expected reason per row]}); None = accepted."""
    expected = {}
    day = root / "dt=2026-11-20"
    day.mkdir(parents=True)

    def put(name, table, reasons):
        pq.write_table(table, day / name)
        expected[name] = reasons

    put("a-good.parquet", table(["a0", "a1", "a2"]), [None, None, None])
    # strings that are not UTF-8 (a writer that skipped validation): U+FFFD once read
    broken = pa.array([b"ok then", b"\xff\xfe wake me", b"caf\xc3", b"\xed\xa0\x80 x"], pa.binary()).view(pa.string())
    put("b-utf8.parquet", table(["b0", "b1", "b2", "b3"], utterance=broken), [None, "bad_encoding", "bad_encoding", "bad_encoding"])
    put("c-nan.parquet", table(["c0", "c1", "c2"], asr_confidence=pa.array([float("nan"), float("inf"), 0.5])),
        ["bad_type", "bad_type", None])
    # micros outside Spark's years 1..9999 and outside the contract's window
    far = pa.array([-10**17, 10**18, 0, 4102444800 * 10**6], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    put("d-far.parquet", table(["d0", "d1", "d2", "d3"], ts=far), ["bad_timestamp"] * 4)
    put("e-ctl.parquet", table(["e0", "e1", "e2"], utterance=["wake\x00me", "\x1b[31mred\x1b[0m", "tab\tis fine"]),
        ["bad_encoding", "bad_encoding", None])
    huge = (RECS[0]["utt"] + " ") * (100_000 // (len(RECS[0]["utt"]) + 1) + 1)
    put("f-long.parquet", table(["f0", "f1"], utterance=[huge[:100_000], "?!"]), ["utterance_too_long", "empty_utterance"])
    # another table's schema in the same directory: ids but no utterance, an extra column
    other = pa.table({"event_id": ["g0", "g1"], "user_id": ["u1", "u2"], "text": ["x", "y"], "score": [1.0, 2.0]})
    put("g-other.parquet", other, ["missing_field", "missing_field"])
    put("h-dup.parquet", table(["a0", "a1"]), ["duplicate_event_id", "duplicate_event_id"])
    put("i-norows.parquet", table([]), [])
    (day / "j-zero-bytes.parquet").write_bytes(b"")  # a writer that died before its first byte
    expected["j-zero-bytes.parquet"] = []
    return root, expected


