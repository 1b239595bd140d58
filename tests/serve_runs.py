"""Published run folders for the serving tests, written per contract section 4 / 4.1:
`rewrites/` and `rewrite_patterns/` parquet, `manifest.json`, `_SUCCESS`, and LATEST moved
atomically as the publish step does. Every text is a real MASSIVE utterance (en-US and
ja-JP alarm_set and play_music records) or a carrier phrase of one with its slot values
replaced by placeholders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.core.keys import text_key
from selflearn.core.rewrite_apply import RewriteIndex

# en-US records 1 ("wake me up at [time : nine am] on [date : friday]"), 0, 2, 93, 139, 140;
# ja-JP records 0 and 1; e-mail record 15744 ("add new email to anna") with an address said.
RUN_A = {
    "exact": [
        ("en-US", "wake me up at nine am on friday", "set an alarm for nine am", 0.55),
        ("en-US", "start my jazz playlist", "play my jazz playlist", 0.90),
        ("en-US", "add new email to anna xxemailxx", "add new email to anna", 0.70),
    ],
    "patterns": [
        ("en-US", "wake me up at {time} on {date}", "set an alarm for {time} {date}", 0.80, ["time", "date"]),
        ("en-US", "wake me up at {time}", "set an alarm for {time}", 0.95, ["time"]),
        ("en-US", "start my {music_genre} playlist", "play my {music_genre} playlist", 0.60, ["music_genre"]),
        ("ja-JP", "{date}の{time}に起こしてください", "{date}の{time}にアラームをセットする", 0.90, ["date", "time"]),
    ],
}
# The next run: one exact rewrite changed, one pattern dropped, one added (record 95:
# "set alarm for [time : eight] ..."), so most answers tell which run gave them.
RUN_B = {
    "exact": [
        ("en-US", "wake me up at nine am on friday", "set alarm for nine am", 0.65),
        ("en-US", "start my jazz playlist", "play my jazz playlist", 0.97),
    ],
    "patterns": [
        ("en-US", "wake me up at {time}", "set alarm for {time}", 0.85, ["time"]),
        ("en-US", "set an alarm {time}", "set alarm for {time}", 0.75, ["time"]),
        ("ja-JP", "{date}の{time}に起こしてください", "{date}の{time}にアラームをセットする", 0.92, ["date", "time"]),
    ],
}

# Requests (raw, as a runtime gets them): exact hits, pattern hits, misses, PII, ja-JP.
REQUESTS = [
    ("en-US", "Wake me up at nine am on Friday!"),
    ("en-US", "wake me up at five am on monday"),
    ("en-US", "wake me up at five am this week"),
    ("en-US", "Start my jazz playlist"),
    ("en-US", "start my rock playlist"),
    ("en-US", "set an alarm forty minutes from now"),
    ("en-US", "set an alarm for twelve"),
    ("en-US", "add new email to anna jane.doe@example.org"),
    ("en-US", "play my jazz playlist"),
    ("de-DE", "wake me up at five am"),
    ("ja-JP", "金曜日の午前九時に起こしてください"),
    ("ja-JP", "今週は午前五時に起こして"),
]


def frames(spec: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    ex = pd.DataFrame(spec["exact"], columns=["locale", "source", "target", "confidence"])
    ex["n_users"], ex["n_sessions"] = 5, 6
    ex["source_defect_rate"], ex["target_success_rate"], ex["evidence"] = 0.9, 0.95, "rephrase"
    pt = pd.DataFrame(spec["patterns"], columns=["locale", "source", "target", "confidence", "slots"])
    pt["n_users"], pt["n_values"], pt["n_sessions"] = 6, 3, 7
    pt["source_defect_rate"], pt["target_success_rate"], pt["evidence"] = 0.8, 0.9, "rephrase"
    return ex, pt


def write_run(root: Path, run_id: str, spec: dict, move_latest: bool = True, config: dict | None = None,
              success: bool = True, patterns: bool = True, key_fingerprint: str | None = None) -> Path:
    run = Path(root) / "runs" / run_id
    for name in ("rewrites", "rewrite_patterns"):
        (run / name).mkdir(parents=True, exist_ok=True)
    ex, pt = frames(spec)
    pq.write_table(pa.Table.from_pandas(ex, preserve_index=False), run / "rewrites" / "part-0.parquet")
    if patterns:
        pq.write_table(pa.Table.from_pandas(pt, preserve_index=False), run / "rewrite_patterns" / "part-0.parquet")
    else:
        (run / "rewrite_patterns").rmdir()
    from selflearn.core.keys import key_fingerprint as current

    privacy = {"key_fingerprint": key_fingerprint or current()}  # as the pipeline records it
    (run / "manifest.json").write_text(json.dumps({"run_id": run_id, "config": config or {}, "privacy": privacy}),
                                       encoding="utf-8")
    if success:
        (run / "_SUCCESS").write_text("")
    if move_latest:
        move_latest_to(root, run_id)
    return run


def move_latest_to(root: Path, run_id: str) -> None:
    tmp = Path(root) / "LATEST.tmp"
    tmp.write_text(run_id + "\n", encoding="utf-8")
    os.replace(tmp, Path(root) / "LATEST")


def expected_answer(spec: dict, run_id: str, locale: str, text: str, **key_kwargs) -> dict:
    """What contract 4.1 says for a request, straight from rewrite_apply (no serving code)."""
    ex, pt = frames(spec)
    hit = RewriteIndex.from_frames(ex, pt).lookup(locale, text_key(text, **key_kwargs))
    return {"locale": locale, "key": text_key(text, **key_kwargs), "rewrite": hit.rewrite if hit else None,
            "kind": hit.kind if hit else None, "confidence": hit.confidence if hit else None, "run_id": run_id}
