"""DSTC2 (dialog bAbI task 6) -> contract log + re-ask labels, on the real test file and on a
hand-checked snippet of it."""
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from selflearn.evaluation import dstc2
from selflearn.schema import arrow_schema

DATA = (Path(__file__).resolve().parents[2] / "shared" / "data" / "dstc2_babi_task6"
        / "dialog-babi-task6-dstc2-tst.txt")

# The first dialogue of the test file, verbatim (KB lines shortened to a few).
SNIPPET = """\
1 <SILENCE>\tHello , welcome to the Cambridge restaurant system . You can ask for restaurants by area , price range or food type . How may I help you ?
2 <SILENCE>\tWhat kind of food would you like?
3 persian restaurant in the north part of town\tI'm sorry but there is no restaurant serving persian food
4 chinese food\tCould you please repeat that?
5 chinese food\tDid you say you are looking for a restaurant in the north of town?
6 yes\tThere are restaurants serving chinese in the north of town . What price range would you like?
7 any\tapi_call chinese north R_price
8 the_hotpot R_post_code the_hotpot_post_code
9 the_hotpot R_cuisine chinese
10 <SILENCE>\tthe_hotpot is a nice place in the north of town serving tasty chinese food
11 phone number\tgolden_wok is a great restaurant
12 phone number\tThe phone number of golden_wok is golden_wok_phone
13 thank you good bye\t you are welcome

1 <SILENCE>\tHello , welcome to the Cambridge restaurant system . You can ask for restaurants by area , price range or food type . How may I help you ?
2 north\tDid you say you are looking for a restaurant in the south of town?
3 no north\tThere are restaurants in the north of town . What type of food would you like?
4 cheap\tSorry, I can't hear you
5 <SILENCE>\tCould you please repeat that?
6 cheap food\tWhat kind of food would you like?
7 italian\tYou are looking for a italian restaurant right?
8 no\tWhat kind of food would you like?
9 thai\tCould you please repeat that?
10 <SILENCE>\tWhat kind of food would you like?
11 thai food\t you are welcome
"""


def read(path):
    return pq.read_table(path)


@pytest.fixture(scope="module")
def snippet(tmp_path_factory):
    d = tmp_path_factory.mktemp("dstc2")
    src = d / "dialog-babi-task6-dstc2-tst.txt"
    src.write_text(SNIPPET, encoding="utf-8")
    return dstc2.convert(src, d / "out"), dstc2.convert(src, d / "blind", blinded=True)


def test_snippet_log(snippet):
    conv, _ = snippet
    log = read(conv["log"])
    assert log.schema == arrow_schema("log")
    df = log.to_pandas()
    assert len(df) == 8 + 8 == conv["turns"]  # the non-silent user turns
    assert df["event_id"].is_unique
    assert df["session_id"].nunique() == 2 and (df["session_id"] == df["user_id"]).all()
    assert (df["locale"] == "en-US").all() and df["barge_in"].isna().all()
    assert df["feedback"].isna().all() and df["dwell_ms"].isna().all()
    by_text = df.set_index("event_id")
    first = "dstc2-tst-0000-"
    assert by_text.loc[first + "003", "utterance"] == "persian restaurant in the north part of town"
    # "no restaurant serving persian food": understood and searched -> success
    assert by_text.loc[first + "003", "response_status"] == "success"
    assert by_text.loc[first + "004", "response_status"] == "unhandled"  # Could you please repeat that?
    assert pd.isna(by_text.loc[first + "004", "nlu_intent"])
    assert by_text.loc[first + "005", "response_status"] == "success"    # Did you say ...?
    assert by_text.loc[first + "005", "nlu_confidence"] < by_text.loc[first + "006", "nlu_confidence"]
    assert by_text.loc["dstc2-tst-0001-004", "response_status"] == "unhandled"  # Sorry, I can't hear you
    # synthetic time: the same spacing between every pair of user turns, sessions apart
    gaps = df.groupby("session_id")["ts"].diff().dropna().dt.total_seconds()
    assert (gaps == dstc2.TURN_SPACING_S).all()
    assert df.groupby("session_id")["ts"].min().diff().dropna().dt.total_seconds().iloc[0] >= 600


def test_snippet_labels(snippet):
    conv, _ = snippet
    labels = read(conv["labels"]).to_pandas()
    got = {(a[-3:], b[-3:]) if a.startswith("dstc2-tst-0000") else ("1:" + a[-3:], b[-3:]): (r, w)
           for a, b, r, w in labels[["first_event_id", "second_event_id", "is_reask", "reworded"]].itertuples(index=False)}
    assert got == {
        ("003", "004"): (False, True),   # persian (no such restaurant) -> new request chinese
        ("004", "005"): (True, False),   # chinese food / repeat that? / chinese food
        ("005", "006"): (False, True),   # Did you say north? -> yes
        ("006", "007"): (False, True),
        ("007", "011"): (False, True),   # across KB lines and a silent turn
        ("011", "012"): (True, False),   # phone number / "golden_wok is a great restaurant" (no phone) / again: unanswered
        ("012", "013"): (False, True),
        ("1:002", "003"): (True, True),  # Did you say south? -> "no north": correction
        ("1:003", "004"): (False, True),
        ("1:004", "006"): (True, True),  # can't hear you, silence, repeat that -> still re-asking
        ("1:006", "007"): (False, True),
        ("1:007", "008"): (False, True),  # confirmation denied with a bare "no": not a restatement
        ("1:008", "009"): (False, True),
        ("1:009", "011"): (False, True),  # repeat that, silence, system moved on -> not a re-ask
    }
    kinds = labels.set_index("first_event_id")["reask_kind"]
    assert kinds["dstc2-tst-0000-004"] == "not_understood" and kinds["dstc2-tst-0001-002"] == "correction"
    assert kinds["dstc2-tst-0000-011"] == "unanswered"
    assert conv["pairs"] == len(labels) == 14 and conv["reask"] == 4


def test_snippet_blinded(snippet):
    conv, blind = snippet
    df = read(blind["log"]).to_pandas()
    assert read(blind["log"]).schema == arrow_schema("log")
    assert set(df["response_status"]) == {"success"}
    for col in ("asr_confidence", "nlu_confidence", "nlu_intent", "nlu_domain", "barge_in"):
        assert df[col].isna().all(), col
    conv_df = read(conv["log"]).to_pandas()
    assert df["utterance"].tolist() == conv_df["utterance"].tolist()
    assert df["ts"].tolist() == conv_df["ts"].tolist()
    assert read(blind["labels"]).equals(read(conv["labels"]))


def test_real_test_set(tmp_path):
    conv = dstc2.convert(DATA, tmp_path / "c")
    log = read(conv["log"])
    assert log.schema == arrow_schema("log")
    df = log.to_pandas()
    # one row per non-silent user turn (KB lines have no tab)
    user_lines = [ln.rstrip("\n").split(" ", 1)[1].split("\t")[0]
                  for ln in DATA.read_text(encoding="utf-8").splitlines(True) if "\t" in ln]
    assert len(df) == sum(u != "<SILENCE>" for u in user_lines) == conv["turns"] == 8651
    assert conv["dialogues"] == df["session_id"].nunique() == df["user_id"].nunique() == 1117
    assert df["event_id"].is_unique and (df["utterance"].str.len() > 0).all()
    assert set(df["response_status"]) == {"success", "unhandled"}
    labels = read(conv["labels"]).to_pandas()
    assert len(labels) == len(df) - conv["dialogues"]
    assert labels["first_event_id"].isin(df["event_id"]).all() and labels["second_event_id"].isin(df["event_id"]).all()
    session = df.set_index("event_id")["session_id"]
    assert (session[labels["first_event_id"]].to_numpy() == session[labels["second_event_id"]].to_numpy()).all()
    # the hand-checked pair of the first dialogue
    row = labels[labels["first_event_id"] == "dstc2-tst-0000-004"].iloc[0]
    assert row["second_event_id"] == "dstc2-tst-0000-005" and row["is_reask"] and not row["reworded"]
    assert not labels[labels["first_event_id"] == "dstc2-tst-0000-003"].iloc[0]["is_reask"]
    assert conv["reask"] == labels["is_reask"].sum() == conv["reask_reworded"] + conv["reask_exact_repeat"]
    # every first turn that the system did not understand starts a re-ask unless the system
    # moved on during the caller's silence
    unhandled = set(df.loc[df["response_status"] == "unhandled", "event_id"])
    assert labels.loc[labels["is_reask"] & (labels["reask_kind"] == "not_understood"), "first_event_id"].isin(unhandled).all()


def test_snippet_system_acts(snippet):
    """The system's act in its reply to each user turn (contract v3 `system_act`)."""
    conv, blind = snippet
    act = read(conv["log"]).to_pandas().set_index("event_id")["system_act"]
    first = "dstc2-tst-0000-"
    assert act[first + "003"] == "inform"     # I'm sorry but there is no restaurant serving persian food
    assert act[first + "004"] == "reprompt"   # Could you please repeat that?
    assert act[first + "005"] == "confirm"    # Did you say ...?
    assert act[first + "006"] == "elicit"     # ... What price range would you like?
    assert act[first + "007"] == "inform"     # api_call
    assert act["dstc2-tst-0001-004"] == "reprompt"  # Sorry, I can't hear you
    assert act["dstc2-tst-0001-006"] == "elicit"    # What kind of food would you like?
    assert read(blind["log"]).to_pandas()["system_act"].isna().all()


def test_silent_failure_reasks():
    """A re-ask after a reply that acted but missed the caller (reads `success`): the request
    left unanswered and asked again, or a value misheard and said again. An answer, a partial
    answer, a correct "no restaurant serving X" followed by a new value, or giving up, are not."""
    foods = {"thai", "romanian", "international", "jamaican", "indian", "moroccan", "french", "north american"}
    kind = dstc2.silent_reask_kind
    assert kind("phone number", "golden_wok is a great restaurant", "whats the phone number", foods) == "unanswered"
    assert kind("whats the address", "la_raza is a great restaurant", "can i get the address", foods) == "unanswered"
    assert kind("phone number", "golden_wok is a great restaurant", "thank you good bye", foods) is None
    assert kind("whats the address", "Sure , wagamama is on wagamama_address", "whats the phone number", foods) is None
    assert kind("whats the address", "Sure , wagamama is on wagamama_address", "whats the address", foods) is None
    assert kind("phone number and address", "The phone number of nandos is nandos_phone", "address", foods) is None
    assert kind("what about thai food", "I'm sorry but there is no restaurant serving romanian food",
                "what about thai food", foods) == "misheard"
    assert kind("how about international", "You are looking for a jamaican restaurant right?",
                "how about international", foods) == "misheard"
    assert kind("irish food", "You are looking for a restaurant serving any kind of food right?", "irish", foods | {"irish"}) \
        == "misheard"  # missed
    assert kind("thai food", "golden_wok is a great restaurant", "thai food", foods) is None  # an offer shows no understanding
    assert kind("an expensive restaurant that serves moroccan food", "I'm sorry but there is no restaurant serving moroccan food",
                "is there an expensive restaurant serving thai food", foods) is None  # expensive again, but a new food
    assert kind("moroccan food", "I'm sorry but there is no restaurant serving moroccan food", "french food", foods) is None
    assert kind("north american food", "There are restaurants serving north american food . What area do you want?",
                "north", foods) is None
    assert kind("thai food", "Could you please repeat that?", "thai food", foods) is None  # not_understood, not silent


def test_reply_slots():
    """nlu_slots: what the reply shows the system understood of the caller's turn."""
    assert dstc2.reply_slots("There are restaurants serving chinese in the north of town . What price range would you like?") \
        == [{"name": "food", "value": "chinese"}, {"name": "area", "value": "north"}]
    assert dstc2.reply_slots("I'm sorry but there is no restaurant serving persian food") == [{"name": "food", "value": "persian"}]
    assert dstc2.reply_slots("api_call chinese north R_price") == [{"name": "food", "value": "chinese"},
                                                                   {"name": "area", "value": "north"}]
    assert dstc2.reply_slots("The phone number of golden_wok is golden_wok_phone") == [{"name": "requested", "value": "phone"}]
    assert dstc2.reply_slots("Sure , nandos is on nandos_address") == [{"name": "requested", "value": "address"}]
    assert dstc2.reply_slots("You are looking for a italian restaurant right?") == [{"name": "food", "value": "italian"}]
    # the train / dev system's templates
    assert dstc2.reply_slots("Sorry there is no moderate restaurant in the east of town serving australian food") == [
        {"name": "food", "value": "australian"}, {"name": "area", "value": "east"}, {"name": "pricerange", "value": "moderate"}]
    assert dstc2.reply_slots("I am sorry but there is no swedish restaurant that matches your request") == [
        {"name": "food", "value": "swedish"}]
    assert dstc2.reply_slots("The price range at the_missing_sock is cheap .") == [{"name": "requested", "value": "price"}]
    assert dstc2.reply_slots("saigon_city is in the north part of town .") == [{"name": "requested", "value": "area"}]
    assert dstc2.reply_slots("You are looking for a restaurant serving any kind of food right?") is None
    assert dstc2.reply_slots("golden_wok is a great restaurant") is None
    assert dstc2.reply_slots("the_hotpot is a nice place in the north of town serving tasty chinese food") is None
    assert dstc2.reply_slots("What kind of food would you like?") is None


def test_snippet_slots(snippet):
    conv, blind = snippet
    slots = read(conv["log"]).to_pandas().set_index("event_id")["nlu_slots"]
    first = "dstc2-tst-0000-"
    assert [dict(s) for s in slots[first + "003"]] == [{"name": "food", "value": "persian"}]
    assert [dict(s) for s in slots[first + "012"]] == [{"name": "requested", "value": "phone"}]
    assert slots[first + "011"] is None and slots[first + "004"] is None  # great restaurant; repeat that?
    assert read(blind["log"]).to_pandas()["nlu_slots"].isna().all()


def test_truth_does_not_depend_on_the_hash_seed(tmp_path):
    """The food vocabulary is a set: a key naming two foods of one length ("if theres no
    persian food about about chinese") must get the same label whatever the hash seed."""
    import os
    import subprocess
    import sys

    code = ("import sys, pyarrow.parquet as pq; from selflearn.evaluation import dstc2; "
            "c = dstc2.convert(sys.argv[1], sys.argv[2]); "
            "labels = pq.read_table(c['labels']).to_pandas(); "
            "print(','.join(labels.loc[labels['is_reask'], 'first_event_id'] + ':' + labels.loc[labels['is_reask'], 'reask_kind']))")
    outs = set()
    for seed in ("1", "2", "3", "4"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", code, str(DATA), str(tmp_path / seed)], env=env,
                           capture_output=True, text=True, check=True)
        outs.add(r.stdout)
    assert len(outs) == 1
