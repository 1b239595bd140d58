"""Resource bounds on a skewed log: one locale with 90% of the traffic, one user with 100k
turns (real rows of one simulated user, replicated and re-timed 3 s apart: one endless
session, the worst case for per-user and per-session work).

* With the default `max_turns_per_user_day` the heavy user's turns beyond 2,000 a UTC day
  are quarantined `user_rate_limited`, counted exactly.
* With the limit raised, all 100k turns flow through sessions, the rewrite graph and
  reachability (the per-(user, device) groups of spark.map_groups and the per-(user,
  session) groups of steps.reach_step), and the peak memory of the run's processes (the
  driver JVM, every PySpark worker) stays within a ratio of a run over an unskewed log of
  the same size. Ratios, not absolute numbers: the bound says skew costs at most a
  constant factor, whatever the machine.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selflearn.schema import arrow_schema

pytestmark = pytest.mark.heavy  # second tier (make test-full): runs whole pipelines or servers

HEAVY_TURNS = 100_000
HEAVY_GAP_S = 3
T0 = datetime(2026, 11, 1, 6, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test():
    from cliproc import kill_all_alive

    yield
    kill_all_alive()
# A skewed run may use this many times the memory of an unskewed run of the same size.
MAX_WORKER_RATIO = 3.0  # the largest PySpark worker (it holds the heavy user's group)
MAX_TOTAL_RATIO = 2.0  # every process of the run together, at its peak


def _read_sim_log(log: Path) -> pd.DataFrame:
    names = arrow_schema("log").names
    tables = [pq.read_table(f).select(names) for f in sorted(log.glob("dt=*/*.parquet"))]
    return pa.concat_tables(tables).to_pandas()


def _copies(base: pd.DataFrame, n: int) -> pd.DataFrame:
    """n copies of the log by distinct users (ids suffixed); same texts, same times."""
    out = []
    for k in range(n):
        c = base.copy()
        for col in ("event_id", "user_id", "device_id", "session_id"):
            c[col] = c[col].where(c[col].isna(), c[col] + f"-c{k}")
        out.append(c)
    return pd.concat(out, ignore_index=True)


def _heavy_user(base: pd.DataFrame) -> pd.DataFrame:
    """HEAVY_TURNS real rows of the busiest regular en-US user, cycled and re-timed."""
    en = base[(base["locale"] == "en-US") & base["user_id"].notna()
              & ~base["event_id"].fillna("").str.startswith("ev-m")]  # not the simulator's malformed rows
    counts = en.groupby("user_id").size().sort_values(kind="mergesort")
    user = counts.index[-2]  # the busiest but the simulator's flood user (the very busiest)
    rows = en[en["user_id"] == user].sort_values("ts", kind="mergesort")
    reps = -(-HEAVY_TURNS // len(rows))
    h = pd.concat([rows] * reps, ignore_index=True).iloc[:HEAVY_TURNS].copy()
    h["event_id"] = [f"heavy-{i:06d}" for i in range(len(h))]
    h["user_id"] = "heavy-user"
    h["device_id"] = "heavy-device"
    h["session_id"] = None
    h["ts"] = (pd.Timestamp(T0) + pd.to_timedelta(range(0, HEAVY_GAP_S * len(h), HEAVY_GAP_S), unit="s")).astype(rows["ts"].dtype)
    return h


def _write(df: pd.DataFrame, out: Path, files: int = 6) -> Path:
    out.mkdir(parents=True)
    df = df.sort_values(["ts", "event_id"], kind="mergesort").reset_index(drop=True)
    schema = pa.schema([f.with_nullable(True) for f in arrow_schema("log")])  # malformed rows have nulls
    for i, part in enumerate(range(0, len(df), -(-len(df) // files))):
        chunk = df.iloc[part: part + -(-len(df) // files)]
        pq.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False), out / f"part-{i:02d}.parquet")
    return out


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """(skewed, unskewed, skewed frame): the same number of rows, give or take one copy."""
    from selflearn.simulate import simulate

    base_dir = tmp_path_factory.mktemp("skew")
    simulate(str(base_dir / "sim"), users=40, locales=["en-US", "de-DE"], seed=3)
    base = _read_sim_log(base_dir / "sim" / "log")
    heavy = _heavy_user(base)
    n_de, n_en = int((base["locale"] == "de-DE").sum()), int((base["locale"] == "en-US").sum())
    # de-DE gets 10% of the skewed log: copies * n_de = 0.1 * (HEAVY + copies * len(base))
    c_skew = max(1, round(0.1 * HEAVY_TURNS / (n_de - 0.1 * (n_de + n_en))))
    skewed = pd.concat([heavy, _copies(base, c_skew)], ignore_index=True)
    c_flat = max(1, round(len(skewed) / len(base)))
    flat = _copies(base, c_flat)
    return (_write(skewed, base_dir / "skewed"), _write(flat, base_dir / "flat"), skewed, base_dir)


def test_skewed_log_shape(logs):
    _, _, skewed, _ = logs
    share = skewed["locale"].value_counts(normalize=True)
    assert 0.85 <= share["en-US"] <= 0.95
    assert (skewed["user_id"] == "heavy-user").sum() == HEAVY_TURNS


def test_heavy_user_is_rate_limited_and_counted(spark, settings, logs):
    from selflearn.spark.readers import ingest

    skewed_dir, _, skewed, _ = logs
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    res = ingest(spark, skewed_dir, settings, now=now)
    heavy_days = skewed.loc[skewed["user_id"] == "heavy-user", "ts"].dt.floor("D").value_counts()
    limit = settings.max_turns_per_user_day
    expected = int((heavy_days - limit).clip(lower=0).sum())
    assert expected > 90_000
    c = res.counts()
    assert c["rows_in"] == len(skewed) == c["rows_accepted"] + c["rows_quarantined"]
    assert c["by_reason"]["user_rate_limited"] == expected
    # the heavy user keeps exactly `limit` turns a day, the earliest ones
    kept = (res.accepted.where("user_id = 'heavy-user'").groupBy(res.accepted["ts"].cast("date").alias("d"))
            .count().collect())
    assert sorted(r["count"] for r in kept) == sorted(min(limit, int(n)) for n in heavy_days)
    res.unpersist()


def _warm_embedding_cache(spark, settings, log: pd.DataFrame, root: Path) -> None:
    """Embed every key of the logs into ROOT's cache first, so neither measured run loads
    the model (its worker would dominate both peaks and hide what skew costs)."""
    from selflearn.encoders.embed import embed_keys
    from selflearn.core.privacy import scrub_text
    from selflearn.core.text import normalize_text

    keys = log[["locale", "utterance"]].dropna().drop_duplicates()
    # the keys the sessions stage makes: PII masked first, then normalized
    keys = pd.DataFrame({"locale": keys["locale"],
                         "text": [normalize_text(scrub_text(u, settings.pii_min_digits)) for u in keys["utterance"]]})
    keys = keys[keys["text"] != ""].drop_duplicates()
    embed_keys(spark, spark.createDataFrame(keys), settings, root / "state" / "embeddings").count()


@pytest.mark.slow
def test_memory_stays_bounded_on_a_skewed_log(spark, settings, logs, tmp_path):
    from cliproc import CliRun, MemoryWatch

    skewed_dir, flat_dir, skewed, base_dir = logs
    cfg = tmp_path / "raised.yaml"
    # the heavy user's 100k turns all flow through (no rate limit), on one core
    cfg.write_text("spark_master: 'local[1]'\nspark_shuffle_partitions: 4\nmax_turns_per_user_day: 1000000\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("PREFECT_API_URL", None)
    root = tmp_path / "root"
    _warm_embedding_cache(spark, settings, skewed, root)
    measured = {}
    for name, log in (("flat", flat_dir), ("skewed", skewed_dir)):
        run = CliRun(log, root, cfg, env)
        watch = MemoryWatch(run.proc.pid, every_s=0.5)
        rc, out = run.finish(timeout=1500)
        measured[name] = watch.stop()
        assert rc == 0, run.tail()
        final = Path(out.strip().splitlines()[-2])  # the run directory; the last line is its report
        manifest = json.loads((final / "manifest.json").read_text())
        measured[name]["rows_accepted"] = manifest["rows_accepted"]
        measured[name]["timings_s"] = manifest["timings_s"]
        measured[name]["keys_embedded_new"] = int(re.search(r"embed_keys: (\d+) keys not in the cache", "".join(run.stderr)).group(1))
    (base_dir / "memory.json").write_text(json.dumps(measured, indent=2))
    print(json.dumps(measured, indent=2))
    assert measured["skewed"]["rows_accepted"] >= HEAVY_TURNS  # the heavy user went through
    for m in measured.values():  # the cache was warm: no run loaded the model
        assert m["keys_embedded_new"] == 0, measured
    s, f = measured["skewed"], measured["flat"]
    assert s["python_worker_peak_mb"] <= MAX_WORKER_RATIO * f["python_worker_peak_mb"], measured
    assert s["total_peak_mb"] <= MAX_TOTAL_RATIO * f["total_peak_mb"], measured
