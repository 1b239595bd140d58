"""Poisoning claims that rest on one rule or one pooling step, tested on the functions
themselves (the end-to-end runs are in test_trust_e2e.py). Keys are real MASSIVE
utterances."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from selflearn.config import Settings
from selflearn.core.graph import solve_rewrite_targets
from selflearn.core.rewrites import select_rewrites
from selflearn.spark.steps import edges_step
from selflearn.core.text import normalize_text


@pytest.fixture(scope="module")
def keys(massive):
    """A failing source of one intent, its real continuation (same intent) and a bogus
    target of another intent, all real en-US MASSIVE utterances."""
    recs = massive("en-US", 3000)
    alarm = [normalize_text(r["utt"]) for r in recs if r["intent"] == "alarm_set"]
    weather = [normalize_text(r["utt"]) for r in recs if r["intent"] == "weather_query"]
    return dict(source=alarm[0], real=alarm[1], bogus=weather[0])


def bogus_candidate(keys, **kw):
    row = dict(locale="en-US", source=keys["source"], target=keys["bogus"], confidence=0.8, n_users=3, n_sessions=3,
               source_defect_rate=1.0, source_n_users=3, target_success_rate=0.95, target_n_users=60,
               evidence="rephrase", served_turns=None, served_defect_rate=None, target_intent="weather_query",
               target_domain="weather", target_slots_json=json.dumps([]), source_cluster_intent="alarm_set",
               source_intent=None, source_domain=None)
    row.update(kw)
    return row


def decide(row, **settings):
    return select_rewrites(pd.DataFrame([row]), Settings(**settings))["decision"].iloc[0]


def test_k_equal_min_users_colluders_satisfy_every_default_rule(keys):
    """What the defaults see from three fresh accounts on a source only they say: three
    users, a source that always fails (Wilson upper bound 0.47 at n=3), a popular
    target: emitted. This is the documented weakness the settings below close."""
    assert decide(bogus_candidate(keys)) == "emit"
    assert decide(bogus_candidate(keys, n_users=2, source_n_users=2)) == "too_few_users"


def test_target_of_another_intent_than_the_sources_cluster(keys):
    # paraphrase-only evidence: stopped by default
    assert decide(bogus_candidate(keys, evidence="paraphrase")) == "paraphrase_disagrees"
    # rephrase evidence: passes the defaults, stopped by cluster_must_agree
    assert decide(bogus_candidate(keys)) == "emit"
    assert decide(bogus_candidate(keys), cluster_must_agree=True) == "cluster_disagrees"
    # the honest target (the cluster's own intent) still passes with the setting on
    assert decide(bogus_candidate(keys, target=keys["real"], target_intent="alarm_set"), cluster_must_agree=True) == "emit"
    # a source in no cluster gives the setting nothing to compare: only history helps
    assert decide(bogus_candidate(keys, source_cluster_intent=None), cluster_must_agree=True) == "emit"


def _enriched(keys, real_users: int, colluders: int, colluder_turns: int) -> pd.DataFrame:
    """Enriched turns (the sessions stage's output) of a popular failing source: real
    users re-ask with the real continuation, colluders with the bogus target, each
    colluder many times."""
    rows = []

    def pair(user, target, n):
        for _ in range(n):
            rows.append(dict(locale="en-US", user_id=user, text=keys["source"], next_text=target, graph_score=0.9,
                             defect_prob=0.95, rewritten_from=None))
            rows.append(dict(locale="en-US", user_id=user, text=target, next_text=None, graph_score=None,
                             defect_prob=0.05, rewritten_from=None))

    for u in range(real_users):
        pair(f"real{u}", keys["real"], 1)
    for u in range(colluders):
        pair(f"sybil{u}", keys["bogus"], colluder_turns)
    return pd.DataFrame(rows)


def test_colluders_redirect_a_popular_source_only_by_outnumbering_its_users(spark, keys):
    """Each user's outcome at a key is one vote (per_user_edge_cap), so colluders pick
    the target of a source real users say only when there are more of them than of the
    real users going elsewhere, however many turns they send."""
    def best(real, sybils):
        df = spark.createDataFrame(_enriched(keys, real, sybils, colluder_turns=200),
                                   "locale string, user_id string, text string, next_text string, graph_score double, "
                                   "defect_prob double, rewritten_from string")
        e = edges_step(df, Settings()).toPandas()
        out = solve_rewrite_targets(e[["src", "dst", "prob"]], [keys["source"]]).set_index("source")
        return out.loc[keys["source"], "target"]

    assert best(real=6, sybils=3) == keys["real"]
    assert best(real=6, sybils=5) == keys["real"]
    assert best(real=6, sybils=7) == keys["bogus"]
