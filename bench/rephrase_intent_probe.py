"""Probe (not shipped): does the second turn's served intent fit the first turn's meaning?

A topic switch after a failure ("play all songs on shuffle" -> "play for me the michael
jackson song from audiobook") that shares no words can still have a meaning z of 1.5-3,
above the unrelated veto's bound. Its second turn was served with an intent the first
turn's text is far from. This probe measures a veto on that: rank the second turn's served
intent among the locale's served-intent centroids (the mean vector of the distinct keys the
NLU served with each intent, over the pairs' keys) by cosine to the first key; a pair whose
second intent ranks `K` or lower (0 = nearest), with meaning z below `Z` and lexical
similarity below `unrelated_max_similarity`, is not a rephrase.

Why it is not in the product: the centroids come from the run's input, so a pair's score
would depend on the other turns of the run, and a log mined day by day would no longer
score its pairs as the same log mined at once (tests/test_incremental.py checks that).
Shipping it needs centroids that every run over the same days agrees on (computed from the
retained evidence at aggregation time, with the second turn's intent in the evidence rows).

Reads the scored pairs that bench.fit_rephrase keeps with --cache (run that first, same
--users), re-simulates the same logs (deterministic) for the second turns' intents, embeds
the pairs' keys with the default encoders, and prints P / R / F1 and the topic-switch FPR
for the shipped defaults and for each veto (K, Z) on the three simulated sets; (K, Z) is
picked by F1 on the fitting set (seed 1) only.

Run: .venv/bin/python -m bench.fit_rephrase --users 300 --cache DIR --only fit   (and seed, loc)
     .venv/bin/python -m bench.rephrase_intent_probe --users 300 --cache DIR [--per-day]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.fit_rephrase import OTHER_KNOBS, OTHER_LOCALES, TRAPS, predict, prf
from selflearn.config import Settings
from selflearn.core.rephrase import EncoderMeaning
from selflearn.simulate import simulate

SETS = {"fit": dict(seed=1, **TRAPS), "seed": dict(seed=2, **OTHER_KNOBS),
        "loc": dict(seed=3, locales=list(OTHER_LOCALES), **TRAPS)}


def served_intent_rank(pairs: pd.DataFrame, vectors: dict, per_day: bool = False) -> np.ndarray:
    """Per pair: how many of its locale's served-intent centroids are nearer to the first
    key than the centroid of the intent the second turn was served with (NaN when the
    second turn was not served with an intent). `per_day`: centroids of each day's served
    turns only, a pair ranked among those of its second turn's day (what a run could use
    and still score a log mined day by day as the same log mined at once)."""
    cols = ["locale", "text", "response_status", "nlu_intent", "day"]
    turns = pd.concat([pairs[["locale", "text", "response_status", "nlu_intent", "day1"]].set_axis(cols, axis=1),
                       pairs[["locale", "next_text", "next_status", "next_intent", "day2"]].set_axis(cols, axis=1)])
    turns = turns[(turns["response_status"] == "success") & turns["nlu_intent"].notna()]
    if not per_day:
        turns = turns.assign(day="all")
    turns = turns.drop_duplicates(["locale", "day", "text", "nlu_intent"])
    centroids = {}
    for (locale, day, intent), g in turns.groupby(["locale", "day", "nlu_intent"], sort=True):
        c = np.mean([vectors[(locale, t)] for t in sorted(g["text"])], axis=0)
        centroids.setdefault((locale, day), {})[intent] = c / np.linalg.norm(c)
    rank = np.full(len(pairs), np.nan)
    days = pairs["day2"] if per_day else pd.Series("all", index=pairs.index)
    for i, (locale, text, intent, status, day) in enumerate(
            zip(pairs["locale"], pairs["text"], pairs["next_intent"], pairs["next_status"], days)):
        cents = centroids.get((locale, day), {})
        if status != "success" or intent not in cents:
            continue
        names = sorted(cents)
        cos = np.stack([cents[n] for n in names]) @ vectors[(locale, text)]
        rank[i] = int((cos > cos[names.index(intent)]).sum())
    return rank


def load(name: str, cache: Path, users: int, settings: Settings, per_day: bool = False) -> pd.DataFrame:
    f = cache / f"{name}-{users}.parquet"
    if not f.is_file():
        sys.exit(f"{f} is missing: run `python -m bench.fit_rephrase --users {users} --cache {cache} --only {name}` first")
    pairs = pd.read_parquet(f)
    with tempfile.TemporaryDirectory() as tmp:
        simulate(tmp, users=users, **SETS[name])
        log = pd.read_parquet(Path(tmp) / "log").drop_duplicates("event_id").set_index("event_id")
    pairs["next_intent"] = pairs["next_event_id"].map(log["nlu_intent"])
    pairs["next_status"] = pairs["next_event_id"].map(log["response_status"])
    day = pd.to_datetime(log["ts"], utc=True).dt.strftime("%Y-%m-%d")
    pairs["day1"], pairs["day2"] = pairs["event_id"].map(day), pairs["next_event_id"].map(day)
    keys = pd.concat([pairs[["locale", "text"]], pairs[["locale", "next_text"]].set_axis(["locale", "text"], axis=1)])
    table = EncoderMeaning.for_settings(settings).vector_table(keys["locale"], keys["text"])
    vectors = {(lo, t): v for lo, t, v in zip(table["locale"], table["text"], table["vector"])}
    pairs["intent_rank"] = served_intent_rank(pairs, vectors, per_day)
    return pairs


def row(pairs: pd.DataFrame, pred: np.ndarray) -> dict:
    r = prf(pred, pairs["label"])
    topic = ((pairs["trap"] == "topic_switch") & ~pairs["label"].astype(bool)).to_numpy()
    f1s = [prf(pred[(pairs["locale"] == lo).to_numpy()], pairs.loc[pairs["locale"] == lo, "label"])["f1"]
           for lo in pairs["locale"].dropna().unique()]
    return {**r, "min_locale_f1": min(f1s), "fpr_topic": float(pred[topic].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--per-day", action="store_true", help="centroids of each day's served turns (see served_intent_rank)")
    args = ap.parse_args()
    settings = Settings()
    sets = {name: load(name, Path(args.cache), args.users, settings, args.per_day) for name in SETS}
    sim_bound = settings.rephrase_model.unrelated_max_similarity
    grid = [(k, z) for k in (1, 2, 3, 5) for z in (3.0, 4.0, float("inf"))]
    results = {}
    for name, pairs in sets.items():
        base = predict(pairs, settings)
        results[(name, None)] = row(pairs, base)
        for k, z in grid:
            veto = ((pairs["intent_rank"] >= k) & (pairs["meaning_z"] < z) & (pairs["similarity"] < sim_bound)).to_numpy()
            results[(name, (k, z))] = row(pairs, base & ~veto)
    chosen = max(grid, key=lambda kz: results[("fit", kz)]["f1"])
    print("| veto (K, Z) | set | P | R | F1 | min locale F1 | FPR topic switch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for kz in (None, chosen, *[g for g in grid if g != chosen]):
        for name in SETS:
            r = results[(name, kz)]
            label = "none (defaults)" if kz is None else f"K {kz[0]}, Z {kz[1]}" + (" (chosen on fit)" if kz == chosen else "")
            print(f"| {label} | {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                  f"{r['min_locale_f1']:.3f} | {r['fpr_topic']:.3f} |")


if __name__ == "__main__":
    main()
