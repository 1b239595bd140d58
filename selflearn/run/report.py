"""report.html: the page a speech scientist opens first. Self-contained (plots are
inline SVG from matplotlib), so it opens offline."""
from __future__ import annotations

import html
import io
import json
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from selflearn.run.publish import table_files  # noqa: E402

TOP_REWRITES = 30


def _svg(fig) -> str:
    buf = io.StringIO()
    with warnings.catch_warnings():  # keys in scripts the plot font lacks still render as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


BINS = np.linspace(0.0, 1.0, 21)


def _hist(counts, title: str, xlabel: str) -> str:
    """A histogram over [0, 1] in 20 bins, from counts per bin (np.histogram(..., BINS))."""
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.hist(BINS[:-1], bins=BINS, weights=np.asarray(counts, dtype=float), color="#3b6ea5")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _svg(fig)


def _table(df: pd.DataFrame, table_id: str | None = None) -> str:
    if df.empty:
        return f"<p{f' id={table_id!r}' if table_id else ''}><em>none</em></p>"
    return df.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3f}", border=0, classes="t", table_id=table_id)


def _per_locale(path: Path, value: str, flag: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Per locale: rows, sum of `value` (and of `flag`), and the histogram of `value`,
    reading one batch at a time: turns/ and rephrase_pairs/ grow with the log, so they
    are never loaded whole on the driver."""
    parts, hist = [], np.zeros(len(BINS) - 1, dtype=np.int64)
    for f in table_files(path):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=["locale", value] + ([flag] if flag else [])):
            pdf = batch.to_pandas()
            hist += np.histogram(pdf[value].to_numpy(dtype=float), BINS)[0]
            agg = {"rows": (value, "size"), "sum": (value, "sum")}
            if flag:
                agg["flagged"] = (flag, "sum")
            parts.append(pdf.groupby("locale").agg(**agg))
    cols = ["rows", "sum"] + (["flagged"] if flag else [])
    table = pd.concat(parts).groupby(level=0).sum() if parts else pd.DataFrame(columns=cols, index=pd.Index([], name="locale"))
    return table, hist



DIFF_ROWS = 50
COUNT_DELTAS = [  # (label, path into the manifest)
    ("rows_in", ("rows_in",)), ("rows_accepted", ("rows_accepted",)), ("rows_quarantined", ("rows_quarantined",)),
    ("turns", ("counts", "sessions", "turns")), ("rephrase_pairs", ("counts", "sessions", "rephrase_pairs")),
    ("distinct_keys", ("counts", "keys", "distinct_keys")), ("clustered_keys", ("counts", "paraphrase", "clustered_keys")),
    ("rewrite_candidates", ("counts", "rewrites", "candidates")), ("rewrites", ("counts", "rewrites", "emitted")),
    ("training_rows", ("counts", "labels", "training_rows")),
]


def _get(d: dict, path: tuple):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _gate_section(manifest: dict) -> list[str]:
    gate = manifest.get("gate")
    if not gate:
        return []
    verdict = "passed" if gate["passed"] else ("failed, published anyway (--force-publish)" if gate["forced"] else "failed: LATEST was not moved")
    rows = pd.DataFrame([(name, c.get("value"), c.get("threshold"), c.get("passed")) for name, c in gate["checks"].items()],
                        columns=["check", "value", "threshold", "passed"])
    return [f"<h2>Publish gate: <span id='gate-verdict'>{html.escape(verdict)}</span></h2>",
            f"<p>{html.escape(gate.get('reason') or 'every check within its threshold')}</p>", _table(rows)]


def _privacy_section(manifest: dict) -> list[str]:
    """The floor this run kept, a warning when it went below the documented one, and which
    tables are operator data (they describe every turn: not to be handed on)."""
    p = manifest.get("privacy") or {}
    if not p:
        return []
    out = ["<h2 id='privacy'>Privacy</h2>"]
    if p.get("below_floor"):
        out.append(f"<p id='privacy-override' style='color:#b00'><b>min_users_override: this run published texts behind "
                   f"only {p['min_users']} user(s), below the floor of 2. Do not hand its outputs on.</b></p>")
    out.append(f"<p>Every text in {', '.join(html.escape(t) + '/' for t in p.get('floored_tables', []))} rests on at least "
               f"{p.get('min_users')} distinct users. <span id='operator-data'>Operator data: "
               f"{', '.join(html.escape(t) + '/' for t in p.get('operator_data', []))} describe every turn, texts of a single "
               f"user included; keep them in the operator's hands.</span></p>")
    return out



# --- changes against the previous run -------------------------------------------------

# Settings whose effect on the rewrites is not what their name suggests; the changes
# section says so when one of them changed.
SETTING_EFFECTS = {
    "min_users": (
        "min_users is also the bar below which a key's own rephrase evidence counts as thin, so that it "
        "inherits the continuations of its failing paraphrase-cluster mates (graph.inherit_paraphrase_evidence). "
        "Raising it removes rewrites with too few users but lets more keys inherit mates' evidence, which can "
        "add rewrites resting on paraphrase evidence; lowering it does the reverse."),
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(previous: dict, current: dict) -> pd.DataFrame:
    """Settings whose value differs between two manifests' `config`, as text."""
    a, b = (_flat(json.loads(json.dumps(c, default=str))) for c in (previous, current))  # tuples read back as lists
    rows = [(k, _cell(a.get(k, "-")), _cell(b.get(k, "-"))) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return pd.DataFrame(rows, columns=["setting", "previous", "this run"])


def split_retargeted(diff: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """gate.rewrite_diff counts a source whose target changed as one removal and one
    addition (that is churn); a reader wants it as one row: `retargeted`."""
    key = ["locale", "source"]
    added, removed = diff["added"], diff["removed"]
    both = removed.merge(added, on=key, suffixes=("_prev", ""))
    retargeted = both[key + ["target_prev", "target", "n_users_prev", "n_users", "confidence_prev", "confidence"]]
    moved = set(zip(both["locale"], both["source"]))

    def rest(f):
        keep = [(lo, so) not in moved for lo, so in zip(f["locale"], f["source"])]
        return f[keep].reset_index(drop=True)

    return {**diff, "added": rest(added), "removed": rest(removed),
            "retargeted": retargeted.sort_values(key, kind="mergesort").reset_index(drop=True)}


def _ints(f: pd.DataFrame) -> pd.DataFrame:
    """Counts of users stay integers after an outer merge (which makes them floats)."""
    f = f.copy()
    for c in f.columns:
        if c.startswith(("n_users", "n_sessions")):
            f[c] = pd.to_numeric(f[c]).round().astype("Int64")
    return f


def _showing(title: str, f: pd.DataFrame, table_id: str, order: list[str]) -> list[str]:
    """A heading that says how many rows there are and which ones are shown."""
    n = len(f)
    shown = f.sort_values(order, ascending=False, kind="mergesort").head(DIFF_ROWS) if n else f
    note = f" (showing the {DIFF_ROWS} with the most users of {n})" if n > DIFF_ROWS else ""
    return [f"<h3>{html.escape(title)} ({n}){html.escape(note)}</h3>", _table(_ints(shown), table_id)]


def _diff_section(manifest: dict, rewrites: pd.DataFrame, previous: Path | None) -> list[str]:
    """What changed against the previous complete run: counts, settings and rewrites."""
    from selflearn.run.gate import rewrite_diff

    if previous is None or not (previous / "manifest.json").is_file():
        return ["<h2 id='changes'>Changes against the previous run</h2><p>No previous run: this is the first.</p>"]
    prev = json.loads((previous / "manifest.json").read_text(encoding="utf-8"))
    counts = []
    for label, path in COUNT_DELTAS:
        a, b = _get(prev, path), _get(manifest, path)
        delta = (b - a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        counts.append((label,) + tuple("-" if v is None else _cell(v) for v in (a, b, delta)))
    config = config_changes(prev.get("config", {}), manifest.get("config", {}))
    d = split_retargeted(rewrite_diff(pd.read_parquet(previous / "rewrites"), rewrites))
    changed = d["changed"].assign(delta=lambda f: f["confidence"] - f["confidence_prev"]) if len(d["changed"]) else d["changed"]
    changed = changed.merge(rewrites[["locale", "source", "target", "n_users"]], on=["locale", "source", "target"], how="left")
    notes = []
    for setting in config["setting"] if len(config) else []:
        base = setting.split(".")[0]
        if base in SETTING_EFFECTS:
            by_evidence = d["added"]["evidence"].value_counts().sort_index() if len(d["added"]) else pd.Series(dtype=int)
            ev = ", ".join(f"{k} {v}" for k, v in by_evidence.items()) or "none"
            notes.append(f"<p class='note' id='effect-{html.escape(base)}'>{html.escape(SETTING_EFFECTS[base])} "
                         f"Added rewrites by evidence: {html.escape(ev)}.</p>")
    return [
        f"<h2 id='changes'>Changes against the previous run {html.escape(str(prev.get('run_id')))}</h2>",
        "<h3>Counts</h3>", _table(pd.DataFrame(counts, columns=["count", "previous", "this run", "delta"]), "diff-counts"),
        f"<h3>Settings changed ({len(config)})</h3>", _table(config, "diff-config"), *notes,
        *_showing("Rewrites added", d["added"], "diff-added", ["n_users", "confidence"]),
        *_showing("Rewrites removed", d["removed"], "diff-removed", ["n_users", "confidence"]),
        *_showing("Rewrites retargeted (same source, another target)", d["retargeted"], "diff-retargeted", ["n_users", "confidence"]),
        *_showing("Rewrites with another confidence", changed, "diff-changed", ["n_users", "confidence"]),
    ]


# --- how good: the evaluation, where `selflearn evaluate` ran -------------------------

EVAL_START, EVAL_END = "<!-- evaluation -->", "<!-- /evaluation -->"


def _evaluation_section(run_id: str, result: dict | None = None) -> list[str]:
    """Filled by `selflearn evaluate` (report.add_evaluation); until then, how to fill it."""
    if result is None:
        body = [f"<p id='evaluation-status'>Not evaluated. For a simulated log, <code>selflearn evaluate --run ROOT "
                f"--sim DIR</code> fills this section and writes <code>evaluations/{html.escape(run_id)}.json</code>.</p>"]
    else:
        body = evaluation_tables(result)
    return [EVAL_START, "<h2 id='evaluation'>How good: evaluation against the simulation's truth</h2>", *body, EVAL_END]


def evaluation_tables(result: dict) -> list[str]:
    o = {k: result[k]["overall"] for k in ("rephrase", "defect", "rewrites", "replay", "weak_labels")}
    q = result["quarantine"]
    kinds = pd.DataFrame([
        ("rephrase detection", "precision / recall / F1", f"{_f(o['rephrase']['precision'])} / {_f(o['rephrase']['recall'])} / {_f(o['rephrase']['f1'])}"),
        ("defect detection", "AUC (all turns / success turns)", f"{_f(o['defect']['auc'])} / {_f(o['defect']['auc_success_turns'])}"),
        ("quarantine", "planted rows caught with their reason", f"{q['quarantined_with_reason']} of {q['planted']}; rows balance {q['rows_balance']}"),
        ("rewrites", "precision (target serves the source's true goal)", f"{_f(o['rewrites']['precision'])} of {o['rewrites']['judged']} judged"),
        ("replay of fresh traffic", "wins / losses / defect reduction",
         f"{o['replay']['wins']} / {o['replay']['losses']} / {_f(o['replay']['relative_defect_reduction'])} over {o['replay']['requests']} requests"),
        ("weak labels", "intent accuracy / slot F1", f"{_f(o['weak_labels']['intent_accuracy'])} / {_f(o['weak_labels']['slot_f1'])} over {o['weak_labels']['judged']} rows"),
        ("flooded bogus pair", "became a rewrite", str(result["flood"]["emitted"])),
        *([("privacy", "texts holding an e-mail address the truth annotates: customer-facing / operator tables",
            f"{result['privacy']['published']} / {result['privacy']['operator']} "
            f"(of {result['privacy']['values']} such values)")] if result.get("privacy") else []),
    ], columns=["kind", "measure", "value"])
    rows = []
    for loc in sorted(result["rephrase"]["per_locale"]):
        get = lambda sec, key: result[sec]["per_locale"].get(loc, {}).get(key)  # noqa: E731
        rows.append((loc, _f(get("rephrase", "precision")), _f(get("rephrase", "recall")), _f(get("rephrase", "f1")),
                     _f(get("defect", "auc")), _f(get("defect", "auc_success_turns")), _f(get("rewrites", "precision")),
                     _cell(get("rewrites", "rewrites")), _cell(get("replay", "wins")), _cell(get("replay", "losses")),
                     _f(get("replay", "relative_defect_reduction")), _f(get("weak_labels", "intent_accuracy")),
                     _f(get("weak_labels", "slot_f1"))))
    per_locale = pd.DataFrame(rows, columns=["locale", "rephrase P", "rephrase R", "rephrase F1", "defect AUC", "AUC success",
                                             "rewrite P", "rewrites judged", "wins", "losses", "defect reduction",
                                             "label intent acc", "slot F1"])
    return [f"<p>Simulation <code>{html.escape(str(result.get('sim')))}</code>; replay: fresh requests drawn with another "
            f"seed; a loss is a working request broken or a failing one sent to another goal the system acts on.</p>",
            _table(kinds, "evaluation-kinds"), "<h3>Per locale</h3>", _table(per_locale, "evaluation-locales")]


def add_evaluation(run_dir: Path, result: dict) -> Path | None:
    """Put `selflearn evaluate`'s numbers into the run's report.html (its evaluation
    section is replaced, so evaluating twice leaves one). The run's tables are untouched.
    None when the run has no report."""
    page = Path(run_dir) / "report.html"
    if not page.is_file():
        return None
    text = page.read_text(encoding="utf-8")
    new = "\n".join(_evaluation_section(Path(run_dir).name, result))
    if EVAL_START in text and EVAL_END in text:
        text = text[:text.index(EVAL_START)] + new + text[text.index(EVAL_END) + len(EVAL_END):]
    else:  # a report written before this section existed
        text = text.replace("</body>", new + "\n</body>")
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, page)
    return page


# --- checkable examples -----------------------------------------------------------------

TOP_EXPLAINED = 10  # top rewrites shown with their evidence
TOP_DRAWN = 3  # top rewrites drawn with their neighbourhood
MAX_VIA = 5  # keys drawn between a source and its target
TRAINING_SAMPLES = 8  # rows shown per label source


def _load_graph(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    g = run_dir / "rewrite_graph"
    nodes = pd.read_parquet(g / "nodes") if (g / "nodes").exists() else pd.DataFrame(
        columns=["locale", "text", "n_users", "n_turns", "defect_rate", "success_prob", "failure_prob"])
    edges = pd.read_parquet(g / "edges") if (g / "edges").exists() else pd.DataFrame(
        columns=["locale", "source", "target", "prob", "n_users"])
    return nodes, edges


PATH_COLUMNS = ["path", "key", "p_first", "users_first", "p_second", "users_second", "p_served"]


def rewrite_paths(rw, nodes: pd.DataFrame, edges: pd.DataFrame, clusters: pd.DataFrame, min_users: int = 0,
                  published: set | None = None) -> pd.DataFrame:
    """How users got from a rewrite's source to its target in the published graph: the
    direct edge (key = the target), two-step paths through another key, and failing
    paraphrase-cluster mates of the source that lead to the target (the evidence a
    paraphrase rewrite rests on: their users count for the source), each with the
    probability and users of each step and the chain's probability of ending served at
    the target, P(steps) * P(target -> success). Then where else the source's users went.
    Columns: PATH_COLUMNS (p_* and users_* None where a step does not exist). A key said
    by fewer than `min_users` users keeps its numbers but not its text (privacy floor),
    unless it is published anyway (`published`: (locale, key) of rewrites and training rows)."""
    e = edges[edges["locale"] == rw.locale]
    succ = nodes[nodes["locale"] == rw.locale].set_index("text")["success_prob"]
    t_succ = float(succ.get(rw.target, 0.0))
    out_s = e[e["source"] == rw.source].set_index("target")
    into_t = e[e["target"] == rw.target].set_index("source")
    c = clusters[clusters["locale"] == rw.locale]
    own = c.loc[c["text"] == rw.source, "cluster_id"]
    mates = (set(c.loc[c["cluster_id"] == own.iloc[0], "text"]) - {rw.source, rw.target}) if len(own) else set()
    rows = []
    if rw.target in out_s.index:
        d = out_s.loc[rw.target]
        rows.append(("direct", rw.target, float(d["prob"]), int(d["n_users"]), None, None, float(d["prob"]) * t_succ))
    for key in sorted((set(out_s.index) | mates) & set(into_t.index) - {rw.target}):
        v = into_t.loc[key]
        first = out_s.loc[key] if key in out_s.index else None
        kind = " and ".join(k for k, on in (("rephrase via", first is not None), ("paraphrase mate", key in mates)) if on)
        p_chain = (float(first["prob"]) if first is not None else 1.0) * float(v["prob"]) * t_succ
        rows.append((kind, key, None if first is None else float(first["prob"]), None if first is None else int(first["n_users"]),
                     float(v["prob"]), int(v["n_users"]), p_chain))
    shown = {r[1] for r in rows} | {rw.target}
    rest = out_s[~out_s.index.isin(list(shown | {rw.source}))].sort_values(["n_users", "prob"], ascending=False).head(2)
    for key, d in rest.iterrows():
        rows.append(("elsewhere", key, float(d["prob"]), int(d["n_users"]), None, None, None))
    order = {"direct": 0, "rephrase via and paraphrase mate": 1, "rephrase via": 2, "paraphrase mate": 3, "elsewhere": 4}
    f = pd.DataFrame(rows, columns=PATH_COLUMNS)
    users = nodes[nodes["locale"] == rw.locale].set_index("text")["n_users"]
    published = published or set()
    few = f["key"].map(lambda k: k not in (rw.source, rw.target) and (rw.locale, k) not in published
                       and int(users.get(k, 0)) < min_users)
    f.loc[few, "key"] = f"(a key said by fewer than {min_users} users)"
    return f.assign(o=f["path"].map(order)).sort_values(["o", "p_served"], ascending=[True, False], kind="mergesort").drop(columns="o").reset_index(drop=True)


def _paths_table(paths: pd.DataFrame) -> pd.DataFrame:
    """rewrite_paths for a person: '-' where a step does not exist."""
    p = lambda v: "-" if v is None or pd.isna(v) else f"{v:.3f}"  # noqa: E731
    n = lambda v: "-" if v is None or pd.isna(v) else str(int(v))  # noqa: E731
    return pd.DataFrame({
        "path": paths["path"], "key (via, or where else)": paths["key"],
        "P(source -> key)": paths["p_first"].map(p), "users": paths["users_first"].map(n),
        "P(key -> target)": paths["p_second"].map(p), "users ": paths["users_second"].map(n),
        "P(served at target) along this path": paths["p_served"].map(p),
    })


def rule_margins(d: pd.Series, settings: dict) -> pd.DataFrame:
    """The emission rules (rewrites.py) a candidate passed, each with how far from its threshold."""
    from selflearn.core.rewrites import wilson_bounds

    z = float(settings.get("significance_z", 1.645))
    _, src_upper = wilson_bounds(1.0 - float(d["source_defect_rate"]), float(d["source_n_users"]), z)
    tgt_lower, _ = wilson_bounds(float(d["target_success_rate"]), float(d["target_n_users"]), z)
    rows = [
        ("source is defective", "source_defect_rate", float(d["source_defect_rate"]), ">=", settings.get("min_source_defect_rate")),
        ("enough users", "n_users", int(d["n_users"]), ">=", settings.get("min_users")),
        ("target significantly better", "Wilson lower(target success) vs upper(source success)",
         round(float(tgt_lower), 3), ">", round(float(src_upper), 3)),
        ("confident enough", "confidence", float(d["confidence"]), ">=", settings.get("min_rewrite_confidence")),
    ]
    if d.get("evidence") == "paraphrase":
        rows.append(("paraphrase agrees", "confidence", float(d["confidence"]), ">=", settings.get("min_paraphrase_confidence")))
    f = pd.DataFrame(rows, columns=["rule", "quantity", "value", "needs", "threshold"])
    f["margin"] = [_cell(round(v - t, 3)) if isinstance(t, (int, float)) else "-" for v, t in zip(f["value"], f["threshold"])]
    f["value"] = f["value"].map(_cell)
    f["threshold"] = f["threshold"].map(_cell)
    return f


def _evidence_section(run_dir: Path, work_dir: Path | None, manifest: dict, rewrites: pd.DataFrame,
                      nodes: pd.DataFrame, edges: pd.DataFrame, clusters: pd.DataFrame, published: set) -> list[str]:
    """Each top rewrite with what a reviewer needs to check it: who went where, the
    chain's confidence, and how far it cleared each emission rule."""
    if rewrites.empty:
        return ["<h2 id='evidence'>Top rewrites with their evidence</h2><p><em>no rewrite</em></p>"]
    decided_path = Path(work_dir) / "decided.parquet" if work_dir else None
    decided = pd.read_parquet(decided_path) if decided_path and decided_path.is_file() else None
    node = nodes.set_index(["locale", "text"])
    settings = manifest.get("config", {})
    parts = ["<h2 id='evidence'>Top rewrites with their evidence</h2>",
             "<p>Users counted per path are distinct users whose sessions took that step. "
             "P(served at target) is the chain's probability along that path. With rephrase evidence alone the "
             "rewrite's confidence is the sum of such chains over every path into the target's interpretation "
             "(keys served with the same intent and slots count as the target); where a source's own evidence is "
             "thin, its row is mixed, weighted by users, with its failing paraphrase-cluster mates' rows "
             "(paraphrase_evidence_weight), so mates' paths explain part of it. Margins: value minus threshold.</p>"]
    top = rewrites.sort_values(["n_users", "confidence"], ascending=False, kind="mergesort").head(TOP_EXPLAINED)
    for i, rw in enumerate(top.itertuples(index=False)):
        def about(text):
            if (rw.locale, text) not in node.index:
                return "not in the published graph"
            r = node.loc[(rw.locale, text)]
            return (f"said by {int(r['n_users'])} user{'s' if int(r['n_users']) != 1 else ''} in {int(r['n_turns'])} turns, defect rate {r['defect_rate']:.2f}, "
                    f"ends served {r['success_prob']:.2f} / failed {r['failure_prob']:.2f}")

        parts += [
            f"<div class='card' id='evidence-{i}'><h3>{html.escape(rw.locale)}: <span class='src'>{html.escape(rw.source)}</span>"
            f" &rarr; <span class='tgt'>{html.escape(rw.target)}</span></h3>",
            f"<p>{int(rw.n_users)} users in {int(rw.n_sessions)} sessions went from the source"
            f"{'' if rw.evidence == 'rephrase' else ' (or from a failing paraphrase-cluster mate of it, whose users count for it)'}"
            f" to the target's interpretation (the target, or a key served with the same intent and slots); "
            f"evidence: {html.escape(str(rw.evidence))}; confidence {rw.confidence:.3f}. "
            f"Source: {about(rw.source)}. Target: {about(rw.target)}.</p>",
            _table(_paths_table(rewrite_paths(rw, nodes, edges, clusters, int(settings.get("min_users", 0)), published)),
                   f"evidence-paths-{i}"),
        ]
        if decided is not None:
            m = decided[(decided["locale"] == rw.locale) & (decided["source"] == rw.source) & (decided["target"] == rw.target)]
            if len(m):
                parts.append(_table(rule_margins(m.iloc[0], settings), f"evidence-rules-{i}"))
        parts.append("</div>")
    return parts


def _training_section(training: pd.DataFrame) -> list[str]:
    parts = ["<h2 id='training-samples'>Training rows, a sample per label source</h2>"]
    if training.empty:
        return parts + ["<p><em>no training row</em></p>"]
    for source, g in training.groupby("label_source", sort=True):
        sample = g.sample(n=min(TRAINING_SAMPLES, len(g)), random_state=0).sort_values(["locale", "text"])
        sample = sample.assign(slots=sample["slots"].map(_slots))[["locale", "text", "intent", "domain", "slots", "weight", "split"]]
        parts += [f"<h3>label_source = {html.escape(str(source))} ({len(g)} rows, {TRAINING_SAMPLES if len(g) > TRAINING_SAMPLES else len(g)} shown)</h3>",
                  _table(sample, f"training-{source}")]
    return parts


def _slots(slots) -> str:
    if slots is None or len(slots) == 0:
        return ""
    return "; ".join(f"{s['name']}={s['value']}" for s in slots)


# --- the drawing: neighbourhoods of the top rewrites ------------------------------------

BOX_W, COL_GAP, LINE_H, PAD = 250, 130, 16, 8


def _width_units(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def wrap_label(text: str, units: int = 34) -> list[str]:
    """Lines of at most `units` (a wide CJK character counts two), breaking at spaces
    and inside a word only when it alone is too long. Never drops a character."""
    lines, cur = [], ""
    for word in text.split(" "):
        cand = f"{cur} {word}" if cur else word
        if _width_units(cand) <= units:
            cur = cand
            continue
        if cur:
            lines.append(cur)
        cur = ""
        for ch in word:
            if _width_units(cur + ch) > units:
                lines.append(cur)
                cur = ""
            cur += ch
    if cur or not lines:
        lines.append(cur)
    return lines


def _box(x: float, y: float, text: str, info: str, succ: float, fail: float, role: str) -> tuple[str, float]:
    lines = wrap_label(text)
    h = PAD + LINE_H * len(lines) + LINE_H + 10 + PAD
    fill = {"source": "#fde2e1", "target": "#dff3e3", "via": "#eef3fa", "mate": "#f1ebf8", "elsewhere": "#f3f3f3"}[role]
    stroke = {"source": "#c0392b", "target": "#1e8449"}.get(role, "#8a9bb0")
    sw = 2.5 if role in ("source", "target") else 1
    out = [f"<rect x='{x}' y='{y}' width='{BOX_W}' height='{h}' rx='6' fill='{fill}' stroke='{stroke}' stroke-width='{sw}'/>"]
    for i, line in enumerate(lines):
        out.append(f"<text x='{x + PAD}' y='{y + PAD + LINE_H * (i + 1) - 4}' class='lbl'>{html.escape(line)}</text>")
    yi = y + PAD + LINE_H * (len(lines) + 1) - 4
    out.append(f"<text x='{x + PAD}' y='{yi}' class='info'>{html.escape(info)}</text>")
    bar_w = BOX_W - 2 * PAD
    out.append(f"<rect x='{x + PAD}' y='{yi + 4}' width='{bar_w * succ:.1f}' height='5' fill='#27ae60'/>")
    out.append(f"<rect x='{x + PAD + bar_w * succ:.1f}' y='{yi + 4}' width='{bar_w * fail:.1f}' height='5' fill='#c0392b'/>")
    return "\n".join(out), h


def _neighbourhood_svg(rw, paths: pd.DataFrame, nodes: pd.DataFrame) -> str:
    """Source (left, red), the keys users went through (middle), target (right, green);
    every drawn node has a drawn edge. Line width grows with the step's probability; the
    numbers are in the table under the drawing. The bar in a box: served (green) and
    failed (red) absorption of that key."""
    node = nodes[nodes["locale"] == rw.locale].set_index("text")

    def info(text):
        if text not in node.index:
            return ""
        r = node.loc[text]
        return f"{int(r['n_users'])} user{'s' if int(r['n_users']) != 1 else ''}, defect {r['defect_rate']:.2f}"

    def absorb(text):
        if text not in node.index:
            return 0.0, 0.0
        r = node.loc[text]
        return float(r["success_prob"]), float(r["failure_prob"])

    mids = paths[paths["path"].str.contains("via|mate")].head(MAX_VIA)
    others = paths[paths["path"] == "elsewhere"]
    x0, x1, x2 = 10, 10 + BOX_W + COL_GAP, 10 + 2 * (BOX_W + COL_GAP)
    top = 46  # room for the direct edge's arc above the middle column
    svg, y, mid_boxes = [], top, []
    for r in list(mids.itertuples(index=False)) + list(others.itertuples(index=False)):
        role = "elsewhere" if r.path == "elsewhere" else ("via" if r.path.startswith("rephrase") else "mate")
        b, h = _box(x1, y, r.key, info(r.key), *absorb(r.key), role)
        mid_boxes.append((r, y, h))
        svg.append(b)
        y += h + 14
    mid_bottom = max(y, top + 80)
    sb, sh = _box(x0, 0, rw.source, info(rw.source), *absorb(rw.source), "source")
    tb, th = _box(x2, 0, rw.target, info(rw.target), *absorb(rw.target), "target")
    sy, ty = (mid_bottom - sh) / 2, (mid_bottom - th) / 2
    svg.append(f"<g transform='translate(0,{sy:.1f})'>{sb}</g>")
    svg.append(f"<g transform='translate(0,{ty:.1f})'>{tb}</g>")
    s_out, t_in = (x0 + BOX_W, sy + sh / 2), (x2, ty + th / 2)

    def width(p):
        return 1.5 + 9 * max(0.0, min(1.0, float(p)))

    def curve(a, b, w, color, dash="", arc=None):
        (ax, ay), (bx, by) = a, b
        if arc is None:
            d = f"M{ax},{ay} C{(ax + bx) / 2},{ay} {(ax + bx) / 2},{by} {bx - 6},{by}"
        else:
            d = f"M{ax},{ay} C{ax + 80},{arc} {bx - 80},{arc} {bx - 6},{by}"
        return (f"<path d='{d}' fill='none' stroke='{color}' stroke-width='{w:.1f}' stroke-opacity='0.75' "
                f"{dash} marker-end='url(#arrow)'/>")

    edges_svg = []
    direct = paths[paths["path"] == "direct"]
    if len(direct):
        edges_svg.append(curve(s_out, t_in, width(direct.iloc[0]["p_first"]), "#2c6fbb", arc=4))
    for r, by_, h in mid_boxes:
        left, right = (x1, by_ + h / 2), (x1 + BOX_W, by_ + h / 2)
        color = "#999999" if r.path == "elsewhere" else ("#2c6fbb" if r.path.startswith("rephrase") else "#7d3c98")
        if r.p_first is not None and not pd.isna(r.p_first):
            edges_svg.append(curve(s_out, left, width(r.p_first), color))
        else:  # a paraphrase mate: same cluster, no step between them
            edges_svg.append(f"<path d='M{s_out[0]},{s_out[1]} C{(s_out[0] + left[0]) / 2},{s_out[1]} "
                             f"{(s_out[0] + left[0]) / 2},{left[1]} {left[0]},{left[1]}' fill='none' stroke='{color}' "
                             f"stroke-width='1.5' stroke-dasharray='5 4'/>")
        if r.p_second is not None and not pd.isna(r.p_second):
            edges_svg.append(curve(right, t_in, width(r.p_second), color))
    if not len(direct) and not any(r.p_second is not None and not pd.isna(r.p_second) for r, _, _ in mid_boxes):
        # the users reached other keys served with the target's intent and slots: no drawn
        # step enters the target, so a dotted arc says they are one outcome (never a lone box)
        edges_svg.append(f"<path d='M{s_out[0]},{s_out[1]} C{s_out[0] + 80},4 {t_in[0] - 80},4 {t_in[0] - 6},{t_in[1]}' "
                         "fill='none' stroke='#1e8449' stroke-width='1.5' stroke-dasharray='2 4' marker-end='url(#arrow)'/>")
    w_total, h_total = x2 + BOX_W + 10, max(mid_bottom, sy + sh, ty + th) + 10
    return (f"<svg xmlns='http://www.w3.org/2000/svg' class='nbh' viewBox='0 0 {w_total} {h_total + 24:.0f}' "
            f"width='{w_total}' height='{h_total + 24:.0f}'>"
            "<defs><marker id='arrow' viewBox='0 0 10 10' refX='8' refY='5' markerWidth='9' markerHeight='9' markerUnits='userSpaceOnUse' orient='auto'>"
            "<path d='M0,0 L10,5 L0,10 z' fill='#555'/></marker></defs>"
            f"<g transform='translate(0,24)'>{''.join(edges_svg)}{''.join(svg)}</g></svg>")


def _graph_section(rewrites: pd.DataFrame, nodes: pd.DataFrame, edges: pd.DataFrame, clusters: pd.DataFrame,
                   min_users: int, published: set) -> list[str]:
    parts = ["<h2 id='graph'>The rewrite graph around the top rewrites</h2>",
             "<p class='note'>Source red (left), target green (right), between them the keys users went through. "
             "Line width: the step's probability (numbers in the table under each drawing). Blue: users' rephrases; "
             "purple dashed: a failing paraphrase-cluster mate of the source (its users count for the source); grey: "
             "where else the source's users went; green dotted: users reached keys served like the target. The bar in a "
             "box: the share of the key's sessions ending served (green) or failed (red); the rest moved on to another key.</p>"]
    if rewrites.empty or edges.empty:
        return parts + ["<p><em>no rewrite to draw</em></p>"]
    top = rewrites.sort_values(["n_users", "confidence"], ascending=False, kind="mergesort").head(TOP_DRAWN)
    for i, rw in enumerate(top.itertuples(index=False)):
        paths = rewrite_paths(rw, nodes, edges, clusters, min_users, published)
        parts += [f"<h3>{html.escape(rw.locale)}: <span class='src'>{html.escape(rw.source)}</span> &rarr; "
                  f"<span class='tgt'>{html.escape(rw.target)}</span> ({int(rw.n_users)} users, confidence {rw.confidence:.3f})</h3>",
                  f"<div class='drawing' id='graph-{i}'>{_neighbourhood_svg(rw, paths, nodes)}</div>",
                  _table(_paths_table(paths), f"graph-paths-{i}")]
    return parts


# --- where to look ------------------------------------------------------------------------

def _audience_section(manifest: dict) -> list[str]:
    aud = manifest.get("audience")
    if not aud:
        return []
    order = sorted(aud, key=lambda w: (["trainer", "runtime", "operator"] + [w]).index(w))  # manifest.json sorts keys
    rows = pd.DataFrame([(w, ", ".join(aud[w]["paths"]), aud[w]["use"]) for w in order], columns=["for", "outputs", "how"])
    return ["<h2 id='audience'>Which output is for whom</h2>", _table(rows, "audience")]


# --- the page -----------------------------------------------------------------------------

# Keys come in any script: declare fonts that cover Latin, CJK, Devanagari and Arabic, so
# a viewer without the first still gets glyphs, not boxes.
FONT_STACK = ("system-ui, -apple-system, 'Segoe UI', 'Noto Sans', 'Noto Sans CJK JP', 'Noto Sans JP', 'Hiragino Sans', "
              "'Yu Gothic', 'Microsoft YaHei', 'Noto Sans Devanagari', 'Nirmala UI', 'Mangal', 'Noto Sans Arabic', "
              "'Noto Naskh Arabic', 'Geeza Pro', 'Arial Unicode MS', sans-serif")
STYLE = (
    f"body{{font-family:{FONT_STACK};margin:2em;max-width:1100px}}"
    "table.t{border-collapse:collapse;font-size:13px;margin-bottom:0.8em}"
    "table.t td,table.t th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}"
    ".plots{display:flex;flex-wrap:wrap;gap:1em}"
    ".card{border:1px solid #ddd;border-radius:6px;padding:0 1em;margin:1em 0}"
    ".src{color:#a93226}.tgt{color:#1e8449}.note{background:#fff8e1;padding:6px 10px}"
    f"svg.nbh text{{font-family:{FONT_STACK}}}svg.nbh .lbl{{font-size:13px}}svg.nbh .info{{font-size:11px;fill:#555}}"
    ".drawing{overflow-x:auto}"
)


def _cell(v) -> str:
    """A value for a table cell: integers as integers, lists joined, never a Python repr."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        if len(v) > 6:
            return f"{len(v)}: {', '.join(map(str, v[:2]))}, ..., {v[-1]}"
        return ", ".join(map(str, v)) if v else "none"
    return str(v)


def _f(v) -> str:
    if v is None:
        return "-"
    return "inf" if v == float("inf") else f"{v:.3f}"

def _patterns_section(run_dir: Path, work_dir: Path, manifest: dict, n: int = 10) -> list[str]:
    """Top pattern rewrites with one example each (the source filled with slot values at
    least min_users users were served with, never a value one user said) and what each
    reaches: the logged keys and users its source matches."""
    from selflearn.config import Settings
    from selflearn.core.patterns import pattern_bindings, served_value_pool, top_patterns
    from selflearn.core.rewrite_apply import fill

    path = Path(run_dir) / "rewrite_patterns"
    patterns = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    counts = manifest["counts"].get("patterns", {})
    head = [f"<h2 id='patterns'>Top pattern rewrites ({len(patterns)} in all)</h2>"]
    if patterns.empty:
        return head + [f"<p>No pattern rewrite. Candidates rejected by rule: {html.escape(str(counts.get('rejected_by_rule', {})))}</p>"]
    corrections = patterns[patterns["evidence"] == "correction"] if "evidence" in patterns else patterns.iloc[:0]
    top = top_patterns(patterns.drop(corrections.index), n)
    decided_path, served_path = Path(work_dir) / "patterns_decided.parquet", Path(work_dir) / "served_values.parquet"
    if decided_path.is_file():
        reach = pd.read_parquet(decided_path)
        reach = reach[reach["decision"] == "emit"] if "decision" in reach else reach
        reach = reach[[c for c in ["locale", "source", "target", "source_n_keys", "source_n_users", "target_intent"] if c in reach]]
        top = top.merge(reach.drop_duplicates(["locale", "source", "target"]), on=["locale", "source", "target"], how="left")
    # the example is filled as the pattern's training rows are: values served to min_users
    # users in that slot of the target's intent (a value of another intent is no example)
    served = pd.read_parquet(served_path) if served_path.is_file() else pd.DataFrame()
    min_users = int(manifest.get("config", {}).get("min_users", Settings().min_users))
    pool = served_value_pool(served, min_users) if "intent" in served else {}
    examples = []
    intents = top["target_intent"] if "target_intent" in top else [None] * len(top)
    for loc, src, tgt, intent in zip(top["locale"], top["source"], top["target"], intents):
        bind = next(pattern_bindings(loc, src, intent, pool, 1), None)
        examples.append(f"{fill(src, bind)} -> {fill(tgt, bind)}" if bind else "")
    top["example"] = examples
    cols = [c for c in ["locale", "source", "target", "example", "n_users", "n_values", "confidence",
                        "source_n_keys", "source_n_users", "source_defect_rate"] if c in top]
    return head + [_table(top[cols].rename(columns={"source_n_keys": "reaches_keys", "source_n_users": "reaches_users"})),
                   "<h2>Pattern candidates not emitted, by the first rule they failed</h2>",
                   _table(pd.DataFrame(sorted(counts.get("rejected_by_rule", {}).items()), columns=["rule", "candidates"])),
                   *_corrections_section(corrections, work_dir, counts.get("value_corrections", {}), n)]


def _corrections_section(rows: pd.DataFrame, work_dir: Path, counts: dict, n: int) -> list[str]:
    """The value corrections with the most users (core.corrections): what ASR heard, what
    the users meant, and how many published rows (phrasings) carry each."""
    path = Path(work_dir) / "corrections_decided.parquet"
    head = [f"<h2 id='corrections'>Value corrections ({len(rows)} rows of rewrite_patterns/)</h2>"]
    if not path.is_file():
        return head
    d = pd.read_parquet(path)
    emitted = d[d["decision"] == "emit"] if len(d) else d
    if len(emitted):
        published = set(zip(rows["locale"], rows["source"]))  # after the exact-shadow, dedupe and block filters
        emitted = emitted.assign(rows=[sum((loc, r[0]) in published for r in json.loads(x))
                                       for loc, x in zip(emitted["locale"], emitted["specializations"])]).sort_values(
            ["n_users", "locale", "slot", "heard"], ascending=[False, True, True, True], kind="mergesort").head(n)
        head.append(_table(emitted[["locale", "slot", "heard", "meant", "intent", "n_users", "n_phrasings", "rows"]]))
    return head + ["<h2>Value corrections not emitted, by the first rule they failed</h2>",
                   _table(pd.DataFrame(sorted(counts.get("rejected_by_rule", {}).items()), columns=["rule", "corrections"]))]


def write_report(run_dir: Path, manifest: dict, work_dir: Path, previous: Path | None = None) -> Path:
    """`previous`: the previous complete run's directory, for the section of changes."""
    run_dir = Path(run_dir)
    turns, turns_hist = _per_locale(run_dir / "turns", "defect_prob")
    pairs, pairs_hist = _per_locale(run_dir / "rephrase_pairs", "score", "is_rephrase")
    rewrites = pd.read_parquet(run_dir / "rewrites")
    training = pd.read_parquet(run_dir / "training")
    clusters = pd.read_parquet(run_dir / "paraphrase_clusters", columns=["locale", "cluster_id", "text"])
    nodes, edges = _load_graph(run_dir)
    published = (set(zip(rewrites["locale"], rewrites["source"])) | set(zip(rewrites["locale"], rewrites["target"]))
                 | set(zip(training["locale"], training["text"])))
    per_locale = pd.DataFrame({"turns": turns["rows"].astype("int64"), "mean_defect_prob": turns["sum"] / turns["rows"]})
    per_locale["rephrase_pairs"] = pairs["rows"]
    per_locale["rephrases"] = pairs.loc[pairs["flagged"] > 0, "flagged"]
    per_locale["rewrites"] = rewrites.groupby("locale").size()
    per_locale["training_rows"] = training.groupby("locale").size()
    per_locale = per_locale.apply(pd.to_numeric).fillna(0).reset_index()  # all-missing columns are object dtype
    for c in ("rephrase_pairs", "rephrases", "rewrites", "training_rows"):
        per_locale[c] = per_locale[c].astype("int64")
    stage_rows = pd.DataFrame(
        [(k, manifest["timings_s"].get(k), ", ".join(f"{a}={_cell(b)}" for a, b in v.items() if not isinstance(b, dict)))
         for k, v in manifest["counts"].items()],
        columns=["stage", "seconds", "counts"],
    )
    top = rewrites.sort_values(["n_users", "confidence"], ascending=False).head(TOP_REWRITES)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>selflearn run " + html.escape(manifest["run_id"]) + "</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>selflearn run {html.escape(manifest['run_id'])}</h1>",
        f"<p>{manifest['rows_in']} rows in, {manifest['rows_accepted']} accepted, {manifest['rows_quarantined']} quarantined. "
        f"Embedding: {html.escape(manifest['embedding']['model'])} ({html.escape(manifest['embedding']['backend'])}).</p>",
        *_privacy_section(manifest),
        *_audience_section(manifest),
        *_gate_section(manifest),
        *_evaluation_section(manifest["run_id"]),
        *_diff_section(manifest, rewrites, previous),
        "<h2>Stages</h2>", _table(stage_rows),
        "<h2>Per locale</h2>", _table(per_locale),
        "<h2>Distributions</h2><div class='plots'>",
        _hist(turns_hist, "defect probability of turns", "defect_prob"),
        _hist(pairs_hist, "rephrase score of candidate pairs", "score"),
        _hist(np.histogram(rewrites["confidence"], BINS)[0], "rewrite confidence", "confidence") if len(rewrites) else "",
        "</div>",
        f"<h2>Top rewrites ({len(rewrites)} in all)</h2>", _table(top),
        *_evidence_section(run_dir, work_dir, manifest, rewrites, nodes, edges, clusters, published),
        *_graph_section(rewrites, nodes, edges, clusters, int(manifest.get("config", {}).get("min_users", 0)), published),
        "<h2>Rewrite candidates not emitted, by the first rule they failed</h2>",
        _table(pd.DataFrame(sorted(manifest["counts"].get("rewrites", {}).get("rejected_by_rule", {}).items()), columns=["rule", "candidates"])),
        *_patterns_section(run_dir, work_dir, manifest),
        *_training_section(training),
        "</body></html>",
    ]
    out = run_dir / "report.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
