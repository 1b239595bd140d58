"""Spark glue of incremental runs: each turn's day, pseudonymized ids, cross-run
duplicates, carried session tails, and the evidence written to / read from ROOT/state
(selflearn.run.state). See docs/incremental.md."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from selflearn.spark.readers import FILE_BITS, list_input_files
from selflearn.core.sessions import ENRICHED_TURNS
from selflearn.run.state import EVIDENCE_COLUMNS, State, partition_day

_EVIDENCE_ARROW = pa.schema(
    [pa.field("eid", pa.string())]
    + [ENRICHED_TURNS.field(c) for c in EVIDENCE_COLUMNS if c not in ("day", "eid")]
)
EVIDENCE_SCHEMA = from_arrow_schema(_EVIDENCE_ARROW)  # as stored: the day is the directory


PARTITION_TOLERANCE_DAYS = 1  # a dt= partition may hold rows of the day before or after (late arrivals, time zones)


def with_day(spark, df: DataFrame, input_path: str) -> DataFrame:
    """`day` of each row, from its own timestamp: the dt= partition of its input file when
    the row's UTC date lies within PARTITION_TOLERANCE_DAYS of it (a partition is replaced
    whole on a rerun), else the UTC date of ts. `partition_mismatch` holds the partition's
    day for a row whose timestamp disagrees with it (reported in the manifest), else null:
    a mislabelled dt=3000-01-01/ never makes its rows "day 3000".
    The file comes from `order` (file index << FILE_BITS | row), as readers.py numbers it."""
    _, files = list_input_files(input_path)
    days = [(i, partition_day(f)) for i, f in enumerate(files)]
    by_file = spark.createDataFrame(days, "_file long, _dt string")
    ts_day = F.date_format("ts", "yyyy-MM-dd")
    agrees = F.abs(F.datediff(F.to_date(F.col("_dt")), F.to_date(ts_day))) <= PARTITION_TOLERANCE_DAYS
    return (
        df.withColumn("_file", F.shiftright(F.col("order"), FILE_BITS))
        .join(F.broadcast(by_file), "_file", "left")
        .withColumn("day", F.when(F.col("_dt").isNotNull() & F.coalesce(agrees, F.lit(False)), F.col("_dt")).otherwise(ts_day))
        .withColumn("partition_mismatch", F.when(F.col("_dt").isNotNull() & F.col("ts").isNotNull() & ~F.coalesce(agrees, F.lit(False)),
                                                 F.col("_dt")))
        .drop("_file", "_dt")
    )


def pseudonymize(df: DataFrame, state: State) -> DataFrame:
    """user_id, device_id and session_id replaced by keyed hashes before anything else
    sees them: state and work data then never hold a raw account or device id."""
    for c in ("user_id", "device_id", "session_id"):
        df = df.withColumn(c, F.when(F.col(c).isNotNull(), state.hash_column(F.col(c))))
    return df


def mark_cross_run_duplicates(spark, annotated: DataFrame, state: State) -> DataFrame:
    """Accepted rows whose event id is already in a retained day of the state (other than
    the days this input replaces) become `duplicate_event_id`: the earlier run's copy is
    the one kept."""
    committed = state.committed()
    valid = F.col("reason").isNull()
    new_days = {r["day"] for r in annotated.where(valid).select("day").distinct().collect()}
    paths = [str(state.path(p)) for d, p in sorted(committed["days"].items()) if d not in new_days]
    if not paths:
        return annotated
    seen = spark.read.schema(EVIDENCE_SCHEMA).parquet(*paths).select(F.col("eid").alias("_seen")).distinct()
    marked = annotated.withColumn("_eid", state.hash_column(F.col("event_id"))).join(
        seen, F.col("_eid") == F.col("_seen"), "left"
    )
    return marked.withColumn(
        "reason", F.when(valid & F.col("_seen").isNotNull(), F.lit("duplicate_event_id")).otherwise(F.col("reason"))
    ).drop("_eid", "_seen")


def drop_forgotten(spark, accepted: DataFrame, state: State) -> tuple[DataFrame, list[str]]:
    """Rows of forgotten users out (after pseudonymizing: forgotten ids are hashed)."""
    users = state.forgotten()
    if not users:
        return accepted, users
    return accepted.where(~F.col("user_id").isin(users)), users


def row_user_id(df: DataFrame):
    """A row's user id, also for a rejected row: the typed column, else the raw row's
    "user_id" (as JSON, or found in a line that is no JSON)."""
    from_json = F.get_json_object(F.col("raw"), "$.user_id")
    found = F.regexp_extract(F.col("raw"), r'"user_id"\s*:\s*"((?:[^"\\]|\\.)*)"', 1)
    return F.coalesce(F.col("user_id").cast("string"), from_json, F.when(found != "", found))


def drop_forgotten_rejects(annotated: DataFrame, state: State) -> tuple[DataFrame, int]:
    """Rejected rows (a reason set) of forgotten users out, and how many there were; the
    quarantine then never holds a forgotten user's row (accepted rows: drop_forgotten)."""
    users = state.forgotten()
    if not users:
        return annotated, 0
    gone = F.col("reason").isNotNull() & state.hash_column(row_user_id(annotated)).isin(users)
    flagged = annotated.withColumn("_gone", F.coalesce(gone, F.lit(False)))
    n = flagged.where("_gone").count()
    return flagged.where(~F.col("_gone")).drop("_gone"), n


def carried_tails(spark, state: State, accepted: DataFrame, new_days: list[str]) -> DataFrame | None:
    """The committed session tails that this input continues: those of days before all
    of its days (a re-run of a day re-reads that day's turns from its input instead)."""
    rel = state.committed().get("tails")
    if not rel or not new_days:
        return None
    tails = spark.read.parquet(str(state.path(rel))).where(F.col("day") < F.lit(min(new_days)))
    if "system_act" not in tails.columns:  # tails kept before contract v3
        tails = tails.withColumn("system_act", F.lit(None).cast("string"))
    return tails.join(accepted.select("event_id"), "event_id", "left_anti").select(*accepted.columns)


def carried_tail_ranks(spark, state: State) -> DataFrame | None:
    """DataFrame[event_id, next_intent_rank] of the committed session tails: the rank the run
    that mined a tail's day gave each tail turn's pair (None for tails kept before it)."""
    rel = state.committed().get("tails")
    if not rel:
        return None
    tails = spark.read.parquet(str(state.path(rel)))
    if "next_intent_rank" not in tails.columns:
        return None
    return tails.select("event_id", "next_intent_rank").where(F.col("next_intent_rank").isNotNull())


def session_tails(enriched: DataFrame, turns: DataFrame, gap_s: float) -> DataFrame:
    """Turns whose session may continue in the next input: every turn of the last session
    of each (user, device) whose last turn lies within gap_s of the newest turn of this run
    (a later turn is at least that late). Kept whole so the next run re-cuts the session
    from its real start: labels and seq stay what one run over both inputs gives."""
    newest = enriched.agg(F.max("ts").alias("m")).collect()[0]["m"]
    if newest is None:
        return turns.limit(0)
    last = enriched.groupBy("user_id", "device_id").agg(F.max(F.struct("ts", "session")).alias("last")).where(
        F.col("last.ts") >= F.lit(newest) - F.expr(f"make_dt_interval(0, 0, 0, {float(gap_s)})")
    ).select("user_id", "device_id", F.col("last.session").alias("session"))
    ids = enriched.join(last, ["user_id", "device_id", "session"], "left_semi").select("event_id")
    return turns.join(ids, "event_id", "left_semi")


def evidence_rows(enriched: DataFrame, state: State) -> DataFrame:
    cols = [state.hash_column(F.col("event_id")).alias("eid") if c == "eid" else F.col(c) for c in EVIDENCE_COLUMNS]
    return enriched.select(*cols)


def _read_days(spark, paths: list[str]) -> DataFrame:
    """Evidence parquet as stored. Evidence written before `graph_score` existed reads it as
    null; such a turn's graph evidence was its rephrase decision, so it gets that back
    (pair_score where is_rephrase): old days keep the rewrites they supported."""
    old_rule = F.when(F.col("is_rephrase"), F.col("pair_score"))
    return spark.read.schema(EVIDENCE_SCHEMA).parquet(*paths).withColumn(
        "graph_score", F.coalesce(F.col("graph_score"), old_rule))


def _rows_in(path) -> int:
    """Rows of a parquet directory, from the files' footers (nothing read)."""
    import pyarrow.parquet as pq
    from pathlib import Path

    files = [f for f in Path(path).rglob("*.parquet") if not f.name.startswith((".", "_"))]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def evidence_drop(state: State, committed: dict[str, Any], pending: dict[str, Any]) -> dict[str, Any]:
    """How much of the retained evidence committing `pending` would drop: per committed
    day, its rows minus the rows pending keeps for that day (0 when the day goes), summed
    over days and divided by the rows committed. The publish gate refuses a large share."""
    before = dropped = 0
    for day, rel in committed["days"].items():
        old = _rows_in(state.path(rel))
        new = _rows_in(state.path(pending["days"][day])) if day in pending["days"] else 0
        before += old
        dropped += max(0, old - new)
    return {"rows_retained_before": before, "rows_dropped": dropped,
            "drop_share": round(dropped / before, 6) if before else 0.0}


def write_evidence(spark, state: State, evidence: DataFrame, new_days: list[str], tag: str,
                   window_days: int, today: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write this run's evidence as a new version of every day it touches, beside the
    committed state; returns the state to commit (not yet visible). A day of the input is
    replaced whole (idempotent); a day of a carried tail keeps its other rows and takes
    the re-computed rows of the tail turns."""
    from selflearn.run.state import retained_days

    committed = state.committed()
    touched = sorted(r["day"] for r in evidence.select("day").distinct().collect())
    carried_days = [d for d in touched if d not in new_days]
    rows = evidence
    for d in carried_days:
        if d in committed["days"]:
            old = _read_days(spark, [str(state.path(committed["days"][d]))])
            kept = old.join(evidence.where(F.col("day") == d).select("eid"), "eid", "left_anti")
            rows = rows.unionByName(kept.withColumn("day", F.lit(d)).select(*EVIDENCE_COLUMNS))
    rel = f"evidence/{tag}"
    if touched:
        rows.write.mode("overwrite").partitionBy("day").parquet(str(state.path(rel)))
    days = {**committed["days"], **{d: f"{rel}/day={d}" for d in touched}}
    keep = retained_days(list(days), window_days, today)
    new = {"days": {d: days[d] for d in keep}, "tails": committed.get("tails")}
    return new, {"dropped_days": sorted(set(days) - set(keep)), "touched_days": touched,
                 **evidence_drop(state, committed, new)}


def read_evidence(spark, state: State, pending: dict[str, Any]) -> DataFrame:
    """The union of the retained days' evidence: what the key, graph and rewrite steps read."""
    paths = [str(state.path(p)) for _, p in sorted(pending["days"].items())]
    if not paths:
        return spark.createDataFrame([], EVIDENCE_SCHEMA)
    return _read_days(spark, paths)
