"""Why rephrase detection misses re-asks (issue 15): every candidate pair of a run that the
simulator's truth calls a re-ask and the run did not, by the part of the score that turned
it down, with a sample to read.

    PYTHONPATH=$PWD .venv/bin/python -m bench.rephrase_misses --sim SIM --work KEPT_WORK_DIR
        [--config FILE] [--sample 40] [--sample-locales en-US,de-DE] [--seed 7]

The pairs are the run's own (`enriched/` of a work directory kept by
`python -m bench.run_keep_work INPUT ROOT KEEP_DIR`: each turn with its next turn, their
features and `is_rephrase`), judged against the simulation's `truth.parquet` (`rephrase_of`
of the second turn is the first). Each missed re-ask gets the first of:

  veto_unrelated      meaning z < `unrelated_max_meaning_z` and lexical similarity <
                      `unrelated_max_similarity`: neither words nor meaning shared;
  veto_other_intent   the second turn was served as an intent far from the first key
                      (`other_intent_min_rank`, `other_intent_max_meaning_z`);
  veto_elicit         the first turn's `system_act` is `elicit`;
  first_looks_fine    no veto, and the first turn worked by its own signals
                      (`own_defect_prob` < 0.5): a silent failure;
  slots_changed       no veto, the first turn's values are gone from the second
                      (`slots_changed` >= 0.5): a misheard value said right, read as a
                      follow-up's new value;
  below_threshold     the rest.

The sample prints distinct (first, second) pairs of the largest bucket in the locales asked
for, to read by hand: the simulator's re-ask of a goal is any phrasing of its intent filled
with its values, and MASSIVE's phrasings of one intent do not all ask the same thing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from selflearn.config import load_settings
from selflearn.core.rephrase import FEATURES, pair_features

BUCKETS = ("veto_unrelated", "veto_other_intent", "veto_elicit", "first_looks_fine", "slots_changed", "below_threshold")


def label_pairs(enriched: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The enriched turns that have a next turn, with `truth` (the next turn re-asks this one)."""
    pairs = enriched[enriched["next_event_id"].notna()].copy()
    reask_of = dict(zip(truth["event_id"], truth["rephrase_of"]))
    pairs["truth"] = [reask_of.get(n) == e for e, n in zip(pairs["event_id"], pairs["next_event_id"])]
    return pairs


def miss_bucket(pairs: pd.DataFrame, model, window_s: float = 60.0) -> pd.Series:
    """The first reason (BUCKETS) each pair's score stayed below the threshold. The vetoes
    are read off `rephrase.pair_features`, the run's own scoring, not restated here."""
    column = {name: i for i, name in enumerate(FEATURES)}
    rank = pairs["next_intent_rank"] if "next_intent_rank" in pairs else None
    feats = pair_features(pairs["similarity"], pairs["gap_s"], pairs["defect_prob"], pairs["meaning_z"],
                          pairs["system_act"] if "system_act" in pairs else None, window_s, model,
                          pairs["own_defect_prob"], pairs["slots_changed"], rank)
    out = pd.Series("below_threshold", index=pairs.index, dtype=object)
    rules = [
        ("veto_unrelated", feats[:, column["unrelated"]] > 0),
        ("veto_other_intent", feats[:, column["other_intent"]] > 0),
        ("veto_elicit", feats[:, column["act_elicit"]] > 0),
        ("first_looks_fine", (pairs["own_defect_prob"].astype(float) < 0.5).to_numpy()),
        ("slots_changed", (pairs["slots_changed"].astype(float) >= 0.5).to_numpy()),
    ]
    decided = np.zeros(len(pairs), dtype=bool)
    for name, mask in rules:
        take = mask & ~decided
        out[take] = name
        decided |= take
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", required=True)
    ap.add_argument("--work", required=True, help="a work directory kept by bench.run_keep_work")
    ap.add_argument("--config", default=None, help="the run's settings file (default settings otherwise)")
    ap.add_argument("--sample", type=int, default=40)
    ap.add_argument("--sample-locales", default="en-US,de-DE")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    settings = load_settings(args.config)
    model = settings.rephrase_model
    pairs = label_pairs(pd.read_parquet(Path(args.work) / "enriched"), pd.read_parquet(Path(args.sim) / "truth.parquet"))
    said = pairs["is_rephrase"].astype(bool)
    tp, fp, fn = int((said & pairs["truth"]).sum()), int((said & ~pairs["truth"]).sum()), int((~said & pairs["truth"]).sum())
    print(f"pairs {len(pairs)}: re-asks found {tp}, false {fp}, missed {fn}; "
          f"precision {tp / max(tp + fp, 1):.3f}, recall {tp / max(tp + fn, 1):.3f}")
    missed = pairs[~said & pairs["truth"]].copy()
    missed["bucket"] = miss_bucket(missed, model, settings.rephrase_window_s)
    print("missed re-asks by reason:")
    for name in BUCKETS:
        n = int((missed["bucket"] == name).sum())
        print(f"  {name:18s} {n:6d}  ({n / max(len(missed), 1):.1%})")
    if args.sample and len(missed):
        top = missed["bucket"].value_counts().index[0]
        pool = missed[(missed["bucket"] == top) & missed["locale"].isin(args.sample_locales.split(","))]
        pool = pool.drop_duplicates(["text", "next_text"])
        print(f"\n{min(args.sample, len(pool))} of {len(pool)} distinct {top} pairs in {args.sample_locales} (seed {args.seed}):")
        for r in pool.sample(min(args.sample, len(pool)), random_state=args.seed).itertuples(index=False):
            print(f"  {r.locale} z={r.meaning_z:.2f} sim={r.similarity:.2f} | {r.text}  ->  {r.next_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
