"""DSTC2 through the product: rephrase detection of `selflearn run` on a converted DSTC2 file.

`bench.dstc2_rephrase` and `bench.fit_rephrase` score DSTC2's pairs in pandas
(`enrich_turns`); what a run publishes also has what only the Spark path computes (the
meaning feature from the run's own vectors, the other-intent veto from each day's
served-intent centroids). This converts the file (`selflearn.evaluation.dstc2.convert`,
acts mapped), runs `selflearn run` on it once with the given settings and once with
`w_other_intent: 0`, and compares the published `rephrase_pairs.is_rephrase` with the
converter's truth: the full one (`is_reask`) and the strict one (the system itself showed the
failure: `not_understood`, `correction`).

Run: .venv/bin/python -m bench.dstc2_product [--split tst|dev] [--work DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT.parent / "shared" / "data" / "dstc2_babi_task6").resolve()
STRICT = ("not_understood", "correction")
CONFIGS = {"defaults": "", "without the other-intent veto": "rephrase_model:\n  w_other_intent: 0.0\n"}


def prf(pred: pd.Series, truth: pd.Series) -> str:
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return f"P {p:.3f} R {r:.3f} F1 {2 * p * r / (p + r) if p + r else 0.0:.3f} (tp {tp}, fp {fp}, fn {fn})"


def main() -> None:
    from selflearn.evaluation import dstc2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="tst", choices=("tst", "dev"))
    ap.add_argument("--work", default="/tmp/selflearn-dstc2-product", help="folder for the converted log and the runs")
    args = ap.parse_args()
    work = Path(args.work) / args.split
    conv = dstc2.convert(DATA / f"dialog-babi-task6-dstc2-{args.split}.txt", work / "conv")
    labels = pd.read_parquet(conv["labels"])
    (work / "in").mkdir(parents=True, exist_ok=True)
    Path(conv["log"]).replace(work / "in" / "log.parquet")
    for i, (name, extra) in enumerate(CONFIGS.items()):
        cfg = work / f"config{i}.yaml"
        cfg.write_text("spark_driver_memory: 2g\n" + extra, encoding="utf-8")
        root = work / f"root{i}"
        with open(work / f"run{i}.log", "w", encoding="utf-8") as log:
            subprocess.run([sys.executable, "-m", "selflearn.cli", "run", "--input", str(work / "in"), "--output", str(root),
                            "--config", str(cfg)], check=True, stdout=log, stderr=subprocess.STDOUT)
        run = root / "runs" / (root / "LATEST").read_text(encoding="utf-8").strip()
        m = labels.merge(pd.read_parquet(run / "rephrase_pairs"), on=["first_event_id", "second_event_id"], how="left")
        pred = m["is_rephrase"].fillna(False).astype(bool)
        print(f"DSTC2 {args.split}, {name}: {len(m)} pairs; full truth {prf(pred, m['is_reask'].astype(bool))}; "
              f"strict truth {prf(pred, m['reask_kind'].isin(STRICT))}")


if __name__ == "__main__":
    main()
