"""The one publishing step: everything a run writes goes through here.

A run builds ROOT/.staging/<run_id>/ (outputs, manifest, report), writes `_SUCCESS` last,
renames the directory to ROOT/runs/<run_id>/ (atomic on one file system), and only then
replaces ROOT/LATEST (write a temp file, os.replace). The quarantine goes the same way to
ROOT/quarantine/<run_id>/. A crash at any point leaves LATEST on the previous complete
run and nothing partial under runs/. A lock file keeps two runs off one ROOT; whoever
takes it removes what killed runs left in .staging/ and .work/ (no live run can own them).

Fault injection (tests only, inert unless set): SELFLEARN_FAULT_PAUSE=<point> makes the
run write "[fault] paused at <point>" to stderr and sleep there, so a test can SIGKILL
it at that exact point. Points: see FAULT_POINTS.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.schema import arrow_schema


class RootBusyError(RuntimeError):
    """Another run holds this output ROOT."""


def ensure_root_free(root: str | Path) -> None:
    """Raise RootBusyError when a live run holds ROOT's lock (checked and released at once:
    the CLI refuses early, with one line, before Spark or Prefect start; the run itself
    still takes the lock for good in RunDirs.acquire)."""
    lock = Path(root) / ".lock"
    if not lock.is_file():
        return
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RootBusyError(_busy_message(Path(root).resolve())) from None
        fcntl.flock(fh, fcntl.LOCK_UN)


def wait_for_root(root: str | Path, wait_s: float, poll_s: float = 1.0, say=None) -> float:
    """Wait up to `wait_s` seconds for the run holding ROOT to finish (`selflearn run
    --wait`: a scheduled run that starts while yesterday's is still publishing queues
    instead of failing); `say` gets a line when the wait starts and every 30 s. Returns the
    seconds waited; raises RootBusyError with the usual line, and how long it waited, when
    ROOT is still held after `wait_s`. A run that takes ROOT between this check and its own
    lock is refused as before (the lock is never shared)."""
    start = time.monotonic()
    last_said = None
    while True:
        try:
            ensure_root_free(root)
            return time.monotonic() - start
        except RootBusyError as busy:
            waited = time.monotonic() - start
            if waited >= wait_s:
                raise RootBusyError(f"{busy} (waited {waited:.0f} s, --wait {wait_s:g})") from None
            if say is not None and (last_said is None or waited - last_said >= 30):
                say(f"{busy}: waiting ({waited:.0f} of {wait_s:g} s)")
                last_said = waited
            time.sleep(min(poll_s, max(wait_s - waited, 0.0)))


class RootUnusableError(RuntimeError):
    """The output ROOT cannot be written: a file, below a file, or read-only."""


def check_output_root(root: str | Path) -> None:
    """Refuse, before Spark starts and with one line, an output ROOT that cannot hold a
    run: a file, a path below a file, or a directory (or, for a new ROOT, its nearest
    existing parent) where no file can be made. Writability is tried, not inferred from
    the mode bits: root ignores them, a read-only mount or an immutable directory does not."""
    p = Path(root)
    if p.exists() and not p.is_dir():
        raise RootUnusableError(f"output ROOT {p} is a file, not a directory")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != p and probe.exists() and not probe.is_dir():
        raise RootUnusableError(f"output ROOT {p} lies below a file ({probe})")
    try:
        tmp = probe / f".selflearn-write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.write_bytes(b"")
        tmp.unlink()
    except OSError as exc:
        where = f"output ROOT {p}" if probe == p else f"output ROOT {p}: its parent {probe}"
        raise RootUnusableError(f"{where} is not writable ({exc.strerror or type(exc).__name__})") from None


def _busy_message(root: Path) -> str:
    return f"another selflearn run is using {root}; wait for it to finish"


FAULT_POINTS = ("publish:staged", "publish:moved", "publish:latest_tmp")


def fault_point(name: str) -> None:
    """Pause here when SELFLEARN_FAULT_PAUSE names this point (a test then kills the run)."""
    if os.environ.get("SELFLEARN_FAULT_PAUSE") == name:
        # os.write, not print: Prefect's log_prints would route a print to its logger.
        os.write(2, f"[fault] paused at {name}\n".encode())
        time.sleep(float(os.environ.get("SELFLEARN_FAULT_PAUSE_S", "600")))


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


class RunDirs:
    """Paths of one run under an output ROOT, and the lock that guards the ROOT."""

    def __init__(self, root: str | Path, run_id: str):
        self.root = Path(root).resolve()
        self.run_id = run_id
        self.staging = self.root / ".staging" / run_id
        self.work = self.root / ".work" / run_id  # intermediate stage data, deleted after publish
        # Spark's scratch dirs (shuffle files hold raw ids): under ROOT, removed with .work/
        self.spark_local = self.root / ".work" / f"spark-{run_id}"
        self.quarantine_staging = self.root / ".staging" / f"{run_id}.quarantine"
        self.final = self.root / "runs" / run_id
        self.quarantine = self.root / "quarantine" / run_id
        self.state = self.root / "state"
        self._lock_fh = None

    def acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RootBusyError(_busy_message(self.root)) from None
        self._lock_fh = fh
        self.clean_leftovers()
        for d in (self.staging, self.work, self.state):
            d.mkdir(parents=True, exist_ok=True)

    def clean_leftovers(self) -> list[Path]:
        """Remove what killed runs left behind; call only while holding the lock (then no
        live run owns anything in .staging/ or .work/). A quarantine staged by a run that
        reached runs/ (killed between the two moves) is moved into place, not deleted."""
        assert self._lock_fh is not None, "clean_leftovers needs the ROOT lock"
        removed: list[Path] = []
        staging_root = self.root / ".staging"
        for d in sorted(staging_root.iterdir()) if staging_root.is_dir() else []:
            if d.name.endswith(".quarantine"):
                run_id = d.name[: -len(".quarantine")]
                if (self.root / "runs" / run_id / "_SUCCESS").is_file() and not (self.root / "quarantine" / run_id).exists():
                    (self.root / "quarantine").mkdir(parents=True, exist_ok=True)
                    os.replace(d, self.root / "quarantine" / run_id)
                    continue
            _remove(d)
            removed.append(d)
        work_root = self.root / ".work"
        keep = bool(os.environ.get("SELFLEARN_KEEP_WORK"))  # kept for debugging: leave them
        for d in sorted(work_root.iterdir()) if work_root.is_dir() and not keep else []:
            _remove(d)
            removed.append(d)
        # A run killed while embedding leaves its uncommitted vectors in a _tmp-* folder of
        # the cache (always under this ROOT's state/, so no live run of another ROOT owns it).
        for d in sorted((self.root / "state" / "embeddings").glob("*/_tmp-*")):
            _remove(d)
            removed.append(d)
        for f in (self.root / "LATEST.tmp",):
            if f.exists():
                f.unlink()
                removed.append(f)
        return removed

    def release(self) -> None:
        if not os.environ.get("SELFLEARN_KEEP_WORK"):  # kept for debugging a run's stages
            shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.spark_local, ignore_errors=True)  # its JVM is stopped (Run.finish) or gone
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def output(self, name: str) -> Path:
        return self.staging / name


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def write_table(pdf: pd.DataFrame, path: Path, table: str | pa.Schema, sort_by: list[str]) -> int:
    """Write a small published table with pyarrow, rows in a defined order, schema from
    the contract. Returns the row count."""
    schema = arrow_schema(table) if isinstance(table, str) else table
    pdf = pdf.sort_values(sort_by, kind="mergesort").reset_index(drop=True) if len(pdf) else pdf
    # An empty frame's columns carry no types (pandas makes them float64 or object): an
    # empty table is the schema's own, whatever the frame says.
    arrow = (pa.Table.from_pandas(pdf[schema.names], schema=schema, preserve_index=False) if len(pdf)
             else schema.empty_table())
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow, path / "part-00000.parquet")
    return arrow.num_rows


def table_files(path: Path) -> list[Path]:
    """A table's parquet files in name order, as pyarrow reads a directory (files and
    folders starting with '.' or '_', such as _SUCCESS and .crc files, are not data)."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(f for f in path.rglob("*")
                  if f.is_file() and not any(p.startswith((".", "_")) for p in f.relative_to(path).parts))


def content_checksum(path: Path, batch_rows: int = 65536) -> str:
    """SHA-256 over a table's rows in their defined order (every published table is
    written sorted by a unique key), floats rounded to 1e-6, so equal content gives an
    equal checksum whatever the file layout.

    Streams the files batch by batch: the driver holds one batch, never a whole table
    (turns/ has a row per accepted turn). Integer columns holding a null anywhere hash
    as floats in every batch, as when the table was read whole."""
    files = table_files(path)
    if not files:
        raise FileNotFoundError(f"no parquet files in {path}")
    schema = pq.read_schema(files[0])
    int_cols = [f.name for f in schema if pa.types.is_integer(f.type)]
    null_ints = set()
    for f in files if int_cols else ():
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=int_cols):
            null_ints.update(c for c in int_cols if batch.column(c).null_count)
    h = hashlib.sha256()
    h.update(",".join(schema.names).encode())
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            for c in null_ints:
                table = table.set_column(table.schema.get_field_index(c), c, table.column(c).cast(pa.float64()))
            frame = table.to_pandas()
            for col in frame.columns:
                if pd.api.types.is_float_dtype(frame[col]):
                    frame[col] = frame[col].round(6)
            for row in frame.itertuples(index=False):
                h.update(json.dumps(list(row), default=_jsonable, ensure_ascii=False, sort_keys=True).encode())
                h.update(b"\n")
    return h.hexdigest()


def _jsonable(v: Any):
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return str(v)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def publish(dirs: RunDirs, move_latest: bool = True) -> Path:
    """Move the complete staging directories into place, then move LATEST (unless the
    publish gate held it back: the run is then complete under runs/ but not LATEST). Safe
    to call again after a failure part-way (a retried publish task): done moves are
    skipped.

    The run goes first, its quarantine second: a kill in between leaves a complete run and
    a staged quarantine that the next run moves into place, never a quarantine/<run_id>
    of a run that does not exist."""
    if not (dirs.final / "_SUCCESS").is_file():
        (dirs.staging / "_SUCCESS").write_text("")
        fault_point("publish:staged")
        dirs.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dirs.staging, dirs.final)
        fault_point("publish:moved")
    if dirs.quarantine_staging.exists():
        dirs.quarantine.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dirs.quarantine_staging, dirs.quarantine)
    if not move_latest:
        return dirs.final
    latest_tmp = dirs.root / "LATEST.tmp"
    latest_tmp.write_text(dirs.run_id + "\n", encoding="utf-8")
    fault_point("publish:latest_tmp")
    os.replace(latest_tmp, dirs.root / "LATEST")
    return dirs.final


def latest_name(root: str | Path) -> str | None:
    """What ROOT/LATEST holds, or None without a LATEST file."""
    latest = Path(root) / "LATEST"
    return latest.read_text(encoding="utf-8").strip() if latest.is_file() else None


def latest_run(root: str | Path) -> Path | None:
    """The complete run LATEST names, or None."""
    name = latest_name(root)
    if name is None:
        return None
    run = Path(root) / "runs" / name
    return run if (run / "_SUCCESS").is_file() else None


def input_fingerprint(path: str | Path) -> str:
    """SHA-256 over the input's files: relative names, sizes and content."""
    p = Path(path)
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(p).as_posix() if p.is_dir() else f.name
        h.update(f"{rel}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
