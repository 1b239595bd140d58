"""Issue 19 item 4: a SIGKILLed run leaves nothing of itself outside ROOT. Spark's scratch
dirs (blockmgr-* shuffle files hold raw user ids and utterances, spark-*, artifacts-*) live
under ROOT/.work/spark-<run_id>, which the rerun's locked cleanup removes.

The run's "system temp" is a private folder here (TMPDIR and the JVM's java.io.tmpdir, set
the way an operator's environment would), so other processes' /tmp files cannot confuse the
check. Heavy: a real CLI run killed late, then a full rerun."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cliproc import CliRun, survivors

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.heavy]
SPARK_DIRS = re.compile(r"^(blockmgr|spark|artifacts|pyspark)-")


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test():
    from cliproc import kill_all_alive

    yield
    kill_all_alive()


def test_kill_then_rerun_leaves_nothing_of_the_killed_run_outside_root(tmp_path, massive):
    from small_logs import build_log

    build_log(massive, tmp_path / "log")
    systmp = tmp_path / "system-tmp"
    systmp.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("spark_master: 'local[1]'\nspark_shuffle_partitions: 2\n")
    env = {**os.environ, "TMPDIR": str(systmp), "JAVA_TOOL_OPTIONS": f"-Djava.io.tmpdir={systmp}",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for k in ("SELFLEARN_FAULT_PAUSE", "SELFLEARN_KEEP_WORK", "PREFECT_API_URL"):
        env.pop(k, None)
    root = tmp_path / "root"
    killed = CliRun(tmp_path / "log", root, cfg, env, {"SELFLEARN_FAULT_PAUSE": "publish:staged"})
    killed.wait_for(r"\[fault\] paused at publish:staged")
    work = sorted(p.name for p in (root / ".work").iterdir())
    spark_dirs = [w for w in work if w.startswith("spark-")]
    assert len(spark_dirs) == 1, work  # the killed run's scratch dir, under ROOT
    scratch = root / ".work" / spark_dirs[0]
    assert any(p.name.startswith("blockmgr-") for p in scratch.iterdir()), list(scratch.iterdir())
    procs = killed.kill_group()
    import time

    for _ in range(100):  # the JVM's own children go with the group; wait for them
        if not survivors(procs):
            break
        time.sleep(0.1)
    assert not survivors(procs)
    left = sorted(p.name for p in systmp.iterdir() if SPARK_DIRS.match(p.name))
    assert left == [], left  # nothing in the system temp even right after the kill
    rerun = CliRun(tmp_path / "log", root, cfg, env)
    rc, out = rerun.finish()
    assert rc == 0, rerun.tail()
    assert not scratch.exists()  # the killed run's scratch dir went with the locked cleanup
    assert sorted(p.name for p in systmp.iterdir() if SPARK_DIRS.match(p.name)) == []
    assert not (root / ".work").exists() or list((root / ".work").iterdir()) == []
