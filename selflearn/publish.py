"""The one publishing step: everything a run writes goes through here.

A run builds ROOT/.staging/<run_id>/ (outputs, manifest, report), writes `_SUCCESS` last,
renames the directory to ROOT/runs/<run_id>/ (atomic on one file system), and only then
replaces ROOT/LATEST (write a temp file, os.replace). The quarantine goes the same way to
ROOT/quarantine/<run_id>/. A crash at any point leaves LATEST on the previous complete
run and nothing partial under runs/. A lock file keeps two runs off one ROOT.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import arrow_schema


class RootBusyError(RuntimeError):
    """Another run holds this output ROOT."""


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
            raise RootBusyError(f"another selflearn run is using {self.root}; wait for it to finish") from None
        self._lock_fh = fh
        for d in (self.staging, self.work, self.state):
            d.mkdir(parents=True, exist_ok=True)

    def release(self) -> None:
        if not os.environ.get("SELFLEARN_KEEP_WORK"):  # kept for debugging a run's stages
            shutil.rmtree(self.work, ignore_errors=True)
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def output(self, name: str) -> Path:
        return self.staging / name


def write_table(pdf: pd.DataFrame, path: Path, table: str | pa.Schema, sort_by: list[str]) -> int:
    """Write a small published table with pyarrow, rows in a defined order, schema from
    the contract. Returns the row count."""
    schema = arrow_schema(table) if isinstance(table, str) else table
    pdf = pdf.sort_values(sort_by, kind="mergesort").reset_index(drop=True) if len(pdf) else pdf
    arrow = pa.Table.from_pandas(pdf[schema.names], schema=schema, preserve_index=False)
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow, path / "part-00000.parquet")
    return arrow.num_rows


def content_checksum(path: Path) -> str:
    """SHA-256 over a table's rows in their defined order (every published table is
    written sorted by a unique key), floats rounded to 1e-6, so equal content gives an
    equal checksum whatever the file layout."""
    table = pq.read_table(path)
    h = hashlib.sha256()
    h.update(",".join(table.schema.names).encode())
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
    publish gate held it back: the run is then complete under runs/ but not LATEST)."""
    (dirs.staging / "_SUCCESS").write_text("")
    dirs.final.parent.mkdir(parents=True, exist_ok=True)
    if dirs.quarantine_staging.exists():
        dirs.quarantine.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dirs.quarantine_staging, dirs.quarantine)
    os.replace(dirs.staging, dirs.final)
    if not move_latest:
        return dirs.final
    latest_tmp = dirs.root / "LATEST.tmp"
    latest_tmp.write_text(dirs.run_id + "\n", encoding="utf-8")
    os.replace(latest_tmp, dirs.root / "LATEST")
    return dirs.final


def latest_run(root: str | Path) -> Path | None:
    root = Path(root)
    latest = root / "LATEST"
    if not latest.is_file():
        return None
    run = root / "runs" / latest.read_text(encoding="utf-8").strip()
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
