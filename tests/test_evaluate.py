"""The evaluator's metrics on small hand-made inputs."""
import numpy as np
import pandas as pd
import pytest

from selflearn.core.text import normalize_text
from selflearn.evaluation.evaluate import auc, prf, rephrase_metrics


def test_auc_by_hand():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # ties count half
    assert auc([0.1, 0.2], [1, 1]) is None


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s, y = rng.random(200), rng.random(200) < 0.3
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert auc(s, y) == pytest.approx(np.mean(pairs))


def test_prf():
    assert prf(8, 10, 16) == {"precision": 0.8, "recall": 0.5, "f1": pytest.approx(2 * 0.8 * 0.5 / 1.3), "tp": 8, "predicted": 10, "true": 16}
    assert prf(0, 0, 5)["precision"] is None


def test_rephrase_metrics_against_rephrase_of():
    pairs = pd.DataFrame(dict(first_event_id=["a", "b", "d"], second_event_id=["b", "c", "e"], is_rephrase=[True, True, False]))
    truth = pd.DataFrame(dict(event_id=["a", "b", "c", "d", "e"], rephrase_of=[None, "a", None, None, "d"]))
    locale = pd.Series(["en-US"] * 5, index=["a", "b", "c", "d", "e"])
    m = rephrase_metrics(pairs, truth, locale)["overall"]
    assert (m["tp"], m["predicted"], m["true"]) == (1, 2, 2)


def test_rephrase_metrics_per_trap():
    """A trap's pairs are true negatives: their false positive rate, and P with only them."""
    pairs = pd.DataFrame(dict(first_event_id=["a", "c", "e", "g"], second_event_id=["b", "d", "f", "h"],
                              is_rephrase=[True, True, False, False]))
    truth = pd.DataFrame(dict(event_id=list("abcdefgh"), rephrase_of=[None, "a"] + [None] * 6,
                              trap=[None, None, None, "topic_switch", None, "topic_switch", None, "elicit"]))
    locale = pd.Series(["en-US"] * 8, index=list("abcdefgh"))
    t = rephrase_metrics(pairs, truth, locale)["per_trap"]
    assert t["topic_switch"]["pairs"] == 2 and t["topic_switch"]["false_positives"] == 1
    assert t["topic_switch"]["false_positive_rate"] == 0.5 and t["topic_switch"]["precision"] == 0.5
    assert t["elicit"]["false_positive_rate"] == 0.0 and t["elicit"]["precision"] == 1.0


def test_replay_applies_patterns_after_exact_rewrites_and_reports_each_kind():
    """A pattern made from a real MASSIVE frame's not-understood phrasing and an understood
    one fixes fresh requests of that phrasing, values never seen included; its
    applications are counted apart from exact rewrites, with their precision."""
    from conftest import failing_phrasing_pattern
    from selflearn.evaluation.evaluate import replay_metrics
    from selflearn.simulate import SimConfig, World

    w = World.build(SimConfig(users=40, locales=("en-US",), seed=0))
    fresh = w.fresh_traffic(3000, seed=7)
    tid, g, src, tgt, psrc, ptgt = failing_phrasing_pattern(w, fresh)
    n_heard = int(((fresh["template_id"] == tid) & ~fresh["misheard"]).sum())  # its requests heard right
    patterns = pd.DataFrame({"locale": ["en-US"], "source": [psrc], "target": [ptgt], "confidence": [0.9]})
    # an exact rewrite of the same source key wins over the pattern (contract 4.1)
    exact = pd.DataFrame({"locale": ["en-US"], "source": [src], "target": [tgt], "confidence": [0.9]})
    r = replay_metrics(exact, w, n=3000, seed=7, patterns=patterns)["overall"]
    n_src = int((fresh["text"] == src).sum())
    assert r["exact"]["applied"] == n_src
    assert r["pattern"]["applied"] >= n_heard - n_src > 0
    # a misheard value is carried into the target: no win there (exact rewrites fix those)
    assert r["pattern"]["wins"] >= n_heard - n_src
    assert r["pattern"]["precision"] == r["pattern"]["wins"] / r["pattern"]["applied"]
    # the misheard requests it fired on are counted apart: heard right, it served every one
    mis = int(fresh.loc[fresh["template_id"] == tid, "misheard"].sum())
    assert r["pattern"]["applied_heard"] == r["pattern"]["applied"] - mis
    assert r["pattern"]["precision_heard"] == 1.0
    assert r["wins"] == r["exact"]["wins"] + r["pattern"]["wins"]
    none = replay_metrics(exact.iloc[:0], w, n=3000, seed=7)["overall"]
    assert none["pattern"]["applied"] == 0 and r["defects_after"] < none["defects_after"]
    # the same replay, with the goal's intent on a deny list: its requests leave the
    # "allowed" figures, and every other request stays in them
    denied = replay_metrics(exact, w, n=3000, seed=7, patterns=patterns, deny_intents=[g["intent"]])["overall"]
    n_denied = sum(w.goals[w.goal_index[gid]]["intent"] == g["intent"] for gid in fresh["goal_id"])
    assert 0 < n_denied < len(fresh)
    assert denied["allowed_goals"]["requests"] == len(fresh) - n_denied
    assert r["allowed_goals"]["requests"] == len(fresh)  # no deny list: every goal allowed
    assert denied["allowed_goals"]["defects_before"] < r["defects_before"]


def test_privacy_counts_published_texts_holding_an_annotated_address(tmp_path, massive):
    """The truth's e-mail values (MASSIVE's own, spoken) found in published texts, per
    table; a masked text and a one- or two-word value (an annotation slip) are no hit."""
    from selflearn.core.privacy import scrub_utterance
    from selflearn.evaluation.evaluate import pii_metrics

    rec = next(r for r in massive("ru-RU") if "собака gmail точка com" in r["annot_utt"] and r["partition"] == "test")
    value = rec["annot_utt"].split("[email_address : ")[1].split("]")[0]
    truth = pd.DataFrame({"gold_slots": [[{"name": "email_address", "value": value}],
                                         [{"name": "email_address", "value": "мои контакты"}], None]})
    said, masked = normalize_text(rec["utt"]), normalize_text(scrub_utterance(rec["utt"])[0])
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"text": [said, "мои контакты открой"]}).to_parquet(run / "turns")
    pd.DataFrame({"text": [masked]}).to_parquet(run / "training")
    pd.DataFrame({"source": [masked], "target": [said]}).to_parquet(run / "rewrites")
    m = pii_metrics(run, truth)
    assert m["values"] == 1
    assert m["by_table"] == {"rewrites": 1, "training": 0, "turns": 1}
    assert m["published"] == 1 and m["operator"] == 1 and m["examples"]["rewrites"] == [said]
