"""bench/rasa_check.py's comparison: what Rasa read against `training/` (real MASSIVE en-US
alarm records). Every kind of difference is caught and named; an exact read has none."""
from __future__ import annotations

import copy
import re

import pandas as pd

from bench.rasa_check import compare, expected_examples
from selflearn.core.text import normalize_text

_SLOT = re.compile(r"\[\s*([a-z0-9_]+)\s*:\s*([^\]]+?)\s*\]")


def _training(massive) -> pd.DataFrame:
    rows = []
    for r in massive("en-US", 600):
        if r["intent"] == "alarm_set" and len(rows) < 12:
            slots = [{"name": m.group(1), "value": normalize_text(m.group(2))} for m in _SLOT.finditer(r["annot_utt"])]
            rows.append({"locale": "en-US", "text": normalize_text(r["utt"]), "intent": r["intent"], "slots": slots,
                         "weight": 0.9, "split": "dev" if len(rows) % 4 == 0 else "train"})
    return pd.DataFrame(rows).drop_duplicates("text")


def _as_rasa_reads(expected: pd.DataFrame) -> list[dict]:
    out = []
    for r in expected.itertuples(index=False):
        ents = [{"entity": n, "value": v, "start": r.text.find(v), "end": r.text.find(v) + len(v)} for n, v in r.entities]
        out.append({"locale": r.locale, "file": r.file, "text": r.text, "intent": r.intent, "entities": ents})
    return out


def test_an_exact_read_has_no_difference_and_every_kind_of_difference_is_caught(massive):
    expected = expected_examples(_training(massive))
    assert len(expected) >= 8 and sum(map(len, expected["entities"])) >= 8
    assert set(expected["file"]) == {"nlu.yml", "test_nlu.yml"}
    parsed = _as_rasa_reads(expected)
    table, problems = compare(parsed, expected)
    assert problems == [] and table[["expected", "read_by_rasa", "same_intent", "same_entities"]].iloc[0].tolist() == [len(expected)] * 4

    with_ents = [i for i, p in enumerate(parsed) if p["entities"]]
    bad = copy.deepcopy(parsed)
    bad[0]["intent"] = "alarm_query"                      # another intent
    bad[with_ents[1]]["entities"] = bad[with_ents[1]]["entities"][1:]   # an entity lost
    e = bad[with_ents[2]]["entities"][0]
    e["start"], e["end"] = e["start"] + 1, e["end"] + 1   # an entity at the wrong offsets
    missing = bad.pop(3)                                   # an example Rasa did not read
    bad.append({**missing, "text": missing["text"] + " please"})  # one training/ does not hold
    table, problems = compare(bad, expected)
    row = table.iloc[0]
    assert (row["read_by_rasa"], row["same_intent"], row["same_entities"]) == (len(expected) - 1, len(expected) - 2, len(expected) - 3)
    assert len(problems) == 5
    assert any("did not read" in p for p in problems) and any("which training/ does not hold" in p for p in problems)
    assert any("read as intent 'alarm_query'" in p for p in problems)


def test_rows_under_the_min_weight_are_not_expected(massive):
    training = _training(massive)
    training.loc[training.index[:3], "weight"] = 0.2
    assert len(expected_examples(training, 0.5)) == len(training) - 3
