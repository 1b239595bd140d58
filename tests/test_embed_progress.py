"""Progress of the embed stage as the driver sees it: keys done, rate, ETA while it runs, and
a warm run that says nothing needs encoding (real local Spark, real encoder, MASSIVE keys)."""
from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from conftest import massive_records
from selflearn.encoders import embed
from selflearn.core.text import normalize_text

PROGRESS = re.compile(r"embed_keys: (\d+)/(\d+) keys encoded \(([\d.]+)%\), ([\d.]+) keys/s, elapsed \S+, ETA (\S+)")
SKEW_RE = re.compile(r"embed_keys: (\d+) keys not in the cache")  # what tests/test_skew.py parses


def test_progress_line_reports_done_rate_and_eta():
    line = embed.progress_line(1200, 80000, 12.0)
    assert line == "embed_keys: 1200/80000 keys encoded (1.5%), 100.0 keys/s, elapsed 12s, ETA 13m08s"
    assert PROGRESS.fullmatch(line)
    assert embed.progress_line(0, 10, 5.0).endswith("0.0 keys/s, elapsed 5s, ETA unknown")
    assert "ETA 1h00m00s" in embed.progress_line(1, 3601, 1.0)
    assert embed.progress_line(12, 10, 2.0).startswith("embed_keys: 10/10 keys encoded (100.0%)")


def test_embed_logs_progress_while_encoding_and_a_warm_run_says_nothing_to_encode(spark, settings, tmp_path, caplog, monkeypatch):
    texts = sorted({normalize_text(r["utt"]) for r in massive_records("de-DE", 240)})
    df = spark.createDataFrame([("de-DE", t) for t in texts], "locale string, text string")
    fast = dataclasses.replace(settings, embedding_backend="sentence-transformers", embedding_progress_s=0.25)
    monkeypatch.setattr(embed, "_PROGRESS_TASK_KEYS", 40)  # several tasks: progress in steps
    caplog.set_level(logging.INFO, logger="selflearn.encoders.embed")
    stats: dict = {}
    embed.embed_keys(spark, df, fast, tmp_path, stats=stats)
    assert stats["embedded"] == len(texts)
    lines = [r.getMessage() for r in caplog.records if r.name == "selflearn.encoders.embed"]
    progress = [PROGRESS.fullmatch(m) for m in lines if PROGRESS.fullmatch(m)]
    # the periodic lines (every 0.25 s here) and the closing one
    assert len(progress) >= 2, lines
    assert all(int(m.group(2)) == len(texts) for m in progress)
    done = [int(m.group(1)) for m in progress]
    assert done == sorted(done) and done[-1] == len(texts)
    assert float(progress[-1].group(4)) > 0 and progress[-1].group(5) == "0s"
    assert any(SKEW_RE.search(m) and m.endswith("encoding them") for m in lines)

    caplog.clear()
    stats2: dict = {}
    embed.embed_keys(spark, df, fast, tmp_path, stats=stats2)
    assert stats2["embedded"] == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "selflearn.encoders.embed"]
    warm = [m for m in lines if SKEW_RE.search(m)]
    assert len(warm) == 1 and int(SKEW_RE.search(warm[0]).group(1)) == 0
    assert warm[0].endswith("nothing to encode") and "encoding them" not in warm[0]
    assert not any(PROGRESS.fullmatch(m) for m in lines)


def test_progress_off_logs_no_progress_lines():
    with embed.EmbedProgress(10, lambda: 10, 0) as p:
        pass
    assert p.lines == []


@pytest.mark.parametrize("every_s", [0.05])
def test_progress_thread_ticks_while_work_runs(every_s):
    import time

    counter = {"n": 0}
    with embed.EmbedProgress(100, lambda: counter["n"], every_s) as p:
        for _ in range(5):
            time.sleep(every_s * 1.5)
            counter["n"] += 20
    assert len(p.lines) >= 3
    assert p.lines[-1].startswith("embed_keys: 100/100 keys encoded (100.0%)")
