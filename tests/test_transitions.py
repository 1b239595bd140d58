"""The transition model (core/transitions.py), by hand-computed examples, and the Spark
placement (spark.steps.edges_step) giving the same edges as the pure function."""
import pandas as pd
import pytest

from selflearn.core.graph import FAILURE, SUCCESS
from selflearn.core.transitions import pooled_transitions, turn_outcomes


def _turns(rows):
    cols = ["locale", "user_id", "text", "graph_score", "defect_prob", "next_text"]
    return pd.DataFrame(rows, columns=cols).astype({"graph_score": "float64"})


TURNS = _turns([
    # user a: re-asked "k" as "k2" (graph score 0.8; the turn itself half failed), then failed
    # at "k" (its next turn "x" does not count: no graph score)
    ("en-US", "a", "k", 0.8, 0.5, "k2"),
    ("en-US", "a", "k", None, 0.9, "x"),
    # user b: served at "k"
    ("en-US", "b", "k", None, 0.1, None),
])


def _probs(edges):
    return {(r.src, r.dst): (round(r.prob, 6), r.n_users) for r in edges.itertuples()}


def test_each_turn_spreads_its_mass_over_three_outcomes():
    out = turn_outcomes(TURNS)
    mass = out.groupby(["user_id", "dst"])["mass"].sum().round(6).to_dict()
    assert mass == {("a", "k2"): 0.8, ("a", SUCCESS): 0.2, ("a", FAILURE): 1.0, ("b", SUCCESS): 0.9, ("b", FAILURE): 0.1}
    assert "x" not in set(out["dst"])  # a next turn that is no rephrase gets no mass


def test_users_vote_with_weight_capped_at_per_user_edge_cap():
    # cap 1: each user's mean outcome counts once
    assert _probs(pooled_transitions(TURNS, 1)) == {
        ("k", "k2"): (0.2, 1), ("k", SUCCESS): (0.5, 2), ("k", FAILURE): (0.3, 2)}
    # cap 2: a's two turns weigh 2, b's one turn 1
    assert _probs(pooled_transitions(TURNS, 2)) == {
        ("k", "k2"): (round(0.8 / 3, 6), 1), ("k", SUCCESS): (round(1.1 / 3, 6), 2), ("k", FAILURE): (round(1.1 / 3, 6), 2)}


def test_one_user_repeating_a_failure_cannot_outvote_others():
    rows = [("en-US", "loud", "k", None, 1.0, None)] * 50
    rows += [("en-US", u, "k", None, 0.0, None) for u in ("u1", "u2", "u3")]
    probs = _probs(pooled_transitions(_turns(rows), 1))
    assert probs[("k", FAILURE)] == (0.25, 1) and probs[("k", SUCCESS)] == (0.75, 3)


def test_probabilities_of_each_key_sum_to_one_and_keys_stay_apart():
    more = pd.concat([TURNS, _turns([("de-DE", "a", "k", None, 0.2, None), ("en-US", "c", "k2", None, 0.0, None)])])
    edges = pooled_transitions(more, 3)
    assert edges.groupby(["locale", "src"])["prob"].sum().round(9).eq(1.0).all()
    assert _probs(edges[edges["locale"] == "de-DE"]) == {("k", SUCCESS): (0.8, 1), ("k", FAILURE): (0.2, 1)}
    assert pooled_transitions(more.iloc[:0], 3).empty


@pytest.mark.slow
def test_spark_edges_step_places_the_same_model(spark):
    from selflearn.config import Settings
    from selflearn.spark.steps import edges_step

    enriched = TURNS.assign(rewritten_from=None)  # organic turns only
    df = spark.createDataFrame(enriched, "locale string, user_id string, text string, graph_score double, "
                                         "defect_prob double, next_text string, rewritten_from string")
    got = edges_step(df, Settings(per_user_edge_cap=2)).toPandas()
    assert _probs(got) == _probs(pooled_transitions(TURNS, 2))


# --- the key rules of core/defects.py, one definition for pandas, scalars and Spark ---------

KEYS = pd.DataFrame({
    "defect_rate": [0.1, 0.9, 0.1, None, 0.2],
    "intent": ["alarm_set", "alarm_set", None, "play_music", "play_music"],
    "slots_json": ['[{"name":"time","value":"seven"}]', "[]", "[]", "[]", None],
})
EXPECTED_CLASSES = ['alarm_set|[{"name":"time","value":"seven"}]', None, None, None, "play_music|[]"]


def test_interpretation_class_names_served_keys_only():
    from selflearn.core.defects import interpretation_class

    got = interpretation_class(KEYS["defect_rate"], KEYS["intent"], KEYS["slots_json"], 0.5)
    assert [None if pd.isna(v) else v for v in got] == EXPECTED_CLASSES
    assert interpretation_class(0.1, "alarm_set", None, 0.5) == "alarm_set|[]"
    assert interpretation_class(0.5, "alarm_set", "[]", 0.5) is None  # failing at the threshold


def test_a_good_turn_is_served_with_an_intent_under_half_defect():
    from selflearn.core.defects import is_good_turn

    status = pd.Series(["success", "success", "success", "error"])
    defect = pd.Series([0.49, 0.5, 0.1, 0.1])
    intent = pd.Series(["a", "a", None, "a"])
    assert is_good_turn(status, defect, intent).tolist() == [True, False, False, False]
    assert is_good_turn("success", 0.2, "a") and not is_good_turn("success", 0.2, None)


@pytest.mark.slow
def test_the_key_rules_read_the_same_in_spark(spark):
    from pyspark.sql import functions as F

    from selflearn.core.defects import interpretation_class, is_good_turn

    df = spark.createDataFrame(KEYS.astype(object).where(KEYS.notna(), None),
                               "defect_rate double, intent string, slots_json string")
    got = df.select(interpretation_class(F.col("defect_rate"), F.col("intent"), F.col("slots_json"), 0.5).alias("c"),
                    is_good_turn(F.lit("success"), F.col("defect_rate"), F.col("intent")).alias("g")).collect()
    assert [r["c"] for r in got] == EXPECTED_CLASSES
    assert [r["g"] for r in got] == [True, False, False, None, True]
