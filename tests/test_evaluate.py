"""The evaluator's metrics on small hand-made inputs."""
import numpy as np
import pandas as pd
import pytest

from selflearn.evaluate import auc, prf, rephrase_metrics


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
