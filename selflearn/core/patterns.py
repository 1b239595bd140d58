"""Rewrites that generalize across slot values: `rewrite_patterns/` (contract section 4.1).

A failing phrasing usually fails for every slot value, and most of its values are said by
too few users for an exact rewrite. Pattern evidence is the same rephrase evidence as
exact rewrites, delexicalized: where a failing source key was followed, in one session's
chain of re-asks, by a served target key whose served slot values all occur in both
texts (the projection labels.project_slots makes for weak labels), the pair also yields a
pattern pair, both keys with those values replaced by `{slot_name}`
("wake me up at {time} tomorrow" -> "set an alarm for {time} tomorrow").

Pattern pairs pool across users, sessions and slot values per locale; distinct users are
the votes (users, not turns: a flood is one vote). A candidate (source, target) becomes a
published pattern only if (rules in order, the first failed one is kept for the manifest):
  operator controls, as for exact rewrites: `denied` (the target's served intent or domain
  is on a deny list; a source misread as a denied intent may be rewritten away from it),
  `sensitive_target` (the target acts outward, settings `sensitive_intents` and
  `sensitive_domains`: a pattern binds values nobody checked, and a misheard one there
  buys the wrong thing or sends the wrong words; exact rewrites still reach those intents),
  `blocked` (a block names the pattern source, or the
  pair), `pinned_elsewhere` (the source is pinned to another target);
  `no_literal_text`: the source holds text besides its placeholders (a bare `{x}` would
     match every key);
  `too_few_values`: n_values >= 2 distinct slot-value tuples (one value is an exact rewrite);
  `too_few_users`: n_users >= min_users distinct users over all its values;
  `outvoted`: another target of the same source has more users, or as many and more of
     its own (one pattern per source);
  `matches_working`: among the users of every logged key the source matches (with the
     contract's own regular expression, selflearn.core.rewrite_apply), the share on keys that
     work (defect rate below min_source_defect_rate) is at most pattern_max_working_share:
     a pattern fires on texts nobody said yet, so it must not fire on requests that work
     today (a carrier phrase shared with another frame's working phrasing is refused);
     the matched keys the NLU reads as the source's own evidence does (the same wrong
     intent) are judged pooled, as one phrasing, since a key of one or two users has a
     noisy defect estimate (match_stats);
  `source_not_defective`: source_defect_rate, over every turn of every key the source
     matches (not only the turns that made the pattern), >= min_source_defect_rate;
  `not_significant`: the Wilson lower bound of the target's success rate (over every key
     the target matches) exceeds the Wilson upper bound of the source's, at significance_z,
     as for exact rewrites (n = users of the matched keys);
  `low_confidence`: confidence >= min_rewrite_confidence;
  `target_disagrees`: the target keys behind the pattern were served with one intent
     (share >= min_label_agreement), so the pattern means one thing;
  `disagrees_with_evidence`: of the users who rephrased from any failing key the source
     matches to a served key (all rephrase evidence, not only the pairs that
     delexicalize), a share >= pattern_min_agreement were served the target's intent
     with exactly the values the source binds in that key: what the pattern would have
     done for them. A source whose keys users mostly correct in their values (a value
     ASR mishears, a request that changes its goal) is refused: the pattern would carry
     the wrong value into a working phrasing. Judged also key by key: a matched key with
     evidence from >= min_users users of whom fewer than pattern_min_key_agreement agree
     refuses the pattern (evidence_agreement_with_keys).
A pin skips the statistical rules (outvoted .. disagrees_with_evidence), never the
privacy rules (literal text, values, users).

n_users, n_values and n_sessions of a candidate count every pattern pair from its source
to a target phrasing served with the target's intent (the class the users reached; the
values are variables); the class's most chosen phrasing is the published target.
confidence = (users of source -> the target's class) / (users of source -> any pattern
target) x target_success_rate.

Everything here is plain pandas over one locale's (or many locales') rows; Spark only
places the data (selflearn.spark.steps.patterns_step).
"""
from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd

from selflearn.config import Settings
from selflearn.core.controls import Controls, denied, sensitive
from selflearn.core.labels import TRAINING_COLUMNS, parse_slots
from selflearn.core.rewrite_apply import PLACEHOLDER, Pattern, _LocalePatterns, fill, has_literal_text, placeholder_names
from selflearn.core.rewrites import first_failed_rule, wilson_bounds
from selflearn.core.text import is_unspaced_char, normalize_text

PATTERN_COLUMNS = [
    "locale", "source", "target", "slots", "confidence", "n_users", "n_values", "n_sessions",
    "source_defect_rate", "target_success_rate", "evidence",
]
PAIR_COLUMNS = ["locale", "source", "target", "user_id", "session", "values", "target_intent", "target_domain",
                "source_intent", "source_domain"]
SLOT_NAME = re.compile(r"[a-z0-9_]+")
ADJACENT = re.compile(r"\{[a-z0-9_]+\}(?:\s*\{[a-z0-9_]+\})+")


# --- delexicalization ---------------------------------------------------------------

def _replace_value(text: str, value: str, placeholder: str) -> str | None:
    """`text` with every occurrence of `value` (a text key) replaced by `placeholder`, as
    whole tokens, or inside a word for a value in an unspaced script (as project_slots
    matches it); None when the value does not occur."""
    padded = f" {text} "
    if f" {value} " in padded:
        while f" {value} " in padded:  # adjacent repeats share a space: loop
            padded = padded.replace(f" {value} ", f" {placeholder} ")
        return padded[1:-1]
    if any(is_unspaced_char(c) for c in value) and value in text:
        return text.replace(value, placeholder)
    return None


def slot_values(slots: list[dict]) -> dict[str, str] | None:
    """{slot name: value as a text key} of served slots, or None when a value is empty, a
    name is not a placeholder name, or one name has two values."""
    values: dict[str, str] = {}
    for s in slots:
        name, value = str(s["name"]), normalize_text(str(s["value"]))
        if not value or not SLOT_NAME.fullmatch(name):
            return None
        if values.setdefault(name, value) != value:
            return None
    return values


def delexicalize_text(text: str, values: dict[str, str]) -> str | None:
    """`text` with each value replaced by `{name}` (_replace_value), or None when one is missing.
    Longest value first, so "new york city" is not cut by a "new york" of another slot."""
    for name, value in sorted(values.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        text = _replace_value(text, value, "{" + name + "}")
        if text is None:
            return None
    return text


def delexicalize(source: str, target: str, slots: list[dict]) -> tuple[str, str, tuple[str, ...]] | None:
    """(source pattern, target pattern, slot values in the source's placeholder order),
    or None when the pair yields no pattern: no slot, a slot name that is not a
    placeholder name, two values of one slot name, a value missing from either text, or
    the two patterns equal (no identity rewrites)."""
    values = slot_values(slots)
    if not values:
        return None
    psrc = delexicalize_text(source, values)
    ptgt = delexicalize_text(target, values) if psrc is not None else None
    if psrc is None or ptgt is None:
        return None
    if psrc == ptgt:
        return None
    # Adjacent placeholders split a text ambiguously ((?P<a>.+?)(?P<b>.+?) binds one
    # character to `a`): harmless only where the target keeps the run as it is.
    if any(run not in ptgt for run in ADJACENT.findall(psrc)):
        return None
    names = placeholder_names(psrc)
    if set(names) != set(values) or not set(placeholder_names(ptgt)) <= set(names):
        return None
    return psrc, ptgt, tuple(values[n] for n in names)


def normalize_template(template: str) -> str:
    """normalize_text of a pattern written by a person, placeholders kept: each `{name}`
    travels through the normalization as a private-use character, which no rule of
    section 3 touches."""
    names = PLACEHOLDER.findall(template)
    marked = PLACEHOLDER.sub(lambda m: chr(0xE000 + names.index(m.group(1))), template)
    key = normalize_text(marked)
    return "".join("{" + names[ord(c) - 0xE000] + "}" if 0xE000 <= ord(c) < 0xE000 + len(names) else c for c in key)


def pattern_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pattern pairs from key pairs.

    `pairs`: locale, source, target, user_id, session (rephrase chains, rewrites.
    rephrase_chain_pairs) joined with the target's served interpretation (target_intent,
    target_domain, target_slots_json) and the source's (source_intent, source_domain),
    only pairs whose source fails and whose target is served. Returns PAIR_COLUMNS, with
    `source`/`target` the patterns and `values` the slot values as a JSON list."""
    rows = []
    for r in pairs.itertuples(index=False):
        d = delexicalize(r.source, r.target, parse_slots(r.target_slots_json))
        if d is None:
            continue
        rows.append((r.locale, d[0], d[1], r.user_id, r.session, json.dumps(list(d[2]), ensure_ascii=False),
                     r.target_intent, r.target_domain, r.source_intent, r.source_domain))
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


# --- candidates and their statistics --------------------------------------------------

def _mode(s: pd.Series):
    s = s.dropna()
    if s.empty:
        return None
    counts = s.value_counts()
    return sorted(counts[counts == counts.max()].index)[0]


def match_stats(templates: list[str], keys: pd.DataFrame, working_defect: float,
                own_intent: dict[str, str] | None = None, min_key_voters: int = 1) -> pd.DataFrame:
    """Per template of one locale: the logged keys its regular expression fullmatches
    (contract 4.1), with n_keys, users (summed over keys), the user-weighted defect rate
    and the users on working keys (defect rate below `working_defect`).

    `keys`: text, n_users, defect_rate and optionally intent (the key's served intent),
    one locale's key statistics. `own_intent`: per template, the intent its own evidence
    keys were served with (a source's wrong reading). The matched keys served with that
    intent are the template's own phrasing: whether they work is judged on their users
    pooled, not key by key, since a key said by one or two users has a noisy defect rate
    (a phrasing the NLU misreads fails for most of its users; a few of its keys' estimates
    fall below the threshold). Every other matched key is judged on its own.

    attrs["agreement"]: per template, user -> the intents served with the values it binds
    (evidence_agreement); attrs["agreement_by_key"]: the same per matched key, for the keys
    with rephrase evidence from at least `min_key_voters` users (evidence_agreement_with_keys).
    The caller pops them (pandas copies attrs into every derived frame)."""
    uniq = sorted(set(templates))
    if not uniq:
        return pd.DataFrame(columns=["template", "n_keys", "users", "defect_users", "working_users"])
    own_intent = own_intent or {}
    index = _LocalePatterns([Pattern.make("", t, t, 0.0) for t in uniq])
    acc = {t: [0, 0.0, 0.0, 0.0, 0.0, 0.0] for t in uniq}  # keys, users, defect users, working, own users, own defect users
    agree: dict[str, dict[str, set]] = {}  # template -> user -> intents served with the values it binds
    by_key: dict[str, list[dict[str, set]]] = {}  # template -> per matched key with evidence: user -> intents
    intents = keys["intent"] if "intent" in keys.columns else pd.Series([None] * len(keys), index=keys.index)
    reached = keys["reached"] if "reached" in keys.columns else pd.Series([None] * len(keys), index=keys.index)
    for text, n, d, it, ev in zip(keys["text"], keys["n_users"].astype(float), keys["defect_rate"].astype(float), intents, reached):
        entries = None
        for p in index.candidates(text):
            bound_values = p.bindings(text)
            if bound_values is None:
                continue
            if isinstance(ev, str):
                if entries is None:  # (user, served intent, served values), parsed once per key
                    entries = [(e["user_id"], e.get("target_intent"),
                                sorted({normalize_text(str(x["value"])) for x in parse_slots(e.get("target_slots_json"))}))
                               for e in json.loads(ev)]
                    judged_alone = len({e[0] for e in entries}) >= min_key_voters
                bound = sorted(set(bound_values.values()))
                votes = agree.setdefault(p.source, {})
                key_votes: dict[str, set] = {}
                if judged_alone:  # only keys with enough users of evidence are judged on their own
                    by_key.setdefault(p.source, []).append(key_votes)
                for user, intent, values in entries:
                    ok = votes.setdefault(user, set())
                    key_ok = key_votes.setdefault(user, set())
                    if intent and values == bound:
                        ok.add(intent)
                        key_ok.add(intent)
            a = acc[p.source]
            a[0] += 1
            a[1] += n
            a[2] += n * d
            if isinstance(it, str) and it == own_intent.get(p.source):
                a[4] += n
                a[5] += n * d
            elif d < working_defect:
                a[3] += n
    rows = []
    for t, a in acc.items():
        own_working = a[4] if a[4] > 0 and a[5] / a[4] < working_defect else 0.0
        rows.append((t, a[0], a[1], a[2], a[3] + own_working))
    out = pd.DataFrame(rows, columns=["template", "n_keys", "users", "defect_users", "working_users"])
    out.attrs["agreement"] = agree
    out.attrs["agreement_by_key"] = by_key
    return out


def evidence_agreement(votes: dict[str, set] | None, intent) -> float:
    """The share of the users behind `votes` (match_stats: user -> the intents they were
    served, after a key the template matches, with exactly the values it binds there)
    who were served `intent` with those values; NaN without evidence."""
    if not votes:
        return float("nan")
    return sum(intent in v for v in votes.values()) / len(votes)


def evidence_agreement_with_keys(votes: dict[str, set] | None, key_votes: list[dict[str, set]], intent,
                                 settings: Settings) -> float:
    """evidence_agreement pooled over the keys a source matches, unless one matched key
    agrees less than pattern_min_key_agreement: then the lower of that key's share and the
    pooled one (rule `disagrees_with_evidence`). `key_votes`: the matched keys judged on
    their own, those with rephrase evidence from at least min_users users (match_stats,
    `min_key_voters`, decides which). A key many users said, whose users mostly went
    elsewhere (a value ASR mishears the same way for all of them: "浩太郎に夕食は何時かとは..."),
    is a request the pattern would fire on and get wrong, however well its other keys agree."""
    pooled = evidence_agreement(votes, intent)
    worst = min((evidence_agreement(v, intent) for v in key_votes), default=1.0)
    return min(worst, pooled) if worst < settings.pattern_min_key_agreement else pooled


def pattern_candidates(ppairs: pd.DataFrame, keys: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One locale's pattern candidates with the statistics the rules read.

    `ppairs`: pattern_pairs rows; `keys`: the locale's key statistics (text, n_users,
    defect_rate; optionally intent, the served intent, and reached, a failing key's
    rephrase evidence as JSON [{user_id, target_intent, target_slots_json}]; see
    match_stats). Stable order."""
    cols = ["locale", "source", "target", "n_users", "n_sessions", "n_values", "target_users", "source_users", "share",
            "source_defect_rate", "source_n_users", "source_working_share", "evidence_agreement", "source_n_keys",
            "target_success_rate", "target_n_users", "confidence", "target_intent", "target_domain",
            "intent_agreement", "source_intent", "source_domain", "evidence"]
    if ppairs.empty:
        return pd.DataFrame(columns=cols)
    g = ppairs.groupby(["locale", "source", "target"], sort=True)
    c = g.agg(n_users=("user_id", "nunique"), n_values=("values", "nunique"),
              target_intent=("target_intent", _mode), target_domain=("target_domain", _mode),
              source_intent=("source_intent", _mode), source_domain=("source_domain", _mode)).reset_index()
    c["n_sessions"] = ppairs.drop_duplicates(["locale", "source", "target", "user_id", "session"]).groupby(
        ["locale", "source", "target"], sort=True).size().to_numpy()
    # The share of a pattern's pairs whose target key was served with its modal intent.
    agree = ppairs.merge(c[["locale", "source", "target", "target_intent"]], on=["locale", "source", "target"],
                         suffixes=("", "_mode"))
    agree["ok"] = agree["target_intent"] == agree["target_intent_mode"]
    c = c.merge(agree.groupby(["locale", "source", "target"])["ok"].mean().rename("intent_agreement").reset_index(),
                on=["locale", "source", "target"])
    # Users stand behind the source's pattern when they went to any target phrasing served
    # with the same intent (the values are variables, so the intent is the target's
    # class, as an exact rewrite pools over its target's interpretation class); the
    # published target is the class's phrasing most of them chose (rule `outvoted`).
    c = c.rename(columns={"n_users": "target_users"})
    pooled = ppairs.dropna(subset=["target_intent"]).groupby(["locale", "source", "target_intent"]).agg(
        n_users=("user_id", "nunique"), n_values=("values", "nunique")).reset_index()
    sessions = ppairs.dropna(subset=["target_intent"]).drop_duplicates(["locale", "source", "target_intent", "user_id", "session"])
    pooled["n_sessions"] = sessions.groupby(["locale", "source", "target_intent"]).size().to_numpy()
    c = c.drop(columns=["n_values", "n_sessions"]).merge(pooled, on=["locale", "source", "target_intent"], how="left")
    c[["n_users", "n_values", "n_sessions"]] = c[["n_users", "n_values", "n_sessions"]].fillna(0).astype("int64")
    src_users = ppairs.groupby(["locale", "source"])["user_id"].nunique().rename("source_users").reset_index()
    c = c.merge(src_users, on=["locale", "source"])
    c["share"] = c["n_users"] / c["source_users"]
    working = settings.min_source_defect_rate
    # A source's own reading pools only where it is a misreading: never when it is the
    # intent some target of the source is served with (then its keys may be that intent's
    # working phrasing).
    same = {s for s, i, ti in zip(c["source"], c["source_intent"], c["target_intent"]) if i == ti}
    own = {s: i for s, i in zip(c["source"], c["source_intent"]) if isinstance(i, str) and s not in same}
    key_voters = settings.min_users if settings.pattern_min_key_agreement > 0 else np.iinfo(np.int64).max
    m = match_stats(list(c["source"]) + list(c["target"]), keys, working, own, key_voters)
    # popped: pandas deep-copies `attrs` into every frame derived from m (seconds per locale)
    votes, by_key = m.attrs.pop("agreement", {}), m.attrs.pop("agreement_by_key", {})
    c["evidence_agreement"] = [
        evidence_agreement_with_keys(votes.get(s), by_key.get(s, []), i, settings)
        for s, i in zip(c["source"], c["target_intent"])]
    m = m.set_index("template")
    src, tgt = m.loc[c["source"]], m.loc[c["target"]]
    su, tu = src["users"].to_numpy(float), tgt["users"].to_numpy(float)
    c["source_n_users"] = su
    c["source_n_keys"] = src["n_keys"].to_numpy()
    c["source_defect_rate"] = np.where(su > 0, src["defect_users"].to_numpy(float) / np.maximum(su, 1e-9), 0.0)
    c["source_working_share"] = np.where(su > 0, src["working_users"].to_numpy(float) / np.maximum(su, 1e-9), 0.0)
    c["target_n_users"] = tu
    c["target_success_rate"] = np.where(tu > 0, 1.0 - tgt["defect_users"].to_numpy(float) / np.maximum(tu, 1e-9), 0.0)
    c["confidence"] = c["share"] * c["target_success_rate"]
    c["evidence"] = "rephrase"
    return c[cols].sort_values(["locale", "source", "target"], kind="mergesort").reset_index(drop=True)


# --- emission rules ---------------------------------------------------------------------

def select_patterns(candidates: pd.DataFrame, settings: Settings, controls: Controls | None = None) -> pd.DataFrame:
    """`candidates` (pattern_candidates) with `decision`: 'emit' or the first rule failed."""
    c = candidates.copy()
    if c.empty:
        c["decision"] = pd.Series(dtype=object)
        return c
    controls = controls or Controls()
    _, source_upper = wilson_bounds(1.0 - c["source_defect_rate"].astype(float), c["source_n_users"].astype(float),
                                    settings.significance_z)
    target_lower, _ = wilson_bounds(c["target_success_rate"].astype(float), c["target_n_users"].astype(float),
                                    settings.significance_z)
    pinned, pinned_elsewhere = controls.pinned(c["locale"], c["source"], c["target"])
    # One target per source: the most users, then values, then the smaller target.
    best = c.sort_values(["locale", "source", "n_users", "target_users", "n_values", "target"],
                         ascending=[True, True, False, False, False, True], kind="mergesort").drop_duplicates(["locale", "source"])
    outvoted = ~c.index.isin(best.index)
    idx = c.index
    target_intent, target_domain = c["target_intent"].astype(object), c["target_domain"].astype(object)
    operator_rules = [
        # the target only: a source misread as a denied intent may be rewritten away from
        # it (as for exact rewrites, core/rewrites.select_rewrites)
        ("denied", denied(target_intent, target_domain, settings)),
        ("sensitive_target", sensitive(target_intent, target_domain, settings)),
        ("blocked", controls.is_blocked(c["locale"], c["source"], c["target"])),
        ("pinned_elsewhere", pinned_elsewhere),
    ]
    privacy_rules = [
        ("no_literal_text", pd.Series([not has_literal_text(s) for s in c["source"]], index=idx)),
        ("too_few_values", c["n_values"] < 2),
        ("too_few_users", c["n_users"] < settings.min_users),
    ]
    statistical_rules = [
        ("outvoted", pd.Series(outvoted, index=idx)),
        ("matches_working", c["source_working_share"] > settings.pattern_max_working_share),
        ("source_not_defective", c["source_defect_rate"] < settings.min_source_defect_rate),
        ("not_significant", pd.Series(target_lower <= source_upper, index=idx)),
        ("low_confidence", c["confidence"] < settings.min_rewrite_confidence),
        ("target_disagrees", c["intent_agreement"] < settings.min_label_agreement),
        ("disagrees_with_evidence", c["evidence_agreement"].astype(float) < settings.pattern_min_agreement),
    ]
    rules = operator_rules + privacy_rules + [(n, f & ~pinned) for n, f in statistical_rules]
    c["decision"] = first_failed_rule(rules, idx)
    return c.sort_values(["locale", "source", "target"], kind="mergesort").reset_index(drop=True)


def published_patterns(decided: pd.DataFrame) -> pd.DataFrame:
    if decided.empty:
        return pd.DataFrame(columns=PATTERN_COLUMNS)
    out = decided[decided["decision"] == "emit"].copy()
    if out.empty:  # an empty float column cannot become list<string>: typed empty frame
        return pd.DataFrame({c: pd.Series(dtype=object) for c in PATTERN_COLUMNS})
    out["slots"] = [placeholder_names(s) for s in out["source"]]
    for col in ("n_users", "n_values", "n_sessions"):
        out[col] = out[col].astype("int64")
    for col in ("confidence", "source_defect_rate", "target_success_rate"):
        out[col] = out[col].astype(float).clip(0.0, 1.0).round(9)
    return out[PATTERN_COLUMNS].reset_index(drop=True)


def rejected_by_rule(decided: pd.DataFrame) -> dict[str, int]:
    if decided.empty:
        return {}
    return {k: int(v) for k, v in decided["decision"].value_counts().sort_index().items() if k != "emit"}


# --- weak labels ------------------------------------------------------------------------

def served_value_pool(served_values: pd.DataFrame, min_users: int) -> dict[tuple[str, str, str], list[str]]:
    """(locale, intent, slot name) -> the values at least `min_users` distinct users were
    served with in that slot of that intent, the most used first."""
    if served_values.empty:
        return {}
    sv = served_values[served_values["n_users"] >= min_users].sort_values(
        ["locale", "intent", "name", "n_users", "value"], ascending=[True, True, True, False, True], kind="mergesort")
    return {k: list(g["value"]) for k, g in sv.groupby(["locale", "intent", "name"], sort=False)}


def pattern_bindings(locale: str, source: str, target_intent, pool: dict, k: int):
    """Up to `k` bindings {slot name: value} for a pattern's source placeholders, each value
    from `pool` (served_value_pool) for that slot of the target's intent; a binding that
    gives two slots one value is skipped (not a real request)."""
    if not isinstance(target_intent, str):
        return
    names = placeholder_names(source)
    choices = [pool.get((locale, target_intent, n), [])[:k] for n in names]
    if not all(choices):
        return
    made = 0
    for combo in itertools.product(*choices):
        if len(set(combo)) < len(combo):
            continue
        yield dict(zip(names, combo))
        made += 1
        if made >= k:
            return


def pattern_labels(patterns: pd.DataFrame, served_values: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Training rows (TRAINING_COLUMNS less `split`) from published patterns: the source
    filled with slot values that at least min_users distinct users were served with in
    that slot of the target's intent (template-based augmentation: no row reveals a value
    one user said, and no value of another intent makes a wrong label), the target's
    intent and domain, the filled values as slots, weight = confidence.

    `patterns`: published patterns with target_intent and target_domain; `served_values`:
    locale, intent, name, value, n_users (distinct users served with that value in that
    slot of that intent). Per pattern at most pattern_label_rows rows, the most used values
    first."""
    out_cols = TRAINING_COLUMNS[:-1]
    if patterns.empty or served_values.empty:
        return pd.DataFrame(columns=out_cols)
    pool = served_value_pool(served_values, settings.min_users)
    k = max(1, settings.pattern_label_rows)
    rows = []
    for p in patterns.itertuples(index=False):
        for bind in pattern_bindings(p.locale, p.source, p.target_intent, pool, k):
            slots = [{"name": n, "value": bind[n]} for n in placeholder_names(p.target)]
            rows.append((p.locale, fill(p.source, bind), p.target_intent, p.target_domain, slots,
                         float(p.confidence), "pattern"))
    return pd.DataFrame(rows, columns=out_cols)


def top_patterns(patterns: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The report's view: the patterns with the most users, with one example each (the
    source filled with its own placeholder names as stand-ins is no example; the caller
    fills real served values when it has them)."""
    if patterns is None or patterns.empty:
        return pd.DataFrame(columns=PATTERN_COLUMNS)
    return patterns.sort_values(["n_users", "n_values", "locale", "source"], ascending=[False, False, True, True],
                                kind="mergesort").head(n).reset_index(drop=True)
