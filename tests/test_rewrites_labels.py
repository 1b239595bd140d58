"""Emission rules and weak labels as plain pandas."""
import json

import pandas as pd
import pytest

from selflearn.config import Settings
from selflearn.core.labels import paraphrase_labels, project_slots, rewrite_labels, split_of, training_rows
from selflearn.core.rewrites import published_rewrites, select_rewrites, wilson_bounds


def candidate(**kw):
    row = dict(locale="en-US", source="wake me at five", target="set an alarm for five am", confidence=0.6,
               n_users=5, n_sessions=5, source_defect_rate=0.95, source_n_users=5, target_success_rate=0.97,
               target_n_users=40, evidence="rephrase", served_turns=None, served_defect_rate=None,
               target_intent="alarm_set", target_slots_json=json.dumps([{"name": "time", "value": "five am"}]),
               source_cluster_intent=None)
    row.update(kw)
    return row


def decide(*rows, **settings):
    return select_rewrites(pd.DataFrame(list(rows)), Settings(**settings))["decision"].tolist()


def test_wilson_bounds_by_hand():
    lo, hi = wilson_bounds([1.0], [3], 1.645)
    assert lo[0] == pytest.approx(1 / (1 + 1.645 ** 2 / 3))
    lo, hi = wilson_bounds([0.0], [3], 1.645)
    assert lo[0] == pytest.approx(0.0, abs=1e-12) and hi[0] == pytest.approx((1.645 ** 2 / 3) / (1 + 1.645 ** 2 / 3))


def test_each_rule_rejects_what_it_should():
    assert decide(candidate()) == ["emit"]
    assert decide(candidate(source_defect_rate=0.3)) == ["source_not_defective"]
    assert decide(candidate(n_users=2)) == ["too_few_users"]
    assert decide(candidate(n_users=2), min_users=2) == ["emit"]
    assert decide(candidate(target_n_users=3, target_success_rate=0.7)) == ["not_significant"]
    assert decide(candidate(confidence=0.1)) == ["low_confidence"]
    assert decide(candidate(served_turns=8, served_defect_rate=0.8)) == ["retracted_by_served_turns"]
    assert decide(candidate(served_turns=2, served_defect_rate=0.8)) == ["emit"]  # too few served turns to judge


def test_a_text_said_by_fewer_than_min_users_never_leaves_as_a_rewrite():
    """Contract section 4: published tables other than turns/ and rephrase_pairs/ hold only
    texts behind min_users users. A misheard key said by one user whose cluster mates'
    users carry the rewrite (n_users 5) is refused, and so is a target said by two; a pin
    does not skip the floor."""
    from selflearn.core.controls import Controls

    assert decide(candidate(source_n_users=1)) == ["text_too_few_users"]
    assert decide(candidate(target_key_users=2)) == ["text_too_few_users"]
    assert decide(candidate(source_n_users=3, target_key_users=3)) == ["emit"]
    assert decide(candidate(source_n_users=1), min_users=1, min_users_override=True) == ["emit"]
    pin = Controls(pins=pd.DataFrame([("en-US", "wake me at five", "set an alarm for five am")],
                                     columns=["locale", "source", "target"]))
    assert select_rewrites(pd.DataFrame([candidate(source_n_users=2, confidence=0.01)]), Settings(),
                           pin)["decision"].tolist() == ["text_too_few_users"]


def test_a_flooding_single_user_is_never_enough():
    # one user, hundreds of sessions: users behind the pair stay 1
    assert decide(candidate(n_users=1, n_sessions=300, confidence=0.99)) == ["too_few_users"]


def test_paraphrase_only_evidence_must_agree_with_the_cluster():
    ok = candidate(evidence="paraphrase", source_cluster_intent="alarm_set", source="wake me up at five am please")
    assert decide(ok) == ["emit"]
    assert decide({**ok, "source_cluster_intent": "weather_query"}) == ["paraphrase_disagrees"]
    assert decide({**ok, "source_cluster_intent": None}) == ["paraphrase_disagrees"]
    # the target's slot value (five am) does not occur in the source: a different goal
    assert decide({**ok, "source": "wake me up at six am please"}) == ["paraphrase_disagrees"]
    assert decide({**ok, "confidence": 0.3}) == ["paraphrase_disagrees"]
    # direct evidence needs no cluster agreement
    assert decide({**ok, "evidence": "rephrase", "source_cluster_intent": None}) == ["emit"]


def test_published_rewrites_have_the_contract_columns():
    out = published_rewrites(select_rewrites(pd.DataFrame([candidate(), candidate(source="x", n_users=1)]), Settings()))
    assert list(out.columns) == ["locale", "source", "target", "confidence", "n_users", "n_sessions",
                                 "source_defect_rate", "target_success_rate", "evidence"]
    assert len(out) == 1


@pytest.mark.parametrize("text,slots,expected", [
    ("wake me up at five am", [{"name": "time", "value": "Five AM"}], [{"name": "time", "value": "five am"}]),
    ("play imagine dragons", [{"name": "artist_name", "value": "imagine dragons"}], [{"name": "artist_name", "value": "imagine dragons"}]),
    ("play maj and dragons", [{"name": "artist_name", "value": "imagine dragons"}], None),  # change inside a slot value
    ("wake me up at fiveam", [{"name": "time", "value": "five am"}], None),
    ("今週は午前五時に起こして", [{"name": "time", "value": "午前五時"}], [{"name": "time", "value": "午前五時"}]),
    ("no slots here", [], []),
])
def test_slot_projection(text, slots, expected):
    assert project_slots(text, slots) == expected


def test_misheard_rewrite_stays_out_of_training():
    rewrites = pd.DataFrame([
        dict(locale="en-US", source="play maj and dragons", target="play imagine dragons", confidence=0.8),
        dict(locale="en-US", source="put on imagine dragons", target="play imagine dragons", confidence=0.7),
    ])
    interp = pd.DataFrame([dict(locale="en-US", text="play imagine dragons", intent="play_music", domain="music",
                                slots_json=json.dumps([{"name": "artist_name", "value": "imagine dragons"}]))])
    rows = rewrite_labels(rewrites, interp)
    assert rows["text"].tolist() == ["put on imagine dragons"]
    assert rows["weight"].tolist() == [0.7] and rows["intent"].tolist() == ["play_music"]


def test_paraphrase_labels_need_agreement_and_several_served_members():
    clusters = pd.DataFrame([
        dict(locale="en-US", cluster_id="c1", text=t, n_users=n, cluster_n_users=9, cluster_size=3, success_rate=0.6,
             intent="alarm_set", intent_agreement=1.0)
        for t, n in [("wake me at five am", 3), ("set an alarm for five am", 3), ("alarm for five am", 3)]
    ])
    stats = pd.DataFrame(dict(locale="en-US", text=clusters["text"], defect_rate=[0.9, 0.1, 0.1]))
    slots = json.dumps([{"name": "time", "value": "five am"}])
    interp = pd.DataFrame(dict(locale="en-US", text=["set an alarm for five am", "alarm for five am"], intent="alarm_set",
                               domain="alarm", slots_json=slots))
    rows = paraphrase_labels(clusters, stats, interp, Settings())
    assert rows["text"].tolist() == ["wake me at five am"] and rows["label_source"].tolist() == ["paraphrase"]
    # one served member only: no label
    assert paraphrase_labels(clusters, stats, interp.iloc[:1], Settings()).empty
    # low agreement: no label
    assert paraphrase_labels(clusters.assign(intent_agreement=0.6), stats, interp, Settings()).empty


def test_training_rows_prefer_rewrite_labels_and_split_stably():
    rw = pd.DataFrame([dict(locale="en-US", text="a b", intent="x", domain="d", slots=[], weight=0.4, label_source="rewrite")])
    pp = pd.DataFrame([dict(locale="en-US", text="a b", intent="y", domain="d", slots=[], weight=0.9, label_source="paraphrase")])
    out = training_rows(rw, pp, dev_share=0.1)
    assert out["intent"].tolist() == ["x"]
    assert out["split"].tolist() == [split_of("en-US", "a b", 0.1)]
    share = sum(split_of("en-US", f"text {i}", 0.1) == "dev" for i in range(5000)) / 5000
    assert 0.08 < share < 0.12


def _chain_pairs_by_loop(turns):
    """The chain rule turn by turn, as a reference: a chain grows while each turn is
    rephrased by the next; its last MAX_CHAIN turns pair up (i < j, different keys)."""
    from selflearn.core.rewrites import MAX_CHAIN

    rows = set()
    for (user, session), g in turns.sort_values("seq").groupby(["user_id", "session"]):
        chain = []
        for text, is_reph, locale in zip(g["text"], g["is_rephrase"], g["locale"]):
            chain.append(text)
            if not is_reph:
                last = chain[-MAX_CHAIN:]
                rows |= {(locale, a, b, user, session) for i, a in enumerate(last) for b in last[i + 1:] if a != b}
                chain = []
        last = chain[-MAX_CHAIN:]
        rows |= {(locale, a, b, user, session) for i, a in enumerate(last) for b in last[i + 1:] if a != b}
    return rows


def test_rephrase_chain_pairs_by_hand(massive):
    from selflearn.core.rewrites import rephrase_chain_pairs

    a, b, c, d = (r["utt"].lower() for r in massive("en-US", 4))
    turns = pd.DataFrame({
        "locale": "en-US", "user_id": "u1", "session": ["s1"] * 4 + ["s2"] * 2,
        "seq": [0, 1, 2, 3, 0, 1], "text": [a, b, c, d, a, a],
        # a -> b -> c is one chain; d starts none; s2 re-asks the same key (no pair)
        "is_rephrase": [True, True, False, False, True, False],
    })
    got = {tuple(r) for r in rephrase_chain_pairs(turns.sample(frac=1, random_state=0)).itertuples(index=False)}
    assert got == {("en-US", a, b, "u1", "s1"), ("en-US", a, c, "u1", "s1"), ("en-US", b, c, "u1", "s1")}


def test_rephrase_chain_pairs_agree_with_the_turn_by_turn_rule(massive):
    """Many sessions in one frame, long chains cut at MAX_CHAIN, repeated keys, chains
    running to the session's end: the vectorised pairs equal the reference loop's."""
    import numpy as np

    from selflearn.core.rewrites import rephrase_chain_pairs

    texts = [r["utt"].lower() for r in massive("de-DE", 12)]
    rng = np.random.default_rng(7)
    rows = []
    for s in range(400):
        user, n = f"u{s % 37}", int(rng.integers(1, 14))
        reph = rng.random(n) < 0.75
        for i in range(n):
            rows.append(("de-DE", user, f"s{s}", i, texts[int(rng.integers(0, len(texts)))], bool(reph[i])))
    turns = pd.DataFrame(rows, columns=["locale", "user_id", "session", "seq", "text", "is_rephrase"])
    got = rephrase_chain_pairs(turns.sample(frac=1, random_state=1))
    assert {tuple(r) for r in got.itertuples(index=False)} == _chain_pairs_by_loop(turns)
    assert len(got) > 1000  # long chains were exercised
    assert rephrase_chain_pairs(turns.iloc[:0]).empty
