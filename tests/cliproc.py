"""A `selflearn run` subprocess in its own process group, watched through its stderr
progress lines; the processes below it read from /proc (Linux)."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


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


_STARTED: list["CliRun"] = []


def kill_all_alive() -> None:
    """Kill the process group of every run still alive (a failed test's leftovers)."""
    while _STARTED:
        r = _STARTED.pop()
        if r.proc.poll() is None:
            try:
                os.killpg(r.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            r.proc.wait(timeout=60)


class CliRun:
    def __init__(self, log: Path, root: Path, config: Path, env: dict, extra_env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selflearn.cli", "run", "--input", str(log), "--output", str(root),
             "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**env, **(extra_env or {})},
        )
        _STARTED.append(self)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 1800) -> str:
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

    def finish(self, timeout: float = 1800) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        out = self.proc.stdout.read()
        time.sleep(0.2)
        return rc, out

    def tail(self) -> str:
        return "".join(self.stderr[-15:])




def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process in KiB, else (0, 0)."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class MemoryWatch:
    """Polls every process below `pid`: the peak RSS (VmHWM) of each, by kind (the
    driver JVM, the PySpark workers, the rest), and the peak of their sum."""

    def __init__(self, pid: int, every_s: float = 0.2):
        self.pid, self.every_s = pid, every_s
        self.peak: dict[int, int] = {}
        self.kind: dict[int, str] = {}
        self.total_peak_kb = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()

    def _poll(self):
        while not self._stop.is_set():
            total = 0
            for p in descendants(self.pid):
                rss, hwm = memory_kb(p)
                total += rss
                if self.kind.get(p, "other") == "other":  # again: spark-submit execs into java
                    cmd = _cmdline(p)
                    self.kind[p] = ("jvm" if cmd.split(" ")[0].endswith("java") else
                                    "python_worker" if "pyspark.daemon" in cmd else "other")
                self.peak[p] = max(self.peak.get(p, 0), hwm)
            self.total_peak_kb = max(self.total_peak_kb, total)
            time.sleep(self.every_s)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        by = lambda k: [v for p, v in self.peak.items() if self.kind.get(p) == k]  # noqa: E731
        return {"total_peak_mb": round(self.total_peak_kb / 1024, 1),
                "jvm_peak_mb": round(max(by("jvm"), default=0) / 1024, 1),
                "python_worker_peak_mb": round(max(by("python_worker"), default=0) / 1024, 1),
                "python_workers_sum_of_peaks_mb": round(sum(by("python_worker")) / 1024, 1)}
