"""readers.ingest on real local Spark: JSONL (.jsonl and .jsonl.gz) with one bad row of every
reason code, hive-partitioned parquet with a file missing a column and files of wrong
types, sources pointing at the right line/row, accounting, and InputError."""
from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import massive_records
from selflearn.spark.readers import InputError, ingest, list_input_files
from selflearn.schema import arrow_schema

NOW = datetime(2026, 11, 24, 23, 0, tzinfo=timezone.utc)
RECS = massive_records("en-US", 60)


def turn(i: int, **over) -> dict:
    rec = RECS[i]
    row = {"event_id": f"ev{i}", "user_id": f"user{i % 3}", "device_id": "kitchen",
           "ts": f"2026-11-24T08:{i:02d}:00Z", "locale": rec["locale"], "utterance": rec["utt"],
           "nlu_domain": rec["scenario"], "nlu_intent": rec["intent"], "response_status": "success"}
    row.update(over)
    return row


def line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


# (bytes of the line, expected reason); None = accepted; b"" = blank line, not a row.
def jsonl_lines() -> list[tuple[bytes, str | None]]:
    long_utt = " ".join(r["utt"] for r in RECS)[:2000]
    no_user = turn(5)
    del no_user["user_id"]
    utt3 = RECS[3]["utt"]
    return [
        (line(turn(0)), None),
        (line(turn(1))[:40], "unparseable"),
        (line(turn(2, utterance="X")).replace(b'"X"', b'"' + RECS[2]["utt"].encode()[:5] + b"\xff\xfe" + RECS[2]["utt"].encode()[5:] + b'"'), "bad_encoding"),
        (line(turn(3)).replace(utt3[:4].encode(), utt3[:4].encode() + b"\\ud800", 1), "bad_encoding"),
        (line(no_user), "missing_field"),
        (line(turn(6, asr_confidence="high")), "bad_type"),
        (line(turn(7, ts="1970-01-01T00:00:00Z")), "bad_timestamp"),
        (line(turn(8, locale="english!")), "bad_locale"),
        (line(turn(9, utterance="   ")), "empty_utterance"),
        (line(turn(10, utterance=long_utt)), "utterance_too_long"),
        (line(turn(11, response_status="maybe")), "unknown_status"),
        (b"", None),  # blank: skipped
        (line(turn(12, event_id="ev0", ts="2026-11-24T09:00:00Z")), "duplicate_event_id"),
        # heavy user: 3 turns on one UTC day with max_turns_per_user_day=2, out of ts order
        (line(turn(13, user_id="heavy", ts="2026-11-24T12:00:00Z")), "user_rate_limited"),
        (line(turn(14, user_id="heavy", ts="2026-11-24T11:00:00Z")), None),
        (line(turn(15, user_id="heavy", ts="2026-11-24T10:00:00Z")), None),
        (line(turn(16, user_id="heavy", ts="2026-11-23T23:59:59Z")), None),  # previous day
        (line(turn(17, nlu_slots=[{"name": "date", "value": "friday"}], asr_confidence=0.87,
                   feedback=1, barge_in=False, dwell_ms=5300, session_id="s1")), None),
    ]


@pytest.fixture(scope="module")
def cfg(settings):
    return dataclasses.replace(settings, max_turns_per_user_day=2)


def expected_by_source(path, lines):
    out = {}
    for n, (data, reason) in enumerate(lines, start=1):
        if data:
            out[f"{path}:{n}"] = reason
    return out


def check_result(res, expected):
    q = {r["source"]: r["reason"] for r in res.quarantine.collect()}
    acc = res.accepted.collect()
    assert len(q) + len(acc) == len(expected)
    assert q == {s: r for s, r in expected.items() if r is not None}
    counts = res.counts()
    assert counts["rows_in"] == len(expected)
    # each count against the expected reasons, counted here (not the sum that holds by definition)
    assert counts["rows_quarantined"] == sum(r is not None for r in expected.values())
    assert counts["rows_accepted"] == len(acc) == sum(r is None for r in expected.values())
    assert sum(counts["by_reason"].values()) == counts["rows_quarantined"]
    return acc


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_every_reason_code(spark, cfg, tmp_path, gz):
    lines = jsonl_lines()
    data = b"\n".join(d for d, _ in lines) + b"\n"
    path = tmp_path / ("log.jsonl.gz" if gz else "log.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    res = ingest(spark, path, cfg, now=NOW)
    acc = check_result(res, expected_by_source(path, lines))
    assert set(res.by_reason) == {r for _, r in lines if r}
    assert res.by_reason["bad_encoding"] == 2
    assert res.accepted.columns == list(arrow_schema("log").names) + ["order"]
    by_id = {r["event_id"]: r for r in acc}
    assert by_id["ev0"]["utterance"] == RECS[0]["utt"]  # the first by ts kept
    assert by_id["ev17"]["nlu_slots"][0].asDict() == {"name": "date", "value": "friday"}
    assert by_id["ev17"]["feedback"] == 1 and by_id["ev17"]["dwell_ms"] == 5300
    quarantined = {r["source"]: r["raw"] for r in res.quarantine.collect()}
    # raw is the line as read: the cut line verbatim, the bad bytes replaced by U+FFFD
    assert quarantined[f"{path}:2"] == lines[1][0].decode()
    assert "\ufffd" in quarantined[f"{path}:3"]
    res.unpersist()


def _parquet_turns(idx, **cols):
    rows = [turn(i) for i in idx]
    table = {k: [r[k] for r in rows] for k in ("event_id", "user_id", "locale", "utterance",
                                                "response_status")}
    table["ts"] = pa.array([datetime.fromisoformat(r["ts"].replace("Z", "+00:00")) for r in rows],
                           pa.timestamp("us", tz="UTC"))
    table.update(cols)
    return pa.table(table)


def test_hive_parquet_missing_column_and_wrong_types(spark, cfg, tmp_path):
    root = tmp_path / "log"
    good = _parquet_turns(range(20, 23), extra_col=[1, 2, 3],
                          nlu_slots=pa.array([[{"name": "time", "value": "five am"}], None, []],
                                             arrow_schema("log").field("nlu_slots").type))
    day1, day2 = root / "dt=2026-11-23", root / "dt=2026-11-24"
    day1.mkdir(parents=True)
    day2.mkdir()
    pq.write_table(good, day1 / "part-0.parquet", row_group_size=2)
    (day1 / "_SUCCESS").write_bytes(b"")
    (day1 / ".part-9.parquet.crc").write_bytes(b"junk")  # hidden: skipped
    pq.write_table(_parquet_turns(range(23, 25)).drop_columns(["locale"]), day2 / "part-1.parquet")
    pq.write_table(_parquet_turns(range(25, 27), asr_confidence=["high", None]), day2 / "part-2.parquet")
    pq.write_table(_parquet_turns(range(27, 29), dwell_ms=pa.array([1500.0, None])), day2 / "part-3.parquet")
    ts_int = _parquet_turns(range(29, 30)).set_column(5, "ts", pa.array([1764000000], pa.int64()))
    pq.write_table(ts_int, day2 / "part-4.parquet")

    kind, files = list_input_files(root)
    assert kind == "parquet" and len(files) == 5
    res = ingest(spark, root, cfg, now=NOW)
    p = lambda d, n, row: f"{d}/part-{n}.parquet:{row}"  # noqa: E731
    expected = {p(day1, 0, 0): None, p(day1, 0, 1): None, p(day1, 0, 2): None,
                p(day2, 1, 0): "missing_field", p(day2, 1, 1): "missing_field",
                p(day2, 2, 0): "bad_type", p(day2, 2, 1): None,
                p(day2, 3, 0): "bad_type", p(day2, 3, 1): None,
                p(day2, 4, 0): "bad_timestamp"}
    acc = check_result(res, expected)
    assert sorted(r["event_id"] for r in acc) == ["ev20", "ev21", "ev22", "ev26", "ev28"]
    first = next(r for r in acc if r["event_id"] == "ev20")
    assert first["ts"].replace(tzinfo=None) == datetime(2026, 11, 24, 8, 20)  # session tz UTC
    assert [s.asDict() for s in first["nlu_slots"]] == [{"name": "time", "value": "five am"}]
    # extra and partition columns never reach outputs, not even the quarantined raw
    assert "extra_col" not in res.accepted.columns and "dt" not in res.accepted.columns
    for r in res.quarantine.collect():
        row = json.loads(r["raw"])
        assert "dt" not in row and "extra_col" not in row
        if r["reason"] == "missing_field":
            assert "locale" not in row and row["utterance"] in (RECS[23]["utt"], RECS[24]["utt"])
    res.unpersist()


def test_input_errors(spark, cfg, tmp_path):
    with pytest.raises(InputError) as e:
        ingest(spark, tmp_path / "nope", cfg)
    assert "nope" in str(e.value) and "\n" not in str(e.value)

    not_log = tmp_path / "notlog" / "x.parquet"
    not_log.parent.mkdir()
    pq.write_table(pa.table({"intent": [r["intent"] for r in RECS[:3]], "utt": [r["utt"] for r in RECS[:3]]}),
                   not_log)
    with pytest.raises(InputError) as e:
        ingest(spark, not_log.parent, cfg)
    assert str(not_log) in str(e.value) and "\n" not in str(e.value)

    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(line(turn(0)) * 3)
    with pytest.raises(InputError) as e:
        ingest(spark, corrupt, cfg)
    assert "corrupt.parquet" in str(e.value) and "\n" not in str(e.value)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_bytes(line(turn(0)))
    pq.write_table(_parquet_turns([1]), mixed / "b.parquet")
    with pytest.raises(InputError, match="mixed"):
        list_input_files(mixed)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "_SUCCESS").write_bytes(b"")
    with pytest.raises(InputError, match="no input files"):
        list_input_files(empty)


def test_empty_jsonl_files_contribute_nothing(spark, cfg, tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"")
    (tmp_path / "b.jsonl").write_bytes(line(turn(40)) + b"\n\n" + line(turn(41)))
    res = ingest(spark, tmp_path, cfg, now=NOW)
    assert res.counts() == {"rows_in": 2, "rows_accepted": 2, "rows_quarantined": 0, "by_reason": {}}
    orders = sorted(r["order"] for r in res.accepted.collect())
    assert orders == [(1 << 40) + 1, (1 << 40) + 3]  # file index 1, lines 1 and 3


def test_file_names_spark_would_misread_are_read_as_named(spark, cfg, tmp_path):
    """Glob characters in a name ("log[1].jsonl" next to "log1.jsonl") once read the other
    file twice and this one never; a ':' (an ISO time in the name) failed the job. Every
    row of every file is read once, under its own name."""
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    (jsonl / "log[1].jsonl").write_bytes(line(turn(0)) + b"\n" + line(turn(1)))
    (jsonl / "log1.jsonl").write_bytes(line(turn(2)))
    (jsonl / "a*b?{c}.jsonl").write_bytes(line(turn(3)))
    (jsonl / "log-2026-11-24T10:00:00.jsonl").write_bytes(line(turn(4)) + b"\n")
    res = ingest(spark, jsonl, cfg, now=NOW)
    assert res.counts() == {"rows_in": 5, "rows_accepted": 5, "rows_quarantined": 0, "by_reason": {}}
    assert sorted(r["event_id"] for r in res.accepted.collect()) == [f"ev{i}" for i in range(5)]

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    pq.write_table(_parquet_turns([5, 6]), parquet / "part[1].parquet")
    pq.write_table(_parquet_turns([7]), parquet / "part1.parquet")
    res = ingest(spark, parquet, cfg, now=NOW)
    assert res.counts()["rows_in"] == 3
    assert sorted(r["event_id"] for r in res.accepted.collect()) == ["ev5", "ev6", "ev7"]
    pq.write_table(_parquet_turns([8]), parquet / "part-10:00.parquet")
    with pytest.raises(InputError, match="':'"):
        ingest(spark, parquet, cfg, now=NOW)


def test_symlinked_partitions_and_non_json_whitespace_lines_are_read(spark, cfg, tmp_path):
    """A partition that is a symlink is read like a real one (a link back into the tree is
    not read twice); a line of U+00A0, U+2028 or U+001E is not blank to JSON: it is a row,
    quarantined `unparseable`, not dropped uncounted."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.jsonl").write_bytes(line(turn(0)))
    log = tmp_path / "log"
    (log / "dt=2026-11-24").mkdir(parents=True)
    (log / "dt=2026-11-23").symlink_to(elsewhere, target_is_directory=True)
    (log / "dt=2026-11-24" / "loop").symlink_to(log, target_is_directory=True)
    lines = [line(turn(1)), "\u00a0".encode(), "\u2028".encode(), b"\x1e", b" \t", line(turn(2))]
    (log / "dt=2026-11-24" / "b.jsonl").write_bytes(b"\n".join(lines))
    res = ingest(spark, log, cfg, now=NOW)
    assert res.counts() == {"rows_in": 6, "rows_accepted": 3, "rows_quarantined": 3,
                            "by_reason": {"unparseable": 3}}


def test_parquet_written_by_pandas_with_nanosecond_timestamps_is_read(spark, cfg, tmp_path):
    """pandas writes datetime columns as TIMESTAMP(NANOS), which Spark refuses: such a log
    once failed the whole run with a Java stack trace. Its rows are read, ts to the
    microsecond (the contract's precision), aware or naive (naive = UTC)."""
    import pandas as pd

    rows = [turn(i) for i in (10, 11)]
    for name, tz in (("aware.parquet", "UTC"), ("naive.parquet", None)):
        df = pd.DataFrame(rows)
        ts = pd.to_datetime(df["ts"], utc=True) + pd.Timedelta(nanoseconds=123_456_789)
        df["ts"] = ts if tz else ts.dt.tz_localize(None)
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        df.to_parquet(d / name)
        assert str(pq.read_schema(d / name).field("ts").type).startswith("timestamp[ns")
        res = ingest(spark, d, cfg, now=NOW)
        assert res.counts()["rows_accepted"] == 2, res.counts()
        got = sorted(r["ts"] for r in res.accepted.collect())
        want = sorted(pd.to_datetime([r["ts"] for r in rows], utc=True) + pd.Timedelta(microseconds=123_456))
        assert [pd.Timestamp(g).tz_localize("UTC") if pd.Timestamp(g).tzinfo is None else pd.Timestamp(g)
                for g in got] == list(want)


def test_columns_that_differ_only_in_case_fail_before_spark_with_one_line(tmp_path):
    """Spark reads names case-insensitively: a contract column beside an extra one of the
    same name in another case (or twice) once failed the run inside Spark."""
    from selflearn.spark.readers import check_input

    table = _parquet_turns([0, 1])
    pq.write_table(table.append_column("User_Id", pa.array(["x", "y"])), tmp_path / "a.parquet")
    with pytest.raises(InputError) as e:
        check_input(tmp_path)
    assert "User_Id, user_id" in str(e.value) and "\n" not in str(e.value)


def test_a_log_partitioned_by_locale_takes_the_locale_from_its_path(spark, cfg, tmp_path):
    """Spark's partitionBy("locale") leaves the column out of the files and writes it into
    the path: every row was `missing_field`. A file that has the column keeps its own."""
    log = tmp_path / "log"
    for loc, idx in (("en-US", [30, 31]), ("de-DE", [32])):
        d = log / f"locale={loc}" / "dt=2026-11-24"
        d.mkdir(parents=True)
        pq.write_table(_parquet_turns(idx).drop(["locale"]), d / "part-0.parquet")
    (log / "locale=__HIVE_DEFAULT_PARTITION__").mkdir()
    pq.write_table(_parquet_turns([33]).drop(["locale"]), log / "locale=__HIVE_DEFAULT_PARTITION__" / "p.parquet")
    own = log / "locale=fr-FR"
    own.mkdir()
    pq.write_table(_parquet_turns([34]), own / "p.parquet")  # its own en-US column wins
    res = ingest(spark, log, cfg, now=NOW)
    got = {r["event_id"]: r["locale"] for r in res.accepted.collect()}
    assert got == {"ev30": "en-US", "ev31": "en-US", "ev32": "de-DE", "ev34": "en-US"}
    assert res.counts()["by_reason"] == {"missing_field": 1}
