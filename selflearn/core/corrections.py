"""Value corrections: a slot value ASR mishears, learned across phrasings.

A recurrent mishearing ("play king crimdon", "monttag") breaks a request in every phrasing
it is said in, working phrasings included, and most of those texts are said by too few users
for an exact rewrite. A pattern does not help either: "bitte öffne meine musik app und
spiel {song_name} von {artist_name}" -> "ich möchte bitte {song_name} von {artist_name}
anhören" carries the misheard value into a working phrasing, where the system then acts
on the wrong artist. Users correct such values themselves: after the failure they say the value
again, heard right this time, often in another phrasing. So the correction is learned
once, across phrasings, and published as rows of `rewrite_patterns/` (contract section
4.1): a phrasing with the misheard value written out, rewritten to the phrasing the
request is served in with the value the users meant:

    "kannst du {song_name} von king crimdon spielen"  ->  "kannst du {song_name} von king crimson spielen"
    "gibt es monttag eine {event_name}"  ->  "gibt es montag eine {event_name}"

(rows of the simulator's default log, de-DE).

Written-out values are literal text, so such a row always outranks the phrasing's own
pattern (rule 3: most literal characters first), and leaves the value's other wordings alone.

Evidence. A chain pair (failing key a, served key b: rewrites.rephrase_chain_pairs) whose
target was served with slot values that all occur in a but one, (slot, meant). a is read
through the locale's phrasings that hold that slot (the templates of working keys, made
by delexicalizing each served key with its own slot values, and the pattern sources of
the run), filled with b's other values: the phrasing with the most literal text that
fullmatches a binds the slot to what ASR heard. (slot, heard, meant) pools users across
phrasings and sessions; users, not turns, are the votes.

Rules (the first failed one is kept, like the other emission rules):
  `denied` / `sensitive_target`: the corrected request's intent is on a deny list, or acts
     outward (the same lists as patterns: a value nobody checked never buys anything);
  `too_few_users`: at least min_users distinct users corrected heard to meant;
  `too_few_phrasings`: seen in at least value_correction_min_phrasings phrasings (a
     correction seen in one phrasing is an exact rewrite's business);
  `not_alike`: heard and meant are alike as strings (difflib ratio >=
     value_correction_min_similarity): ASR confuses values that sound alike; a different
     value after a failure is usually another request, left to exact rewrites. Unless the
     users say otherwise, significantly: when the one-sided Wilson lower bound (z =
     significance_z) of the share of the heard value's users who went to this meant reaches
     pattern_min_agreement (11 of 11 users, or 19 of 20, at the defaults), unlike values pass too.
     Those are ASR substitutions of one real value for another ("sanaipei" heard for "eric
     wainaina" by 33 of 33 users in 10 phrasings of a simulated sw-KE log) and wordings of a
     value that the system does not take; a few users' change of mind never reaches that
     bound, and a heard value that works for others is still refused below;
  `disagrees`: of the users corrected from heard in that slot, a share >=
     pattern_min_agreement went to this meant;
  `heard_value_works`: of the users of logged keys that say the heard value (as whole
     words), at most pattern_max_working_share are on keys that work: a value that works
     elsewhere is somebody's real request.
An emitted correction is published once per phrasing served with its intent that holds
the slot (working templates said by at least min_users distinct users, and published patterns
whose target is that intent), the slot written out as heard in the source and as meant in
the target. A row an exact rewrite shadows (its source, every value
written out, is an exact source) or whose source matches working keys is left out; a row's
rates are over the logged keys its sides match (contract 4.1). Nothing here writes
training rows.

Plain pandas over one locale's rows (or many locales'); Spark only places the data
(selflearn.spark.steps.value_corrections_step).
"""
from __future__ import annotations

import difflib
import json

import numpy as np
import pandas as pd

from selflearn.config import Settings
from selflearn.core.controls import Controls, denied, sensitive
from selflearn.core.defects import is_working
from selflearn.core.labels import parse_slots
from selflearn.core.patterns import PATTERN_COLUMNS, delexicalize_text, match_stats, slot_values
from selflearn.core.rewrite_apply import PLACEHOLDER, fill, has_literal_text, literal_chars, placeholder_names
from selflearn.core.rewrites import first_failed_rule, wilson_bounds
from selflearn.core.text import is_unspaced_char, normalize_text, occurs_in

CORRECTION_COLUMNS = [
    "locale", "slot", "heard", "meant", "intent", "domain", "n_users", "n_sessions", "n_phrasings", "heard_users",
    "share", "similarity", "heard_key_users", "working_share", "source_defect_rate", "target_success_rate",
    "specializations",
]
ALIGNED_COLUMNS = ["locale", "slot", "heard", "meant", "intent", "domain", "user_id", "session", "template",
                   "target_success"]


def _says(texts: pd.Series, value: str) -> pd.Series:
    """Which texts say `value` as whole words (anywhere, in an unspaced script): the rule of
    `text.occurs_in`, vectorized, as it scans every key of the locale per correction."""
    if not value:
        return pd.Series(False, index=texts.index)
    if any(is_unspaced_char(c) for c in value):
        return texts.str.contains(value, regex=False)
    return (" " + texts + " ").str.contains(" " + value + " ", regex=False)


def template_of_key(text: str, slots_json) -> str | None:
    """The phrasing of a served key: its own slot values as placeholders
    (patterns.delexicalize_text), or None when it has no slot, a value is missing, or
    nothing but placeholders is left."""
    values = slot_values(parse_slots(slots_json)) if isinstance(slots_json, str) else None
    out = delexicalize_text(text, values) if values else None
    return out if out is not None and has_literal_text(out) else None


def served_keys(keys: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """The keys whose phrasing is a working template: served with an intent and slots, working."""
    return keys[keys["intent"].notna() & keys["slots_json"].notna()
                & is_working(keys["defect_rate"].astype(float), settings.min_source_defect_rate)]


def working_templates(keys: pd.DataFrame, settings: Settings, template_users: pd.DataFrame | None = None) -> pd.DataFrame:
    """(locale, template, intent, domain, n_users): the phrasings the NLU serves, each served
    key with its own slot values as placeholders; `intent` the phrasing's most used served
    intent. `keys`: locale, text, n_users, defect_rate, intent, domain, slots_json.
    `n_users` is the distinct users who said the phrasing, from `template_users` (locale,
    template, n_users; the Spark step counts them over the turns), else the most users of
    one of its keys (a lower bound)."""
    cols = ["locale", "template", "intent", "domain", "n_users"]
    rows = []
    for r in served_keys(keys, settings).itertuples(index=False):
        t = template_of_key(r.text, r.slots_json)
        if t is not None:
            rows.append((r.locale, t, r.intent, getattr(r, "domain", None), int(r.n_users)))
    if not rows:
        return pd.DataFrame(columns=cols)
    t = pd.DataFrame(rows, columns=cols)
    by_intent = t.groupby(["locale", "template", "intent"], dropna=False).agg(
        users=("n_users", "sum"), domain=("domain", "first")).reset_index()
    best = by_intent.sort_values(["locale", "template", "users", "intent"], ascending=[True, True, False, True],
                                 kind="mergesort").drop_duplicates(["locale", "template"])
    most = t.groupby(["locale", "template"])["n_users"].max().rename("n_users").reset_index()
    if template_users is not None:
        counted = template_users[["locale", "template", "n_users"]].rename(columns={"n_users": "counted"})
        most = most.merge(counted, on=["locale", "template"], how="left")
        most["n_users"] = most["counted"].fillna(most["n_users"]).astype("int64")
        most = most.drop(columns=["counted"])
    return best[["locale", "template", "intent", "domain"]].merge(most, on=["locale", "template"])[cols].reset_index(drop=True)


def align_heard_values(pairs: pd.DataFrame, templates: list[str]) -> pd.DataFrame:
    """ALIGNED_COLUMNS rows: what ASR heard in place of the one served slot value a failing
    source lacks. `pairs`: locale, source, target, user_id, session, target_intent,
    target_domain, target_slots_json, target_defect_rate (one locale or many);
    `templates`: the phrasings to read sources through (working templates and pattern
    sources, every locale's; a template only reads keys of its own locale through the
    caller's grouping)."""
    by_slot: dict[str, list[tuple[int, str]]] = {}
    for t in set(templates):
        for name in placeholder_names(t):
            by_slot.setdefault(name, []).append((literal_chars(t), t))
    for ts in by_slot.values():
        ts.sort(key=lambda e: (-e[0], e[1]))  # most literal text first: the first match wins
    rows = []
    for r in pairs.itertuples(index=False):
        slots = parse_slots(r.target_slots_json)
        values = {str(s["name"]): normalize_text(str(s["value"])) for s in slots}
        if len(values) != len(slots) or not all(values.values()):
            continue
        missing = [n for n, v in values.items() if not occurs_in(v, r.source)]
        if len(missing) != 1:
            continue
        slot, meant = missing[0], values[missing[0]]
        for _, t in by_slot.get(slot, ()):
            names = placeholder_names(t)
            if any(n not in values for n in names):
                continue
            pieces = PLACEHOLDER.split(fill(t, {n: values[n] if n != slot else "\x00" for n in names}).replace("\x00", "{" + slot + "}"))
            if len(pieces) != 3:  # the slot twice in the phrasing: not read
                continue
            head, tail = pieces[0], pieces[2]
            a = r.source
            if len(a) > len(head) + len(tail) and a.startswith(head) and a.endswith(tail):
                heard = a[len(head):len(a) - len(tail)]
                if heard != meant and heard.strip() == heard and heard:
                    rows.append((r.locale, slot, heard, meant, r.target_intent, r.target_domain, r.user_id, r.session, t,
                                 1.0 - float(r.target_defect_rate)))
                break
    return pd.DataFrame(rows, columns=ALIGNED_COLUMNS)


def correction_candidates(aligned: pd.DataFrame, keys: pd.DataFrame, templates: pd.DataFrame,
                          patterns: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One locale's corrections (CORRECTION_COLUMNS) with the statistics the rules read,
    and each one's rows as they would be published (`specializations`, JSON list of
    [source, target, source_users, source_defect_rate, target_users, target_success_rate]
    over the logged keys each side matches; rates null where no logged key matches). `keys`: the locale's key statistics (text, n_users, defect_rate);
    `templates`: working_templates rows; `patterns`: the run's published patterns
    (locale, source, target, target_intent)."""
    if aligned.empty:
        return pd.DataFrame(columns=CORRECTION_COLUMNS)
    by = ["locale", "slot", "heard", "meant"]
    c = aligned.groupby(by, sort=True).agg(
        n_users=("user_id", "nunique"), n_phrasings=("template", "nunique"),
        intent=("intent", lambda s: s.mode().sort_values().iloc[0] if s.notna().any() else None),
        domain=("domain", lambda s: s.mode().sort_values().iloc[0] if s.notna().any() else None),
        target_success_rate=("target_success", "mean")).reset_index()
    c["n_sessions"] = aligned.drop_duplicates([*by, "user_id", "session"]).groupby(by, sort=True).size().to_numpy()
    heard_users = aligned.groupby(["locale", "slot", "heard"])["user_id"].nunique().rename("heard_users").reset_index()
    c = c.merge(heard_users, on=["locale", "slot", "heard"])
    c["share"] = c["n_users"] / c["heard_users"]
    c["similarity"] = [difflib.SequenceMatcher(None, h, m, autojunk=False).ratio() for h, m in zip(c["heard"], c["meant"])]
    texts, users = keys["text"].astype(str), keys["n_users"].astype(float)
    works = is_working(keys["defect_rate"].astype(float), settings.min_source_defect_rate)
    rates = keys["defect_rate"].astype(float)
    # The scan over every key of the locale is the costly part: only for corrections the
    # cheap rules (users, phrasings, similarity) leave standing; the others keep 0 / "[]".
    standing = ((c["n_users"] >= settings.min_users) & (c["n_phrasings"] >= settings.value_correction_min_phrasings)
                & ~not_alike(c, settings)).to_numpy()
    key_users, working_share, defect_rate, rows = [], [], [], []
    for r, scan in zip(c.itertuples(index=False), standing):
        if not scan:
            key_users.append(0), working_share.append(0.0), defect_rate.append(0.0), rows.append([])
            continue
        says = _says(texts, r.heard)
        n = float(users[says].sum())
        key_users.append(int(n))
        working_share.append(float(users[says & works].sum()) / n if n else 0.0)
        defect_rate.append(float((users[says] * rates[says]).sum()) / n if n else 0.0)
        rows.append(specializations(r, templates, patterns, settings))
    c["heard_key_users"], c["working_share"], c["source_defect_rate"] = key_users, working_share, defect_rate
    c["specializations"] = [json.dumps(x, ensure_ascii=False) for x in _with_row_stats(rows, keys, settings)]
    return c[CORRECTION_COLUMNS].sort_values(by, kind="mergesort").reset_index(drop=True)


def _with_row_stats(rows: list, keys: pd.DataFrame, settings: Settings) -> list:
    """Each correction's [source, target] rows with the contract's statistics over the
    logged keys each side matches (contract 4.1, as for patterns: patterns.match_stats):
    [source, target, source_users, source_defect_rate, target_users, target_success_rate].
    A row whose source matches keys that work (more than pattern_max_working_share of their
    users) is left out, as `matches_working` refuses a pattern."""
    templates = sorted({t for rs in rows for r in rs for t in r})
    if not templates:
        return [[] for _ in rows]
    m = match_stats(templates, keys[["text", "n_users", "defect_rate"]], settings.min_source_defect_rate)
    m.attrs.clear()
    m = m.set_index("template")
    users, defect, working = m["users"].to_dict(), m["defect_users"].to_dict(), m["working_users"].to_dict()
    out = []
    for rs in rows:
        kept = []
        for src, tgt in rs:
            su, tu = float(users.get(src, 0.0)), float(users.get(tgt, 0.0))
            if su > 0 and working.get(src, 0.0) / su > settings.pattern_max_working_share:
                continue
            kept.append([src, tgt, int(su), defect.get(src, 0.0) / su if su else None,
                         int(tu), 1.0 - defect.get(tgt, 0.0) / tu if tu else None])
        out.append(kept)
    return out


def specializations(c, templates: pd.DataFrame, patterns: pd.DataFrame, settings: Settings) -> list[list[str]]:
    """[source, target] rows of one correction: every phrasing of its intent that holds its
    slot, the slot written out (heard in the source, meant in the target). A published
    pattern's source is rewritten to its target; a working phrasing to itself."""
    ph = "{" + c.slot + "}"
    out: dict[str, str] = {}
    # a phrasing said by min_users distinct users (over its values): its literal text is theirs
    t = templates[(templates["locale"] == c.locale) & (templates["intent"] == c.intent)
                  & (templates["n_users"] >= settings.min_users)]
    for tmpl in t["template"]:
        if ph in tmpl:
            out.setdefault(tmpl.replace(ph, c.heard), tmpl.replace(ph, c.meant))
    if len(patterns):
        p = patterns[(patterns["locale"] == c.locale) & (patterns["target_intent"] == c.intent)]
        for src, tgt in zip(p["source"], p["target"]):
            if ph in src:  # a failing phrasing's own pattern: the more literal row goes first
                out[src.replace(ph, c.heard)] = tgt.replace(ph, c.meant)
    return sorted([s, g] for s, g in out.items() if s != g and has_literal_text(s)
                  and set(placeholder_names(g)) <= set(placeholder_names(s)))


def not_alike(c: pd.DataFrame, settings: Settings) -> pd.Series:
    """Corrections between values unlike as strings whose users do not agree significantly
    (module docstring, rule `not_alike`): the share of the heard value's users who went to
    this meant, as a one-sided Wilson lower bound over those users, under pattern_min_agreement."""
    agreement_lower, _ = wilson_bounds(c["share"].astype(float), c["heard_users"].astype(float), settings.significance_z)
    return (c["similarity"] < settings.value_correction_min_similarity) & (agreement_lower < settings.pattern_min_agreement)


def select_corrections(candidates: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """`candidates` with `decision`: 'emit' or the first rule it failed (module docstring)."""
    c = candidates.copy()
    if c.empty:
        c["decision"] = pd.Series(dtype=object)
        return c
    intent, domain = c["intent"].astype(object), c["domain"].astype(object)
    rules = [
        ("denied", denied(intent, domain, settings)),
        ("sensitive_target", sensitive(intent, domain, settings)),
        ("too_few_users", c["n_users"] < settings.min_users),
        ("too_few_phrasings", c["n_phrasings"] < settings.value_correction_min_phrasings),
        ("not_alike", not_alike(c, settings)),
        ("disagrees", c["share"] < settings.pattern_min_agreement),
        ("heard_value_works", c["working_share"] > settings.pattern_max_working_share),
    ]
    c["decision"] = first_failed_rule(rules, c.index)
    return c


def correction_patterns(decided: pd.DataFrame, published: pd.DataFrame, controls: Controls | None = None,
                        exact: pd.DataFrame | None = None) -> pd.DataFrame:
    """The emitted corrections as `rewrite_patterns/` rows (patterns.PATTERN_COLUMNS), with
    evidence `correction`; `n_values` is the number of phrasings the correction was learned
    in. A source that a published pattern already holds, or that two corrections would
    write, keeps the pattern, then the correction with the most users. A row whose source
    (all its values written out) is an exact rewrite's source is left out: the exact rewrite
    wins there (contract 4.1, rule 1), so the row would never fire. Blocked rows (controls)
    are left out."""
    rows = []
    for c in decided[decided["decision"] == "emit"].itertuples(index=False) if len(decided) else ():
        for src, tgt, _, src_defect, _, tgt_success in json.loads(c.specializations):
            # over the logged keys the row's source and target match (contract 4.1); a side
            # that matches no logged key (a phrasing nobody said with that value) takes the
            # correction's own: the keys saying the heard value, the served keys it reached
            src_defect = float(c.source_defect_rate) if src_defect is None else float(src_defect)
            tgt_success = float(c.target_success_rate) if tgt_success is None else float(tgt_success)
            rows.append((c.locale, src, tgt, placeholder_names(src), float(c.share * tgt_success), int(c.n_users),
                         int(c.n_phrasings), int(c.n_sessions), src_defect, tgt_success, "correction"))
    out = pd.DataFrame(rows, columns=PATTERN_COLUMNS)
    if out.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in PATTERN_COLUMNS})
    taken = set(zip(published["locale"], published["source"])) if len(published) else set()
    if exact is not None and len(exact):
        taken |= set(zip(exact["locale"], exact["source"]))
    out = out[[(l, s) not in taken for l, s in zip(out["locale"], out["source"])]]
    out = out.sort_values(["locale", "source", "n_users", "target"], ascending=[True, True, False, True],
                          kind="mergesort").drop_duplicates(["locale", "source"])
    if controls is not None and len(out):
        out = out[~np.asarray(controls.is_blocked(out["locale"], out["source"], out["target"]), dtype=bool)]
    for col in ("confidence", "source_defect_rate", "target_success_rate"):
        out[col] = out[col].astype(float).clip(0.0, 1.0).round(9)
    return out.reset_index(drop=True)
