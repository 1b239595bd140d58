"""The ROOT lock and the cleanup of what killed runs leave behind (publish.RunDirs), and the
content checksum of the manifest: plain files and pyarrow, no Spark."""
from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selflearn.run.publish import (FAULT_POINTS, RootBusyError, RunDirs, content_checksum, ensure_root_free, publish,
                                   wait_for_root)


def _dead_run(root, run_id, *, staged_success=False):
    """What a run SIGKILLed mid-way leaves: its staging, staged quarantine and work dirs."""
    d = RunDirs(root, run_id)
    for p in (d.staging / "turns", d.work / "accepted", d.quarantine_staging):
        p.mkdir(parents=True)
        (p / "part-0.parquet").write_bytes(b"x")
    if staged_success:
        (d.staging / "_SUCCESS").write_text("")
    return d


def test_next_run_removes_leftovers_of_killed_runs(tmp_path):
    root = tmp_path / "root"
    dead = _dead_run(root, "20260101T000000Z-dead01", staged_success=True)
    (root / "LATEST.tmp").write_text("20260101T000000Z-dead01\n")
    live = RunDirs(root, "20260102T000000Z-live01")
    live.acquire()
    try:
        assert not dead.staging.exists() and not dead.work.exists() and not dead.quarantine_staging.exists()
        assert not (root / "LATEST.tmp").exists()
        assert not (root / "quarantine").exists()  # a never-published run gets no quarantine
        assert live.staging.is_dir() and live.work.is_dir()  # its own dirs, made after the cleanup
    finally:
        live.release()
    assert not live.work.exists()


def test_vectors_a_killed_embed_left_uncommitted_are_removed(tmp_path):
    root = tmp_path / "root"
    cache = root / "state" / "embeddings" / "model-x"
    (cache / "_tmp-0123abcd").mkdir(parents=True)
    (cache / "_tmp-0123abcd" / "part-00000.parquet").write_bytes(b"x")
    (cache / "part-aaaa-00000.parquet").write_bytes(b"committed")
    live = RunDirs(root, "20260102T000000Z-live02")
    live.acquire()
    try:
        assert not (cache / "_tmp-0123abcd").exists()
        assert (cache / "part-aaaa-00000.parquet").read_bytes() == b"committed"  # the cache stays
    finally:
        live.release()


def test_quarantine_of_a_run_killed_after_its_move_is_rolled_forward(tmp_path):
    root = tmp_path / "root"
    dead = _dead_run(root, "20260101T000000Z-dead02")
    # killed at publish:moved: the run is in runs/, complete; its quarantine still staged
    dead.final.mkdir(parents=True)
    (dead.final / "_SUCCESS").write_text("")
    live = RunDirs(root, "20260102T000000Z-live02")
    live.acquire()
    live.release()
    assert (dead.quarantine / "part-0.parquet").read_bytes() == b"x"
    assert not dead.quarantine_staging.exists()


def test_busy_root_is_refused_and_the_live_runs_dirs_are_kept(tmp_path):
    root = tmp_path / "root"
    live = RunDirs(root, "20260102T000000Z-live03")
    live.acquire()
    try:
        (live.work / "accepted").mkdir()
        (live.staging / "turns").mkdir()
        other = RunDirs(root, "20260102T000001Z-othr03")
        with pytest.raises(RootBusyError, match="another selflearn run is using"):
            other.acquire()
        with pytest.raises(RootBusyError):
            ensure_root_free(root)
        assert (live.work / "accepted").is_dir() and (live.staging / "turns").is_dir()
        assert not other.staging.exists() and not other.work.exists()
    finally:
        live.release()
    ensure_root_free(root)


def test_wait_for_root_queues_behind_the_live_run_and_gives_up_after_its_limit(tmp_path):
    """`selflearn run --wait`: a run that finds ROOT held waits for the holder to finish
    (saying so), and refuses with the usual line once its limit has passed."""
    import threading

    root = tmp_path / "root"
    live = RunDirs(root, "20260102T000000Z-live04")
    live.acquire()
    said = []
    threading.Timer(1.0, live.release).start()
    waited = wait_for_root(root, 30, poll_s=0.05, say=said.append)
    assert 0.5 <= waited < 30
    assert len(said) == 1 and said[0].startswith("another selflearn run is using") and "waiting" in said[0]
    live.acquire()
    try:
        with pytest.raises(RootBusyError, match=r"another selflearn run is using .* \(waited 0 s, --wait 0.3\)"):
            wait_for_root(root, 0.3, poll_s=0.05)
    finally:
        live.release()
    assert wait_for_root(root, 0) == pytest.approx(0, abs=0.5)  # free: no wait at all


def test_cli_wait_refuses_with_one_line_after_waiting_and_checks_its_value(tmp_path, massive, capsys):
    from small_logs import build_log

    from selflearn.cli import main

    build_log(massive, tmp_path / "log")
    root = tmp_path / "root"
    live = RunDirs(root, "20260102T000000Z-live05")
    live.acquire()
    try:
        rc = main(["run", "--input", str(tmp_path / "log"), "--output", str(root), "--wait", "0.5"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert err[0].startswith("selflearn run: another selflearn run is using") and "waiting" in err[0]
        assert err[-1].startswith("selflearn run: another selflearn run is using") and "(waited" in err[-1]
    finally:
        live.release()
    for bad in ("-1", "soon"):
        with pytest.raises(SystemExit) as exc:
            main(["run", "--input", str(tmp_path / "log"), "--output", str(root), "--wait", bad])
        assert exc.value.code == 2
        assert "--wait" in capsys.readouterr().err


def test_lock_of_a_sigkilled_holder_is_free(tmp_path):
    """The lock is an flock: the kernel drops it when its holder dies, even by SIGKILL
    (a pid or marker file would stay behind and block the ROOT for good)."""
    root = tmp_path / "root"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from selflearn.run.publish import RunDirs; "
         "d = RunDirs(sys.argv[1], 'r1'); d.acquire(); print('held', flush=True); time.sleep(600)", str(root)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RootBusyError):
            ensure_root_free(root)
    finally:
        holder.kill()
        holder.wait()
    ensure_root_free(root)
    d = RunDirs(root, "r2")
    d.acquire()
    d.release()


def test_publish_moves_run_before_quarantine_and_latest_last(tmp_path):
    root = tmp_path / "root"
    d = RunDirs(root, "20260103T000000Z-pub001")
    d.acquire()
    (d.output("turns")).mkdir()
    d.quarantine_staging.mkdir(parents=True)
    publish(d)
    d.release()
    assert (root / "LATEST").read_text().strip() == d.run_id
    assert (d.final / "_SUCCESS").is_file() and d.quarantine.is_dir()
    assert not d.staging.exists() and not (root / "LATEST.tmp").exists()


# --- checksums cover content, not layout --------------------------------------------------

def _turns(n=6):
    return pa.table({"event_id": [f"e{i}" for i in range(n)], "locale": ["en-US"] * n,
                     "text": [f"wake me up at {i} am" for i in range(n)],
                     "defect_prob": [0.1 * i + 1e-9 for i in range(n)]})


def test_checksum_changes_with_any_one_value_and_not_with_file_layout(tmp_path):
    t = _turns()
    a = tmp_path / "a"
    a.mkdir()
    pq.write_table(t, a / "part-00000.parquet")
    ref = content_checksum(a)
    b = tmp_path / "b"  # same rows, two files and small row groups
    b.mkdir()
    pq.write_table(t.slice(0, 4), b / "part-00000.parquet", row_group_size=1)
    pq.write_table(t.slice(4), b / "part-00001.parquet")
    assert content_checksum(b) == ref
    # float noise below 1e-6 is equal content (the contract's definition)
    c = tmp_path / "c"
    c.mkdir()
    noisy = t.set_column(3, "defect_prob", pa.array([v + 1e-9 for v in t["defect_prob"].to_pylist()]))
    pq.write_table(noisy, c / "part-00000.parquet")
    assert content_checksum(c) == ref
    for col, i, value in [("text", 3, "wake me up at 3 pm"), ("defect_prob", 5, 0.7), ("event_id", 0, "e99")]:
        d = tmp_path / f"d-{col}"
        d.mkdir()
        vals = t[col].to_pylist()
        vals[i] = value
        pq.write_table(t.set_column(t.schema.get_field_index(col), col, pa.array(vals)), d / "part-00000.parquet")
        assert content_checksum(d) != ref, col
    e = tmp_path / "e"  # one row fewer
    e.mkdir()
    pq.write_table(t.slice(0, 5), e / "part-00000.parquet")
    assert content_checksum(e) != ref
    f = tmp_path / "f"  # rows in another order: not the defined order, not equal content
    f.mkdir()
    pq.write_table(t.take([1, 0, 2, 3, 4, 5]), f / "part-00000.parquet")
    assert content_checksum(f) != ref


# --- SIGKILL at each point inside publish (plain files; tests/test_faults.py does it to real runs)

_PUBLISHER = """
import sys
from selflearn.run.publish import RunDirs, publish
d = RunDirs(sys.argv[1], sys.argv[2])
d.acquire()
(d.output("turns")).mkdir()
(d.output("turns") / "part-00000.parquet").write_bytes(b"rows")
d.quarantine_staging.mkdir(parents=True)
(d.quarantine_staging / "part-00000.parquet").write_bytes(b"bad rows")
publish(d)
d.release()
"""


def _publish_in_subprocess(root, run_id, pause=None):
    import signal

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("SELFLEARN_FAULT_PAUSE", None)
    if pause:
        env["SELFLEARN_FAULT_PAUSE"] = pause
    p = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(root), run_id], stderr=subprocess.PIPE,
                         text=True, env=env, start_new_session=True)
    if pause is None:
        assert p.wait(timeout=60) == 0, p.stderr.read()
        return
    assert p.stderr.readline().strip() == f"[fault] paused at {pause}"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=60)


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_sigkill_inside_publish_keeps_latest_and_leaves_nothing_partial(tmp_path, point):
    root = tmp_path / "root"
    _publish_in_subprocess(root, "20260101T000000Z-prev01")
    killed = "20260102T000000Z-kill01"
    _publish_in_subprocess(root, killed, pause=point)
    # the kill: LATEST on the previous run, nothing partial in runs/, no orphan quarantine
    assert (root / "LATEST").read_text().strip() == "20260101T000000Z-prev01"
    for run in (root / "runs").iterdir():
        assert (run / "_SUCCESS").is_file() and (run / "turns" / "part-00000.parquet").is_file()
    for q in (root / "quarantine").iterdir():
        assert (root / "runs" / q.name / "_SUCCESS").is_file(), q
    moved = (root / "runs" / killed).exists()
    assert moved == (point != "publish:staged")
    ensure_root_free(root)
    # the next run: cleans up, and a quarantine whose run was published is kept, in place
    _publish_in_subprocess(root, "20260103T000000Z-next01")
    assert (root / "LATEST").read_text().strip() == "20260103T000000Z-next01"
    assert list((root / ".staging").iterdir()) == [] and list((root / ".work").iterdir()) == []
    assert not (root / "LATEST.tmp").exists()
    assert (root / "quarantine" / killed).is_dir() == moved
    for q in (root / "quarantine").iterdir():
        assert (root / "runs" / q.name / "_SUCCESS").is_file(), q
