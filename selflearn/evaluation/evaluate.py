"""`selflearn evaluate`: judge a run against a simulation's ground truth.

Reads the run's published outputs, the simulation's truth.parquet, summary.json and
world/ (only evaluation reads those; the pipeline never does) and reports, overall and
per locale:
- rephrase detection precision / recall / F1 against truth `rephrase_of`, and per
  simulator trap (truth `trap`) its pairs' false positive rate;
- defect AUC of turns' defect_prob against `is_defect`, overall and on `success` turns
  alone (the silent defects);
- quarantine completeness: every malformed row the simulator planted is quarantined
  with its reason, and rows_in = rows_accepted + rows_quarantined;
- rewrite precision: the target serves the source's true goal (the majority goal of the
  source key's turns in the truth);
- replay of fresh simulated traffic through the learned rewrites: wins (a failing
  request fixed), losses (a working request broken, or a request sent to another goal
  that the system then acts on), win/loss ratio, relative defect reduction;
- weak-label intent accuracy and slot F1 against the true goal of each training text;
- whether a flooded bogus pair became a rewrite;
- privacy: published texts that hold a slot value the truth annotates as an e-mail
  address (MASSIVE's `email_address`), in the customer-facing tables (target 0) and in
  the operator tables `turns/` and `rephrase_pairs/` (a check of the PII masking with the
  truth's labels, not with the scrubber's own rules).
The JSON goes to ROOT/evaluations/<run_id>.json: outside runs/, which holds only run
directories (contract section 4), and outside the published run itself.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from selflearn.run.publish import latest_run, write_json_atomic
from selflearn.core.text import normalize_text

FRESH_REQUESTS = 20000


def resolve_run(path: str | Path) -> Path:
    p = Path(path)
    if (p / "_SUCCESS").is_file():
        return p
    run = latest_run(p)
    if run is None:
        raise FileNotFoundError(f"no complete run at {p} (neither a run directory nor a ROOT with LATEST)")
    return run


def auc(scores, labels) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    pos, neg = y.sum(), (~y).sum()
    if pos == 0 or neg == 0:
        return None
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def prf(tp: int, n_pred: int, n_true: int) -> dict:
    p = tp / n_pred if n_pred else None
    r = tp / n_true if n_true else None
    f = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "predicted": n_pred, "true": n_true}


def _read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def rephrase_metrics(pairs: pd.DataFrame, truth: pd.DataFrame, turn_locale: pd.Series) -> dict:
    pred = pairs[pairs["is_rephrase"]]
    pred_set = set(zip(pred["first_event_id"], pred["second_event_id"]))
    t = truth[truth["rephrase_of"].notna()]
    true_set = set(zip(t["rephrase_of"], t["event_id"]))
    out = {"overall": prf(len(pred_set & true_set), len(pred_set), len(true_set)), "per_locale": {}}
    loc_of = turn_locale.to_dict()
    for loc in sorted(set(turn_locale)):
        ps = {p for p in pred_set if loc_of.get(p[1]) == loc}
        ts = {p for p in true_set if loc_of.get(p[1]) == loc}
        out["per_locale"][loc] = prf(len(ps & ts), len(ps), len(ts))
    out["per_trap"] = trap_metrics(pairs, truth, pred_set, true_set)
    return out


def trap_metrics(pairs: pd.DataFrame, truth: pd.DataFrame, pred_set: set, true_set: set) -> dict:
    """Per simulator trap (truth `trap`: topic_switch, follow_up, elicit, value_change, restate; pairs whose second
    turn is the trap's turn, all true negatives): pairs scored, false positives, their
    rate, and overall P/R/F1 with only that trap's pairs as negatives (every true rephrase
    kept), so each trap's cost to precision shows alone."""
    if "trap" not in truth.columns:
        return {}
    trap_of = truth.loc[truth["trap"].notna()].set_index("event_id")["trap"].to_dict()
    scored = list(zip(pairs["first_event_id"], pairs["second_event_id"]))
    tp = len(pred_set & true_set)
    out = {}
    for trap in sorted(set(trap_of.values())):
        mine = {p for p in scored if trap_of.get(p[1]) == trap and p not in true_set}
        fp = len(mine & pred_set)
        m = prf(tp, tp + fp, len(true_set))
        m.update({"pairs": len(mine), "false_positives": fp, "false_positive_rate": fp / len(mine) if mine else None})
        out[trap] = m
    return out


def defect_metrics(turns: pd.DataFrame, truth: pd.DataFrame, log: pd.DataFrame) -> dict:
    m = turns.merge(truth[["event_id", "is_defect"]], on="event_id").merge(log[["event_id", "response_status"]], on="event_id")
    succ = m[m["response_status"] == "success"]
    out = {"overall": {"auc": auc(m["defect_prob"], m["is_defect"]), "auc_success_turns": auc(succ["defect_prob"], succ["is_defect"]),
                       "turns": int(len(m)), "defects": int(m["is_defect"].sum())}, "per_locale": {}}
    for loc, g in m.groupby("locale", sort=True):
        gs = g[g["response_status"] == "success"]
        out["per_locale"][loc] = {"auc": auc(g["defect_prob"], g["is_defect"]), "auc_success_turns": auc(gs["defect_prob"], gs["is_defect"])}
    return out


def quarantine_metrics(root: Path, run_dir: Path, manifest: dict, summary: dict) -> dict:
    qdir = root / "quarantine" / run_dir.name
    q = _read(qdir) if qdir.exists() else pd.DataFrame(columns=["raw", "reason", "source"])
    found = {}
    for raw, reason in zip(q["raw"], q["reason"]):
        try:
            eid = json.loads(raw).get("event_id")
        except (ValueError, AttributeError):
            eid = None
        if eid is not None:
            found.setdefault(str(eid), set()).add(reason)
    planted = summary.get("malformed", [])
    hit = [m for m in planted if m["reason"] in found.get(str(m["event_id"]), set())]
    balanced = manifest.get("rows_in") == (manifest.get("rows_accepted") or 0) + (manifest.get("rows_quarantined") or 0)
    return {"planted": len(planted), "quarantined_with_reason": len(hit),
            "completeness": len(hit) / len(planted) if planted else None,
            "missed": [m for m in planted if m not in hit][:20], "rows_balance": bool(balanced),
            "by_reason": q["reason"].value_counts().sort_index().to_dict()}


def key_goals(log: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The majority true goal of each (locale, text key) in the log."""
    m = log[["event_id", "locale", "utterance"]].merge(truth[["event_id", "goal_id", "gold_intent", "gold_slots"]], on="event_id")
    m["text"] = m["utterance"].map(normalize_text)
    counts = m.groupby(["locale", "text", "goal_id"]).size().rename("n").reset_index()
    counts = counts.sort_values(["locale", "text", "n", "goal_id"], ascending=[True, True, False, True]).drop_duplicates(["locale", "text"])
    first = m.drop_duplicates("goal_id").set_index("goal_id")
    counts["gold_intent"] = counts["goal_id"].map(first["gold_intent"])
    counts["gold_slots"] = counts["goal_id"].map(first["gold_slots"])
    return counts


def rewrite_metrics(rewrites: pd.DataFrame, goals: pd.DataFrame, world) -> dict:
    g = goals.set_index(["locale", "text"])["goal_id"].to_dict()
    correct, judged = [], []
    for r in rewrites.itertuples(index=False):
        goal = g.get((r.locale, r.source))
        if goal is None:
            continue
        judged.append(r.locale)
        correct.append(bool(world.serves(r.locale, r.target, goal)))
    df = pd.DataFrame({"locale": judged, "ok": correct})
    out = {"overall": {"precision": float(df["ok"].mean()) if len(df) else None, "rewrites": int(len(rewrites)), "judged": int(len(df))}, "per_locale": {}}
    for loc, grp in df.groupby("locale", sort=True):
        out["per_locale"][loc] = {"precision": float(grp["ok"].mean()), "rewrites": int(len(grp))}
    return out


def replay_requests(rewrites: pd.DataFrame, world, n: int = FRESH_REQUESTS, seed: int = 12345,
                    patterns: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fresh requests through the published rewrites as a runtime applies them (contract
    4.1, selflearn.core.rewrite_apply: exact first, then the most specific pattern): one row
    per request of `world.fresh_traffic(n, seed)` (its columns), with its text `key`, the
    rewrite that fired (`kind` `exact` / `pattern` or None, `source`, `rewrite`), and
    whether the world serves the request's goal `before` and `after` it. The one replay
    loop: `replay_metrics` and the benches that explain its numbers read these rows."""
    from selflearn.core.rewrite_apply import RewriteIndex

    index = RewriteIndex.from_frames(rewrites, patterns)
    fresh = world.fresh_traffic(n, seed=seed)
    keys, kinds, sources, targets, before, after = [], [], [], [], [], []
    for r in fresh.itertuples(index=False):
        key = normalize_text(r.utterance)
        served = bool(world.serves(r.locale, key, r.goal_id))
        hit = index.lookup(r.locale, key)
        keys.append(key)
        before.append(served)
        if hit is None:
            kinds.append(None), sources.append(None), targets.append(None), after.append(served)
        else:
            kinds.append(hit.kind), sources.append(hit.source), targets.append(hit.rewrite)
            after.append(bool(world.serves(r.locale, hit.rewrite, r.goal_id)))
    return fresh.assign(key=keys, kind=kinds, source=sources, rewrite=targets, before=before, after=after)


def replay_metrics(rewrites: pd.DataFrame, world, n: int = FRESH_REQUESTS, seed: int = 12345,
                   patterns: pd.DataFrame | None = None, deny_intents=(), deny_domains=()) -> dict:
    """Fresh requests through the published rewrites (`replay_requests`). Wins, losses and
    defect reduction overall, per kind (`exact`, `pattern`) and per locale; pattern
    precision is the share of pattern applications that served the user's goal, also on
    the requests heard right alone (`precision_heard`). `allowed_goals`: the same figures
    over requests whose goal the run's deny lists (`deny_intents`, `deny_domains`) leave
    open to rewriting: what the pipeline reaches where policy lets it act."""
    # which pattern rows are value corrections (core.corrections): reported apart as well
    corrections = set()
    if patterns is not None and len(patterns) and "evidence" in patterns:
        c = patterns[patterns["evidence"] == "correction"]
        corrections = set(zip(c["locale"], c["source"]))
    req = replay_requests(rewrites, world, n, seed, patterns)
    denied_intents, denied_domains = set(deny_intents or ()), set(deny_domains or ())
    rows = []
    for r in req.itertuples(index=False):
        goal = world.goals[world.goal_index[r.goal_id]] if r.goal_id in world.goal_index else {}
        denied = goal.get("intent") in denied_intents or goal.get("scenario") in denied_domains
        hit = r.kind is not None
        # a rewrite that serves another goal the system then acts on is a loss too
        acts_elsewhere = hit and (not r.after) and world.interpret(r.locale, r.rewrite) is not None
        correction = r.kind == "pattern" and (r.locale, r.source) in corrections
        win = (not r.before) and r.after
        loss = hit and not r.after and (r.before or acts_elsewhere)
        rows.append((r.locale, r.before, r.after, win, loss, r.kind, bool(getattr(r, "unseen_goal", False)),
                     bool(getattr(r, "misheard", False)), bool(denied), correction))
    df = pd.DataFrame(rows, columns=["locale", "before", "after", "win", "loss", "kind", "unseen_goal", "misheard", "denied",
                                     "correction"])

    def summary(d: pd.DataFrame) -> dict:
        wins, losses = int(d["win"].sum()), int(d["loss"].sum())
        defects_before, defects_after = int((~d["before"]).sum()), int((~d["after"]).sum())
        out = {
            "requests": int(len(d)), "rewritten": int(d["kind"].notna().sum()), "wins": wins, "losses": losses,
            "win_loss_ratio": (wins / losses) if losses else (float("inf") if wins else None),
            "defects_before": defects_before, "defects_after": defects_after,
            "relative_defect_reduction": (defects_before - defects_after) / defects_before if defects_before else None,
        }
        for kind in ("exact", "pattern"):
            k = d[d["kind"] == kind]
            kw, kl = int(k["win"].sum()), int(k["loss"].sum())
            out[kind] = {
                "applied": int(len(k)), "wins": kw, "losses": kl,
                "win_loss_ratio": (kw / kl) if kl else (float("inf") if kw else None),
                # the defects of all requests this kind removed, as a share of all defects before
                "relative_defect_reduction": (int((~k["before"]).sum()) - int((~k["after"]).sum())) / defects_before if defects_before else None,
                "precision": float(k["after"].mean()) if len(k) else None,
                # the same on the requests ASR heard right (a misheard value carried into a
                # working phrasing stays wrong whatever the rewrite)
                "applied_heard": int((~k["misheard"]).sum()),
                "precision_heard": float(k.loc[~k["misheard"], "after"].mean()) if (~k["misheard"]).any() else None,
            }
        c = d[d["correction"]]  # pattern rows that are value corrections, a part of `pattern`
        out["pattern"]["corrections"] = {
            "applied": int(len(c)), "wins": int(c["win"].sum()), "losses": int(c["loss"].sum()),
            "precision": float(c["after"].mean()) if len(c) else None,
            "relative_defect_reduction": (int((~c["before"]).sum()) - int((~c["after"]).sum())) / defects_before if defects_before else None,
        }
        u = d[d["unseen_goal"]]
        ub = int((~u["before"]).sum())
        out["unseen_goals"] = {"requests": int(len(u)), "defects_before": ub,
                               "relative_defect_reduction": (ub - int((~u["after"]).sum())) / ub if ub else None}
        a = d[~d["denied"]]
        ab = int((~a["before"]).sum())
        out["allowed_goals"] = {"requests": int(len(a)), "defects_before": ab,
                                "relative_defect_reduction": (ab - int((~a["after"]).sum())) / ab if ab else None}
        return out

    return {"overall": summary(df), "per_locale": {loc: summary(g) for loc, g in df.groupby("locale", sort=True)}}


def _slot_set(slots) -> set:
    if slots is None:
        return set()
    return {(str(s["name"]), normalize_text(str(s["value"]))) for s in slots}


def pattern_row_goals(training: pd.DataFrame, goals: pd.DataFrame, world) -> pd.DataFrame:
    """Gold intent and slots of `pattern` training rows whose text is not in the log (a
    filled template): the world's phrasings (templates) that render to the text; judged
    only where all of them mean one intent."""
    rows = training[(training["label_source"] == "pattern")]
    rows = rows.merge(goals[["locale", "text"]], on=["locale", "text"], how="left", indicator=True)
    rows = rows[rows["_merge"] == "left_only"]
    out = []
    for loc, text in zip(rows["locale"], rows["text"]):
        found = world.parse(loc, text) if hasattr(world, "parse") else []
        intents = {f[0] for f in found}
        if len(intents) == 1:
            out.append((loc, text, found[0][0], [{"name": n, "value": v} for n, v in found[0][1]]))
    return pd.DataFrame(out, columns=["locale", "text", "gold_intent", "gold_slots"])


def label_metrics(training: pd.DataFrame, goals: pd.DataFrame, world=None) -> dict:
    gold = goals[["locale", "text", "gold_intent", "gold_slots"]]
    if world is not None and len(training) and (training["label_source"] == "pattern").any():
        gold = pd.concat([gold, pattern_row_goals(training, goals, world)], ignore_index=True)
    m = training.merge(gold, on=["locale", "text"], how="inner")
    if m.empty:
        return {"overall": {"rows": int(len(training)), "judged": 0, "intent_accuracy": None, "slot_f1": None}, "per_locale": {}}

    def summary(d):
        tp = fp = fn = 0
        for pred, gold in zip(d["slots"], d["gold_slots"]):
            p, g = _slot_set(pred), _slot_set(gold)
            tp, fp, fn = tp + len(p & g), fp + len(p - g), fn + len(g - p)
        f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
        return {"judged": int(len(d)), "intent_accuracy": float((d["intent"] == d["gold_intent"]).mean()), "slot_f1": f1}

    overall = summary(m)
    overall["rows"] = int(len(training))
    by_source = {src: {**summary(g), "rows": int((training["label_source"] == src).sum())}
                 for src, g in m.groupby("label_source", sort=True)}
    return {"overall": overall, "by_label_source": by_source,
            "per_locale": {loc: summary(g) for loc, g in m.groupby("locale", sort=True)}}


SIM_FILES = ("summary.json", "truth.parquet", "log", "world")
# What World.load and the quarantine check read: a simulation missing one is refused by name.
WORLD_FILES = ("world.json", "templates.parquet", "goals.parquet", "nlu.parquet", "users.parquet")
SUMMARY_KEYS = ("malformed", "locales", "config")


# Slot names whose values are personal data a published text must not hold unmasked.
PII_SLOTS = ("email_address",)
_PII_TABLES = {"rewrites": ("source", "target"), "rewrite_patterns": ("source", "target"), "training": ("text",),
               "paraphrase_clusters": ("text",), "rewrite_graph/nodes": ("text",),
               "turns": ("text",), "rephrase_pairs": ("first", "second")}


def pii_metrics(run_dir: Path, truth: pd.DataFrame, examples: int = 5) -> dict:
    """Published texts holding an annotated e-mail value of the truth (as a text key, three
    words or more: a one- or two-word value is an annotation slip such as "my contact
    list"), per table: `published` sums the customer-facing ones (target 0), `operator`
    the tables kept in-house."""
    import re

    from selflearn.core.privacy import OPERATOR_DATA

    values = {normalize_text(d["value"]) for slots in truth.get("gold_slots", pd.Series(dtype=object))
              if slots is not None for d in slots if d["name"] in PII_SLOTS}
    values = sorted(v for v in values if v and len(v.split()) >= 3)
    out = {"values": len(values), "by_table": {}, "examples": {}}
    if not values:
        out["published"] = out["operator"] = 0
        return out
    # no word boundaries: in Japanese or Thai the words around an address touch it
    holds = re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))
    for table, cols in _PII_TABLES.items():
        path = run_dir / table
        if not path.exists():
            continue
        frame = pd.read_parquet(path, columns=list(cols))
        texts = set().union(*(frame[c].dropna().unique() for c in cols))
        hits = sorted(t for t in texts if holds.search(t))
        out["by_table"][table] = len(hits)
        if hits:
            out["examples"][table] = hits[:examples]
    out["operator"] = sum(n for t, n in out["by_table"].items() if t in OPERATOR_DATA)
    out["published"] = sum(n for t, n in out["by_table"].items() if t not in OPERATOR_DATA)
    return out


def check_sim(sim_dir: str | Path) -> Path:
    """The folder `selflearn simulate` wrote, or one clear line saying it is not one."""
    sim = Path(sim_dir)
    missing = [f for f in SIM_FILES if not (sim / f).exists()]
    if missing:
        raise ValueError(f"{sim} is not a simulation folder (no {', '.join(missing)}; "
                         f"`selflearn simulate --output DIR` writes one)")
    missing = [f"world/{f}" for f in WORLD_FILES if not (sim / "world" / f).is_file()]
    try:
        summary = json.loads((sim / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{sim} is an incomplete simulation: summary.json is not readable JSON ({exc})") from None
    lacking = [k for k in SUMMARY_KEYS if not isinstance(summary, dict) or k not in summary]
    if missing or lacking:
        raise ValueError(f"{sim} is an incomplete simulation: "
                         + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                        f"summary.json lacks {', '.join(lacking)}" if lacking else "") if part)
                         + " (simulate again with `selflearn simulate --output DIR`)")
    return sim


def evaluation_path(run_dir: Path) -> Path:
    """Where evaluate writes: ROOT/evaluations/<run_id>.json for a run of a ROOT (runs/ holds
    run directories only, so a reader listing it finds runs), next to a run directory
    that is not in a ROOT; never inside the published run."""
    run_dir = Path(run_dir)
    if run_dir.parent.name == "runs":
        return run_dir.parent.parent / "evaluations" / f"{run_dir.name}.json"
    return run_dir.parent / f"{run_dir.name}.evaluation.json"


def evaluate(run_path: str | Path, sim_dir: str | Path) -> dict:
    from selflearn.simulate import World

    sim = check_sim(sim_dir)
    run_dir = resolve_run(run_path)
    root = run_dir.parent.parent
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    summary = json.loads((sim / "summary.json").read_text(encoding="utf-8"))
    truth = _read(sim / "truth.parquet")
    log = _read(sim / "log")
    turns = _read(run_dir / "turns")
    if len(turns) and not turns["event_id"].isin(truth["event_id"]).any():
        # another simulation's truth would score every number 0 without a word
        raise ValueError(f"{run_dir.name} was not mined from {sim}'s log: none of its {len(turns):,} turns is in "
                         f"{sim / 'truth.parquet'}")
    pairs = _read(run_dir / "rephrase_pairs")
    rewrites = _read(run_dir / "rewrites")
    training = _read(run_dir / "training")
    patterns = _read(run_dir / "rewrite_patterns") if (run_dir / "rewrite_patterns").exists() else None
    world = World.load(str(sim))
    goals = key_goals(log, truth)
    flood = [(loc, normalize_text(a), normalize_text(b)) for loc, a, b in world.flood_pairs()]
    emitted = set(zip(rewrites["locale"], rewrites["source"], rewrites["target"]))
    sources = set(zip(rewrites["locale"], rewrites["source"]))
    result = {
        "run_id": run_dir.name,
        "sim": str(sim),
        "rephrase": rephrase_metrics(pairs, truth, turns.set_index("event_id")["locale"]),
        "defect": defect_metrics(turns, truth, log),
        "quarantine": quarantine_metrics(root, run_dir, manifest, summary),
        "rewrites": rewrite_metrics(rewrites, goals, world),
        "patterns": {"patterns": 0 if patterns is None else int(len(patterns))},
        "replay": replay_metrics(rewrites, world, patterns=patterns,
                                 deny_intents=manifest.get("config", {}).get("deny_intents", ()),
                                 deny_domains=manifest.get("config", {}).get("deny_domains", ())),
        "weak_labels": label_metrics(training, goals, world),
        "flood": {"pairs": [list(f) for f in flood], "emitted": any(f in emitted for f in flood),
                  "source_rewritten": any((f[0], f[1]) in sources for f in flood)},
        "privacy": pii_metrics(run_dir, truth),
    }
    out = evaluation_path(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    return result


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if v == float("inf") else f"{v:.3f}"
    return str(v)


def render(result: dict) -> str:
    lines = [f"evaluation of run {result['run_id']}"]
    r, d = result["rephrase"], result["defect"]
    lines.append(f"rephrase  P={_fmt(r['overall']['precision'])} R={_fmt(r['overall']['recall'])} F1={_fmt(r['overall']['f1'])}")
    for trap, m in sorted(r.get("per_trap", {}).items()):
        lines.append(f"  trap {trap}: pairs={m['pairs']} FP={m['false_positives']} FP rate={_fmt(m['false_positive_rate'])} "
                     f"(P={_fmt(m['precision'])} F1={_fmt(m['f1'])} with only these negatives)")
    lines.append(f"defect    AUC={_fmt(d['overall']['auc'])} AUC(success turns)={_fmt(d['overall']['auc_success_turns'])}")
    q = result["quarantine"]
    lines.append(f"quarantine completeness={_fmt(q['completeness'])} ({q['quarantined_with_reason']}/{q['planted']}) rows balance={q['rows_balance']}")
    rw, rp, wl = result["rewrites"]["overall"], result["replay"]["overall"], result["weak_labels"]["overall"]
    lines.append(f"rewrites  n={rw['rewrites']} precision={_fmt(rw['precision'])}")
    lines.append(f"replay    wins={rp['wins']} losses={rp['losses']} win/loss={_fmt(rp['win_loss_ratio'])} defect reduction={_fmt(rp['relative_defect_reduction'])}")
    for kind in ("exact", "pattern"):
        k = rp.get(kind, {})
        lines.append(f"  {kind:8s}applied={k.get('applied')} wins={k.get('wins')} losses={k.get('losses')} "
                     f"win/loss={_fmt(k.get('win_loss_ratio'))} defect reduction={_fmt(k.get('relative_defect_reduction'))} "
                     f"precision={_fmt(k.get('precision'))} (heard right: {_fmt(k.get('precision_heard'))} of {k.get('applied_heard')})")
    vc = rp.get("pattern", {}).get("corrections")
    if vc:
        lines.append(f"    of which value corrections: applied={vc['applied']} wins={vc['wins']} losses={vc['losses']} "
                     f"precision={_fmt(vc['precision'])} defect reduction={_fmt(vc['relative_defect_reduction'])}")
    if "unseen_goals" in rp:
        lines.append(f"  unseen goals: requests={rp['unseen_goals']['requests']} defect reduction={_fmt(rp['unseen_goals']['relative_defect_reduction'])}")
    if rp.get("allowed_goals"):
        al = rp["allowed_goals"]
        lines.append(f"  goals the deny lists allow: requests={al['requests']} defects={al['defects_before']} "
                     f"defect reduction={_fmt(al['relative_defect_reduction'])}")
    lines.append(f"patterns  n={result.get('patterns', {}).get('patterns')}")
    lines.append(f"labels    rows={wl.get('rows')} intent acc={_fmt(wl['intent_accuracy'])} slot F1={_fmt(wl['slot_f1'])}")
    for src, b in sorted(result["weak_labels"].get("by_label_source", {}).items()):
        lines.append(f"  {src:10s} rows={b['rows']} judged={b['judged']} intent acc={_fmt(b['intent_accuracy'])} slot F1={_fmt(b['slot_f1'])}")
    lines.append(f"flood     emitted={result['flood']['emitted']}")
    pv = result.get("privacy")
    if pv:
        lines.append(f"privacy   texts holding an annotated e-mail address: published={pv['published']} "
                     f"operator tables={pv['operator']} (of {pv['values']} such values in the truth)")
    lines.append("per locale: rephrase F1 | defect AUC | AUC success | rewrite P | win/loss | defect red. | label acc | pattern P | pattern red.")
    for loc in sorted(result["rephrase"]["per_locale"]):
        get = lambda sec, key: result[sec]["per_locale"].get(loc, {}).get(key)  # noqa: E731
        lines.append(
            f"  {loc:6s} {_fmt(get('rephrase', 'f1')):>6s} | {_fmt(get('defect', 'auc')):>6s} | {_fmt(get('defect', 'auc_success_turns')):>6s} | "
            f"{_fmt(get('rewrites', 'precision')):>6s} | {_fmt(get('replay', 'win_loss_ratio')):>6s} | {_fmt(get('replay', 'relative_defect_reduction')):>6s} | "
            f"{_fmt(get('weak_labels', 'intent_accuracy')):>6s} | "
            f"{_fmt((get('replay', 'pattern') or {}).get('precision')):>6s} | {_fmt((get('replay', 'pattern') or {}).get('relative_defect_reduction')):>6s}"
        )
    return "\n".join(lines)


def evaluate_cli(run_path: str, sim_dir: str) -> int:
    from selflearn.run.report import add_evaluation

    result = evaluate(run_path, sim_dir)
    run_dir = resolve_run(run_path)
    page = add_evaluation(run_dir, result)
    print(render(result))
    print(f"wrote {evaluation_path(run_dir)}" + (f"; its numbers are in {page}" if page else ""))
    sys.stdout.flush()
    return 0
