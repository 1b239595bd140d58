"""What incremental runs carry forward under ROOT/state/ (operator data, never published).

    state/salt                 the key of the pseudonymizing hash (random, made once)
    state/evidence.json        the committed state: {"days": {day: dir}, "tails": dir|null}
    state/evidence/<v>/day=D/  evidence rows of day D (one row per turn, ids hashed)
    state/tails/<v>/           turns whose session may go on in the next run's input
    state/forgotten.json       hashed ids of forgotten users, dropped from every later ingest
    state/embeddings/          the embedding cache (selflearn.encoders.embed)

Evidence rows are the enriched turns (sessions.ENRICHED_TURNS) reduced to what the key,
graph and rewrite steps read, with `user_id`, sessions and event ids replaced by keyed
hashes: every downstream aggregation then runs over the union of the retained days, so
day 1 then day 2 gives what one run over both days gives (docs/incremental.md).

Version directories are written beside the committed ones and become visible only when
evidence.json is replaced (os.replace): a crash leaves the previous state whole; unused
version directories are deleted after each commit.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Any

# The columns of an evidence row: what key_stats/edges/reach/candidates read, plus the
# turn's day and a hashed event id (to replace a re-computed turn's row).
EVIDENCE_COLUMNS = ("day", "eid", "user_id", "session", "locale", "seq", "text", "response_status",
                    "nlu_intent", "nlu_domain", "nlu_slots", "rewritten_from", "defect_prob",
                    "next_text", "pair_score", "is_rephrase", "graph_score")

_DT = re.compile(r"(?:^|[/\\])dt=(\d{4}-\d{2}-\d{2})(?=[/\\]|$)")


def partition_day(path: str) -> str | None:
    """The `dt=YYYY-MM-DD` hive partition a file lies in (the innermost), or None."""
    found = _DT.findall(os.path.dirname(path))
    return found[-1] if found else None


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class State:
    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir)

    # -- the key of the hash ----------------------------------------------------------------
    @property
    def salt(self) -> str:
        path = self.dir / "salt"
        if not path.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".salt.{uuid.uuid4().hex[:8]}"
            tmp.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
            try:  # link, not replace: two first runs never end up with different salts
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text(encoding="utf-8").strip()

    def hash_value(self, value: str) -> str:
        """The keyed hash `hash_column` computes in Spark, for one value."""
        return hashlib.sha256(f"{self.salt}\x1f{value}".encode("utf-8")).hexdigest()

    def hash_column(self, col):
        from pyspark.sql import functions as F

        return F.sha2(F.concat(F.lit(self.salt + "\x1f"), col), 256)

    # -- the committed state ----------------------------------------------------------------
    def committed(self) -> dict[str, Any]:
        path = self.dir / "evidence.json"
        if not path.is_file():
            return {"days": {}, "tails": None}
        return json.loads(path.read_text(encoding="utf-8"))

    def path(self, rel: str) -> Path:
        return self.dir / rel

    def commit(self, new: dict[str, Any]) -> None:
        """Make `new` the state (one atomic replace), then delete what it no longer uses."""
        _write_json_atomic(self.dir / "evidence.json", new)
        self.collect_garbage(new)

    def collect_garbage(self, current: dict[str, Any]) -> None:
        keep = {Path(p) for p in current["days"].values()}
        if current.get("tails"):
            keep.add(Path(current["tails"]))
        for d in sorted((self.dir / "evidence").glob("*/day=*")) + sorted((self.dir / "tails").glob("*")):
            if d.is_dir() and d.relative_to(self.dir) not in keep:
                shutil.rmtree(d, ignore_errors=True)
        for d in sorted((self.dir / "evidence").glob("*")):
            if d.is_dir() and not any(p.name.startswith("day=") for p in d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)

    # -- forgotten users --------------------------------------------------------------------
    def forgotten(self) -> list[str]:
        path = self.dir / "forgotten.json"
        return json.loads(path.read_text(encoding="utf-8"))["users"] if path.is_file() else []

    def add_forgotten(self, user_hash: str) -> None:
        users = sorted(set(self.forgotten()) | {user_hash})
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.dir / "forgotten.json", {"users": users})


def retained_days(days: list[str], window_days: int, today: str | None = None) -> list[str]:
    """The days a window of `window_days` keeps, counted back from the newest (0: all).
    With `today` (the run's UTC date) the window's "now" never runs ahead of the wall
    clock: it counts back from min(newest day, today), and a day after tomorrow (no valid
    timestamp can have it) is never kept."""
    if today is not None:
        limit = (dt.date.fromisoformat(today) + dt.timedelta(days=1)).isoformat()
        days = [d for d in days if d <= limit]
    if not days or window_days <= 0:
        return sorted(days)
    newest = dt.date.fromisoformat(min(max(days), today) if today is not None else max(days))
    first = (newest - dt.timedelta(days=window_days - 1)).isoformat()
    return sorted(d for d in days if d >= first)
