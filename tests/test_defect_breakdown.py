"""bench/defect_breakdown.py: why the defects left after a run stay defects. Its "fixed"
rows must agree with the evaluator's replay (same requests, same application of contract
4.1), and each guard must claim its own requests."""
from __future__ import annotations

import pandas as pd

from bench.defect_breakdown import classify_requests, contract_limit, phrasing, table
from conftest import failing_phrasing_pattern
from selflearn.core.text import normalize_text
from selflearn.evaluation.evaluate import replay_metrics
from selflearn.simulate import SimConfig, World


def test_phrasing_cuts_values_longest_first_and_names_contract_limits():
    assert phrasing("Wake me up at 7 am tomorrow", [("time", "7 am"), ("date", "tomorrow")]) == \
        "wake me up at {time} {date}"
    assert phrasing("play new york new york", [("song_name", "new york new york"), ("place_name", "new york")]) == \
        "play {song_name}"
    assert contract_limit("wake me up at {time} {date}") == "contract: adjacent slots"
    assert contract_limit("from {place_name} to {place_name}") == "contract: repeated slot"
    assert contract_limit("wake me up at {time} tomorrow") is None


def test_the_breakdown_agrees_with_the_evaluator_and_each_guard_claims_its_requests():
    w = World.build(SimConfig(users=40, locales=("en-US",), seed=0))
    fresh = w.fresh_traffic(3000, seed=12345)
    _, g, src, tgt, psrc, ptgt = failing_phrasing_pattern(w, fresh)
    patterns = pd.DataFrame({"locale": ["en-US"], "source": [psrc], "target": [ptgt], "confidence": [0.9]})
    exact = pd.DataFrame({"locale": ["en-US"], "source": [src], "target": [tgt], "confidence": [0.9]})

    rows = classify_requests(w, exact, patterns, {("en-US", psrc): 2}, n=3000)
    replay = replay_metrics(exact, w, n=3000, seed=12345, patterns=patterns)["overall"]
    assert len(rows) == replay["defects_before"]
    assert (rows["reason"] == "fixed: exact").sum() == replay["exact"]["wins"] > 0
    assert (rows["reason"] == "fixed: pattern").sum() == replay["pattern"]["wins"] > 0
    assert (rows["reason"] == "wrong rewrite: pattern").sum() == replay["pattern"]["applied"] - replay["pattern"]["wins"]
    # without the rewrites, that phrasing's requests fall to the log's count: 2 users < 3
    bare = classify_requests(w, exact.iloc[:0], None, {("en-US", psrc): 2}, n=3000)
    assert set(bare.loc[bare["phrasing"] == psrc, "reason"]) <= {"phrasing below min_users", "misheard value"}
    assert (bare["reason"] == "phrasing below min_users").sum() >= (rows["reason"] == "fixed: pattern").sum()
    # the deny list claims every failing request of its goal's intent that no rewrite took
    denied = classify_requests(w, exact.iloc[:0], None, {}, deny_intents=[g["intent"]], n=3000)
    failing_of_intent = sum(w.goal(gid)["intent"] == g["intent"] and not w.serves("en-US", k, gid)
                            for gid, k in zip(fresh["goal_id"], fresh["text"]))
    assert (denied["reason"] == "denied goal").sum() == failing_of_intent > 0
    shares = table(rows)
    assert abs(shares.drop("failing requests")["all"].sum() - 1.0) < 0.01
    assert shares.loc["failing requests", "all"] == len(rows)


def test_pattern_misses_are_the_evaluators_pattern_applications_that_missed():
    """bench/pattern_misses.py: its misses are the evaluator's pattern applications minus its
    pattern wins, and an emitted correction is judged against the world's mishearings."""
    from bench.pattern_misses import judge_corrections, pattern_misses, reach

    w = World.build(SimConfig(users=40, locales=("en-US",), seed=0))
    fresh = w.fresh_traffic(3000, seed=12345)
    _, _, _, _, psrc, ptgt = failing_phrasing_pattern(w, fresh)
    # the pattern backwards: it rewrites the working phrasing into the one the NLU does not read
    backwards = pd.DataFrame({"locale": ["en-US"], "source": [ptgt], "target": [psrc], "confidence": [0.9]})
    exact = pd.DataFrame(columns=["locale", "source", "target", "confidence"])
    misses = pattern_misses(w, exact, backwards, {}, None, n=3000)
    replay = replay_metrics(exact, w, n=3000, seed=12345, patterns=backwards)["overall"]["pattern"]
    assert len(misses) == replay["applied"] - replay["wins"] > 0
    split = reach(misses)
    assert split["misses"] == len(misses) and split["misheard, goal never in the log"] == split["misheard"]

    g = next(x for x in w.goals if x["mishear_value"])
    name, k = g["mishear_slot"]
    meant = [v for s, v in g["slots"] if s == name][k]
    heard = g["mishear_value"]
    heard, meant = normalize_text(heard), normalize_text(meant)
    # the mishearing, the same pair backwards, and the mishearing refused (not counted)
    corrections = pd.DataFrame({"locale": [g["locale"]] * 3, "heard": [heard, meant, heard],
                                "meant": [meant, heard, meant], "decision": ["emit", "emit", "not_alike"]})
    assert judge_corrections(w, corrections) == (2, 1)
