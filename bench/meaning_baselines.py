"""Calibrate the meaning feature's chance level per encoder and locale, once, from MASSIVE.

The rephrase score's meaning feature z-scores a pair's cosine against the encoder's cosine
between unrelated keys of the locale (rephrase.meaning_baseline). Computed from each run's
own keys, that level moves with the input, so a log mined day by day would score its pairs
differently from the same log mined at once (tests/test_incremental.py holds them equal).
This script fixes the level per (encoder cache id, locale) from real MASSIVE utterances and
writes selflearn/meaning_baselines.json, which steps.meaning_step reads; a run with an
encoder or locale the table lacks falls back to its own keys.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.meaning_baselines [--n 1000] [--locales all]
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pandas as pd

from selflearn.encoders import embed
from selflearn.config import Settings
from selflearn.core.rephrase import meaning_baseline, order_key
from selflearn.core.text import normalize_text

MASSIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "massive" / "locales"
OUT = Path(__file__).resolve().parents[1] / "selflearn" / "meaning_baselines.json"


def locale_keys(locale: str) -> list[str]:
    with gzip.open(MASSIVE / f"{locale}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return sorted({normalize_text(json.loads(line)["utt"]) for line in fh} - {""})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="keys per locale (the first by sha256, as a run samples them)")
    p.add_argument("--locales", default="all", help="comma-separated MASSIVE locales, or all")
    args = p.parse_args(argv)
    locales = sorted(f.name.split(".")[0] for f in MASSIVE.glob("*.jsonl.gz")) if args.locales == "all" else args.locales.split(",")
    table = json.loads(OUT.read_text()) if OUT.is_file() else {}
    base = Settings()
    for loc in locales:
        s = embed.settings_for_locale(base, loc)
        cache_id = embed.encoder_cache_id(s, "cpu")
        keys = locale_keys(loc)
        keys = sorted(keys, key=order_key)[: args.n]  # the run's sample: first n by sha256
        vectors = embed.load_encoder(s, "cpu", worker=False).encode(keys)
        b = meaning_baseline(pd.DataFrame({"locale": loc, "text": keys, "vector": list(vectors)}), args.n)
        row = b.iloc[0]
        table.setdefault(cache_id, {})[loc] = [round(float(row["mean"]), 6), round(float(row["std"]), 6), len(keys)]
        print(f"{loc:6s} {cache_id:45s} mean {row['mean']:.4f} std {row['std']:.4f} n {len(keys)}", flush=True)
        OUT.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
