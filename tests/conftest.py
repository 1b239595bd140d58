"""Shared fixtures: one local Spark session and one Prefect test harness for the whole
suite (each costs seconds to start), plus small real-data samples."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

# Quiet, offline, loopback-only: set before pyspark / prefect / transformers import.
from selflearn.spark.session import local_env_defaults  # noqa: E402  (imports no pyspark)

local_env_defaults()
# The JVMs the tests start in subprocesses (each `selflearn run`, spark-submit, a Prefect
# worker's run) live seconds to a couple of minutes on a few thousand rows: C2's compile work
# is spent before it pays back, and on a 2-core machine it competes with the run itself. C1
# alone cut one small `selflearn run` from 37-40 s to 29-31 s (README "Testing"). The
# session's own JVM (fixture `spark`) keeps the default: it lives the whole session and runs
# many in-process pipelines, where C1 alone was slower (test_trust_e2e 217 s -> 277 s). A JIT
# tier changes no result; the environment can still say otherwise (setdefault).
C1_ONLY = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"  # C1 alone defaults to 48 MB: full, the JIT stops
os.environ.setdefault("SPARK_SUBMIT_OPTS", C1_ONLY)

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO.parent / "shared" / "data").resolve()
MASSIVE = DATA / "massive" / "locales"


@pytest.fixture(scope="session")
def settings():
    from selflearn.config import Settings

    return Settings(spark_master="local[2]", spark_shuffle_partitions=4)


@pytest.fixture(scope="session")
def spark(settings):
    from selflearn.spark.session import get_spark

    ours = os.environ.get("SPARK_SUBMIT_OPTS") == C1_ONLY  # the default above, not the caller's
    if ours:
        del os.environ["SPARK_SUBMIT_OPTS"]  # pyspark hands the JVM os.environ as it is now
    try:
        session = get_spark(settings, app_name="selflearn-tests")
    finally:
        if ours:
            os.environ["SPARK_SUBMIT_OPTS"] = C1_ONLY
    yield session
    session.stop()


def massive_records(locale: str, limit: int | None = None) -> list[dict]:
    """Real MASSIVE records of one locale (id, intent, utt, annot_utt, ...)."""
    out = []
    with gzip.open(MASSIVE / f"{locale}.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if limit is not None and len(out) >= limit:
                break
    return out


def failing_phrasing_pattern(world, fresh):
    """The most requested one-slot phrasing of `fresh` (a world's fresh traffic) that the
    simulated NLU does not understand (heard right), and the pattern a person would write for
    it: (template id, a goal said with it, its key, the key of a supported phrasing of the same
    frame with the same values, and both delexicalized)."""
    from selflearn.core.patterns import delexicalize

    t_of = {t["tid"]: t for t in world.templates}
    bad = fresh[[not t_of[i]["supported"] and t_of[i]["confused_intent"] is None and not m and
                 sum(k for k, _ in t_of[i]["parts"]) == 1 for i, m in zip(fresh["template_id"], fresh["misheard"])]]
    tid = bad["template_id"].value_counts().index[0]
    t_bad = t_of[tid]
    t_ok = next(t_of[i] for i in world.frames[t_bad["frame_id"]] if t_of[i]["supported"])
    goal = world.goal(bad[bad["template_id"] == tid]["goal_id"].iloc[0])
    src, tgt = world.render_key(goal, t_bad, False), world.render_key(goal, t_ok, False)
    psrc, ptgt, _ = delexicalize(src, tgt, [{"name": n, "value": v} for n, v in goal["slots"]])
    return tid, goal, src, tgt, psrc, ptgt


@pytest.fixture(scope="session")
def massive():
    return massive_records


@pytest.fixture(scope="session")
def published_run(tmp_path_factory, massive, spark, settings):
    """The fast tier's one end-to-end run, shared by every test that reads published
    outputs: tests/small_logs.py's three-locale log through every stage (real Spark, the
    bundled encoder, FAISS, the publish step), in this process, on the session's Spark."""
    from selflearn.run.runner import Run, run_all
    from small_logs import build_log

    base = tmp_path_factory.mktemp("published-run")
    expected, rows = build_log(massive, base / "log")
    run = Run(input_path=str(base / "log"), output_root=str(base / "root"), settings=settings)
    final = run_all(run)
    return {"root": base / "root", "final": final, "expected": expected, "rows": rows, "run": run}
