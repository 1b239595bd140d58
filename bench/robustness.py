"""How the product holds when the world changes: `selflearn simulate`, `run` and `evaluate`
on one simulated world per entry of bench/worlds.yaml (the simulator's defaults plus a few
knobs: the rephrase traps, weaker defect signals, more silent failures, more mishearing,
users who know less, a weaker NLU), everything else at default settings.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.robustness [--worlds bench/worlds.yaml]
        [--only NAME,NAME] [--users 3000] [--seed 0] [--locales L,L,...] [--embeddings CACHE_DIR] [--work DIR]
        [--out bench/robustness.md]

Why: an outside evaluator replays traffic built "like ours, by someone else". Our targets
are measured on our simulator's defaults; this table shows which numbers are properties of
the product (precision, which should hold in every world) and which are properties of the
world (defect reduction, which follows how many users re-ask, and pattern precision, which
follows how often ASR mishears a value: a pattern carries the value it heard).

The worlds share one seed, so they share MASSIVE's goals and phrasings and most text keys:
`--embeddings` seeds each run's cache with a filled `ROOT/state/embeddings` (for example
`make demo`'s) so the table costs about 4 minutes per world here instead of 10.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "selflearn.cli"]


def load_worlds(path: Path) -> dict[str, dict]:
    """{world name: simulator knobs} in file order (the simulator refuses a misspelt knob)."""
    worlds = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(worlds, dict) or not all(isinstance(knobs, dict) for knobs in worlds.values()):
        raise SystemExit(f"{path}: expected a mapping of world name -> knobs")
    return worlds


def _cli(args: list[str], log: Path) -> None:
    with log.open("a", encoding="utf-8") as fh:
        rc = subprocess.run(CLI + args, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0:
        raise SystemExit(f"selflearn {args[0]} failed (exit {rc}); see {log}")


def run_world(knobs: dict, users: int, seed: int, work: Path, embeddings: Path | None,
              locales: str | None = None) -> dict:
    """Simulate, run and evaluate one world in `work`; its evaluation (the JSON `selflearn
    evaluate` writes beside the run)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    knobs_file = work / "knobs.yaml"
    knobs_file.write_text(yaml.safe_dump(knobs or {}), encoding="utf-8")
    log = work / "commands.log"
    sim, root = work / "sim", work / "root"
    _cli(["simulate", "--output", str(sim), "--users", str(users), "--seed", str(seed), "--config", str(knobs_file)]
         + (["--locales", locales] if locales else []), log)
    if embeddings is not None:
        shutil.copytree(embeddings, root / "state" / "embeddings")
    _cli(["run", "--input", str(sim / "log"), "--output", str(root)], log)
    _cli(["evaluate", "--run", str(root), "--sim", str(sim)], log)
    run_id = (root / "LATEST").read_text(encoding="utf-8").strip()
    from selflearn.evaluation.evaluate import evaluation_path

    return json.loads(evaluation_path(root / "runs" / run_id).read_text(encoding="utf-8"))


def world_row(name: str, knobs: dict, ev: dict, minutes: float) -> dict:
    """The table's numbers of one world's evaluation."""
    reph, replay = ev["rephrase"]["overall"], ev["replay"]["overall"]
    per_locale = ev["replay"]["per_locale"]
    worst = min(per_locale, key=lambda loc: per_locale[loc]["relative_defect_reduction"])
    topic = ev["rephrase"].get("per_trap", {}).get("topic_switch", {})
    exact, pattern = replay["exact"], replay["pattern"]
    labels = ev["weak_labels"]["overall"]
    return {
        "world": name,
        "knobs": ", ".join(f"{k} {v}" for k, v in knobs.items()) or "(defaults)",
        "rephrase P / R / F1": f"{reph['precision']:.3f} / {reph['recall']:.3f} / {reph['f1']:.3f}",
        "topic-switch FPR": f"{topic['false_positive_rate']:.3f}" if topic else "-",
        "rewrites (precision)": f"{ev['rewrites']['overall']['rewrites']:,} ({ev['rewrites']['overall']['precision']:.3f})",
        "patterns": f"{ev['patterns']['patterns']:,}",
        "defect reduction (lowest locale)": f"{replay['relative_defect_reduction']:.3f} "
                                            f"({per_locale[worst]['relative_defect_reduction']:.3f} {worst})",
        "win/loss": f"{replay['win_loss_ratio']:.1f}",
        "exact P": f"{exact['precision']:.3f}",
        "pattern P (heard right)": f"{pattern['precision']:.3f} ({pattern['precision_heard']:.3f})",
        "label intent acc": f"{labels['intent_accuracy']:.3f}",
        "minutes": f"{minutes:.1f}",
    }


def markdown(rows: list[dict], command: str) -> str:
    cols = [c for c in rows[0] if c != "knobs"]
    lines = [
        "# How the product holds when the world changes",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}` on {os.uname().nodename}. "
        "Each world: the simulator's defaults plus its knobs (bench/worlds.yaml), the same seed; "
        "`selflearn run` at default settings, then `selflearn evaluate`.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if c == "world" else "---:" for c in cols) + "|",
    ]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    lines += ["", "Knobs:", ""] + [f"- **{r['world']}**: {r['knobs']}" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", type=Path, default=REPO / "bench" / "worlds.yaml")
    ap.add_argument("--only", help="comma-separated world names (default: all)")
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--locales", help="comma-separated MASSIVE locales (default: the simulator's six)")
    ap.add_argument("--embeddings", type=Path, help="a filled ROOT/state/embeddings to seed each run's cache")
    ap.add_argument("--work", type=Path, help="where the worlds' simulations and runs go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "robustness.md")
    args = ap.parse_args()
    worlds = load_worlds(args.worlds)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in worlds]
        if unknown:
            raise SystemExit(f"unknown world(s) {unknown}; {args.worlds} has {list(worlds)}")
        worlds = {w: worlds[w] for w in wanted}
    if args.embeddings is not None and not args.embeddings.is_dir():
        raise SystemExit(f"--embeddings {args.embeddings}: not a directory")
    work = args.work or Path(tempfile.mkdtemp(prefix="robustness-"))
    rows = []
    for i, (name, knobs) in enumerate(worlds.items()):
        t0 = time.monotonic()
        print(f"[{i + 1}/{len(worlds)}] {name}: simulate, run, evaluate in {work / f'world{i}'}", flush=True)
        ev = run_world(knobs, args.users, args.seed, work / f"world{i}", args.embeddings, args.locales)
        rows.append(world_row(name, knobs, ev, (time.monotonic() - t0) / 60))
        print("   " + "  ".join(f"{k}: {v}" for k, v in rows[-1].items() if k not in ("world", "knobs")), flush=True)
    command = "python -m bench.robustness " + " ".join(sys.argv[1:])
    args.out.write_text(markdown(rows, command.strip()), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
