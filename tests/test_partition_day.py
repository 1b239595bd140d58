"""Issue 19 item 6: one mislabelled partition must not wipe the evidence window. A row's
day comes from its own timestamp (a dt= name that disagrees is reported), the window's
"now" never runs ahead of the wall clock, and the publish gate refuses a run that would
drop most of the retained evidence."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selflearn.config import Settings
from selflearn.run.gate import evaluate_gate
from selflearn.schema import arrow_schema
from selflearn.run.state import State, retained_days


def _rows(massive, day: str, n: int, prefix: str):
    utts = [r["utt"] for r in massive("en-US", n)]
    t0 = dt.datetime.fromisoformat(day).replace(hour=9, tzinfo=dt.timezone.utc)
    return [dict(event_id=f"{prefix}{i}", user_id=f"u{i % 3}", ts=t0 + dt.timedelta(minutes=i), locale="en-US",
                 utterance=u, response_status="success") for i, u in enumerate(utts)]


def _write(path, rows):
    schema = arrow_schema("log")
    path.mkdir(parents=True)
    full = [{f.name: r.get(f.name) for f in schema} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path / "part-00000.parquet")


def test_a_mislabelled_partition_takes_its_rows_days_and_is_reported(tmp_path, massive, spark, settings):
    from selflearn.run.runner import Run

    log = tmp_path / "log"
    _write(log / "dt=3000-01-01", _rows(massive, "2026-11-03", 5, "bad"))
    _write(log / "dt=2026-11-02", _rows(massive, "2026-11-02", 4, "ok")
           + [dict(_rows(massive, "2026-11-01", 1, "late")[0], ts=dt.datetime(2026, 11, 1, 23, 50, tzinfo=dt.timezone.utc))])
    run = Run(input_path=str(log), output_root=str(tmp_path / "root"), settings=settings)
    run.start()
    try:
        run.stage("ingest")
        days = {r["day"]: r["count"] for r in run.read("accepted").groupBy("day").count().collect()}
    finally:
        run.finish()
    # the late row of 23:50 the day before stays in its partition's day (a partition is replaced whole)
    assert days == {"2026-11-03": 5, "2026-11-02": 5}
    assert run.counts["ingest"]["partition_day_mismatch"] == {"3000-01-01": 5}


def test_the_window_never_counts_back_from_a_day_after_the_wall_clock():
    real = [f"2026-11-{d:02d}" for d in range(1, 8)]
    assert retained_days(real + ["3000-01-01"], 28) == ["3000-01-01"]  # without a clock: the probe's wipe
    assert retained_days(real + ["3000-01-01"], 28, today="2026-12-03") == real
    assert retained_days(real, 3, today="2026-11-05") == ["2026-11-03", "2026-11-04", "2026-11-05", "2026-11-06"]


def test_evidence_drop_counts_rows_and_the_gate_refuses_most(tmp_path):
    from selflearn.spark.incremental import evidence_drop

    state = State(tmp_path / "state")

    def day(rel, n):
        d = state.path(rel)
        d.mkdir(parents=True)
        pq.write_table(pa.table({"eid": [f"e{i}" for i in range(n)]}), d / "part-00000.parquet")
        return rel

    committed = {"days": {f"2026-11-0{i}": day(f"evidence/a/day=2026-11-0{i}", 10) for i in range(1, 8)}, "tails": None}
    wiped = {"days": {"3000-01-01": day("evidence/b/day=3000-01-01", 5)}, "tails": None}
    d = evidence_drop(state, committed, wiped)
    assert (d["rows_retained_before"], d["rows_dropped"], d["drop_share"]) == (70, 70, 1.0)
    slid = {"days": {**{k: v for k, v in committed["days"].items() if k != "2026-11-01"},
                     "2026-11-08": day("evidence/b/day=2026-11-08", 10)}, "tails": None}
    assert evidence_drop(state, committed, slid)["drop_share"] == pytest.approx(10 / 70, abs=1e-6)

    def verdict(drop):
        return evaluate_gate({"rows_in": 100, "rows_quarantined": 0, "evidence": drop}, None, tmp_path, Settings())

    held = verdict(d)
    assert held["failed"] == ["evidence_drop"] and not held["latest_moved"]
    assert "70 of 70 retained evidence rows" in held["reason"]
    assert verdict(evidence_drop(state, committed, slid))["passed"]
    assert set(verdict({})["checks"]) == {"quarantine_rate"}  # nothing retained yet: not judged


def test_a_latest_naming_no_run_holds_the_gate_for_review(tmp_path):
    """LATEST names a run that is not under runs/ (deleted, or a typo): the volume and churn
    checks have nothing to compare with, so the gate holds LATEST and says why, where it
    published unjudged before (an adversarial probe)."""
    from selflearn.run.gate import gate_message

    base = {"rows_in": 100, "rows_quarantined": 0}
    first = evaluate_gate(base, None, tmp_path, Settings())
    assert first["passed"] and set(first["checks"]) == {"quarantine_rate"}  # a first run: no LATEST at all
    gone = evaluate_gate(base, None, tmp_path, Settings(), latest_names="20991231T000000Z-gone00")
    assert gone["failed"] == ["previous_run"] and not gone["latest_moved"]
    assert "LATEST names run '20991231T000000Z-gone00'" in gate_message({"gate": gone}, tmp_path)
    assert evaluate_gate(base, None, tmp_path, Settings(), force=True, latest_names="x")["latest_moved"]
