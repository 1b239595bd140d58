"""Can the log's signals tell a restatement from a re-ask? Features of the system's
understanding, refitted with and without the simulator's restatements, checked on DSTC2.

DSTC2's dev set is mostly callers restating a request the system got ("gastropub" ->
`api_call gastropub ...` -> "gastropub food"; "thank you good bye" twice): there the
detector's precision is 0.30. The simulator's `restate_prob` trap makes the same
dialogues (the same goal again right after it was served, at a re-ask's gap, in the same
or in other words). This probe asks whether a feature the log carries separates them from
re-asks after a silent failure, without learning the simulator's own NLU:

  none          the shipped features (rephrase.FEATURES)
  understood    + [both turns served with the same intent and slots] * (1 - own defect of the
                first turn) * (1 - own defect of the second): the system understood both turns
                alike and neither looks failed by its own signals (a restatement), against a
                re-ask after a silent failure, whose repeat fails again
  intent        + [both turns served, intents differ], and that times the meaning z: a re-ask
                the NLU serves as another intent than the first turn (the first was misread)

Each variant is fitted (bench.fit_rephrase.fit's logistic regression, vetoes fixed) on
seed 1 with the traps, and again on seed 1 with the traps and restatements, and every set
is scored with it: pair-level P / R / F1, and the false positive rate of topic switches and
restatements. The pairs come from `bench.fit_rephrase --cache DIR` (run it first, with the
same --users); the next turns' served intent, slots and own signals are read from the same
simulations again (deterministic by seed) and from the DSTC2 converter.

Run:  .venv/bin/python -m bench.rephrase_restate_probe --cache DIR [--users 300] [--out bench/rephrase_restate_probe.md]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.fit_rephrase import (DSTC2_DEV, DSTC2_TEST, FIXED, OTHER_KNOBS, OTHER_LOCALES, RESTATE, TRAPS, VETO,
                                features, prf, sim_pairs)
from selflearn.config import Settings
from selflearn.core.rephrase import WEIGHTS, EncoderMeaning
from selflearn.core.sessions import enrich_turns
from selflearn.evaluation import dstc2
from selflearn.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
SIMS = {  # cache name -> (label, simulation knobs); the first four are bench.fit_rephrase's
    "fit": ("seed 1, traps (fit_rephrase's fitting set)", dict(seed=1, **TRAPS)),
    "seed": ("seed 2, other knobs", dict(seed=2, **OTHER_KNOBS)),
    "loc": ("seed 3, other locales", dict(seed=3, locales=list(OTHER_LOCALES), **TRAPS)),
    "restate": ("seed 4, traps + restatements", dict(seed=4, **RESTATE)),
    "fit_restate": ("seed 1, traps + restatements", dict(seed=1, **RESTATE)),
}
DSTC2_SETS = {"dstc2": ("DSTC2 test, acts", DSTC2_TEST), "dstc2dev": ("DSTC2 dev, acts", DSTC2_DEV)}
VARIANTS = ("none", "understood", "intent")


def _slots_key(slots) -> str | None:
    return None if slots is None else json.dumps(sorted((str(s["name"]), str(s["value"])) for s in slots))


def with_next_turn(pairs: pd.DataFrame, log: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """`pairs` plus the served intent and slots of both turns and the second turn's own
    defect probability, read from the log the pairs came from."""
    log = log.copy()
    log["order"] = np.arange(len(log), dtype=np.int64)
    own = enrich_turns(log, settings).set_index("event_id")["own_defect_prob"]
    by_id = log.set_index("event_id")
    slots = by_id["nlu_slots"].map(_slots_key)
    return pairs.assign(first_slots=pairs["event_id"].map(slots).to_numpy(),
                        next_intent=pairs["next_event_id"].map(by_id["nlu_intent"]).to_numpy(),
                        next_slots=pairs["next_event_id"].map(slots).to_numpy(),
                        next_own_defect=pairs["next_event_id"].map(own).to_numpy())


def extra_features(pairs: pd.DataFrame, variant: str) -> list[np.ndarray]:
    both = (pairs["nlu_intent"].notna() & pairs["next_intent"].notna()).to_numpy()
    same_intent = both & (pairs["nlu_intent"] == pairs["next_intent"]).to_numpy()
    if variant == "understood":
        same = same_intent & (pairs["first_slots"].fillna("-") == pairs["next_slots"].fillna("-")).to_numpy()
        ok1 = 1.0 - pairs["own_defect_prob"].to_numpy(dtype=np.float64)
        ok2 = 1.0 - pairs["next_own_defect"].fillna(0.5).to_numpy(dtype=np.float64)
        return [same * ok1 * ok2]
    if variant == "intent":
        changed = (both & ~same_intent).astype(np.float64)
        z = np.clip(np.nan_to_num(pairs["meaning_z"].to_numpy(dtype=np.float64)), -3.0, 6.0)
        return [changed, changed * z]
    return []


def design(pairs: pd.DataFrame, settings: Settings, variant: str) -> np.ndarray:
    return np.column_stack([features(pairs, settings), *extra_features(pairs, variant)])


def fit_variant(pairs: pd.DataFrame, settings: Settings, variant: str):
    """bench.fit_rephrase.fit's regression (vetoes fixed at -8, w_confirm 0, the veto bound as
    configured) on the shipped features plus the variant's; the threshold of highest F1."""
    from sklearn.linear_model import LogisticRegression

    x, y = design(pairs, settings, variant), pairs["label"].to_numpy(bool)
    vetoed = (x[:, WEIGHTS.index("w_unrelated")] > 0) | (x[:, WEIGHTS.index("w_elicit")] > 0)
    cols = [i for i, w in enumerate(WEIGHTS) if w not in FIXED] + list(range(len(WEIGHTS), x.shape[1]))
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(x[~vetoed][:, cols], y[~vetoed])
    w = np.zeros(x.shape[1])
    w[cols] = lr.coef_[0]
    w[WEIGHTS.index("w_unrelated")] = w[WEIGHTS.index("w_elicit")] = VETO
    bias = float(lr.intercept_[0])

    def score(p: pd.DataFrame) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(bias + design(p, settings, variant) @ w)))

    _, threshold = max((prf(score(pairs) >= t, y)["f1"], round(float(t), 2)) for t in np.arange(0.20, 0.91, 0.05))
    return score, threshold, w[len(WEIGHTS):]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="bench.fit_rephrase's --cache folder (its pairs)")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "rephrase_restate_probe.md"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    settings = Settings()
    cache = Path(args.cache)
    sets: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (label, knobs) in SIMS.items():
            f = cache / f"{name}-{args.users}.parquet"
            if f.is_file():
                pairs = pd.read_parquet(f)
            else:  # the restatement fitting set is this probe's own
                pairs = sim_pairs(Path(tmp) / f"p-{name}", settings, EncoderMeaning.for_settings(settings),
                                  users=args.users, **knobs)
                pairs.drop(columns=[c for c in ("nlu_slots",) if c in pairs.columns]).to_parquet(f)
            out = Path(tmp) / name
            simulate(str(out), users=args.users, **knobs)
            log = pd.read_parquet(out / "log")
            truth = pd.read_parquet(out / "truth.parquet")
            log = log[log["event_id"].isin(truth["event_id"])].drop_duplicates("event_id")
            sets[label] = with_next_turn(pairs, log, settings)
            print(f"{label}: {len(pairs)} pairs", flush=True)
        for name, (label, path) in DSTC2_SETS.items():
            pairs = pd.read_parquet(cache / f"{name}-{args.users}.parquet")
            c = dstc2.convert(path, Path(tmp) / name)
            sets[label] = with_next_turn(pairs, pd.read_parquet(c["log"]), settings)

    lines = ["# Restatements against re-asks: features of the system's understanding", "",
             f"Command: `.venv/bin/python -m bench.rephrase_restate_probe --cache {args.cache} --users {args.users}`  ",
             f"Date: {dt.date.today().isoformat()}; {time.perf_counter() - t0:.0f} s. Pair-level P / R / F1, "
             "false positive rate of topic switches and of restatements (-: the set has none).", "",
             "| fitted on | variant | extra weights | threshold | set | P | R | F1 | FPR topic switch | FPR restate |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for fit_name in (SIMS["fit"][0], SIMS["fit_restate"][0]):
        for variant in VARIANTS:
            score, threshold, extra = fit_variant(sets[fit_name], settings, variant)
            for name, pairs in sets.items():
                pred = score(pairs) >= threshold
                r = prf(pred, pairs["label"])
                neg = ~pairs["label"].to_numpy(bool)
                fpr = []
                for trap in ("topic_switch", "restate"):
                    sel = neg & (pairs["trap"] == trap).to_numpy()
                    fpr.append(f"{pred[sel].mean():.3f}" if sel.any() else "-")
                lines.append(f"| {fit_name} | {variant} | {', '.join(f'{v:.2f}' for v in extra) or '-'} | {threshold} | "
                             f"{name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {fpr[0]} | {fpr[1]} |")
    lines.append("")
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
