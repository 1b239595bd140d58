"""`selflearn forget --user ID --output ROOT`: remove one user's evidence from the state
and caches of ROOT, under the ROOT lock, so the next run's outputs no longer depend on it.

* the user's keyed hash is recorded in state/forgotten.json first, so any later ingest
  (an old log replayed) drops that user's rows, counted as `rows_forgotten`;
* every committed evidence day and the session tails are rewritten without the user's
  rows, as new version directories, then made current by one atomic replace of
  state/evidence.json (the old versions are deleted after);
* embedding-cache entries of keys no other retained user said are deleted (a file at a
  time, written aside and renamed);
* work directories of crashed runs (which may hold the user's rows) are deleted.

Plain pyarrow: no Spark needed. Published runs are not touched: they carry counts, never
user ids (contract section 4).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .publish import RunDirs
from .state import State


def _read_dir(path: Path) -> pa.Table:
    return ds.dataset(str(path), format="parquet").to_table()  # skips _SUCCESS and .crc files


def _texts(table: pa.Table, columns: tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    for c in columns:
        if c in table.column_names:
            out.update(v for v in pc.unique(table[c]).to_pylist() if v is not None)
    return out


def forget_user(root: str | Path, user_id: str) -> dict:
    """Forget `user_id` in ROOT; returns what was removed."""
    dirs = RunDirs(root, f"forget-{uuid.uuid4().hex[:8]}")
    dirs.acquire()
    try:
        return _forget(dirs, user_id)
    finally:
        dirs.release()
        shutil.rmtree(dirs.staging, ignore_errors=True)


def _forget(dirs: RunDirs, user_id: str) -> dict:
    state = State(dirs.state)
    user = state.hash_value(user_id)
    state.add_forgotten(user)  # first: whatever happens next, later ingests drop the user
    committed = state.committed()
    tag = f"forget-{uuid.uuid4().hex[:8]}"
    new = {"days": dict(committed["days"]), "tails": committed.get("tails")}
    said, others = set(), set()
    removed = {"evidence_rows": 0, "days": 0, "tail_turns": 0, "cached_keys": 0}
    for day, rel in sorted(committed["days"].items()):
        table = _read_dir(state.path(rel))
        mine = pc.equal(table["user_id"], user)
        n = pc.sum(mine).as_py() or 0
        rest = table.filter(pc.invert(mine)) if n else table
        others |= _texts(rest, ("text", "next_text"))
        if not n:
            continue
        said |= _texts(table.filter(mine), ("text", "next_text"))
        out = f"evidence/{tag}/day={day}"
        state.path(out).mkdir(parents=True)
        pq.write_table(rest, state.path(out) / "part-00000.parquet")
        new["days"][day] = out
        removed["evidence_rows"] += n
        removed["days"] += 1
    if committed.get("tails"):
        table = _read_dir(state.path(committed["tails"]))
        mine = pc.equal(table["user_id"], user)
        n = pc.sum(mine).as_py() or 0
        if n:
            out = f"tails/{tag}"
            state.path(out).mkdir(parents=True)
            pq.write_table(table.filter(pc.invert(mine)), state.path(out) / "part-00000.parquet")
            new["tails"] = out
            removed["tail_turns"] = n
    state.commit(new)
    removed["cached_keys"] = _drop_cached(state.dir / "embeddings", said - others)
    # A crashed run's work data may hold the user's rows; no run is active (we hold the lock).
    if (dirs.root / ".work").is_dir():
        for d in (dirs.root / ".work").iterdir():
            shutil.rmtree(d, ignore_errors=True)
    return removed


def _drop_cached(cache_dir: Path, texts: set[str]) -> int:
    """Delete cached vectors of `texts`, one part file at a time (write aside, rename)."""
    if not texts or not cache_dir.is_dir():
        return 0
    wanted = pa.array(sorted(texts), pa.string())
    dropped = 0
    for part in sorted(cache_dir.glob("*/part-*.parquet")):
        table = pq.read_table(part)
        hit = pc.is_in(table["text"], value_set=wanted)
        n = pc.sum(hit).as_py() or 0
        if not n:
            continue
        dropped += n
        if n == table.num_rows:
            part.unlink()
            continue
        tmp = part.with_name(f".{part.name}.tmp")
        pq.write_table(table.filter(pc.invert(hit)), tmp)
        os.replace(tmp, part)
    return dropped
