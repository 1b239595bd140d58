"""The fast tier's small end-to-end log, built from real MASSIVE utterances in three
locales (three scripts): in each locale four users say A (not understood), re-ask with B
(not understood) and then C (served); other users say C and are served; thirty other
real utterances of other intents are served to ten more users."""
from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.schema import arrow_schema
from selflearn.core.text import normalize_text

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
