"""Faults, concurrency and determinism of `selflearn run`, with the real CLI.

Each run is a subprocess in its own process group (start_new_session), watched through
its stderr progress lines and SIGKILLed -- the whole group, Spark's JVM included -- at a
stage boundary or, through the SELFLEARN_FAULT_PAUSE hook, at a named point inside
publish. After every kill: LATEST still names the previous complete run, every run
directory is complete, no process of the killed run survives (the JVM and the PySpark
worker daemons, which put themselves in their own process groups), and the ROOT lock is
free. Finally a rerun finishes with the checksums of an uninterrupted run and removes
what the killed runs left in .staging/ and .work/.

Time: every attempt starts from scratch, so each kill costs the run up to that point.
By default the test kills at the boundaries in DEFAULT_BOUNDARIES and at every publish
fault point; SELFLEARN_FAULTS_ALL=1 kills at every boundary of runner.STAGES.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from selflearn.publish import FAULT_POINTS, ensure_root_free, latest_run
from selflearn.runner import PUBLISHED_TABLES, STAGES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Boundaries "[stage] done" -> next stage; publish's own "done" is a finished run.
BOUNDARIES = STAGES[:-1]
DEFAULT_BOUNDARIES = ("ingest", "embed", "graph")
KILL_AT = [f"after:{s}" for s in BOUNDARIES
           if os.environ.get("SELFLEARN_FAULTS_ALL") or s in DEFAULT_BOUNDARIES] + list(FAULT_POINTS)


# --- a CLI run we can watch and kill ---------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, ppid, start time) of a live process, else None."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), fields[19]


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of `pid` and every process below it (the JVM, Prefect's server,
    PySpark daemons and their workers, whichever process group they chose)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            st = _proc_stat(int(p.name))
            if st is not None:
                children.setdefault(st[1], []).append(int(p.name))
                starts[int(p.name)] = st[2]
    out, todo = {}, [pid]
    while todo:
        q = todo.pop()
        if q in starts:
            out[q] = starts[q]
        todo += children.get(q, [])
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def survivors(procs: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in procs.items():
        st = _proc_stat(pid)
        if st is not None and st[2] == start and st[0] not in ("Z", "X"):
            alive.append(pid)
    return alive


class CliRun:
    def __init__(self, log: Path, root: Path, config: Path, env: dict, extra_env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selflearn.cli", "run", "--input", str(log), "--output", str(root),
             "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**env, **(extra_env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s: {self.tail()}") from None
            if line is None:
                raise AssertionError(f"run ended (rc={self.proc.wait()}) before {pattern!r}: {self.tail()}")
            if rx.search(line):
                return line

    def kill_group(self) -> dict[int, str]:
        """SIGKILL the run's process group; returns every process the run had."""
        procs = descendants(self.proc.pid)
        names = [_cmdline(p) for p in procs]
        assert any(n.startswith("java") or "/java " in n for n in names), names  # Spark is up
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        return procs

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        out = self.proc.stdout.read()
        time.sleep(0.2)
        return rc, out

    def tail(self) -> str:
        return "".join(self.stderr[-15:])


def run_to_end(sim_log, root, config, env) -> Path:
    r = CliRun(sim_log, root, config, env)
    rc, out = r.finish()
    assert rc == 0, r.tail()
    final = Path(out.strip().splitlines()[-1])
    assert (final / "_SUCCESS").is_file()
    return final


def checksums(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["checksums"]


# --- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from selflearn.simulate import simulate

    base = tmp_path_factory.mktemp("faults")
    simulate(str(base / "sim"), users=40, locales=["en-US"], seed=1)
    cfg = base / "one-core.yaml"
    cfg.write_text("spark_master: 'local[1]'\nspark_shuffle_partitions: 2\n")
    env = {**os.environ, "PREFECT_HOME": str(base / "prefect-home"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("PREFECT_API_URL", None)
    env.pop("SELFLEARN_FAULT_PAUSE", None)
    env.pop("SELFLEARN_KEEP_WORK", None)
    return base, base / "sim" / "log", cfg, env


@pytest.fixture(scope="module")
def baseline(sim):
    """One uninterrupted run: the previous complete run of every fault below, and the
    content every rerun must reproduce."""
    base, log, cfg, env = sim
    root = base / "root"
    final = run_to_end(log, root, cfg, env)
    return root, final


# --- the tests ------------------------------------------------------------------------

def assert_consistent(root: Path, latest_id: str) -> None:
    assert (root / "LATEST").read_text().strip() == latest_id
    assert latest_run(root) == root / "runs" / latest_id
    for run in (root / "runs").iterdir():  # nothing partial under runs/
        assert (run / "_SUCCESS").is_file(), run
        assert (run / "manifest.json").is_file() and (run / "report.html").is_file()
    for q in (root / "quarantine").iterdir():  # no quarantine of a run that does not exist
        assert (root / "runs" / q.name / "_SUCCESS").is_file(), q
    ensure_root_free(root)  # SIGKILL released the flock


def test_sigkill_anywhere_then_rerun_gives_equal_content(sim, baseline):
    base, log, cfg, env = sim
    root, first = baseline
    ref = checksums(first)
    assert set(ref) == set(PUBLISHED_TABLES)
    killed_ids, published_by_killed = [], []
    for point in KILL_AT:
        before = {p.name for p in (root / "runs").iterdir()}
        if point.startswith("after:"):
            run = CliRun(log, root, cfg, env)
            run.wait_for(rf"\[{point[6:]}\] done")
        else:
            run = CliRun(log, root, cfg, env, {"SELFLEARN_FAULT_PAUSE": point})
            run.wait_for(re.escape(f"[fault] paused at {point}"))
        procs = run.kill_group()
        deadline = time.monotonic() + 30  # the PySpark daemons exit once the JVM's pipe closes
        while survivors(procs) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert survivors(procs) == [], f"{point}: processes of the killed run still alive"
        assert_consistent(root, first.name)
        new = {p.name for p in (root / "runs").iterdir()} - before
        if point == "publish:staged":
            assert not new  # complete in .staging, _SUCCESS and all, but not published
            staged = [d for d in (root / ".staging").iterdir() if (d / "_SUCCESS").is_file()]
            assert staged, "the kill should have left a complete staging dir"
        elif point in ("publish:moved", "publish:latest_tmp"):
            # moved into runs/ complete, but LATEST (the contract's "newest complete run")
            # still names the previous run
            assert len(new) == 1
            published_by_killed += list(new)
            assert checksums(root / "runs" / next(iter(new))) == ref
        else:
            assert not new
        killed_ids.append(point)
    # what the killed runs left behind, for the rerun to clean
    assert any((root / ".work").iterdir()) and any((root / ".staging").iterdir())
    assert (root / "LATEST.tmp").exists()
    rerun = run_to_end(log, root, cfg, env)
    assert rerun.name != first.name and (root / "LATEST").read_text().strip() == rerun.name
    assert checksums(rerun) == ref
    assert_consistent(root, rerun.name)
    assert list((root / ".staging").iterdir()) == [] and list((root / ".work").iterdir()) == []
    assert not (root / "LATEST.tmp").exists()
    # killed between moving the run and moving its quarantine: the rerun rolled it forward
    for run_id in published_by_killed:
        assert (root / "quarantine" / run_id).is_dir()


def test_second_run_on_a_busy_root_refuses_with_one_line(sim, baseline):
    base, log, cfg, env = sim
    root, _ = baseline
    latest = (root / "LATEST").read_text().strip()
    before = {d: sorted(p.name for p in (root / d).iterdir()) for d in ("runs", "quarantine")}
    first = CliRun(log, root, cfg, env)
    try:
        first.wait_for(r"\[ingest\] started")  # the lock is held from here on
        second = subprocess.run(
            [sys.executable, "-m", "selflearn.cli", "run", "--input", str(log), "--output", str(root),
             "--config", str(cfg)], capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 2
        assert second.stderr.strip().count("\n") == 0, second.stderr
        assert "another selflearn run is using" in second.stderr and "Traceback" not in second.stderr
        assert second.stdout == ""
        first.wait_for(r"\[ingest\] done")  # the first run went on undisturbed
    finally:
        procs = first.kill_group() if first.proc.poll() is None else {}
    deadline = time.monotonic() + 30
    while survivors(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert survivors(procs) == []
    after = {d: sorted(p.name for p in (root / d).iterdir()) for d in ("runs", "quarantine")}
    assert after == before  # nothing of either run landed
    assert_consistent(root, latest)
