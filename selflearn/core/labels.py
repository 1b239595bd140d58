"""Weakly labeled NLU training rows (Snorkel-style: evidence in, weighted labels out).

Two labeling sources:
- `rewrite`: the source key of a rewrite gets the interpretation (intent, domain, slots)
  its target received when it succeeded, weighted by the rewrite's confidence, but only
  if every slot value projects onto the source text. A rewrite whose change lies inside
  a slot value (a misheard name) fails projection: it stays a rewrite, never an NLU row,
  since it would teach that the span is no slot.
- `paraphrase`: a failing member of a paraphrase cluster gets the cluster's dominant
  successful interpretation when its agreement is at least min_label_agreement and at
  least min_label_supporters served members carry it, weighted by that agreement, with
  the same projection rule.
Rows go to `train` or `dev` by a stable hash of (locale, text). No row carries an
interpretation on a deny list or a key blocked as a whole source (drop_controlled).
"""
from __future__ import annotations

import hashlib
import json

import pandas as pd

from selflearn.config import Settings
from selflearn.core.controls import Controls, denied
from selflearn.core.defects import is_failing, is_working
from selflearn.schema import columns
from selflearn.core.text import normalize_text, occurs_in

TRAINING_COLUMNS = columns("training")


def project_slots(text: str, slots: list[dict]) -> list[dict] | None:
    """Slots re-expressed on `text` (values as their text keys), or None when some value
    does not occur in `text` as a whole-token sequence."""
    out = []
    for slot in slots:
        value = normalize_text(str(slot["value"]))
        if not occurs_in(value, text):
            return None
        out.append({"name": str(slot["name"]), "value": value})
    return out


def split_of(locale: str, text: str, dev_share: float) -> str:
    h = hashlib.sha256(f"{locale}\x1f{text}".encode("utf-8")).digest()
    return "dev" if int.from_bytes(h[:8], "big") / 2**64 < dev_share else "train"


def parse_slots(slots_json) -> list[dict]:
    if slots_json is None or (isinstance(slots_json, float) and pd.isna(slots_json)):
        return []
    if isinstance(slots_json, str):
        return json.loads(slots_json) or []
    return [dict(s) for s in slots_json]


def rewrite_labels(rewrites: pd.DataFrame, interpretations: pd.DataFrame) -> pd.DataFrame:
    """`interpretations`: locale, text, intent, domain, slots_json (the key's dominant
    successful interpretation)."""
    merged = rewrites.merge(
        interpretations.rename(columns={"text": "target"}), on=["locale", "target"], how="inner"
    )
    rows = []
    for r in merged.itertuples(index=False):
        if not isinstance(r.intent, str):
            continue
        slots = project_slots(r.source, parse_slots(r.slots_json))
        if slots is None:
            continue
        rows.append((r.locale, r.source, r.intent, r.domain, slots, float(r.confidence), "rewrite"))
    return pd.DataFrame(rows, columns=TRAINING_COLUMNS[:-1])


def paraphrase_labels(clusters: pd.DataFrame, key_stats: pd.DataFrame, interpretations: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Labels for failing members of clusters with a dominant successful interpretation."""
    if clusters.empty:
        return pd.DataFrame(columns=TRAINING_COLUMNS[:-1])
    c = clusters[(clusters["intent_agreement"] >= settings.min_label_agreement) & clusters["intent"].notna()]
    c = c[c["cluster_n_users"] >= settings.min_users]
    c = c.merge(key_stats[["locale", "text", "defect_rate"]], on=["locale", "text"], how="left")
    failing = c[is_failing(c["defect_rate"], settings.min_source_defect_rate)]
    # The cluster's interpretation: the one its successful members received.
    succ = c[is_working(c["defect_rate"], settings.min_source_defect_rate)].merge(interpretations, on=["locale", "text"], how="inner", suffixes=("", "_i"))
    succ = succ[succ["intent_i"] == succ["intent"]]
    # Agreement means several served members, not one key agreeing with itself.
    supporters = succ.groupby(["locale", "cluster_id"])["text"].nunique().rename("supporters").reset_index()
    succ = succ.merge(supporters, on=["locale", "cluster_id"])
    succ = succ[succ["supporters"] >= settings.min_label_supporters]
    best = succ.sort_values(["locale", "cluster_id", "n_users", "text"], ascending=[True, True, False, True]).drop_duplicates(["locale", "cluster_id"])
    failing = failing.merge(best[["locale", "cluster_id", "domain", "slots_json"]], on=["locale", "cluster_id"], how="inner")
    rows = []
    for r in failing.itertuples(index=False):
        slots = project_slots(r.text, parse_slots(r.slots_json))
        if slots is None:
            continue
        rows.append((r.locale, r.text, r.intent, r.domain, slots, float(r.intent_agreement), "paraphrase"))
    return pd.DataFrame(rows, columns=TRAINING_COLUMNS[:-1])


LABEL_SOURCE_RANK = {"rewrite": 0, "paraphrase": 1, "pattern": 2}


def training_rows(rewrite_rows: pd.DataFrame, paraphrase_rows: pd.DataFrame, dev_share: float,
                  pattern_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (locale, text): a rewrite label wins over a paraphrase label, which
    wins over a pattern label (a text seen in the log beats a filled template), then the
    higher weight. Stable order."""
    frames = [f for f in (rewrite_rows, paraphrase_rows, pattern_rows) if f is not None and len(f)]
    both = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if both.empty:
        return pd.DataFrame(columns=TRAINING_COLUMNS)
    both["_rank"] = both["label_source"].map(LABEL_SOURCE_RANK).astype(int)
    both = both.sort_values(["locale", "text", "_rank", "weight"], ascending=[True, True, True, False], kind="mergesort")
    both = both.drop_duplicates(["locale", "text"]).drop(columns="_rank")
    both["weight"] = both["weight"].clip(0.0, 1.0).round(9)
    both["split"] = [split_of(l, t, dev_share) for l, t in zip(both["locale"], both["text"])]
    return both[TRAINING_COLUMNS].reset_index(drop=True)


def drop_controlled(rows: pd.DataFrame, settings: Settings, controls: Controls | None = None) -> pd.DataFrame:
    """Training rows without denied interpretations (deny_intents, deny_domains) and
    without keys an operator blocked as a whole source."""
    if rows.empty:
        return rows
    keep = ~denied(rows["intent"].astype(object), rows["domain"].astype(object), settings)
    if controls is not None and len(controls.blocks):
        keep &= ~controls.is_blocked(rows["locale"], rows["text"])
    return rows[keep].reset_index(drop=True)
