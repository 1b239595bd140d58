"""report.html: the page a speech scientist opens first. Self-contained (plots are
inline SVG from matplotlib), so it opens offline."""
from __future__ import annotations

import html
import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from .publish import _table_files  # noqa: E402

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


def _graph_drawing(run_dir: Path, rewrites: pd.DataFrame) -> str:
    edges_path = run_dir / "rewrite_graph" / "edges"
    if rewrites.empty or not edges_path.exists():
        return "<p><em>no rewrite to draw</em></p>"
    edges = pd.read_parquet(edges_path)
    top = rewrites.sort_values(["n_users", "confidence"], ascending=False).iloc[0]
    sub = edges[edges["locale"] == top["locale"]]
    g = nx.DiGraph()
    g.add_weighted_edges_from(sub[["source", "target", "prob"]].itertuples(index=False))
    if top["source"] not in g:
        return "<p><em>no graph piece</em></p>"
    nodes = {top["source"], top["target"]} | set(nx.descendants(g, top["source"])) | set(g.predecessors(top["target"]))
    piece = g.subgraph(sorted(nodes)[:25])
    fig, ax = plt.subplots(figsize=(7, 4))
    pos = nx.spring_layout(piece, seed=0)
    nx.draw_networkx(piece, pos, ax=ax, node_size=300, font_size=7, node_color="#9cc3e6", arrows=True)
    nx.draw_networkx_edge_labels(piece, pos, ax=ax, font_size=6, edge_labels={(u, v): f"{d['weight']:.2f}" for u, v, d in piece.edges(data=True)})
    ax.set_title(f"{top['locale']}: around '{top['source']}' -> '{top['target']}'")
    ax.axis("off")
    return _svg(fig)


def _per_locale(path: Path, value: str, flag: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Per locale: rows, sum of `value` (and of `flag`), and the histogram of `value`,
    reading one batch at a time: turns/ and rephrase_pairs/ grow with the log, so they
    are never loaded whole on the driver."""
    parts, hist = [], np.zeros(len(BINS) - 1, dtype=np.int64)
    for f in _table_files(path):
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


def _diff_section(manifest: dict, rewrites: pd.DataFrame, previous: Path | None) -> list[str]:
    """What changed against the previous complete run: counts and rewrites."""
    from .gate import rewrite_diff

    if previous is None or not (previous / "manifest.json").is_file():
        return ["<h2 id='changes'>Changes against the previous run</h2><p>No previous run: this is the first.</p>"]
    import json

    prev = json.loads((previous / "manifest.json").read_text(encoding="utf-8"))
    counts = []
    for label, path in COUNT_DELTAS:
        a, b = _get(prev, path), _get(manifest, path)
        delta = (b - a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        counts.append(tuple("-" if v is None else str(v) for v in (a, b, delta)))
        counts[-1] = (label,) + counts[-1]
    d = rewrite_diff(pd.read_parquet(previous / "rewrites"), rewrites)
    changed = d["changed"].assign(delta=lambda f: f["confidence"] - f["confidence_prev"]) if len(d["changed"]) else d["changed"]
    return [
        f"<h2 id='changes'>Changes against the previous run {html.escape(str(prev.get('run_id')))}</h2>",
        "<h3>Counts</h3>", _table(pd.DataFrame(counts, columns=["count", "previous", "this run", "delta"]), "diff-counts"),
        f"<h3>Rewrites added ({len(d['added'])})</h3>", _table(d["added"].head(DIFF_ROWS), "diff-added"),
        f"<h3>Rewrites removed ({len(d['removed'])})</h3>", _table(d["removed"].head(DIFF_ROWS), "diff-removed"),
        f"<h3>Rewrites with another confidence ({len(d['changed'])})</h3>", _table(changed.head(DIFF_ROWS), "diff-changed"),
    ]


def _patterns_section(run_dir: Path, work_dir: Path, manifest: dict, n: int = 10) -> list[str]:
    """Top pattern rewrites with one example each (the source filled with slot values at
    least min_users users were served with, never a value one user said) and what each
    reaches: the logged keys and users its source matches."""
    from .patterns import top_patterns
    from .rewrite_apply import fill, placeholder_names

    path = Path(run_dir) / "rewrite_patterns"
    patterns = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    counts = manifest["counts"].get("patterns", {})
    head = [f"<h2 id='patterns'>Top pattern rewrites ({len(patterns)} in all)</h2>"]
    if patterns.empty:
        return head + [f"<p>No pattern rewrite. Candidates rejected by rule: {html.escape(str(counts.get('rejected_by_rule', {})))}</p>"]
    top = top_patterns(patterns, n)
    decided_path, served_path = Path(work_dir) / "patterns_decided.parquet", Path(work_dir) / "served_values.parquet"
    if decided_path.is_file():
        reach = pd.read_parquet(decided_path)[["locale", "source", "target", "source_n_keys", "source_n_users"]]
        top = top.merge(reach, on=["locale", "source", "target"], how="left")
    served = pd.read_parquet(served_path) if served_path.is_file() else pd.DataFrame(columns=["locale", "name", "value", "n_users"])
    served = served.sort_values(["n_users", "value"], ascending=[False, True], kind="mergesort")
    first = {(l, nm): v for l, nm, v in zip(served["locale"][::-1], served["name"][::-1], served["value"][::-1])}
    examples = []
    for loc, src, tgt in zip(top["locale"], top["source"], top["target"]):
        bind = {nm: first.get((loc, nm)) for nm in placeholder_names(src)}
        examples.append(f"{fill(src, bind)} -> {fill(tgt, bind)}" if all(bind.values()) else "")
    top["example"] = examples
    cols = [c for c in ["locale", "source", "target", "example", "n_users", "n_values", "confidence",
                        "source_n_keys", "source_n_users", "source_defect_rate"] if c in top]
    return head + [_table(top[cols].rename(columns={"source_n_keys": "reaches_keys", "source_n_users": "reaches_users"})),
                   "<h2>Pattern candidates not emitted, by the first rule they failed</h2>",
                   _table(pd.DataFrame(sorted(counts.get("rejected_by_rule", {}).items()), columns=["rule", "candidates"]))]


def write_report(run_dir: Path, manifest: dict, work_dir: Path, previous: Path | None = None) -> Path:
    """`previous`: the previous complete run's directory, for the section of changes."""
    run_dir = Path(run_dir)
    turns, turns_hist = _per_locale(run_dir / "turns", "defect_prob")
    pairs, pairs_hist = _per_locale(run_dir / "rephrase_pairs", "score", "is_rephrase")
    rewrites = pd.read_parquet(run_dir / "rewrites")
    training = pd.read_parquet(run_dir / "training")
    per_locale = pd.DataFrame({"turns": turns["rows"].astype("int64"), "mean_defect_prob": turns["sum"] / turns["rows"]})
    per_locale["rephrase_pairs"] = pairs["rows"]
    per_locale["rephrases"] = pairs.loc[pairs["flagged"] > 0, "flagged"]
    per_locale["rewrites"] = rewrites.groupby("locale").size()
    per_locale["training_rows"] = training.groupby("locale").size()
    per_locale = per_locale.fillna(0).reset_index()
    stage_rows = pd.DataFrame(
        [(k, manifest["timings_s"].get(k), ", ".join(f"{a}={b}" for a, b in v.items() if not isinstance(b, dict)))
         for k, v in manifest["counts"].items()],
        columns=["stage", "seconds", "counts"],
    )
    top = rewrites.sort_values(["n_users", "confidence"], ascending=False).head(TOP_REWRITES)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>selflearn run " + html.escape(manifest["run_id"]) + "</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table.t{border-collapse:collapse;font-size:13px}"
        "table.t td,table.t th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}.plots{display:flex;flex-wrap:wrap;gap:1em}</style></head><body>",
        f"<h1>selflearn run {html.escape(manifest['run_id'])}</h1>",
        f"<p>{manifest['rows_in']} rows in, {manifest['rows_accepted']} accepted, {manifest['rows_quarantined']} quarantined. "
        f"Embedding: {html.escape(manifest['embedding']['model'])} ({html.escape(manifest['embedding']['backend'])}).</p>",
        *_gate_section(manifest),
        *_diff_section(manifest, rewrites, previous),
        "<h2>Stages</h2>", _table(stage_rows),
        "<h2>Per locale</h2>", _table(per_locale),
        "<h2>Distributions</h2><div class='plots'>",
        _hist(turns_hist, "defect probability of turns", "defect_prob"),
        _hist(pairs_hist, "rephrase score of candidate pairs", "score"),
        _hist(np.histogram(rewrites["confidence"], BINS)[0], "rewrite confidence", "confidence") if len(rewrites) else "",
        "</div>",
        f"<h2>Top rewrites ({len(rewrites)} in all)</h2>", _table(top),
        "<h2>Rewrite candidates not emitted, by the first rule they failed</h2>",
        _table(pd.DataFrame(sorted(manifest["counts"].get("rewrites", {}).get("rejected_by_rule", {}).items()), columns=["rule", "candidates"])),
        *_patterns_section(run_dir, work_dir, manifest),
        "<h2>A piece of the rewrite graph</h2>", _graph_drawing(run_dir, rewrites),
        "</body></html>",
    ]
    out = run_dir / "report.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
