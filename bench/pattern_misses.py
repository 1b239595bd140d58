"""Why pattern rewrites miss (issue 14): every fresh replay request a pattern rewrote and
that did not get its goal served, with what the log could have known about it.

    PYTHONPATH=$PWD .venv/bin/python -m bench.pattern_misses --sim SIM --run ROOT
        --work KEPT_WORK_DIR [--requests 20000]

The requests are the evaluator's (`selflearn evaluate`: the same fresh traffic, seed and
contract 4.1 application), so the misses are its pattern applications minus its pattern
wins. For each miss:

  misheard            ASR misheard a value of the request (the simulator's recurrent
                      mishearing of its goal), and its kind (`char` slip or `substitute`,
                      another real value) and whether it fails silently;
  goal_log_users      distinct users who asked for the goal in the log (0: a goal the log
                      never had, fresh traffic's unseen goals);
  correction          the run's decision on a value correction of that misheard value (the
                      first rule it failed, `emit`, or `none` when no user ever corrected it).

A misheard request whose goal fewer than `min_users` users asked for cannot have a correction
in any log: the privacy floor refuses it. `judge_corrections` also checks every emitted
correction against the world: is (heard, meant) one of its goals' recurrent mishearings?

Keep the work directory with `python -m bench.run_keep_work INPUT ROOT KEEP_DIR`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from selflearn.core.text import normalize_text
from selflearn.evaluation.evaluate import FRESH_REQUESTS, replay_requests, resolve_run
from selflearn.simulate import World

MISS_COLUMNS = ["locale", "goal_id", "misheard", "mishear_kind", "silent", "goal_log_users", "correction"]


def goal_log_users(log: pd.DataFrame, truth: pd.DataFrame) -> dict[str, int]:
    """goal id -> distinct users who asked for it in the log."""
    m = log[["event_id", "user_id"]].merge(truth[["event_id", "goal_id"]], on="event_id")
    return m.groupby("goal_id")["user_id"].nunique().to_dict()


def _misheard_value(goal: dict) -> str | None:
    return normalize_text(goal["mishear_value"]) if goal.get("mishear_value") else None


def pattern_misses(world, rewrites: pd.DataFrame, patterns: pd.DataFrame, log_users: dict[str, int],
                   corrections: pd.DataFrame | None = None, n: int = FRESH_REQUESTS, seed: int = 12345) -> pd.DataFrame:
    """One row per fresh request that a pattern rewrote without serving its goal (MISS_COLUMNS)."""
    decided = {}
    if corrections is not None and len(corrections):
        for (loc, heard), d in corrections.groupby(["locale", "heard"])["decision"]:
            decided[(loc, heard)] = "emit" if (d == "emit").any() else ",".join(sorted(set(d)))
    req = replay_requests(rewrites, world, n, seed, patterns)
    rows = []
    for r in req[(req["kind"] == "pattern") & ~req["after"]].itertuples(index=False):
        g = world.goal(r.goal_id)
        heard = _misheard_value(g) if r.misheard else None
        rows.append((r.locale, r.goal_id, bool(r.misheard), g["mishear_kind"] if r.misheard else None,
                     bool(g["mishear_silent"]) if r.misheard else None, int(log_users.get(r.goal_id, 0)),
                     decided.get((r.locale, heard), "none") if heard else None))
    return pd.DataFrame(rows, columns=MISS_COLUMNS)


def reach(misses: pd.DataFrame, min_users: int = 3) -> dict[str, int]:
    """The misses split by what a log could know: misheard requests of goals it never had,
    of goals below `min_users` users, and the rest by the correction's decision."""
    mis = misses[misses["misheard"]]
    rest = mis[mis["goal_log_users"] >= min_users]
    out = {"misses": len(misses), "misheard": len(mis),
           "misheard, goal never in the log": int((mis["goal_log_users"] == 0).sum()),
           f"misheard, goal asked by 1-{min_users - 1} users": int(mis["goal_log_users"].between(1, min_users - 1).sum())}
    for decision, k in rest["correction"].value_counts().sort_index().items():
        out[f"misheard, goal asked by >= {min_users} users, correction: {decision}"] = int(k)
    return out


def judge_corrections(world, corrections: pd.DataFrame) -> tuple[int, int]:
    """(emitted corrections, of which the world's recurrent mishearings): heard is a goal's
    misheard value and meant that goal's value of the misheard slot, in its locale."""
    truth = set()
    for g in world.goals:
        if g.get("mishear_value"):
            name, k = g["mishear_slot"]
            values = [v for s, v in g["slots"] if s == name]
            if k < len(values):
                truth.add((g["locale"], _misheard_value(g), normalize_text(values[k])))
    emitted = corrections[corrections["decision"] == "emit"]
    return len(emitted), sum((r.locale, r.heard, r.meant) in truth for r in emitted.itertuples(index=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sim", required=True, type=Path)
    ap.add_argument("--run", required=True, type=Path, help="an output ROOT or one run directory")
    ap.add_argument("--work", required=True, type=Path, help="the run's kept work directory (bench.run_keep_work)")
    ap.add_argument("--requests", type=int, default=FRESH_REQUESTS)
    a = ap.parse_args(argv)
    run = resolve_run(a.run)
    min_users = int(json.loads((run / "manifest.json").read_text()).get("config", {}).get("min_users", 3))
    world = World.load(a.sim)
    log = pq.read_table(a.sim / "log", columns=["event_id", "user_id"]).to_pandas()
    truth = pq.read_table(a.sim / "truth.parquet", columns=["event_id", "goal_id"]).to_pandas()
    corrections = pd.read_parquet(a.work / "corrections_decided.parquet")
    misses = pattern_misses(world, pq.read_table(run / "rewrites").to_pandas(),
                            pq.read_table(run / "rewrite_patterns").to_pandas(), goal_log_users(log, truth),
                            corrections, a.requests)
    for k, v in reach(misses, min_users).items():
        print(f"{k}: {v}")
    emitted, true = judge_corrections(world, corrections)
    print(f"emitted corrections: {emitted}, of which the world's recurrent mishearings: {true}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
