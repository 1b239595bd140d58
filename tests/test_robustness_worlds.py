"""bench/worlds.yaml, the worlds bench/robustness.py runs: every knob is a simulator knob
that moves away from the default (a misspelt or no-op knob would make a row of the table
say something it does not measure), and every world but `defaults` keeps the traps on."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.robustness import load_worlds
from selflearn.simulate import SimConfig

WORLDS = Path(__file__).resolve().parents[1] / "bench" / "worlds.yaml"


def test_every_world_changes_real_knobs_and_keeps_the_traps():
    worlds = load_worlds(WORLDS)
    defaults = SimConfig()
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    assert worlds["defaults"] == {}
    traps = worlds["traps"]
    assert traps and all(getattr(defaults, k) == 0.0 for k in traps)  # off by default
    for name, knobs in worlds.items():
        assert set(knobs) <= fields, (name, set(knobs) - fields)
        assert all(getattr(defaults, k) != v for k, v in knobs.items()), name
        if name != "defaults":
            assert {k: knobs[k] for k in traps} == traps, name
        SimConfig.from_dict(knobs)  # the simulator's own types
