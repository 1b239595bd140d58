"""Operator controls as plain functions: list settings, the controls file, the deny
lists, blocks and pins in the emission rules and the weak labels, the churn measure."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from selflearn.config import ConfigError, Settings, load_settings
from selflearn.core.controls import Controls, load_controls
from selflearn.run.gate import rewrite_churn, rewrite_diff
from selflearn.core.labels import drop_controlled
from selflearn.core.rewrites import published_rewrites, select_rewrites, unmatched_pins


def candidate(**kw):
    row = dict(locale="en-US", source="wake me at five", target="set an alarm for five am", confidence=0.6,
               n_users=5, n_sessions=5, source_defect_rate=0.95, source_n_users=5, target_success_rate=0.97,
               target_n_users=40, evidence="rephrase", served_turns=None, served_defect_rate=None,
               target_intent="alarm_set", target_domain="alarm",
               target_slots_json=json.dumps([{"name": "time", "value": "five am"}]),
               source_cluster_intent=None, source_intent=None, source_domain=None)
    row.update(kw)
    return row


def decide(*rows, controls=None, **settings):
    return select_rewrites(pd.DataFrame(list(rows)), Settings(**settings), controls)["decision"].tolist()


# --- settings -------------------------------------------------------------------------

def test_list_settings_load_from_yaml_and_are_checked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("deny_domains: [iot, alarm]\ndeny_intents: play_music\n")
    s = load_settings(cfg)
    assert s.deny_domains == ("iot", "alarm") and s.deny_intents == ("play_music",)
    assert json.loads(json.dumps(s.to_dict()))["deny_domains"] == ["iot", "alarm"]  # manifest-ready
    cfg.write_text("deny_intents: [1, 2]\n")
    with pytest.raises(ConfigError, match="deny_intents"):
        load_settings(cfg)


def test_default_sensitive_list_holds_risky_massive_intents_and_nothing_is_denied(massive):
    """Every default sensitive intent exists in MASSIVE's label set (no dead entry); the
    deny lists are the operator's, empty by default."""
    intents = {r["intent"] for r in massive("en-US")}
    assert set(Settings().sensitive_intents) <= intents
    assert {"takeaway_order", "transport_ticket", "email_sendemail"} <= set(Settings().sensitive_intents)
    assert Settings().deny_intents == () and Settings().deny_domains == ()
    assert Settings().sensitive_min_users >= Settings().min_users


# --- the controls file ----------------------------------------------------------------

def test_controls_yaml_and_csv_agree(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("block:\n  - {locale: en-US, source: 'Play Maj and Dragons!'}\n"
                 "  - {locale: en-US, source: call mom, target: call tom}\n"
                 "pin:\n  - {locale: en-US, source: wake me at five, target: set an alarm for five am}\n")
    c = tmp_path / "c.csv"
    c.write_text("action,locale,source,target\nblock,en-US,Play Maj and Dragons!,\nblock,en-US,call mom,call tom\n"
                 "pin,en-US,wake me at five,set an alarm for five am\n")
    a, b = load_controls(y), load_controls(c)
    assert a.blocks.fillna("").values.tolist() == b.blocks.fillna("").values.tolist()
    assert a.pins.values.tolist() == b.pins.values.tolist() == [["en-US", "wake me at five", "set an alarm for five am"]]
    assert a.blocks["source"].iloc[0] == "play maj and dragons"  # compared by text key


@pytest.mark.parametrize("text, match", [
    ("pin:\n  - {locale: en-US, source: a}\n", "pin needs a target"),
    ("block:\n  - {source: a}\n", "needs a locale"),
    ("block:\n  - {locale: en-US, source: '?!'}\n", "non-empty source"),
    ("block:\n  - {locale: en-US, source: a, why: x}\n", "unknown field"),
    ("allow:\n  - {locale: en-US, source: a}\n", "top level"),
    ("block: [unclosed\n", "not valid YAML"),
])
def test_invalid_controls_file_is_one_line(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_controls(p)
    assert "\n" not in str(e.value)


def test_invalid_controls_file_stops_the_cli_before_spark(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("action,locale,source,target\nallow,en-US,a,b\n")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"controls_file: '{bad}'\n")
    (tmp_path / "in.jsonl").write_text("")
    r = subprocess.run([sys.executable, "-m", "selflearn.cli", "run", "--input", str(tmp_path / "in.jsonl"),
                        "--output", str(tmp_path / "root"), "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "action must be block or pin" in r.stderr
    assert not (tmp_path / "root").exists()  # nothing started


# --- rules ----------------------------------------------------------------------------

RISKY = ("takeaway_order", "transport_ticket", "transport_taxi", "email_sendemail", "social_post")


def test_denied_target_is_never_rewritten_a_denied_misreading_may_be():
    assert decide(candidate()) == ["emit"]
    to_takeaway = candidate(target_intent="takeaway_order", target_domain="takeaway")
    assert decide(to_takeaway, deny_intents=RISKY) == ["denied"]
    assert decide(candidate(), deny_domains=("alarm",)) == ["denied"]
    assert decide(to_takeaway, deny_intents=()) == ["emit"]
    # a source the NLU misreads as a denied intent (or whose cluster is served as one) is
    # rewritten away from it: that never buys or sends anything ...
    assert decide(candidate(source_intent="email_sendemail", source_domain="email"), deny_intents=RISKY) == ["emit"]
    assert decide(candidate(source_cluster_intent="social_post"), deny_intents=RISKY) == ["emit"]
    assert decide(candidate(source_intent="takeaway_order"), deny_domains=("takeaway",)) == ["emit"]
    # ... but only through every other rule
    assert decide(candidate(source_intent="takeaway_order", source_defect_rate=0.2), deny_intents=RISKY) == ["source_not_defective"]
    assert decide(candidate(source_intent="takeaway_order", n_users=2), deny_intents=RISKY) == ["too_few_users"]


def test_a_sensitive_target_can_need_more_users_and_no_pin_lowers_that():
    """With sensitive_min_users raised, a purchase or a message sent (the default
    sensitive intents) is reached by an exact rewrite of that many users; the same pair to
    a harmless target needs min_users; misreading a sensitive intent is no reason for more."""
    floor = 5
    to_taxi = candidate(target="book a taxi to the airport", target_intent="transport_taxi", target_domain="transport",
                        target_slots_json="[]")
    assert decide({**to_taxi, "n_users": floor}, sensitive_min_users=floor) == ["emit"]
    assert decide({**to_taxi, "n_users": floor - 1}, sensitive_min_users=floor) == ["too_few_users_sensitive"]
    assert decide({**to_taxi, "n_users": floor - 1}, sensitive_min_users=floor, sensitive_intents=()) == ["emit"]
    assert decide({**to_taxi, "n_users": 3, "target_intent": "alarm_set", "target_domain": "alarm"}, sensitive_min_users=floor,
                  sensitive_domains=("alarm",)) == ["too_few_users_sensitive"]
    assert decide(candidate(n_users=3, source_intent="transport_taxi"), sensitive_min_users=floor) == ["emit"]
    assert decide({**to_taxi, "n_users": 3}) == ["emit"]  # the default floor is min_users
    # never below min_users, whatever sensitive_min_users says
    assert decide({**to_taxi, "n_users": 3}, sensitive_min_users=1, min_users=4) == ["too_few_users"]
    pin = Controls(pins=pd.DataFrame([("en-US", "wake me at five", "book a taxi to the airport")], columns=["locale", "source", "target"]))
    assert decide({**to_taxi, "n_users": floor - 1, "source_defect_rate": 0.3}, controls=pin, sensitive_min_users=floor) \
        == ["too_few_users_sensitive"]
    assert decide({**to_taxi, "n_users": floor, "source_defect_rate": 0.3}, controls=pin, sensitive_min_users=floor) == ["emit"]


def test_a_value_change_into_a_sensitive_target_rests_on_the_sources_own_users():
    """A misheard city corrected into a ticket purchase needs sensitive_min_users users
    whose sessions went from the source itself; the users of its paraphrase mates (who
    said other cities) do not count. Without a value change, or to a harmless target, the
    mates' users count as usual."""
    to_pune = candidate(source="a rail ticket from ahmedabad to mumbai", target="a rail ticket from ahmedabad to pune",
                        target_intent="transport_ticket", target_domain="transport", evidence="both",
                        target_slots_json=json.dumps([{"name": "place_name", "value": "ahmedabad"},
                                                      {"name": "place_name", "value": "pune"}]),
                        n_users=178, n_source_users=2)
    assert decide(to_pune) == ["sensitive_value_change"]
    assert decide({**to_pune, "n_source_users": 3}) == ["emit"]
    assert decide({**to_pune, "n_source_users": 3}, sensitive_min_users=5) == ["sensitive_value_change"]
    same_values = {**to_pune, "target": "book a rail ticket from ahmedabad to mumbai",
                   "target_slots_json": json.dumps([{"name": "place_name", "value": "mumbai"}])}
    assert decide(same_values) == ["emit"]
    assert decide({**to_pune, "target_intent": "weather_query", "target_domain": "weather"}) == ["emit"]
    assert decide(to_pune, sensitive_intents=()) == ["emit"]
    pin = Controls(pins=pd.DataFrame([("en-US", to_pune["source"], to_pune["target"])], columns=["locale", "source", "target"]))
    assert decide(to_pune, controls=pin) == ["sensitive_value_change"]


def test_blocks_and_pins():
    blocks = pd.DataFrame([("en-US", "wake me at five", None)], columns=["locale", "source", "target"])
    assert decide(candidate(), controls=Controls(blocks=blocks)) == ["blocked"]
    pair = pd.DataFrame([("en-US", "wake me at five", "set an alarm for five am")], columns=["locale", "source", "target"])
    assert decide(candidate(), controls=Controls(blocks=pair)) == ["blocked"]
    assert decide(candidate(target="other"), controls=Controls(blocks=pair)) == ["emit"]  # a pair block is that pair only
    pins = Controls(pins=pair)
    # a pin overrides the statistical rules ...
    weak = candidate(source_defect_rate=0.3, target_n_users=3, target_success_rate=0.7, confidence=0.1,
                     served_turns=8, served_defect_rate=0.9)
    assert decide(weak) == ["source_not_defective"]
    assert decide(weak, controls=pins) == ["emit"]
    # ... never the privacy floor, the deny list or a block
    assert decide(candidate(n_users=2), controls=pins) == ["too_few_users"]
    assert decide(candidate(target_intent="takeaway_order"), controls=pins, deny_intents=RISKY) == ["denied"]
    assert decide(candidate(), controls=Controls(blocks=pair, pins=pair)) == ["blocked"]
    # another target for a pinned source is not emitted
    assert decide(candidate(target="set an alarm for six am"), controls=pins) == ["pinned_elsewhere"]
    decided = select_rewrites(pd.DataFrame([candidate(target="x")]), Settings(), pins)
    assert unmatched_pins(decided, pins) == 1
    assert unmatched_pins(select_rewrites(pd.DataFrame([candidate()]), Settings(), pins), pins) == 0


def test_labels_drop_denied_interpretations_and_blocked_sources():
    rows = pd.DataFrame([
        ("en-US", "wake me at five", "alarm_set", "alarm", [], 0.9, "rewrite", "train"),
        ("en-US", "order me a pizza", "takeaway_order", "takeaway", [], 0.9, "paraphrase", "train"),
        ("en-US", "turn the lights off", "iot_hue_lightoff", "iot", [], 0.9, "paraphrase", "train"),
    ], columns=["locale", "text", "intent", "domain", "slots", "weight", "label_source", "split"])
    assert drop_controlled(rows, Settings(deny_intents=RISKY))["text"].tolist() == ["wake me at five", "turn the lights off"]
    assert drop_controlled(rows, Settings(deny_intents=RISKY, deny_domains=("iot",)))["text"].tolist() == ["wake me at five"]
    # a sensitive intent is labeled (a label makes the NLU understand, it acts on nothing)
    assert len(drop_controlled(rows, Settings())) == 3
    blocks = pd.DataFrame([("en-US", "wake me at five", None)], columns=["locale", "source", "target"])
    assert drop_controlled(rows, Settings(), Controls(blocks=blocks))["text"].tolist() == ["order me a pizza", "turn the lights off"]


# --- churn ----------------------------------------------------------------------------

def test_rewrite_diff_and_churn_by_hand():
    prev = published_rewrites(select_rewrites(pd.DataFrame([
        candidate(source="a", target="t"), candidate(source="b", target="t"), candidate(source="c", target="t")]), Settings()))
    cur = published_rewrites(select_rewrites(pd.DataFrame([
        candidate(source="a", target="t", confidence=0.7), candidate(source="b", target="u"),
        candidate(source="d", target="t")]), Settings()))
    d = rewrite_diff(prev, cur)
    assert d["added"][["source", "target"]].values.tolist() == [["b", "u"], ["d", "t"]]
    assert d["removed"][["source", "target"]].values.tolist() == [["b", "t"], ["c", "t"]]
    assert d["changed"][["source", "confidence_prev", "confidence"]].values.tolist() == [["a", 0.6, 0.7]]
    c = rewrite_churn(prev, cur)
    assert (c["added"], c["removed"], c["kept"], c["churn"]) == (2, 2, 1, 0.8)
    pins = pd.DataFrame([("en-US", "d", "t"), ("en-US", "c", "t")], columns=["locale", "source", "target"])
    assert rewrite_churn(prev, cur, pins)["churn"] == pytest.approx(2 / 3, abs=1e-6)  # pins left out
    assert rewrite_churn(None, cur)["churn"] == 1.0 and rewrite_churn(None, cur.iloc[:0])["churn"] == 0.0
