"""Tests of the log simulator (selflearn.simulate). Small user counts keep them fast."""
from __future__ import annotations

import hashlib
import json
import os
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selflearn.simulate import LOG_SCHEMA, TRUTH_SCHEMA, SimConfig, World, simulate
from selflearn.simulate.config import resolve_data_dir
from selflearn.core.text import normalize_text

DATA = resolve_data_dir()  # the real data must be there: no silent skip

REASONS = {"missing_field", "bad_timestamp", "bad_locale", "empty_utterance",
           "utterance_too_long", "unknown_status", "duplicate_event_id", "bad_type"}


def _digest(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in sorted(files):
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sim") / "out")
    s = simulate(d, users=360, seed=0)  # default locales and knobs
    log = pd.concat([pd.read_parquet(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(d, "log"))
                     for f in fs if f.endswith(".parquet")], ignore_index=True)
    truth = pd.read_parquet(os.path.join(d, "truth.parquet"))
    return d, s, log, truth


def test_determinism(tmp_path):
    kw = dict(users=60, locales=["en-US", "ja-JP"], max_goals_per_locale=400)
    simulate(str(tmp_path / "a"), seed=3, **kw)
    simulate(str(tmp_path / "b"), seed=3, **kw)
    simulate(str(tmp_path / "c"), seed=4, **kw)
    a, b, c = (_digest(str(tmp_path / x)) for x in "abc")
    assert a == b
    assert a != c
    # rerun into an existing simulation dir replaces it atomically
    simulate(str(tmp_path / "a"), seed=3, **kw)
    assert _digest(str(tmp_path / "a")) == b


def test_log_files_and_types(sim):
    d, s, log, _ = sim
    parts = sorted(os.listdir(os.path.join(d, "log")))
    assert parts and all(re.fullmatch(r"dt=\d{4}-\d{2}-\d{2}", p) for p in parts)
    for p in parts:
        files = os.listdir(os.path.join(d, "log", p))
        assert 1 <= len(files) <= 4
        for f in files:
            sch = pq.read_schema(os.path.join(d, "log", p, f))
            assert [(x.name, x.type) for x in sch] == [(x.name, x.type) for x in LOG_SCHEMA]
    t = LOG_SCHEMA.field("ts").type
    assert t.unit == "us" and t.tz == "UTC"
    assert LOG_SCHEMA.field("feedback").type == pa.int8()
    assert LOG_SCHEMA.field("nlu_slots").type == pa.list_(
        pa.struct([("name", pa.string()), ("value", pa.string())]))
    sch = pq.read_schema(os.path.join(d, "truth.parquet"))
    assert [(x.name, x.type) for x in sch] == [(x.name, x.type) for x in TRUTH_SCHEMA]
    assert len(log) == s["rows"]
    share_sid = log["session_id"].notna().mean()
    assert 0.05 < share_sid < 0.5
    assert log["rewritten_from"].isna().all()
    assert log["feedback"].isna().mean() > 0.7
    assert set(log["response_status"]) >= {"success", "error", "unhandled"}
    assert set(log["locale"]) >= set(SimConfig().locales)


def test_truth_rephrase_chains(sim):
    _, _, log, truth = sim
    good = log.drop_duplicates("event_id").set_index("event_id")
    assert truth["event_id"].is_unique
    assert set(truth["event_id"]) <= set(good.index)
    tr = truth.set_index("event_id")
    # the immediately preceding turn of the same user and device
    lg = good.loc[tr.index].reset_index().sort_values(["user_id", "device_id", "ts", "event_id"])
    lg["prev"] = lg.groupby(["user_id", "device_id"])["event_id"].shift()
    lg["prev_ts"] = lg.groupby(["user_id", "device_id"])["ts"].shift()
    lg = lg.set_index("event_id")
    r = tr[tr["rephrase_of"].notna()]
    assert len(r) > 100
    assert (lg.loc[r.index, "prev"] == r["rephrase_of"]).all()
    gap = (lg.loc[r.index, "ts"] - lg.loc[r.index, "prev_ts"]).dt.total_seconds()
    assert ((gap >= 2) & (gap <= 20)).all()
    assert tr.loc[r["rephrase_of"], "is_defect"].all()
    assert (tr.loc[r["rephrase_of"], "goal_id"].values == r["goal_id"].values).all()
    sid = lg.loc[r.index, "session_id"]
    psid = lg.loc[r["rephrase_of"], "session_id"]
    assert (sid.fillna("").values == psid.fillna("").values).all()
    # session cut by 300 s agrees: sessions are separated by far more
    lg2 = lg.sort_values(["user_id", "device_id", "ts"])
    g = (lg2["ts"] - lg2["prev_ts"]).dt.total_seconds()
    assert not ((g > 120) & (g < 600)).any()


def test_realism_shares(sim):
    _, s, log, truth = sim
    assert s["silent_defect_share"] >= 0.30
    assert s["give_up_share"] >= 0.20
    # recompute from the files
    m = truth.merge(log.drop_duplicates("event_id")[["event_id", "response_status", "user_id"]])
    m = m[m["user_id"] != s["flood"]["user_id"]]
    d = m[m["is_defect"]]
    assert (d["response_status"] == "success").mean() >= 0.30
    assert not (m.loc[~m["is_defect"], "response_status"] != "success").any()
    nxt = set(truth["rephrase_of"].dropna())
    ends = m[~m["event_id"].isin(nxt)]  # last turn of each goal attempt chain
    heads = {}
    tr = truth.set_index("event_id")["rephrase_of"].to_dict()
    failed, gave_up = 0, 0
    defect = truth.set_index("event_id")["is_defect"].to_dict()
    for eid, dfc in zip(ends["event_id"], ends["is_defect"]):
        chain = [eid]
        while tr.get(chain[-1]) is not None:
            chain.append(tr[chain[-1]])
        if any(defect[x] for x in chain):
            failed += 1
            gave_up += bool(dfc)
    assert failed > 0 and gave_up / failed >= 0.20
    # signals are informative but noisy
    lm = log.drop_duplicates("event_id").merge(truth[["event_id", "is_defect"]])
    bd = lm.groupby("is_defect")["barge_in"].mean()
    assert bd[True] > 0.4 and bd[False] < 0.1
    dw = lm.groupby("is_defect")["dwell_ms"].median()
    assert dw[True] < dw[False]


def test_malformed_rows(sim):
    _, s, log, truth = sim
    mal = s["malformed"]
    assert {m["reason"] for m in mal} == REASONS
    assert json.load(open(os.path.join(sim[0], "summary.json")))["malformed"] == mal
    tids = set(truth["event_id"])
    for m in mal:
        rows = log[log["event_id"] == m["event_id"]]
        if m["reason"] == "duplicate_event_id":
            assert len(rows) == 2 and m["event_id"] in tids
            a, b = rows.iloc[0], rows.iloc[1]
            assert a.astype(str).equals(b.astype(str))
            continue
        assert len(rows) == 1 and m["event_id"] not in tids
        r = rows.iloc[0]
        if m["reason"] == "missing_field":
            assert pd.isna(r["user_id"]) or pd.isna(r["utterance"])
        elif m["reason"] == "bad_timestamp":
            assert r["ts"].year < 2000 or r["ts"].year > 2090
        elif m["reason"] == "bad_locale":
            assert not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", r["locale"])
        elif m["reason"] == "empty_utterance":
            assert r["utterance"].strip() == ""
        elif m["reason"] == "utterance_too_long":
            assert len(r["utterance"]) > 1000
        elif m["reason"] == "unknown_status":
            assert r["response_status"] not in ("success", "error", "unhandled")
        elif m["reason"] == "bad_type":
            assert r["asr_confidence"] > 1 or r["feedback"] not in (-1, 0, 1)


def test_flood_pair(sim):
    d, s, log, truth = sim
    f = s["flood"]
    w = World.load(d)
    assert w.flood_pairs() == [(f["locale"], f["source_text"], f["target_text"])]
    fl = log[log["user_id"] == f["user_id"]].sort_values(["ts", "event_id"])
    assert (fl["utterance"] == f["source_text"]).sum() == f["repeats"] >= 300
    assert (fl["utterance"] == f["target_text"]).sum() == f["repeats"]
    src = fl[fl["utterance"] == f["source_text"]]
    assert (src["response_status"] != "success").all()
    assert (fl[fl["utterance"] == f["target_text"]]["response_status"] == "success").all()
    assert truth[truth["event_id"].isin(fl["event_id"])]["rephrase_of"].isna().all()
    assert w.interpret(f["locale"], f["source_text"]) is None
    assert w.interpret(f["locale"], f["target_text"]) is not None
    assert os.path.exists(os.path.join(d, "world", "world.json"))


def test_world_consistent_with_log(sim):
    d, s, log, truth = sim
    w = World.load(d)
    m = log.drop_duplicates("event_id").merge(truth, on="event_id")
    m = m[m["user_id"] != s["flood"]["user_id"]]
    good = m[~m["is_defect"]].sample(n=min(800, (~m["is_defect"]).sum()), random_state=0)
    for loc, utt, gid, intent in zip(good["locale"], good["utterance"], good["goal_id"], good["nlu_intent"]):
        assert w.serves(loc, utt, gid)
        assert w.serves(loc, normalize_text(utt), gid)
        assert w.interpret(loc, utt)["intent"] == intent
    unh = m[m["response_status"] == "unhandled"].head(300)
    for loc, utt, gid in zip(unh["locale"], unh["utterance"], unh["goal_id"]):
        assert w.interpret(loc, utt) is None and not w.serves(loc, utt, gid)
    silent = m[m["is_defect"] & (m["response_status"] == "success")].head(300)
    for loc, utt, gid in zip(silent["locale"], silent["utterance"], silent["goal_id"]):
        assert w.interpret(loc, utt) is not None and not w.serves(loc, utt, gid)
    # logged NLU output is the world's interpretation
    sample = m[m["nlu_intent"].notna()].head(300)
    for loc, utt, sl in zip(sample["locale"], sample["utterance"], sample["nlu_slots"]):
        assert [dict(x) for x in sl] == w.interpret(loc, utt)["slots"]


def test_fresh_traffic(sim):
    d, s, log, truth = sim
    w = World.load(d)
    ft = w.fresh_traffic(500, seed=11)
    assert len(ft) == 500
    assert {"locale", "goal_id", "gold_intent", "gold_slots", "utterance"} <= set(ft.columns)
    assert ft.equals(w.fresh_traffic(500, seed=11))
    assert not ft.equals(w.fresh_traffic(500, seed=12))
    served = [w.serves(l, u, g) for l, u, g in zip(ft["locale"], ft["utterance"], ft["goal_id"])]
    assert 0.4 < sum(served) / len(ft) < 0.95  # some first attempts fail
    assert set(ft["goal_id"]) & set(truth["goal_id"])
    assert ft["misheard"].any()
    assert not any(w.serves(l, u, g) for l, u, g, mm in
                   zip(ft["locale"], ft["utterance"], ft["goal_id"], ft["misheard"]) if mm)


def test_texts_come_from_massive(sim):
    d, s, log, truth = sim
    w = World.load(d)
    utts = {t["src_utt"] for t in w.templates}
    f = s["flood"]
    assert f["source_text"] in utts and f["target_text"] in utts
    lg = log.drop_duplicates("event_id").merge(truth, on="event_id")
    # a large share of logged utterances are verbatim MASSIVE utterances
    assert lg["utterance"].isin(utts).mean() > 0.05


def test_normalize_matches_contract():
    assert normalize_text("  Don\u2019t STOP!! it's 'quoted' 5:00 p.m. \uff21B ") == \
        "don't stop it's quoted 5 00 p m ab"


def test_traps(tmp_path):
    """Each trap knob (off by default) produces its dialogues, labelled in truth `trap`,
    all negatives, at a re-ask's gap; system acts on the chosen share of users."""
    kw = dict(users=60, locales=["en-US", "de-DE"], max_goals_per_locale=400, seed=5)
    s = simulate(str(tmp_path / "t"), topic_switch_prob=0.3, follow_up_prob=0.3, elicit_prob=0.3,
                 restate_prob=0.2, system_act_share=0.5, **kw)
    log = pd.read_parquet(tmp_path / "t" / "log")
    truth = pd.read_parquet(tmp_path / "t" / "truth.parquet")
    assert all(s["traps"][k] > 0 for k in ("topic_switch", "follow_up", "elicit", "restate"))
    assert s["traps"]["value_change"] == 0
    assert set(truth["trap"].dropna()) == {"topic_switch", "follow_up", "elicit", "restate"}
    assert truth.loc[truth["trap"].notna(), "rephrase_of"].isna().all()
    m = log.drop_duplicates("event_id").merge(truth, on="event_id").sort_values(["user_id", "ts"])  # no planted copies
    m["prev_ts"] = m.groupby("user_id")["ts"].shift()
    m["prev_act"] = m.groupby("user_id")["system_act"].shift()
    m["prev_goal"] = m.groupby("user_id")["goal_id"].shift()
    gap = (m["ts"] - m["prev_ts"]).dt.total_seconds()
    lo, hi = SimConfig().retry_gap_s
    for trap in ("follow_up", "elicit", "restate"):
        assert gap[m["trap"] == trap].between(lo - 1e-3, hi + 1e-3).all(), gap[m["trap"] == trap].describe()
    # a restatement: the same goal again right after it was served, in the same or in other words
    m["prev_status"] = m.groupby("user_id")["response_status"].shift()
    m["prev_text"] = m.groupby("user_id")["utterance"].shift()
    restated = m[m["trap"] == "restate"]
    assert (restated["goal_id"] == restated["prev_goal"]).all() and (restated["prev_status"] == "success").all()
    same_words = (restated["utterance"] == restated["prev_text"]).mean()
    assert 0.1 < same_words < 0.9, same_words
    answers = m[m["trap"] == "elicit"]
    assert (answers["goal_id"] == answers["prev_goal"]).all() and (answers["response_status"] == "success").all()
    acts = answers["prev_act"].dropna()
    assert len(acts) and (acts == "elicit").all()
    assert set(log["system_act"].dropna()) == {"inform", "reprompt", "elicit"}
    assert (log.loc[log["system_act"] == "reprompt", "response_status"] == "unhandled").all()
    users_with_acts = log.groupby("user_id")["system_act"].apply(lambda a: a.notna().any())
    assert 0.25 < users_with_acts.mean() < 0.75
    off = simulate(str(tmp_path / "off"), **kw)
    assert off["traps"] == {"topic_switch": 0, "follow_up": 0, "elicit": 0, "value_change": 0, "restate": 0}
    assert pd.read_parquet(tmp_path / "off" / "log")["system_act"].isna().all()


@pytest.mark.parametrize("alike", [True, False])
def test_value_change_trap_asks_the_same_frame_with_one_value_changed_after_a_failure(tmp_path, alike):
    """value_change_prob: after a goal that failed to the end, the same frame at once with
    one slot value changed to an alike one (the trap value corrections must not learn), or
    with value_change_alike False to an unlike one."""
    import difflib

    from selflearn.simulate import World

    kw = dict(users=80, locales=["en-US", "de-DE"], max_goals_per_locale=400, seed=5)
    s = simulate(str(tmp_path / "v"), value_change_prob=1.0, value_change_alike=alike, **kw)
    assert s["traps"]["value_change"] > 0
    log = pd.read_parquet(tmp_path / "v" / "log")
    truth = pd.read_parquet(tmp_path / "v" / "truth.parquet")
    world = World.load(str(tmp_path / "v"))
    goal = {g["goal_id"]: g for g in world.goals}
    m = log.drop_duplicates("event_id").merge(truth, on="event_id").sort_values(["user_id", "ts"])
    m["prev_goal"], m["prev_defect"] = m.groupby("user_id")["goal_id"].shift(), m.groupby("user_id")["is_defect"].shift()
    gap = (m["ts"] - m.groupby("user_id")["ts"].shift()).dt.total_seconds()
    changed = m[m["trap"] == "value_change"]
    assert len(changed) and changed["rephrase_of"].isna().all() and changed["prev_defect"].astype(bool).all()
    lo, hi = SimConfig().retry_gap_s
    assert gap[changed.index].between(lo - 1e-3, hi + 1e-3).all()
    for new, old in zip(changed["goal_id"], changed["prev_goal"]):
        a, b = goal[old], goal[new]
        assert a["frame_id"] == b["frame_id"] and a["goal_id"] != b["goal_id"]
        diff = [(x[1], y[1]) for x, y in zip(a["slots"], b["slots"]) if x != y]
        ratio = difflib.SequenceMatcher(None, *diff[0], autojunk=False).ratio()
        assert len(diff) == 1 and (ratio > 0.5 if alike else ratio < 0.5)


def test_unseen_goals_are_never_in_the_log_and_come_in_fresh_traffic(sim):
    d, s, log, truth = sim
    w = World.load(d)
    unseen = {g["goal_id"] for g in w.goals if g["unseen"]}
    assert 0.1 < len(unseen) / len(w.goals) < 0.3  # unseen_goal_share 0.2
    assert not unseen & set(truth["goal_id"])
    ft = w.fresh_traffic(2000, seed=11)
    assert ft["unseen_goal"].any() and set(ft.loc[ft["unseen_goal"], "goal_id"]) <= unseen
    assert not set(ft.loc[~ft["unseen_goal"], "goal_id"]) & unseen


def test_colliding_carrier_phrases():
    """collide_frame_share: a frame's extra phrasing is another intent's understood
    carrier phrase; the NLU does not understand it for this frame's goals."""
    w = World.build(SimConfig(users=10, locales=("en-US",), collide_frame_share=0.3, seed=0))
    collided = [t for t in w.templates if t.get("collides_with")]
    assert collided
    for t in collided:
        assert not t["supported"] and t["confused_intent"] is None
        donor_frame = t["collides_with"]
        assert donor_frame.split(":")[1] != t["intent"]
        literal = [p for k, p in t["parts"] if not k]
        assert any(t2["supported"] and [p for k, p in t2["parts"] if not k] == literal for t2 in
                   (w.templates[i] for i in w.frames[donor_frame]))
        for gi in w.goals_by_intent[("en-US", t["intent"])][:20]:
            g = w.goals[gi]
            if g["frame_id"] == t["frame_id"]:
                text, _ = w.render(g, t, False)
                assert not w.serves("en-US", text, g["goal_id"])
    off = World.build(SimConfig(users=10, locales=("en-US",), collide_frame_share=0.0, seed=0))
    assert not [t for t in off.templates if t.get("collides_with")]
