"""bench/nlu_gain.py's breakdown: a training row's key is traced back to the world's phrasing it fills."""
from __future__ import annotations

from bench.nlu_gain import template_matchers
from selflearn.simulate import SimConfig, World


def test_a_fill_of_a_phrasing_with_other_values_is_traced_to_that_phrasing():
    world = World.build(SimConfig(users=10, locales=("en-US",), seed=0))
    matchers = dict(template_matchers(world, "en-US"))
    checked = 0
    for g in world.goals:
        if not g["slots"] or g["mishear_value"] is not None:
            continue
        for tid in world.frames[g["frame_id"]]:
            t = world.templates[tid]
            if tid not in matchers or not any(k for k, _ in t["parts"]):
                continue
            key = world.render_key(g, t, False)  # this goal's values, not the template's source values
            assert matchers[tid].fullmatch(key), (t["parts"], key)
            found = [other for other, rx in matchers.items() if rx.fullmatch(key)]
            # another phrasing matching too must share the intent or be a collision's borrowed carrier
            assert tid in found
            checked += 1
        if checked >= 200:
            break
    assert checked >= 200
    # a phrasing with no slots matches only its own text
    plain = next(t for t in world.templates if not any(k for k, _ in t["parts"]) and t["tid"] in matchers)
    assert not matchers[plain["tid"]].fullmatch(world.templates[0]["src_utt"].lower() + " extra words")


def test_the_lookup_table_reads_a_carrier_phrase_with_other_values_and_leaves_the_rest_to_the_classifier():
    import numpy as np
    import pandas as pd

    from bench.nlu_gain import _lookup
    from selflearn.core.text import normalize_text

    world = World.build(SimConfig(users=10, locales=("en-US",), seed=0))
    # two goals of one one-slot frame, said with the same phrasing: one is a training row
    for t in world.templates:
        if sum(k for k, _ in t["parts"]) != 1 or sum(len(p) for k, p in t["parts"] if not k) < 8:
            continue
        goals = [g for g in world.goals if g["frame_id"] == t["frame_id"] and g["mishear_value"] is None]
        if len(goals) >= 2 and goals[0]["slots"][0][1] != goals[1]["slots"][0][1]:
            break
    row_key, other_key = (world.render_key(g, t, False) for g in goals[:2])
    name, value = goals[0]["slots"][0]
    rows = pd.DataFrame({"text": [row_key], "intent": [t["intent"]],
                         "slots": [[{"name": name, "value": normalize_text(value)}]]})
    unrelated = world.templates[0]["src_utt"].lower() + " please"
    got = _lookup(rows, [row_key, other_key, unrelated], np.array(["x", "x", "x"], dtype=object))
    assert list(got) == [t["intent"], t["intent"], "x"]


def test_both_trainers_take_the_rows_weights():
    # one text labelled twice: the heavier label wins, for the logistic regression and the MLP
    # alike (a trainer that dropped `weight` would split 50/50 and follow the neighbours)
    import numpy as np

    from bench.nlu_gain import _train

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16), rng.normal(size=16)
    x = np.vstack([a + 0.05 * rng.normal(size=(20, 16)), b + 0.05 * rng.normal(size=(20, 16)), [a + b] * 2])
    y = np.array(["alarm_set"] * 20 + ["play_music"] * 20 + ["alarm_set", "play_music"], dtype=object)
    for heavy in ("alarm_set", "play_music"):
        w = np.ones(len(y))
        w[-2:] = [50.0, 1.0] if heavy == "alarm_set" else [1.0, 50.0]
        for kind in ("lr", "mlp"):
            predict = _train(x, y, w, 10.0, model_kind=kind)
            assert predict(np.array([a + b]))[0] == heavy, (kind, heavy)
            assert predict(np.array([a]))[0] == "alarm_set" and predict(np.array([b]))[0] == "play_music"
