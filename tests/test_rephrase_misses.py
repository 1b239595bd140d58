"""bench/rephrase_misses.py: a missed re-ask is put down to the first part of the score that
turned it down, with the run's own settings as the bounds."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from bench.rephrase_misses import label_pairs, miss_bucket
from selflearn.config import Settings


def _pairs(**cols):
    n = len(next(iter(cols.values())))
    base = {"meaning_z": [5.0] * n, "similarity": [0.8] * n, "next_intent_rank": [0.0] * n,
            "gap_s": [5.0] * n, "defect_prob": [0.9] * n,
            "system_act": [None] * n, "own_defect_prob": [0.9] * n, "slots_changed": [0.0] * n}
    base.update(cols)
    return pd.DataFrame(base)


def test_each_missed_reask_gets_the_first_reason_in_order():
    m = Settings().rephrase_model
    low_z, low_sim = m.unrelated_max_meaning_z - 0.1, m.unrelated_max_similarity - 0.05
    p = _pairs(
        meaning_z=[low_z, low_z, 1.0 + m.unrelated_max_meaning_z, 5.0, 5.0, 5.0, np.nan],
        similarity=[low_sim, low_sim, low_sim, 0.8, 0.8, 0.8, low_sim],
        next_intent_rank=[9.0, 0.0, float(m.other_intent_min_rank), 0.0, 0.0, 0.0, 0.0],
        system_act=[None, None, None, "elicit", None, None, None],
        own_defect_prob=[0.9, 0.9, 0.9, 0.1, 0.1, 0.9, 0.9],
        slots_changed=[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0],
    )
    got = miss_bucket(p, m).tolist()
    # the unrelated veto wins over the other-intent one; no meaning (NaN) means no veto
    assert got == ["veto_unrelated", "veto_unrelated", "veto_other_intent", "veto_elicit",
                   "first_looks_fine", "slots_changed", "below_threshold"]


def test_the_bounds_are_the_settings_not_constants():
    p = _pairs(meaning_z=[2.0], similarity=[0.2])
    strict = dataclasses.replace(Settings().rephrase_model, unrelated_max_meaning_z=1.0)
    loose = dataclasses.replace(Settings().rephrase_model, unrelated_max_meaning_z=3.0)
    assert miss_bucket(p, strict).tolist() == ["below_threshold"]
    assert miss_bucket(p, loose).tolist() == ["veto_unrelated"]


def test_truth_is_the_next_turn_reasking_this_one():
    enriched = pd.DataFrame({"event_id": ["a", "b", "c"], "next_event_id": ["b", "c", None]})
    truth = pd.DataFrame({"event_id": ["a", "b", "c"], "rephrase_of": [None, "a", "a"]})
    got = label_pairs(enriched, truth)
    assert got["event_id"].tolist() == ["a", "b"] and got["truth"].tolist() == [True, False]
