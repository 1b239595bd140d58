"""The daily flow's input template, and that the stages the flow retries can be retried:
a publish repeated after the run was moved into place completes instead of failing.
(The deployed flow itself runs against a real server in test_prefect_server.py.)"""
from __future__ import annotations

import datetime as dt
import json

import pytest

from selflearn.config import Settings
from selflearn.run.publish import RunDirs, latest_run, publish
from selflearn.run.runner import Run


def resolve_input(*args):
    from pipelines.mine_flow import resolve_input

    return resolve_input(*args)


def test_explicit_date_fills_the_template():
    assert resolve_input("s3a://b/logs/dt={date}/", "2026-11-03") == "s3a://b/logs/dt=2026-11-03/"


def test_default_date_is_the_utc_day_before_the_scheduled_start():
    # 01:00 at UTC+05:00 is 20:00 UTC the day before: the run mines the day before that.
    scheduled = dt.datetime(2026, 11, 25, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    assert resolve_input("/logs/dt={date}", None, scheduled) == "/logs/dt=2026-11-23"
    assert resolve_input("/logs/dt={date}", None, dt.datetime(2026, 1, 1, 2, 30, tzinfo=dt.timezone.utc)) \
        == "/logs/dt=2025-12-31"


def test_a_path_without_placeholder_is_used_as_is():
    assert resolve_input("/logs/all", None) == "/logs/all"


@pytest.mark.parametrize("path,date,message", [
    ("/logs/dt={date}", "2026-11-3", "date must be YYYY-MM-DD"),
    ("/logs/dt={date}", "2026-13-01", "month must be in 1..12"),
    ("/logs/all", "2026-11-03", "has no {date} placeholder"),
    ("{{ $SELFLEARN_INPUT }}", None, "deploy-time placeholder"),
])
def test_bad_template_or_date_is_refused(path, date, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        resolve_input(path, date)


def _staged_run(tmp_path) -> Run:
    run = Run(input_path=str(tmp_path / "log"), output_root=str(tmp_path / "root"), settings=Settings())
    run.start()
    (run.dirs.output("turns")).mkdir()
    (run.dirs.output("turns") / "part-00000.parquet").write_bytes(b"PAR1")
    # what the earlier stages and the first publish attempt leave: the gate's verdict in the
    # manifest, the evidence stage's pending state
    (run.dirs.output("manifest.json")).write_text(json.dumps({"gate": {"latest_moved": True}}), encoding="utf-8")
    (run.dirs.work / "state.json").write_text(json.dumps({"days": {}, "tails": None}), encoding="utf-8")
    return run


def test_publish_repeated_after_the_move_completes(tmp_path):
    run = _staged_run(tmp_path)
    try:
        final = publish(run.dirs)
        (run.dirs.root / "LATEST").unlink()  # as if the first attempt died before moving LATEST
        assert publish(run.dirs) == final
        assert latest_run(run.dirs.root) == final and (final / "turns" / "part-00000.parquet").is_file()
    finally:
        run.finish()


def test_publish_stage_retried_after_the_move_does_not_rebuild_the_manifest(tmp_path):
    run = _staged_run(tmp_path)
    try:
        publish(run.dirs)
        run.stage("publish")  # the staging tables are gone: rebuilding the manifest would fail
        assert latest_run(run.dirs.root) == RunDirs(run.dirs.root, run.run_id).final
    finally:
        run.finish()
