"""The publish gate: a run is always written completely (runs/<run_id>/ with _SUCCESS),
but ROOT/LATEST moves to it only if it looks like its predecessor's kind of run.

Checks against the previous complete run (the one LATEST names), each a setting:
  quarantine_rate  rows_quarantined / rows_in  >  gate_max_quarantine_rate
  volume_ratio     max(rows_in / prev, prev / rows_in)  >  gate_max_volume_ratio
  rewrite_churn    (added + removed) / |previous U new| rewrites (pins left out)
                   >  gate_max_rewrite_churn, judged only when the union holds at least
                   gate_churn_min_rewrites rewrites
  evidence_drop    retained evidence rows the run would drop (window moved, days
                   replaced by fewer rows) / rows retained before  >  gate_max_evidence_drop
                   (judged whenever state held evidence: a mislabelled partition or a
                   clock far ahead must not wipe the window)
A first run (no previous) is judged on its quarantine rate (and evidence drop) only. The verdict goes into
manifest.json as `gate`; `selflearn run` then exits with GATE_EXIT_CODE and one line
saying why. `--force-publish` moves LATEST anyway (recorded as `forced`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from selflearn.config import Settings
from selflearn.core.controls import Controls, load_controls

GATE_EXIT_CODE = 3
KEY = ["locale", "source", "target"]


def rewrite_diff(previous: pd.DataFrame | None, current: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rewrites added, removed, and kept with another confidence, by (locale, source,
    target). A source whose target changed is one removal and one addition."""
    cols = KEY + ["confidence", "n_users", "evidence"]
    prev = previous[cols] if previous is not None and len(previous) else pd.DataFrame(columns=cols)
    cur = current[cols] if len(current) else pd.DataFrame(columns=cols)
    both = prev.merge(cur, on=KEY, how="outer", suffixes=("_prev", ""), indicator=True)
    added = both[both["_merge"] == "right_only"][cols]
    removed = both[both["_merge"] == "left_only"][KEY + ["confidence_prev", "n_users_prev", "evidence_prev"]]
    removed.columns = cols
    kept = both[both["_merge"] == "both"]
    changed = kept[(kept["confidence"].astype(float) - kept["confidence_prev"].astype(float)).abs() > 1e-6]
    changed = changed[KEY + ["confidence_prev", "confidence"]]
    order = lambda f: f.sort_values(KEY, kind="mergesort").reset_index(drop=True)  # noqa: E731
    return {"added": order(added), "removed": order(removed), "changed": order(changed), "kept": order(kept[KEY])}


def rewrite_churn(previous: pd.DataFrame | None, current: pd.DataFrame, pins: pd.DataFrame | None = None) -> dict:
    """(added + removed) / |previous U current|, pinned pairs left out (an operator fixed them)."""
    def unpinned(f):
        if f is None or f.empty or pins is None or pins.empty:
            return f
        m = f.merge(pins[KEY].drop_duplicates(), on=KEY, how="left", indicator=True)
        return f[(m["_merge"] == "left_only").to_numpy()]

    d = rewrite_diff(unpinned(previous), unpinned(current))
    added, removed, kept = len(d["added"]), len(d["removed"]), len(d["kept"])
    union = added + removed + kept
    return {"added": added, "removed": removed, "kept": kept, "union": union,
            "churn": round((added + removed) / union, 6) if union else 0.0}


def published_rewrites(run_dir: Path) -> pd.DataFrame:
    """Exact rewrites and pattern rewrites of a run, one frame: the churn check counts both.
    A (locale, source, target) counts once: a value correction's row with every value
    written out holds no brace and could repeat an exact rewrite (the patterns stage leaves
    such rows out; an older run may hold them)."""
    cols = KEY + ["confidence", "n_users", "evidence"]
    frames = [pd.read_parquet(run_dir / "rewrites")[cols]]
    if (run_dir / "rewrite_patterns").exists():
        frames.append(pd.read_parquet(run_dir / "rewrite_patterns")[cols])
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True).drop_duplicates(KEY) if frames else pd.DataFrame(columns=cols)


def evaluate_gate(manifest: dict, previous_run: Path | None, staging: Path, settings: Settings, force: bool = False,
                  controls: Controls | None = None, latest_names: str | None = None) -> dict:
    """The gate's verdict for a run whose outputs are in `staging`. `latest_names`: what
    ROOT/LATEST holds when it names no complete run (`previous_run` None): the volume and
    churn checks would have nothing to compare with, so the check `previous_run` fails
    and holds LATEST for review rather than publishing unjudged."""
    checks: dict[str, dict] = {}
    if previous_run is None and latest_names:
        checks["previous_run"] = {"value": latest_names, "passed": False}
    rows_in = manifest.get("rows_in") or 0
    q_rate = (manifest.get("rows_quarantined") or 0) / rows_in if rows_in else 0.0
    checks["quarantine_rate"] = {"value": round(q_rate, 6), "threshold": settings.gate_max_quarantine_rate,
                                 "passed": q_rate <= settings.gate_max_quarantine_rate}
    ev = manifest.get("evidence") or {}
    if ev.get("rows_retained_before"):
        share = float(ev.get("drop_share") or 0.0)
        checks["evidence_drop"] = {"value": round(share, 6), "rows_dropped": ev.get("rows_dropped"),
                                   "rows_retained_before": ev.get("rows_retained_before"),
                                   "threshold": settings.gate_max_evidence_drop,
                                   "passed": share <= settings.gate_max_evidence_drop}
    prev_manifest = None
    if previous_run is not None and (previous_run / "manifest.json").is_file():
        prev_manifest = json.loads((previous_run / "manifest.json").read_text(encoding="utf-8"))
    if prev_manifest is not None:
        prev_in = prev_manifest.get("rows_in") or 0
        ratio = max(rows_in / prev_in, prev_in / rows_in) if rows_in and prev_in else (1.0 if rows_in == prev_in else float("inf"))
        checks["volume_ratio"] = {"value": round(ratio, 6), "previous_rows_in": prev_in, "rows_in": rows_in,
                                  "threshold": settings.gate_max_volume_ratio, "passed": ratio <= settings.gate_max_volume_ratio}
        prev_rw = published_rewrites(previous_run) if (previous_run / "rewrites").exists() else None
        controls = load_controls(settings.controls_file) if controls is None else controls
        churn = rewrite_churn(prev_rw, published_rewrites(staging), controls.pins)
        judged = churn["union"] >= settings.gate_churn_min_rewrites
        checks["rewrite_churn"] = {"value": churn["churn"], **{k: churn[k] for k in ("added", "removed", "kept")},
                                   "threshold": settings.gate_max_rewrite_churn, "judged": judged,
                                   "passed": (not judged) or churn["churn"] <= settings.gate_max_rewrite_churn}
    failed = [name for name, c in checks.items() if not c["passed"]]
    return {
        "previous_run": prev_manifest.get("run_id") if prev_manifest else None,
        "checks": checks,
        "failed": failed,
        "passed": not failed,
        "forced": bool(force and failed),
        "latest_moved": (not failed) or bool(force),
        "reason": "; ".join(_describe(name, checks[name]) for name in failed),
    }


def _describe(name: str, c: dict) -> str:
    if name == "quarantine_rate":
        return f"quarantine rate {c['value']:.3f} > {c['threshold']}"
    if name == "evidence_drop":
        return (f"the run would drop {c['rows_dropped']} of {c['rows_retained_before']} retained evidence rows "
                f"({c['value']:.3f} > {c['threshold']})")
    if name == "previous_run":
        return (f"LATEST names run {c['value']!r}, which is not a complete run under runs/: the volume and churn "
                f"checks have nothing to compare with")
    if name == "volume_ratio":
        return f"input volume {c['rows_in']} rows vs {c['previous_rows_in']} before (x{c['value']:.2f} > x{c['threshold']})"
    return f"rewrite churn {c['value']:.3f} > {c['threshold']} ({c['added']} added, {c['removed']} removed, {c['kept']} kept)"


def gate_message(manifest: dict, run_dir: Path) -> str | None:
    """One line for the CLI when the gate held LATEST back, else None."""
    gate = manifest.get("gate") or {}
    if gate.get("latest_moved", True):
        return None
    prev = gate.get("previous_run") or "none"
    return (f"publish gate held LATEST at {prev}: {gate.get('reason')}; run written to {run_dir} "
            f"(rerun with --force-publish to publish it)")
