"""From absorption results to published rewrites: the emission rules.

A candidate (source, target, confidence) from the rewrite graph becomes a rewrite only if
  1. the source is defective often enough: source_defect_rate >= min_source_defect_rate
     (organic turns only; a source that now succeeds on its own is dropped);
  2. at least min_users distinct users stand behind it (users whose sessions went from
     the source to the target's class, directly or, for paraphrase evidence, through a
     failing paraphrase-cluster mate), and its source and target texts were each said by
     at least min_users distinct users (`text_too_few_users`; contract section 4: every
     published table but turns/ and rephrase_pairs/ holds only texts behind min_users
     users, so a one-user text never leaves as a rewrite's source, however many of its
     cluster mates' users stand behind the rewrite);
  3. the target is significantly better than the source: the one-sided Wilson lower bound
     of the target's success rate exceeds the Wilson upper bound of the source's, both at
     z = significance_z with n = distinct users of the source key and of the target's
     interpretation class (users, not turns, so a flood cannot shrink the interval);
  4. confidence >= min_rewrite_confidence;
  5. paraphrase-only evidence (no user of the source itself went there) must agree
     with the source's cluster: the target was served with the intent the cluster's
     successful members were served with, every slot value the target was served with
     occurs in the source text, and confidence >= min_paraphrase_confidence;
  6. its served evidence does not retract it: among turns served through this rewrite
     (`rewritten_from`), once there are served_min_turns of them, the mean defect
     probability must stay <= served_max_defect_rate.
  7. with `cluster_must_agree` (off by default), rephrase evidence too must agree with
     the intent the source's paraphrase cluster is served with, where it has one.
Operator controls come first (selflearn.core.controls): `denied` (the target's
interpretation is on a deny list; a source misread as a denied intent may be rewritten
away from it), `blocked` (a manual
block), `pinned_elsewhere` (the source is pinned to another target). A rewrite whose
target acts outward (a sensitive intent or domain: a purchase, a message sent in the
user's name) needs `sensitive_min_users` users (`too_few_users_sensitive`, after rule 2),
and where the target's slot values are not all in the source text, that many users whose
own sessions went from the source to it (`sensitive_value_change`: a paraphrase mate's
users wanted the mate's values). A pinned pair skips the statistical rules 1 and 3-7,
never `too_few_users`, `text_too_few_users`, `too_few_users_sensitive` nor `sensitive_value_change`.
Every rejected candidate keeps the first rule it failed, for the report.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from selflearn.config import Settings
from selflearn.core.controls import Controls, denied, sensitive
from selflearn.core.defects import is_working
from selflearn.core.labels import parse_slots, project_slots
from selflearn.schema import PARAPHRASE, REPHRASE, columns

REWRITE_COLUMNS = columns("rewrites")


USER_FLOORS = ("too_few_users", "text_too_few_users", "too_few_users_sensitive", "sensitive_value_change")  # rules no pin skips
MAX_CHAIN = 8  # a chain's last turns that count: a long loop of re-asks is one user's struggle
CHAIN_PAIRS = ["locale", "source", "target", "user_id", "session"]


def rephrase_chain_pairs(turns: pd.DataFrame) -> pd.DataFrame:
    """(locale, source, target, user_id, session) for every pair of turns linked by a
    chain of rephrases in one session: A -> B -> C gives A->B, A->C and B->C.

    `turns`: locale, user_id, session, seq, text, is_rephrase (the turn's successor
    re-asks it), whole sessions. A chain is a run of turns each rephrased by the next;
    only its last MAX_CHAIN turns pair up, and a pair needs two different keys. The
    locale is that of the chain's last turn. Vectorised: one frame holds many sessions."""
    if turns.empty:
        return pd.DataFrame(columns=CHAIN_PAIRS)
    t = turns.sort_values(["user_id", "session", "seq"], kind="mergesort").reset_index(drop=True)
    same_session = (t["user_id"].eq(t["user_id"].shift()) & t["session"].eq(t["session"].shift())).to_numpy()
    continues = same_session & t["is_rephrase"].shift().eq(True).to_numpy()
    chain = np.cumsum(~continues)
    t["chain"] = chain
    by_chain = t.groupby("chain", sort=False)
    t["pos"] = by_chain.cumcount()
    size = by_chain["seq"].transform("size").to_numpy()
    t = t[(size >= 2) & (t["pos"].to_numpy() >= size - MAX_CHAIN)]
    if t.empty:
        return pd.DataFrame(columns=CHAIN_PAIRS)
    last_locale = t.groupby("chain", sort=False)["locale"].transform("last")
    t = t.assign(locale=last_locale)[["chain", "pos", "locale", "user_id", "session", "text"]]
    pairs = t.merge(t[["chain", "pos", "text"]], on="chain", suffixes=("", "_b"))
    pairs = pairs[(pairs["pos"] < pairs["pos_b"]) & (pairs["text"] != pairs["text_b"])]
    return pairs.rename(columns={"text": "source", "text_b": "target"})[CHAIN_PAIRS].reset_index(drop=True)


def users_behind(reach: pd.DataFrame, mates: pd.DataFrame, candidates: pd.DataFrame, key_classes: pd.DataFrame,
                 min_user_active_days: int = 1) -> pd.DataFrame:
    """Who stands behind each rewrite candidate: (locale, source, target, n_users,
    n_sessions, n_source_users), distinct users, distinct (user, session) pairs, and the
    distinct users among them whose own sessions started at the source (not at a mate).

    A user stands behind (source, target) when one of their sessions went, by a chain of
    rephrases (`reach`, rows of CHAIN_PAIRS plus `user_days`), from the source to any key
    served like the target (same class in `key_classes`: locale, key, cls). Where the
    candidate rests on paraphrase evidence (its `evidence` is not `rephrase`), sessions
    that started at a failing cluster mate of the source (`mates`: locale, key, mate) count
    too: the graph used those users' evidence. Only users active on at least
    `min_user_active_days` days count (anti-sybil). Candidates no one stands behind get no row."""
    cols = ["locale", "source", "target", "user_id", "session"]
    uses_mates = candidates.loc[candidates["evidence"] != REPHRASE, ["locale", "source"]].drop_duplicates()
    inherited = (
        reach.merge(mates.rename(columns={"mate": "source", "key": "via"}), on=["locale", "source"])
        .merge(uses_mates.rename(columns={"source": "via"}), on=["locale", "via"])
        .drop(columns="source").rename(columns={"via": "source"})
    )
    rows = pd.concat([reach[cols + ["user_days"]].assign(direct=True), inherited[cols + ["user_days"]].assign(direct=False)],
                     ignore_index=True)
    if min_user_active_days > 1:
        rows = rows[rows["user_days"] >= min_user_active_days]
    classes = key_classes.rename(columns={"key": "target", "cls": "target_cls"})
    rows = rows.merge(classes, on=["locale", "target"]).drop(columns="target")
    wanted = candidates[["locale", "source", "target"]].merge(classes, on=["locale", "target"]).dropna(subset=["target_cls"])
    behind = rows.merge(wanted, on=["locale", "source", "target_cls"])
    if behind.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             (("locale", object), ("source", object), ("target", object), ("n_users", "int64"),
                              ("n_sessions", "int64"), ("n_source_users", "int64"))})
    behind["user_session"] = behind["user_id"].astype(str) + "\x00" + behind["session"].astype(str)
    behind["source_user"] = behind["user_id"].where(behind["direct"].astype(bool))  # nunique skips the mates' users
    out = behind.groupby(["locale", "source", "target"], sort=True).agg(
        n_users=("user_id", "nunique"), n_sessions=("user_session", "nunique"), n_source_users=("source_user", "nunique")).reset_index()
    return out.astype({"n_users": "int64", "n_sessions": "int64", "n_source_users": "int64"})


def wilson_bounds(p, n, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (lower, upper) for success rate p observed over n trials."""
    p = np.asarray(p, dtype=np.float64)
    n = np.maximum(np.asarray(n, dtype=np.float64), 1e-9)
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * np.sqrt(np.clip(p * (1 - p), 0, None) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    return (centre - margin) / denom, (centre + margin) / denom


def _users(c: pd.DataFrame, name: str) -> pd.Series:
    """A count of users of the candidates; a frame without the column (a caller's own
    candidates) counts every user behind the rewrite (n_users)."""
    return pd.to_numeric(c[name], errors="coerce").fillna(0) if name in c else c["n_users"]


def _col(c: pd.DataFrame, name: str) -> pd.Series:
    return c[name].astype(object) if name in c else pd.Series(None, index=c.index, dtype=object)


def select_rewrites(candidates: pd.DataFrame, settings: Settings, controls: Controls | None = None) -> pd.DataFrame:
    """`candidates` columns: locale, source, target, confidence, n_users, n_sessions,
    source_defect_rate, source_n_users, target_success_rate, target_n_users, evidence,
    served_turns, served_defect_rate. Returns them with `decision` ('emit' or the failed
    rule) in a stable order."""
    c = candidates.copy()
    _, source_upper = wilson_bounds(1.0 - c["source_defect_rate"], c["source_n_users"], settings.significance_z)
    target_lower, _ = wilson_bounds(c["target_success_rate"], c["target_n_users"], settings.significance_z)
    served_n = pd.to_numeric(c["served_turns"], errors="coerce").fillna(0)
    slots_project = pd.Series(
        [project_slots(s, parse_slots(j)) is not None for s, j in zip(c["source"], c["target_slots_json"])], index=c.index
    )
    served_bad = (served_n >= settings.served_min_turns) & (pd.to_numeric(c["served_defect_rate"], errors="coerce").fillna(0) > settings.served_max_defect_rate)
    controls = controls or Controls()
    # The deny list guards what a rewrite makes the system do: its target. A source the
    # NLU misreads as a denied intent (a request served as takeaway_order that its users
    # rephrase into something else) is rewritten away from that misreading, which never
    # performs a purchase or sends a message; it must pass every other rule as any source.
    target_intent, target_domain = _col(c, "target_intent"), _col(c, "target_domain")
    is_denied = denied(target_intent, target_domain, settings)
    is_sensitive = sensitive(target_intent, target_domain, settings)
    sensitive_floor = max(settings.min_users, settings.sensitive_min_users)
    # users whose own sessions started at the source (users_behind), and distinct users who
    # said the source and the target texts themselves (key_stats)
    source_users = _users(c, "n_source_users")
    source_said, target_said = _users(c, "source_n_users"), _users(c, "target_key_users")
    pinned, pinned_elsewhere = controls.pinned(c["locale"], c["source"], c["target"])
    cluster_intent = _col(c, "source_cluster_intent")
    operator_rules = [
        ("denied", is_denied),
        ("blocked", controls.is_blocked(c["locale"], c["source"], c["target"])),
        ("pinned_elsewhere", pinned_elsewhere),
    ]
    rules = [
        ("source_not_defective", is_working(c["source_defect_rate"], settings.min_source_defect_rate)),
        ("too_few_users", c["n_users"] < settings.min_users),
        ("text_too_few_users", (source_said < settings.min_users) | (target_said < settings.min_users)),
        # more accounts to steer a rewrite into spending money or sending words (trust):
        ("too_few_users_sensitive", is_sensitive & (c["n_users"] < sensitive_floor)),
        # a purchase or message whose slot values differ from what the source says (a
        # misheard value corrected, or another goal) rests on users who rephrased from the
        # source itself: a paraphrase mate's users wanted the mate's values, not these
        ("sensitive_value_change", is_sensitive & ~slots_project & (source_users < sensitive_floor)),
        ("not_significant", pd.Series(target_lower <= source_upper, index=c.index)),
        ("low_confidence", c["confidence"] < settings.min_rewrite_confidence),
        ("paraphrase_disagrees", (c["evidence"] == PARAPHRASE) & (
            (c["target_intent"].astype(object) != c["source_cluster_intent"].astype(object))
            | c["source_cluster_intent"].isna() | ~slots_project
            | (c["confidence"] < settings.min_paraphrase_confidence))),
        ("retracted_by_served_turns", served_bad),
        ("cluster_disagrees", pd.Series(settings.cluster_must_agree, index=c.index) & (c["evidence"] != PARAPHRASE)
         & cluster_intent.notna() & (target_intent != cluster_intent)),
    ]
    # A pin skips the statistical rules, never the user floors (USER_FLOORS).
    rules = operator_rules + [(n, pd.Series(f, index=c.index).fillna(False).astype(bool) & (~pinned if n not in USER_FLOORS else True))
                              for n, f in rules]
    c["decision"] = first_failed_rule(rules, c.index)
    return c.sort_values(["locale", "source", "target"], kind="mergesort").reset_index(drop=True)


def first_failed_rule(rules: list[tuple[str, object]], index: pd.Index) -> pd.Series:
    """Per row, the name of the first rule in `rules` ((name, failed) pairs, failed a
    boolean Series or array over `index`; NA counts as passed) the row fails, or 'emit':
    every emission table (rewrites, patterns, value corrections) keeps that one reason."""
    decision = pd.Series("emit", index=index, dtype=object)
    for name, failed in reversed(rules):  # the first failing rule wins
        decision = decision.where(~pd.Series(failed, index=index).fillna(False).to_numpy(dtype=bool), name)
    return decision


def published_rewrites(decided: pd.DataFrame) -> pd.DataFrame:
    out = decided[decided["decision"] == "emit"][REWRITE_COLUMNS].copy()
    out["n_users"] = out["n_users"].astype("int64")
    out["n_sessions"] = out["n_sessions"].astype("int64")
    for col in ("confidence", "source_defect_rate", "target_success_rate"):
        out[col] = out[col].clip(0.0, 1.0).round(9)
    return out.reset_index(drop=True)


def unmatched_pins(decided: pd.DataFrame, controls: Controls) -> int:
    """Pins the run's graph proposed no candidate for (reported, never invented)."""
    if controls.pins.empty:
        return 0
    got = set(decided[["locale", "source", "target"]].itertuples(index=False, name=None)) if len(decided) else set()
    return int(sum(p not in got for p in controls.pins[["locale", "source", "target"]].itertuples(index=False, name=None)))
