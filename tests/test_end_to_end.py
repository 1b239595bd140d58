"""End to end with the real stack: local Spark, a real Prefect flow, the bundled
embedding model and FAISS, on a small log built from real MASSIVE utterances in three
locales (three scripts).

In each locale four users say A (not understood), re-ask with B (not understood) and
then C (served); other users say C and are served. The run must publish every output of
the contract and learn A -> C and B -> C with the confidence the rewrite graph defines:
conf(A) = P(A->B) * P(B->C) * P(C->success(C)), conf(B) = P(B->C) * P(C->success(C)),
each P pooled over users from the published pair scores and defect probabilities."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selflearn.schema import arrow_schema
from selflearn.text import normalize_text

LOCALES = ("en-US", "de-DE", "ja-JP")
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
SLOT = re.compile(r"\[(\w+) : ([^\]]+)\]")


def pick_goal(records):
    """Three distinct real utterances of one intent sharing their one slot value."""
    groups = defaultdict(list)
    for r in records:
        slots = SLOT.findall(r["annot_utt"])
        if len(slots) == 1 and r["intent"] in ("alarm_set", "weather_query", "play_music", "calendar_set"):
            groups[(r["intent"], slots[0][0], slots[0][1].strip())].append(r)
    for key in sorted(groups, key=lambda k: (-len(groups[k]), k)):
        utts = sorted({normalize_text(r["utt"]): r for r in groups[key]}.values(), key=lambda r: r["id"])
        if len(utts) >= 3:
            return key, utts[:3]
    raise AssertionError("no goal with three phrasings")


def build_log(massive, path: Path):
    rows, expected = [], {}
    n = 0

    def add(user, locale, utt, at, status, intent=None, slots=None, domain=None, dwell=30000, barge=False):
        nonlocal n
        n += 1
        rows.append(dict(
            event_id=f"e{n:05d}", user_id=user, device_id=f"{user}-d", session_id=None, ts=at, locale=locale,
            utterance=utt, asr_confidence=0.9, nlu_domain=domain if status == "success" else None,
            nlu_intent=intent if status == "success" else None,
            nlu_slots=slots if status == "success" else None, nlu_confidence=0.9 if status == "success" else 0.2,
            response_status=status, barge_in=barge, feedback=None, dwell_ms=dwell, rewritten_from=None,
            nlu_model_version="v1",
        ))

    for li, locale in enumerate(LOCALES):
        records = massive(locale)
        (intent, slot, value), (a, b, c) = pick_goal(records)
        slots = [{"name": slot, "value": value}]
        expected[locale] = dict(A=normalize_text(a["utt"]), B=normalize_text(b["utt"]), C=normalize_text(c["utt"]),
                                intent=intent, slot=slot, value=normalize_text(value))
        for u in range(4):  # the re-askers
            t = T0 + timedelta(days=li, hours=u)
            user = f"user-{locale}-r{u}"
            add(user, locale, a["utt"], t, "unhandled", dwell=900, barge=True)
            add(user, locale, b["utt"], t + timedelta(seconds=5), "unhandled", dwell=900, barge=True)
            add(user, locale, c["utt"], t + timedelta(seconds=11), "success", intent, slots, a["scenario"])
        for u in range(8):  # served directly
            add(f"user-{locale}-s{u}", locale, c["utt"], T0 + timedelta(days=li, hours=5 + u), "success", intent, slots, a["scenario"])
        others = [r for r in records if r["intent"] != intent][:30]
        for i, r in enumerate(others):  # unrelated served traffic
            add(f"user-{locale}-o{i % 10}", locale, r["utt"], T0 + timedelta(days=li, hours=14, minutes=10 * i), "success", r["intent"], [], r["scenario"])
    table = pa.Table.from_pylist(rows, schema=arrow_schema("log"))
    path.mkdir(parents=True)
    pq.write_table(table, path / "part-0.parquet")
    return expected, rows


@pytest.fixture(scope="module")
def prefect_harness():
    from pipelines.quiet import quiet_prefect

    quiet_prefect()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def mined(tmp_path_factory, massive, spark, prefect_harness):
    from pipelines.mine_flow import mine

    base = tmp_path_factory.mktemp("e2e")
    expected, rows = build_log(massive, base / "log")
    cfg = base / "config.yaml"
    cfg.write_text("spark_master: 'local[2]'\nspark_shuffle_partitions: 4\n")
    final = Path(mine(str(base / "log"), str(base / "root"), str(cfg)))
    return base / "root", final, expected, rows


PUBLISHED = {"turns": "turns", "rephrase_pairs": "rephrase_pairs", "rewrites": "rewrites",
             "training": "training", "paraphrase_clusters": "paraphrase_clusters"}


def test_every_published_output_is_there_atomically(mined):
    root, final, _, rows = mined
    assert (root / "LATEST").read_text().strip() == final.name
    assert (final / "_SUCCESS").is_file() and (final / "report.html").is_file()
    assert not any((root / ".staging").iterdir()) if (root / ".staging").exists() else True
    for name, schema in PUBLISHED.items():
        t = pq.read_table(final / name)
        for field in arrow_schema(schema):
            assert field.name in t.schema.names, (name, field.name)
    for part in ("nodes", "edges"):
        assert pq.read_table(final / "rewrite_graph" / part).num_rows > 0
    assert list((final / "rewrite_graph" / "graphml").glob("*.graphml"))
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["rows_in"] == len(rows) == manifest["rows_accepted"] + manifest["rows_quarantined"]
    assert set(manifest["checksums"]) == set(PUBLISHED) | {"rewrite_graph/nodes", "rewrite_graph/edges"}
    html = (final / "report.html").read_text()
    assert "<svg" in html and "Top rewrites" in html


def test_no_user_or_device_id_is_published(mined):
    _, final, _, rows = mined
    ids = {r["user_id"] for r in rows} | {r["device_id"] for r in rows}
    blob = b"".join(p.read_bytes() for p in final.rglob("*") if p.is_file())
    leaked = [i for i in ids if i.encode() in blob]
    assert leaked == []


def test_a_b_c_yields_both_rewrites_with_the_documented_confidence(mined):
    _, final, expected, _ = mined
    rewrites = pd.read_parquet(final / "rewrites")
    pairs = pd.read_parquet(final / "rephrase_pairs")
    turns = pd.read_parquet(final / "turns")
    for locale, e in expected.items():
        got = rewrites[rewrites.locale == locale].set_index("source")
        assert got.loc[e["A"], "target"] == e["C"], got
        assert got.loc[e["B"], "target"] == e["C"], got
        assert got.loc[e["A"], "n_users"] == 4 and got.loc[e["B"], "n_users"] == 4
        p = pairs[pairs.locale == locale]
        p_ab = p[(p["first"] == e["A"]) & (p["second"] == e["B"])]["score"].mean()
        p_bc = p[(p["first"] == e["B"]) & (p["second"] == e["C"])]["score"].mean()
        # C ends every session it is in: all of its mass is absorbed, served with 1 - defect_prob,
        # pooled over users (each user's turns averaged, one vote per user).
        t = turns[(turns.locale == locale) & (turns.text == e["C"])]
        r_c = 1 - t["defect_prob"].mean()  # every user of C says it once
        assert got.loc[e["B"], "confidence"] == pytest.approx(p_bc * r_c, abs=1e-6)
        assert got.loc[e["A"], "confidence"] == pytest.approx(p_ab * p_bc * r_c, abs=1e-6)
        assert set(got.loc[[e["A"], e["B"]], "evidence"]) <= {"rephrase", "both"}


def test_sources_are_labeled_with_the_targets_interpretation(mined):
    _, final, expected, _ = mined
    training = pd.read_parquet(final / "training")
    for locale, e in expected.items():
        rows = training[(training.locale == locale) & (training.label_source == "rewrite")].set_index("text")
        for key in (e["A"], e["B"]):
            if f" {e['value']} " not in f" {key} " and e["value"] not in key:
                assert key not in rows.index  # the slot value does not project: no NLU row
                continue
            assert rows.loc[key, "intent"] == e["intent"]
            assert [(s["name"], s["value"]) for s in rows.loc[key, "slots"]] == [(e["slot"], e["value"])]
    assert set(training["split"]) <= {"train", "dev"}
