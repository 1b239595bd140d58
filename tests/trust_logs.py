"""Attack and privacy logs for the trust tests: a small simulated log (real MASSIVE
utterances) into which PII, colluding users and a defect-rate inflater are injected,
again with real MASSIVE utterances."""
from __future__ import annotations

import hashlib
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.schema import arrow_schema
from selflearn.core.text import normalize_text

# Nullable: the simulator's malformed rows (missing ids...) must reach the quarantine.
LOG = pa.schema([f.with_nullable(True) for f in arrow_schema("log")])


def read_log(path: Path) -> pd.DataFrame:
    df = pq.read_table(path).to_pandas()
    return df[[c for c in LOG.names]].sort_values("event_id", kind="mergesort").reset_index(drop=True)


def write_log(df: pd.DataFrame, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df[LOG.names], schema=LOG, preserve_index=False), path / "part-0.parquet")
    return path


def _row(event_id, user, ts, utt, status, intent=None, domain=None, slots=None):
    ok = status == "success"
    return dict(event_id=event_id, user_id=user, device_id=f"{user}-dev", session_id=None, ts=ts, locale="en-US",
                utterance=utt, asr_confidence=0.9, nlu_domain=domain if ok else None, nlu_intent=intent if ok else None,
                nlu_slots=slots if ok else None, nlu_confidence=0.9 if ok else 0.1, response_status=status,
                barge_in=not ok, feedback=None, dwell_ms=30000 if ok else 700, rewritten_from=None,
                nlu_model_version="nlu-2026.10.2")


def _clean(log: pd.DataFrame) -> pd.Series:
    """Rows the simulator did not make malformed on purpose."""
    return (log["utterance"].map(lambda u: isinstance(u, str) and 0 < len(u) < 200) & (log["locale"] == "en-US")
            & log["user_id"].map(lambda u: isinstance(u, str) and bool(u)) & log["ts"].notna()
            & log["response_status"].isin(["success", "error", "unhandled"]))


def served_targets(log: pd.DataFrame) -> pd.DataFrame:
    """Keys the simulated NLU serves, by distinct users: key, intent, domain, slots."""
    ok = log[(log["response_status"] == "success") & log["nlu_intent"].notna() & _clean(log)].copy()
    ok["key"] = [normalize_text(u) for u in ok["utterance"]]
    users = ok.groupby("key")["user_id"].nunique().rename("users")
    first = ok.drop_duplicates("key").set_index("key")[["utterance", "nlu_intent", "nlu_domain", "nlu_slots"]]
    return first.join(users).sort_values(["users", "utterance"], ascending=[False, True]).reset_index()


def unused_rephrase(massive, log: pd.DataFrame, target: pd.Series, taken: set[str]) -> dict:
    """An en-US MASSIVE utterance of the target's intent that the log never had: what a
    colluder would say before the target for the pair to read as a rephrase (the detector
    refuses a pair that shares neither words nor meaning, however fast it came). Of the
    candidates, the one sharing most words with the target, for a pair of clear meaning."""
    keys = {normalize_text(u) for u in log["utterance"] if isinstance(u, str)} | taken
    words = set(normalize_text(target["utterance"]).split())
    best, best_overlap = None, -1.0
    for r in massive("en-US"):
        k = normalize_text(r["utt"])
        if r["intent"] != target["nlu_intent"] or k in keys or len(k.split()) < 4 or any(c.isdigit() for c in k):
            continue
        overlap = len(words & set(k.split())) / len(words | set(k.split()))
        if overlap > best_overlap:
            best, best_overlap = r, overlap
    if best is None:
        raise LookupError(f"no unused MASSIVE utterance of {target['nlu_intent']}")
    taken.add(normalize_text(best["utt"]))
    return best


def colluders(prefix: str, k: int, source_utt: str, target: pd.Series, start) -> list[dict]:
    """k fresh accounts, active on one day: each says the bogus source (not understood)
    and 6 s later the target, which is served with the target's interpretation."""
    rows = []
    for i in range(k):
        t = start + timedelta(minutes=37 * i)
        user = f"{prefix}-{i}"
        # event ids are published: they must not embed the user id
        rows.append(_row(f"ev-{prefix[::-1]}{i:03d}a", user, t, source_utt, "unhandled"))
        rows.append(_row(f"ev-{prefix[::-1]}{i:03d}b", user, t + timedelta(seconds=6), target["utterance"], "success",
                         target["nlu_intent"], target["nlu_domain"], target["nlu_slots"]))
    return rows


def inflater(user: str, utt: str, n: int, start) -> list[dict]:
    """One account saying a served key n times, every turn a failure, 20 s apart."""
    return [_row(f"ev-{user[::-1]}{i:05d}", user, start + timedelta(seconds=20 * i), utt, "unhandled") for i in range(n)]


def inject_pii(log: pd.DataFrame, n: int = 40) -> tuple[pd.DataFrame, list[str]]:
    """E-mails and phone numbers inserted into n real turns (and into the slot values of
    the served ones). Returns the log and the raw PII strings."""
    log = log.copy()
    picks = log[_clean(log)].sample(n=n, random_state=7).index
    raw = []
    for j, i in enumerate(picks):
        pii = f"jane.doe{j}@example.org" if j % 2 == 0 else f"+44 20 7946 {1000 + j:04d}"
        raw.append(pii)
        words = str(log.at[i, "utterance"]).split(" ")
        log.at[i, "utterance"] = " ".join(words[:1] + [pii] + words[1:])
        if log.at[i, "response_status"] == "success":
            slots = list(log.at[i, "nlu_slots"]) if log.at[i, "nlu_slots"] is not None else []
            log.at[i, "nlu_slots"] = slots + [{"name": "personal_info", "value": pii}]
    return log, raw


def id_forms(values) -> set[str]:
    """Each id raw and as md5/sha1/sha256 hex (common pseudonymisations)."""
    out = set()
    for v in values:
        if not isinstance(v, str) or not v:
            continue
        out.add(v.lower())
        for h in (hashlib.md5, hashlib.sha1, hashlib.sha256):
            out.add(h(v.encode()).hexdigest())
    return out


def published_text(run_dir: Path) -> str:
    """Every published file's content as text: parquet tables decoded row by row (their
    bytes are compressed, so a byte grep would miss), the rest as read."""
    parts = []
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            parts.append(str(pq.read_table(p).to_pylist()))
        else:
            parts.append(p.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts).lower()


class Tables(HTMLParser):
    """Rows of the HTML tables (and <p> placeholders) with an id, for report checks."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._id, self._row, self._cell = None, None, None
        self.text_by_id: dict[str, str] = {}
        self._text_id = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._id = a["id"]
            self.tables[self._id] = []
        elif tag in ("p", "span") and a.get("id"):
            self._text_id = a["id"]
            self.text_by_id[self._text_id] = ""
        elif tag == "tr" and self._id:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._id = None
        elif tag in ("p", "span"):
            self._text_id = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._id].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._text_id is not None:
            self.text_by_id[self._text_id] += data


def report_tables(run_dir: Path) -> Tables:
    t = Tables()
    t.feed((run_dir / "report.html").read_text(encoding="utf-8"))
    return t
