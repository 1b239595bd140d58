"""Who stands behind a rewrite (core.rewrites.users_behind), without Spark."""
import pandas as pd

from selflearn.core.rewrites import users_behind

REACH = pd.DataFrame([
    # locale, source, target, user_id, session, user_days
    ("en-US", "wake me at seven", "set alarm seven", "u1", "s1", 3),
    ("en-US", "wake me at seven", "set alarm seven", "u1", "s2", 3),   # same user, second session
    ("en-US", "wake me at seven", "alarm for seven", "u2", "s1", 1),   # another key of the target's class
    ("en-US", "wake me at seven", "what time is it", "u3", "s1", 5),   # a key served otherwise
    ("en-US", "rouse me at seven", "set alarm seven", "u4", "s1", 2),  # a cluster mate of the source
], columns=["locale", "source", "target", "user_id", "session", "user_days"])
CLASSES = pd.DataFrame([
    ("en-US", "set alarm seven", "alarm_set|seven"), ("en-US", "alarm for seven", "alarm_set|seven"),
    ("en-US", "what time is it", "datetime_query|[]"), ("en-US", "wake me at seven", "key:wake me at seven"),
    ("en-US", "rouse me at seven", "key:rouse me at seven"),
], columns=["locale", "key", "cls"])
MATES = pd.DataFrame([("en-US", "wake me at seven", "rouse me at seven"), ("en-US", "rouse me at seven", "wake me at seven")],
                     columns=["locale", "key", "mate"])


def _behind(evidence, min_days=1):
    cands = pd.DataFrame([("en-US", "wake me at seven", "set alarm seven", evidence)], columns=["locale", "source", "target", "evidence"])
    out = users_behind(REACH, MATES, cands, CLASSES, min_days)
    return {(r.source, r.target): (r.n_users, r.n_sessions) for r in out.itertuples()}


def test_the_sources_own_users_are_counted_apart_from_its_mates_users():
    cands = pd.DataFrame([("en-US", "wake me at seven", "set alarm seven", "both")], columns=["locale", "source", "target", "evidence"])
    out = users_behind(REACH, MATES, cands, CLASSES).iloc[0]
    assert (out["n_users"], out["n_source_users"]) == (3, 2)  # u1, u2 from the source; u4 through its mate


def test_users_reaching_any_key_served_like_the_target_count_once_each():
    # u1 (two sessions) and u2 (another key of the class); not u3 (other class), not u4 (a mate's user)
    assert _behind("rephrase") == {("wake me at seven", "set alarm seven"): (2, 3)}


def test_a_mates_users_count_only_where_the_graph_used_the_mate():
    assert _behind("paraphrase") == {("wake me at seven", "set alarm seven"): (3, 4)}
    assert _behind("both") == {("wake me at seven", "set alarm seven"): (3, 4)}


def test_only_users_active_on_enough_days_count():
    assert _behind("both", min_days=2) == {("wake me at seven", "set alarm seven"): (2, 3)}  # u1 and u4
    assert _behind("rephrase", min_days=6) == {}


def test_a_target_outside_the_key_tables_has_no_one_behind_it():
    cands = pd.DataFrame([("en-US", "wake me at seven", "never said", "rephrase")], columns=["locale", "source", "target", "evidence"])
    assert users_behind(REACH, MATES, cands, CLASSES).empty
