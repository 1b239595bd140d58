"""`selflearn forget --user ID --output ROOT`: remove one user's evidence from the state
and caches of ROOT, under the ROOT lock, so the next run's outputs no longer depend on it.

* the user's keyed hash is recorded in state/forgotten.json first, so any later ingest
  (an old log replayed) drops that user's rows, counted as `rows_forgotten`;
* every committed evidence day and the session tails are rewritten without the user's
  rows, as new version directories, then made current by one atomic replace of
  state/evidence.json (the old versions are deleted after);
* embedding-cache entries of keys no other retained user said are deleted (a file at a
  time, written aside and renamed);
* work directories of crashed runs (which may hold the user's rows) are deleted;
* rows of the user in earlier runs' quarantine/<run_id>/ (rows as read, raw ids
  included) are removed the same way (write aside, rename);
* the user's turns in the published operator tables of every run under runs/ (`turns/`
  and `rephrase_pairs/`, which hold event ids and texts one user said) are removed the
  same way, a file at a time, and the run's manifest gets the new checksums and a
  `forget_amendments` entry (when, and how many rows of each table; never who).
  The user's turns are known by their keyed event ids in the retained evidence and the
  session tails: turns of days that left the evidence window before
  the forget cannot be told apart from other users' and stay in runs that published them.

ROOT must be a selflearn ROOT (state/, runs/ or LATEST in it): a mistyped path is refused,
never created. `init=True` (`--init`) records the user in a new or empty ROOT before its
first run. `found` says whether the user had any row in ROOT (the CLI exits
FORGET_NOT_FOUND_EXIT when not); the user is recorded as forgotten either way.

Plain pyarrow: no Spark needed. The customer-facing tables of published runs (`rewrites/`,
`rewrite_patterns/`, `training/`, ...) are not rewritten: they carry no ids and rest on
`min_users` users each; the next run leaves the user out of them.
"""
from __future__ import annotations

import json
import os
import shutil
import datetime as dt
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from selflearn.run.publish import RunDirs, content_checksum, table_files, write_json_atomic
from selflearn.run.state import State


def _read_dir(path: Path) -> pa.Table:
    return ds.dataset(str(path), format="parquet").to_table()  # skips _SUCCESS and .crc files


def _texts(table: pa.Table, columns: tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    for c in columns:
        if c in table.column_names:
            out.update(v for v in pc.unique(table[c]).to_pylist() if v is not None)
    return out


FORGET_NOT_FOUND_EXIT = 4


class NotARootError(ValueError):
    """The path given as ROOT is no selflearn output ROOT."""


def is_selflearn_root(root: Path) -> bool:
    return root.is_dir() and any((root / p).exists() for p in ("state", "runs", "LATEST"))


def check_root(root: str | Path, init: bool = False) -> None:
    """Refuse a path that is not a selflearn ROOT (with init: a new or empty directory is
    allowed too)."""
    p = Path(root)
    if is_selflearn_root(p):
        return
    if init and (not p.exists() or (p.is_dir() and not any(p.iterdir()))):
        return
    if p.exists() and not p.is_dir():
        raise NotARootError(f"{p} is a file, not a selflearn output ROOT")
    hint = " (use --init to record the user in a new ROOT before its first run)" if not p.exists() or not any(p.iterdir()) else ""
    raise NotARootError(f"{p} is not a selflearn output ROOT (no state/, runs/ or LATEST){hint}")


def forget_user(root: str | Path, user_id: str, init: bool = False, purge_unlinked: bool = False) -> dict:
    """Forget `user_id` in ROOT; returns what was removed, and `found`. `unlinked_runs`:
    published runs that hold turns of days no retained evidence links to a user (they may
    hold the user's); with `purge_unlinked` their operator tables are removed
    (`purged_runs`)."""
    check_root(root, init)
    dirs = RunDirs(root, f"forget-{uuid.uuid4().hex[:8]}")
    dirs.acquire()
    try:
        return _forget(dirs, user_id, purge_unlinked)
    finally:
        dirs.release()
        shutil.rmtree(dirs.staging, ignore_errors=True)


def _forget(dirs: RunDirs, user_id: str, purge_unlinked: bool = False) -> dict:
    state = State(dirs.state)
    user = state.hash_value(user_id)
    state.add_forgotten(user)  # first: whatever happens next, later ingests drop the user
    committed = state.committed()
    tag = f"forget-{uuid.uuid4().hex[:8]}"
    new = {"days": dict(committed["days"]), "tails": committed.get("tails")}
    said, others = set(), set()
    removed = {"evidence_rows": 0, "days": 0, "tail_turns": 0, "cached_keys": 0, "quarantine_rows": 0,
               "published_rows": 0, "published_runs": 0, "purged_runs": []}
    eids: set[str] = set()  # the user's event ids, keyed-hashed as evidence stores them
    for day, rel in sorted(committed["days"].items()):
        table = _read_dir(state.path(rel))
        mine = pc.equal(table["user_id"], user)
        n = pc.sum(mine).as_py() or 0
        rest = table.filter(pc.invert(mine)) if n else table
        others |= _texts(rest, ("text", "next_text"))
        if not n:
            continue
        said |= _texts(table.filter(mine), ("text", "next_text"))
        eids.update(table.filter(mine)["eid"].to_pylist())
        out = f"evidence/{tag}/day={day}"
        state.path(out).mkdir(parents=True)
        pq.write_table(rest, state.path(out) / "part-00000.parquet")
        new["days"][day] = out
        removed["evidence_rows"] += n
        removed["days"] += 1
    # every evidence and tail version on disk, committed or not: a run the publish gate held
    # published turns of days it never committed, and commit() below deletes those versions
    eids |= _user_eids(state, user, skip={state.path(rel) for rel in committed["days"].values()})
    linked_days = set(committed["days"]) | {d.name[len("day="):] for d in state.path("evidence").glob("*/day=*")}
    if committed.get("tails"):
        table = _read_dir(state.path(committed["tails"]))
        mine = pc.equal(table["user_id"], user)
        n = pc.sum(mine).as_py() or 0
        if n:
            eids.update(state.hash_value(e) for e in table.filter(mine)["event_id"].to_pylist() if e is not None)
            out = f"tails/{tag}"
            state.path(out).mkdir(parents=True)
            pq.write_table(table.filter(pc.invert(mine)), state.path(out) / "part-00000.parquet")
            new["tails"] = out
            removed["tail_turns"] = n
    state.commit(new)
    removed["cached_keys"] = _drop_cached(state.dir / "embeddings", said - others)
    removed["quarantine_rows"] = _drop_quarantined(dirs.root / "quarantine", user_id)
    removed["published_rows"], removed["published_runs"] = _drop_published(dirs.root / "runs", eids, state.hash_value)
    # runs that published turns of days no retained evidence links to a user any more
    removed["unlinked_runs"] = _runs_with_unlinked_days(dirs.root / "runs", linked_days)
    if purge_unlinked and removed["unlinked_runs"]:
        removed["purged_runs"] = _purge_operator_tables(dirs.root / "runs", removed["unlinked_runs"])
        removed["unlinked_runs"] = []
    # A crashed run's work data may hold the user's rows; no run is active (we hold the lock).
    if (dirs.root / ".work").is_dir():
        for d in (dirs.root / ".work").iterdir():
            shutil.rmtree(d, ignore_errors=True)
    removed["found"] = bool(removed["evidence_rows"] or removed["tail_turns"] or removed["quarantine_rows"]
                            or removed["published_rows"])
    return removed


def _raw_user(raw: str | None) -> str | None:
    import re

    if raw is None:
        return None
    try:
        row = json.loads(raw)
        if isinstance(row, dict) and row.get("user_id") is not None:
            return str(row["user_id"])
    except ValueError:
        pass
    m = re.search(r'"user_id"\s*:\s*"((?:[^"\\]|\\.)*)"', raw)
    return m.group(1) if m else None


def _rewrite_without(part: Path, table: pa.Table, hit: pa.Array, unlink_empty: bool = False) -> int:
    """Write `part` again without the rows `hit` marks (aside, then renamed over it: a
    reader sees the old file or the new one); with `unlink_empty`, a part left with no row
    is deleted instead. The part keeps its schema (and Spark's metadata) and its row order.
    Returns the rows removed."""
    n = pc.sum(hit).as_py() or 0
    if not n:
        return 0
    if unlink_empty and n == table.num_rows:
        part.unlink()
        return n
    tmp = part.with_name(f".{part.name}.tmp")
    pq.write_table(table.filter(pc.invert(hit)), tmp)
    os.replace(tmp, part)
    return n


def _drop_quarantined(quarantine_dir: Path, user_id: str) -> int:
    """Remove the user's rows from every quarantine/<run_id>/ part file (rows as read: the
    raw id is matched), a file at a time (write aside, rename)."""
    dropped = 0
    for part in sorted(quarantine_dir.glob("*/*.parquet")) if quarantine_dir.is_dir() else []:
        table = pq.read_table(part)
        if "raw" not in table.column_names:
            continue
        hit = pa.array([_raw_user(r) == user_id for r in table["raw"].to_pylist()], pa.bool_())
        dropped += _rewrite_without(part, table, hit)
    return dropped


def _drop_cached(cache_dir: Path, texts: set[str]) -> int:
    """Delete cached vectors of `texts`, one part file at a time (write aside, rename)."""
    if not texts or not cache_dir.is_dir():
        return 0
    wanted = pa.array(sorted(texts), pa.string())
    dropped = 0
    for part in sorted(cache_dir.glob("*/part-*.parquet")):
        table = pq.read_table(part)
        hit = pc.is_in(table["text"], value_set=wanted)
        dropped += _rewrite_without(part, table, hit, unlink_empty=True)
    return dropped


# Published operator tables that hold single turns, and their event-id columns.
_OPERATOR_TABLES = {"turns": ("event_id",), "rephrase_pairs": ("first_event_id", "second_event_id")}


def _drop_published(runs_dir: Path, eids: set[str], hash_value) -> tuple[int, int]:
    """Remove rows whose event id (keyed with `hash_value`) is in `eids` from the operator
    tables of every published run, a file at a time (write aside, rename); then write the
    run's manifest again with the new checksums and a `forget_amendments` entry. Returns
    (rows removed, runs changed)."""
    if not eids or not runs_dir.is_dir():
        return 0, 0
    total, changed_runs = 0, 0
    for run in sorted(d for d in runs_dir.iterdir() if d.is_dir() and (d / "manifest.json").is_file()):
        dropped: dict[str, int] = {}
        for table_name, id_columns in _OPERATOR_TABLES.items():
            n_table = 0
            for part in table_files(run / table_name) if (run / table_name).is_dir() else []:
                table = pq.read_table(part)
                cols = [c for c in id_columns if c in table.column_names]
                if not cols:
                    continue
                hit = pa.array([any(v is not None and hash_value(v) in eids for v in row)
                                for row in zip(*(table[c].to_pylist() for c in cols))], pa.bool_())
                n_table += _rewrite_without(part, table, hit)
            if n_table:
                dropped[table_name] = n_table
        if not dropped:
            continue
        manifest_path = run / "manifest.json"
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for table_name in dropped:
            if table_name in manifest.get("checksums", {}):
                manifest["checksums"][table_name] = content_checksum(run / table_name)
        manifest.setdefault("forget_amendments", []).append({
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "rows_removed": dropped,
            "note": "one user's turns removed by selflearn forget; counts and report.html describe the run as published",
        })
        write_json_atomic(manifest_path, manifest)
        total += sum(dropped.values())
        changed_runs += 1
    return total, changed_runs


def _user_eids(state: State, user: str, skip: set[Path] = frozenset()) -> set[str]:
    """The keyed event ids of `user`'s rows in every evidence and tail version under state/,
    committed or not (`skip`: versions already read)."""
    out: set[str] = set()
    for d in sorted(state.path("evidence").glob("*/day=*")) + sorted(state.path("tails").glob("*")):
        if d in skip or not d.is_dir() or not any(d.rglob("*.parquet")):
            continue
        table = _read_dir(d)
        if "user_id" not in table.column_names:
            continue
        mine = table.filter(pc.equal(table["user_id"], user))
        if "eid" in mine.column_names:
            out.update(mine["eid"].to_pylist())
        elif "event_id" in mine.column_names:
            out.update(state.hash_value(e) for e in mine["event_id"].to_pylist() if e is not None)
    return out


def _runs_with_unlinked_days(runs_dir: Path, linked: set[str]) -> list[str]:
    """Runs under runs/ whose evidence covered a day no evidence under state/ holds any
    more (it left the window): their operator tables hold turns nothing links to a user."""
    out = []
    for run in sorted(d for d in runs_dir.iterdir() if d.is_dir()) if runs_dir.is_dir() else []:
        try:
            days = json.loads((run / "manifest.json").read_text(encoding="utf-8")).get("evidence", {}).get("days_merged", [])
        except (OSError, ValueError):
            continue
        if any(d not in linked for d in days) and any((run / t).exists() for t in _OPERATOR_TABLES):
            out.append(run.name)
    return out


def _purge_operator_tables(runs_dir: Path, run_ids: list[str]) -> list[str]:
    """Remove `turns/` and `rephrase_pairs/` of those runs (renamed aside, then deleted) and
    record it in each manifest (`forget_amendments`, and the checksums dropped)."""
    for run_id in run_ids:
        run = runs_dir / run_id
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        for t in _OPERATOR_TABLES:
            if (run / t).exists():
                aside = run / f".{t}.purged-{uuid.uuid4().hex[:8]}"
                os.rename(run / t, aside)
                shutil.rmtree(aside, ignore_errors=True)
            manifest.get("checksums", {}).pop(t, None)
        manifest.setdefault("forget_amendments", []).append({
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "operator_tables_removed": list(_OPERATOR_TABLES),
            "note": "selflearn forget --purge-unlinked: the run covered days that left the evidence window, "
                    "so its turns could no longer be linked to a user",
        })
        write_json_atomic(run / "manifest.json", manifest)
    return list(run_ids)
