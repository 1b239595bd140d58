"""Incremental daily runs and `selflearn forget`, with the real stack (local Spark, the
bundled model, FAISS) and no Prefect (runner.run_all): runs over dt= partitions one after
the other on one ROOT must give what one run over all of them gives."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selflearn.schema import arrow_schema
from selflearn.core.text import normalize_text
from small_logs import pick_goal

pytestmark = pytest.mark.heavy  # second tier (make test-full): runs whole pipelines or servers

MERGED = ("rewrites", "training", "paraphrase_clusters")


@pytest.fixture(scope="module")
def run_settings():
    from selflearn.config import Settings

    return Settings(spark_master="local[2]", spark_shuffle_partitions=4)


def mine(spark, root: Path, inp: Path, settings) -> tuple[Path, dict]:
    from selflearn.run.runner import Run, run_all

    final = run_all(Run(input_path=str(inp), output_root=str(root), settings=settings))
    return final, json.loads((final / "manifest.json").read_text())


def day_dirs(src: Path, dest: Path, days: list[str]) -> Path:
    for d in days:
        shutil.copytree(src / f"dt={d}", dest / f"dt={d}")
    return dest


def state_rows(root: Path) -> pd.DataFrame:
    """Every parquet row under ROOT/state that has a user_id (evidence and tails)."""
    frames = []
    for f in (root / "state").rglob("*.parquet"):
        t = pq.read_table(f)
        if "user_id" in t.column_names:
            frames.append(t.select(["user_id"]).to_pandas())
    return pd.concat(frames) if frames else pd.DataFrame({"user_id": []})


# --- a simulated log, day by day ---------------------------------------------------------

@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory, spark, run_settings):
    from selflearn.simulate import simulate

    base = tmp_path_factory.mktemp("incr-sim")
    simulate(str(base / "sim"), users=150, locales=["en-US"], seed=7)
    log = base / "sim" / "log"
    d1, d2 = "2026-11-01", "2026-11-02"
    run1 = mine(spark, base / "daily", day_dirs(log, base / "in1", [d1]), run_settings)
    run2 = mine(spark, base / "daily", day_dirs(log, base / "in2", [d2]), run_settings)
    once = mine(spark, base / "once", day_dirs(log, base / "in12", [d1, d2]), run_settings)
    return base, run1, run2, once


def test_day_by_day_equals_one_run_over_both_days(sim_runs):
    base, (final1, m1), (final2, m2), (_, once) = sim_runs
    assert pd.read_parquet(final2 / "rewrites").shape[0] > 0
    for table in MERGED:
        assert m2["checksums"][table] == once["checksums"][table], table
    assert m1["checksums"]["rewrites"] != m2["checksums"]["rewrites"]  # day 2 did add evidence
    assert m2["evidence"]["days_merged"] == ["2026-11-01", "2026-11-02"]
    assert m2["evidence"]["input_days"] == ["2026-11-02"]
    assert m2["counts"]["sessions"]["tails_carried_in"] > 0  # sessions open at midnight were carried
    # the other-intent veto acted on both days, with each day's own centroids; the tails
    # keep the rank their day gave (the next run has none of that day's centroids)
    assert m1["counts"]["sessions"]["pairs_served_as_another_goal"] > 0
    assert m2["counts"]["sessions"]["pairs_served_as_another_goal"] > 0
    tails = pd.concat(pq.read_table(f).to_pandas() for f in (base / "daily" / "state" / "tails").rglob("*.parquet"))
    assert tails["next_intent_rank"].notna().any()


def test_turns_cover_the_run_input_and_the_previous_run_stays_readable(sim_runs):
    base, (final1, m1), (final2, m2), _ = sim_runs
    day2 = pq.read_table(base / "in2").to_pandas()
    turns = pd.read_parquet(final2 / "turns")
    assert len(turns) == m2["rows_accepted"]
    assert set(turns["event_id"]) <= set(day2["event_id"])
    assert (final1 / "_SUCCESS").is_file() and len(pd.read_parquet(final1 / "rewrites")) == m1["counts"]["rewrites"]["emitted"]
    assert (base / "daily" / "LATEST").read_text().strip() == m2["run_id"]


def test_state_holds_no_raw_id(sim_runs):
    base = sim_runs[0]
    raw = pq.read_table(base / "in12").to_pandas()
    rows = state_rows(base / "daily")
    assert len(rows) > 0
    assert not set(rows["user_id"]) & set(raw["user_id"])
    assert not set(rows["user_id"]) & set(raw["device_id"].dropna())


def test_rerunning_a_day_replaces_it(sim_runs, spark, run_settings):
    base, _, (_, m2), _ = sim_runs
    _, again = mine(spark, base / "daily", base / "in2", run_settings)
    for table in MERGED:
        assert again["checksums"][table] == m2["checksums"][table], table
    assert again["rows_quarantined"] == m2["rows_quarantined"]  # day 2 again is no duplicate of itself


# --- a hand-made log: one rewrite at exactly min_users, one session across midnight ----

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
DAYS = [(T0 + timedelta(days=i)).date().isoformat() for i in range(6)]


def write_mini_log(massive, path: Path) -> dict:
    """Three users say A (not understood) then C (served): r0 and r1 on day 0, r2 at
    23:59:55 on day 0 and C 9 s later, on day 1. Six users are served C on day 0; unrelated
    served traffic every day."""
    records = massive("en-US")
    (intent, slot, value), (a, _, c) = pick_goal(records)
    slots = [{"name": slot, "value": value}]
    rows = []

    def add(user, utt, at, ok, intent=None, domain=None, slots=None):
        rows.append(dict(
            event_id=f"e{len(rows):05d}", user_id=user, device_id=f"{user}-d", session_id=None, ts=at, locale="en-US",
            utterance=utt, asr_confidence=0.9, nlu_domain=domain if ok else None, nlu_intent=intent if ok else None,
            nlu_slots=slots if ok else None, nlu_confidence=0.9 if ok else 0.2,
            response_status="success" if ok else "unhandled", barge_in=not ok, feedback=None,
            dwell_ms=30000 if ok else 900, rewritten_from=None, nlu_model_version="v1",
        ))

    midnight = T0.replace(hour=0) + timedelta(days=1)
    for u, t in (("r0", T0), ("r1", T0 + timedelta(hours=1)), ("r2", midnight - timedelta(seconds=5))):
        add(f"user-{u}", a["utt"], t, False)
        add(f"user-{u}", c["utt"], t + timedelta(seconds=9), True, intent, a["scenario"], slots)
    for u in range(6):
        add(f"user-s{u}", c["utt"], T0 + timedelta(hours=2 + u), True, intent, a["scenario"], slots)
    others = [r for r in records if r["intent"] != intent][:60]
    for i, r in enumerate(others):
        add(f"user-o{i % 8}", r["utt"], T0 + timedelta(days=i % 6, hours=3, minutes=7 * i), True, r["intent"], r["scenario"], [])
    table = pa.Table.from_pylist(rows, schema=arrow_schema("log"))
    days = pd.Series([r["ts"].date().isoformat() for r in rows])
    for d in sorted(days.unique()):
        (path / f"dt={d}").mkdir(parents=True)
        pq.write_table(table.filter(pa.array((days == d).to_numpy())), path / f"dt={d}" / "part-0.parquet")
    return {"A": normalize_text(a["utt"]), "C": normalize_text(c["utt"])}


def has_rewrite(final: Path, keys: dict) -> bool:
    rw = pd.read_parquet(final / "rewrites")
    return bool(((rw["source"] == keys["A"]) & (rw["target"] == keys["C"])).any())


@pytest.fixture(scope="module")
def mini(tmp_path_factory, massive, spark, run_settings):
    base = tmp_path_factory.mktemp("incr-mini")
    keys = write_mini_log(massive, base / "log")
    root = base / "root"
    r1 = mine(spark, root, base / "log" / f"dt={DAYS[0]}", run_settings)
    r2 = mine(spark, root, base / "log" / f"dt={DAYS[1]}", run_settings)
    shutil.copytree(root, base / "after-day-1")  # for the window test
    return base, keys, r1, r2


def test_a_session_across_midnight_is_completed_by_the_next_day(mini):
    base, keys, (final1, m1), (final2, m2) = mini
    assert not has_rewrite(final1, keys)  # two users by the end of day 0
    assert has_rewrite(final2, keys)  # r2's C arrived with day 1: three users
    assert m2["counts"]["sessions"]["tails_carried_in"] >= 1
    pairs = pd.read_parquet(final2 / "rephrase_pairs")
    assert ((pairs["first"] == keys["A"]) & (pairs["second"] == keys["C"]) & pairs["is_rephrase"]).sum() == 1


def test_a_backfilled_older_day_leaves_the_newest_days_open_sessions(mini, spark, run_settings):
    """Back-filling day 0 after day 1 must not replace the sessions left open at day 1's
    end: the next day continues those (an adversarial probe lost five cross-midnight
    rephrases that way)."""
    base, _, _, _ = mini
    root = base / "backfill"
    shutil.copytree(base / "after-day-1", root)
    before = json.loads((root / "state" / "evidence.json").read_text())
    assert before["tails"]  # day 1 left sessions open
    _, m = mine(spark, root, base / "log" / f"dt={DAYS[0]}", run_settings)
    after = json.loads((root / "state" / "evidence.json").read_text())
    assert m["gate"]["latest_moved"]  # committed: the state below is what the next run reads
    assert m["evidence"]["backfill"] is True and m["evidence"]["tails_kept"] == 0
    assert after["tails"] == before["tails"]
    assert sorted(after["days"]) == sorted(before["days"])


def test_evidence_older_than_the_window_no_longer_counts(mini, spark, run_settings):
    import dataclasses

    base, keys, _, _ = mini
    root = base / "after-day-1"
    # The window expires every retained day here: the evidence_drop gate (issue 19) would
    # hold such a run for review; this test allows it, as an operator would after review.
    final, m = mine(spark, root, base / "log" / f"dt={DAYS[4]}",
                    dataclasses.replace(run_settings, evidence_window_days=3, gate_max_evidence_drop=1.0))
    assert m["evidence"]["drop_share"] == 1.0 and m["gate"]["latest_moved"]
    assert not has_rewrite(final, keys)
    assert m["evidence"]["days_merged"] == [DAYS[4]]
    assert m["evidence"]["days_dropped"] == [DAYS[0], DAYS[1]]
    state = json.loads((root / "state" / "evidence.json").read_text())
    assert sorted(state["days"]) == [DAYS[4]]
    assert not any((root / "state" / "evidence").glob(f"*/day={DAYS[0]}"))


def test_forget_removes_the_user_and_the_rewrite_they_made(mini, spark, run_settings, capsys):
    from selflearn.cli import main
    from selflearn.run.state import State

    base, keys, _, _ = mini
    root = base / "root"
    forgotten = State(root / "state").hash_value("user-r0")
    assert (state_rows(root)["user_id"] == forgotten).any()
    assert main(["forget", "--user", "user-r0", "--output", str(root)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("forgot one user: 2 evidence rows in 1 days")
    assert "rows of operator tables in" in summary[0]
    assert not (state_rows(root)["user_id"] == forgotten).any()
    # the operator tables of the runs already published lose the user's turns too, and
    # their manifests carry the new checksums
    from selflearn.run.publish import content_checksum

    log = pd.read_parquet(base / "log")
    theirs = set(log.loc[log["user_id"] == "user-r0", "event_id"])
    runs = sorted((root / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        turns, pairs = pd.read_parquet(run / "turns"), pd.read_parquet(run / "rephrase_pairs")
        assert not set(turns["event_id"]) & theirs
        assert not (set(pairs["first_event_id"]) | set(pairs["second_event_id"])) & theirs
        manifest = json.loads((run / "manifest.json").read_text())
        for table in ("turns", "rephrase_pairs"):
            assert manifest["checksums"][table] == content_checksum(run / table), (run.name, table)
    amended = [a for r in runs for a in json.loads((r / "manifest.json").read_text()).get("forget_amendments", [])]
    assert sum(a["rows_removed"].get("turns", 0) for a in amended) >= 2  # the user's two turns, at least once

    final, m = mine(spark, root, base / "log" / f"dt={DAYS[2]}", run_settings)
    assert not has_rewrite(final, keys)
    assert not (state_rows(root)["user_id"] == forgotten).any()

    # One run over days 0-2 on a fresh ROOT that forgot user-r0 first: its rows are
    # dropped at ingest and counted, and every merged output is the same.
    fresh = base / "fresh"
    assert main(["forget", "--user", "user-r0", "--output", str(fresh)]) == 2  # not a ROOT: refused, not created
    assert not fresh.exists()
    assert main(["forget", "--user", "user-r0", "--output", str(fresh), "--init"]) == 4  # recorded; nothing to remove yet
    shutil.copytree(base / "log", base / "days012", ignore=lambda d, names: [n for n in names if n.startswith("dt=") and n[3:] not in DAYS[:3]])
    _, once = mine(spark, fresh, base / "days012", run_settings)
    assert once["rows_forgotten"] == 2
    assert once["rows_in"] == once["rows_accepted"] + once["rows_quarantined"] + once["rows_forgotten"]
    for table in MERGED:
        assert m["checksums"][table] == once["checksums"][table], table
