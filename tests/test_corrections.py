"""Value corrections (selflearn.core.corrections): a misheard slot value learned across
phrasings and published as `rewrite_patterns/` rows with the value written out. Texts are
real MASSIVE en-US play_music carrier phrases ("play some [artist_name : david bowie]",
"put on some [artist_name : coldplay]", "play [artist_name : daft punk]", "i want to listen
[artist_name : arijit singh] song once again") with their real values; the misheard value
is a character slip of a real one, as the simulator makes them."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from selflearn.config import Settings
from selflearn.core.corrections import (
    align_heard_values, correction_candidates, correction_patterns, select_corrections, working_templates,
)
from selflearn.core.controls import Controls
from selflearn.core.rewrite_apply import RewriteIndex

S = Settings()
HEARD, MEANT = "david bowy", "david bowie"


def _slots(**values):
    return json.dumps([{"name": k, "value": v} for k, v in values.items()])


def _keys(extra=()):
    """Key statistics of the locale: three working phrasings (served play_music with their
    value), the misheard texts failing, and any extra (text, n_users, defect_rate, intent, slots_json)."""
    rows = [
        ("play some david bowie", 6, 0.05, "play_music", _slots(artist_name="david bowie")),
        ("put on some coldplay", 4, 0.05, "play_music", _slots(artist_name="coldplay")),
        ("play daft punk", 5, 0.05, "play_music", _slots(artist_name="daft punk")),
        ("play some david bowy", 3, 0.9, None, None),
        ("put on some david bowy", 2, 0.9, None, None),
        ("i want to listen david bowy song once again", 1, 0.95, None, None),
    ]
    rows += list(extra)
    k = pd.DataFrame(rows, columns=["text", "n_users", "defect_rate", "intent", "slots_json"])
    k.insert(0, "locale", "en-US")
    k["domain"] = k["intent"].map(lambda i: "play" if i else None)
    return k


def _pairs(rows, meant=MEANT, intent="play_music"):
    """Chain pairs (source said, user) -> "play some <meant>" served."""
    return pd.DataFrame([{
        "locale": "en-US", "source": src, "target": f"play some {meant}", "user_id": u, "session": f"{u}-1",
        "target_intent": intent, "target_domain": "play" if intent == "play_music" else "takeaway",
        "target_slots_json": _slots(artist_name=meant), "target_defect_rate": 0.05} for src, u in rows])


MISHEARD = [("play some david bowy", "u1"), ("play some david bowy", "u2"), ("put on some david bowy", "u3"),
            ("put on some david bowy", "u4")]
PATTERN = pd.DataFrame([{"locale": "en-US", "source": "i want to listen {artist_name} song once again",
                         "target": "play some {artist_name}", "target_intent": "play_music"}])


def _decide(pairs, keys=None, patterns=PATTERN, settings=S):
    keys = _keys() if keys is None else keys
    templates = working_templates(keys, settings)
    aligned = align_heard_values(pairs, list(templates["template"]) + list(patterns["source"]))
    return select_corrections(correction_candidates(aligned, keys, templates, patterns, settings), settings)


def _index(rows):
    published = PATTERN.assign(slots=[["artist_name"]], confidence=0.9, n_users=5, n_values=4, n_sessions=5,
                               source_defect_rate=0.95, target_success_rate=0.95, evidence="rephrase")
    return RewriteIndex.from_frames(pd.DataFrame(columns=["locale", "source", "target", "confidence"]),
                                    pd.concat([published.drop(columns=["target_intent"]), rows], ignore_index=True))


def test_working_phrasings_are_served_keys_with_their_values_as_placeholders():
    t = working_templates(_keys(), S)
    assert sorted(t["template"]) == ["play some {artist_name}", "play {artist_name}", "put on some {artist_name}"]
    assert set(t["intent"]) == {"play_music"}
    # without counted users, the most users of one key: at least so many said its literal text
    assert dict(zip(t["template"], t["n_users"]))["play some {artist_name}"] == 6
    counted = pd.DataFrame([{"locale": "en-US", "template": "play {artist_name}", "n_users": 2}])
    t = working_templates(_keys(), S, counted)
    assert dict(zip(t["template"], t["n_users"])) == {"play some {artist_name}": 6, "play {artist_name}": 2,
                                                     "put on some {artist_name}": 4}
    # a phrasing said by fewer than min_users distinct users gets no row
    d = _decide(_pairs(MISHEARD))
    assert "play daft punk" in str(d.iloc[0]["specializations"]) or "play david bowy" in str(d.iloc[0]["specializations"])
    low = correction_candidates(align_heard_values(_pairs(MISHEARD), list(t["template"])), _keys(), t, PATTERN, S)
    assert "play david bowy" not in {row[0] for row in json.loads(low.iloc[0]["specializations"])}


def test_a_misheard_value_is_read_through_the_phrasing_with_the_most_literal_text():
    al = align_heard_values(_pairs(MISHEARD), ["play {artist_name}", "play some {artist_name}", "put on some {artist_name}"])
    assert set(al["heard"]) == {HEARD} and set(al["meant"]) == {MEANT}
    # "play some david bowy" fits "play {artist_name}" too (heard "some david bowy"): the
    # phrasing with more fixed text reads it
    assert sorted(set(al["template"])) == ["play some {artist_name}", "put on some {artist_name}"]


def test_a_correction_learned_in_two_phrasings_fixes_a_third_and_the_pattern_phrasing():
    d = _decide(_pairs(MISHEARD))
    row = d[d["heard"] == HEARD].iloc[0]
    assert row["decision"] == "emit" and row["n_users"] == 4 and row["n_phrasings"] == 2 and row["share"] == 1.0
    rows = correction_patterns(d, PATTERN.assign(slots=None))
    assert set(rows["evidence"]) == {"correction"} and (rows["n_users"] >= S.min_users).all()
    index = _index(rows)
    # a phrasing nobody said the misheard value in
    assert index.lookup("en-US", "play david bowy").rewrite == "play david bowie"
    # the failing phrasing's own pattern would carry the misheard value into a working
    # phrasing; the correction's row, with more literal text, goes first
    got = index.lookup("en-US", "i want to listen david bowy song once again")
    assert got.rewrite == "play some david bowie"
    assert index.lookup("en-US", "i want to listen daft punk song once again").rewrite == "play some daft punk"
    # requests that work stay as they are
    assert index.lookup("en-US", "play some david bowie") is None
    # a row whose source an exact rewrite holds would never fire (exact first): left out
    exact = pd.DataFrame([{"locale": "en-US", "source": "play some david bowy"}])
    kept = correction_patterns(d, PATTERN.assign(slots=None), exact=exact)
    assert "play some david bowy" in set(rows["source"]) and "play some david bowy" not in set(kept["source"])
    assert len(kept) == len(rows) - 1


def test_a_different_value_after_a_failure_is_another_request_not_a_mishearing():
    pairs = _pairs(MISHEARD)
    other = _pairs([(s.replace(HEARD, "coldplay"), u + "x") for s, u in MISHEARD], meant="daft punk")
    d = _decide(pd.concat([pairs, other], ignore_index=True))
    assert d.set_index("heard").loc["coldplay", "decision"] == "not_alike"


def test_unlike_values_pass_only_when_their_users_agree_significantly():
    # ASR substitutes one real value for another: "arijit singh" heard where users meant
    # "david bowie". Unlike strings, so a few users' switch is another request (not_alike);
    # 11 of 11 users in two phrasings reach the Wilson bound of pattern_min_agreement, and
    # the heard value works nowhere, so it is a correction. If it works for others, it is not.
    def said(n):
        return [(f"{'play some' if i % 2 else 'put on some'} arijit singh", f"s{i}") for i in range(n)]

    failing = [("play some arijit singh", 6, 0.9, None, None), ("put on some arijit singh", 5, 0.9, None, None)]
    few = _decide(_pairs(said(10)), keys=_keys(extra=failing)).iloc[0]
    assert (few["heard"], few["share"], few["decision"]) == ("arijit singh", 1.0, "not_alike")
    many = _decide(_pairs(said(11)), keys=_keys(extra=failing)).iloc[0]
    assert many["similarity"] < S.value_correction_min_similarity and many["decision"] == "emit"
    works = _keys(extra=failing + [("play arijit singh", 9, 0.02, "play_music", _slots(artist_name="arijit singh"))])
    assert _decide(_pairs(said(11)), keys=works).iloc[0]["decision"] == "heard_value_works"
    split = pd.concat([_pairs(said(11)), _pairs([("play some arijit singh", "t1")], meant="daft punk")], ignore_index=True)
    assert _decide(split, keys=_keys(extra=failing)).set_index("meant").loc["david bowie", "decision"] == "not_alike"


def test_too_few_users_or_one_phrasing_is_refused():
    assert _decide(_pairs(MISHEARD[:2] + MISHEARD[2:3])).iloc[0]["decision"] == "emit"
    assert _decide(_pairs(MISHEARD[:2])).iloc[0]["decision"] == "too_few_users"
    one = [("play some david bowy", u) for u in ("u1", "u2", "u3", "u4")]
    assert _decide(_pairs(one)).iloc[0]["decision"] == "too_few_phrasings"


def test_a_heard_value_that_works_elsewhere_is_refused():
    # "david bowy" is somebody's working request: 9 users on keys that work say it
    keys = _keys(extra=[("play music by david bowy", 9, 0.02, "play_music", _slots(artist_name="david bowy"))])
    d = _decide(_pairs(MISHEARD), keys=keys)
    assert d.iloc[0]["decision"] == "heard_value_works" and d.iloc[0]["working_share"] > S.pattern_max_working_share


def test_users_split_between_two_meanings_disagree():
    split = _pairs(MISHEARD[:3])
    other = _pairs([("play some david bowy", "v1"), ("put on some david bowy", "v2"), ("put on some david bowy", "v3")],
                   meant="david bowies")
    d = _decide(pd.concat([split, other], ignore_index=True))
    assert set(d["decision"]) == {"disagrees"}


def test_sensitive_and_denied_intents_get_no_correction_and_blocks_hold():
    d = _decide(_pairs(MISHEARD, intent="takeaway_order"))
    assert d.iloc[0]["decision"] == "sensitive_target"
    denied = dataclasses.replace(S, deny_domains=("play",))
    assert _decide(_pairs(MISHEARD), settings=denied).iloc[0]["decision"] == "denied"
    d = _decide(_pairs(MISHEARD))
    block = Controls(blocks=pd.DataFrame([{"locale": "en-US", "source": "play david bowy", "target": None}]))
    rows = correction_patterns(d, PATTERN.assign(slots=None), block)
    assert "play david bowy" not in set(rows["source"]) and len(rows) >= 2


def test_switched_off_or_no_evidence_publishes_nothing():
    empty = select_corrections(correction_candidates(align_heard_values(_pairs([]), []), _keys(), working_templates(_keys(), S),
                                                     PATTERN, S), S)
    assert empty.empty and correction_patterns(empty, PATTERN).empty


def test_the_spark_step_places_the_data_and_finds_what_the_functions_find(spark, settings):
    """value_corrections_step on real local Spark: one group per locale, the same
    corrections as the pandas path above."""
    from selflearn.spark.steps import value_corrections_step

    keys = _keys()
    key_stats = spark.createDataFrame(
        keys, "locale string, text string, n_users long, defect_rate double, intent string, slots_json string, domain string")
    pairs = _pairs(MISHEARD)
    reach = spark.createDataFrame(pairs[["locale", "source", "target", "user_id", "session"]])
    # the evidence turns: each key said by its n_users users (one user says two keys of
    # "play {artist_name}"' phrasing: counted once)
    turns = [("en-US", t, f"{t}-{i}", None) for t, n in zip(keys["text"], keys["n_users"]) for i in range(n)]
    turns += [("en-US", "play some david bowie", "play daft punk-0", None)]
    enriched = spark.createDataFrame(turns, "locale string, text string, user_id string, rewritten_from string")
    got = select_corrections(value_corrections_step(reach, key_stats, enriched, PATTERN[["locale", "source"]], PATTERN, settings),
                             settings)
    want = _decide(pairs)
    cols = ["locale", "slot", "heard", "meant", "n_users", "n_phrasings", "decision", "specializations"]
    assert got[cols].to_dict("records") == want[cols].to_dict("records")
    assert got.iloc[0]["decision"] == "emit"


def test_the_churn_gate_counts_a_pair_in_both_tables_once(tmp_path):
    """A correction row with every value written out holds no brace: were it to repeat an
    exact rewrite (an older run), the gate's union of both kinds still counts it once."""
    from selflearn.run.gate import published_rewrites
    from selflearn.run.publish import write_table

    d = _decide(_pairs(MISHEARD))
    rows = correction_patterns(d, PATTERN.assign(slots=None))
    one = rows.iloc[:1]
    exact = one[["locale", "source", "target", "confidence", "n_users", "n_sessions", "source_defect_rate",
                 "target_success_rate"]].assign(evidence="rephrase")
    write_table(exact, tmp_path / "rewrites", "rewrites", ["locale", "source", "target"])
    write_table(rows, tmp_path / "rewrite_patterns", "rewrite_patterns", ["locale", "source", "target"])
    both = published_rewrites(tmp_path)
    assert len(both) == len(rows) and not both.duplicated(["locale", "source", "target"]).any()


def test_a_rows_rates_are_over_the_logged_keys_it_matches_and_a_row_on_working_keys_is_left_out():
    """Contract 4.1: source_defect_rate over every logged key the row's source matches,
    target_success_rate over the target's; a side nobody said takes the correction's own.
    A row whose source matches a working key is left out (as `matches_working`)."""
    d = _decide(_pairs(MISHEARD))
    rows = correction_patterns(d, PATTERN.assign(slots=None)).set_index("source")
    said = rows.loc["play some david bowy"]  # logged: 3 users, defect rate 0.9
    assert said["source_defect_rate"] == pytest.approx(0.9) and said["target_success_rate"] == pytest.approx(0.95)
    unsaid = rows.loc["play david bowy"]  # nobody said it: the correction's own rates
    row = d.iloc[0]
    assert unsaid["source_defect_rate"] == pytest.approx(row["source_defect_rate"])
    # one user says "play david bowy" and is served: the heard value hardly works overall
    # (1 of 35 users), but that row's source matches a working key
    keys = _keys(extra=[("play david bowy", 1, 0.02, "play_music", _slots(artist_name="david bowy")),
                        ("i want to listen david bowy song once again", 28, 0.95, None, None)])
    d = _decide(_pairs(MISHEARD), keys=keys)
    assert d.iloc[0]["decision"] == "emit" and d.iloc[0]["working_share"] <= S.pattern_max_working_share
    sources = set(correction_patterns(d, PATTERN.assign(slots=None))["source"])
    assert "play david bowy" not in sources and "play some david bowy" in sources
