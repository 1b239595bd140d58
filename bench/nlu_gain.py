"""The trainer's proof (issue 17): does `training/` make an intent classifier better on the
requests that fail today?

    PYTHONPATH=$PWD .venv/bin/python bench/nlu_gain.py --sim SIM --run ROOT [--requests 6000]
        [--features vec|vec+char] [--class-weight none|balanced] [--training-boost B]
        [--lookup none|carrier] [--model lr|mlp] [--breakdown]

Two classifiers per locale, the same kind (scikit-learn logistic regression, or with
`--model mlp` a one-hidden-layer neural network, over the text keys' vectors from the
encoder the run used for that locale: under `embedding_backend: auto` the pipeline's own
routing, `selflearn.encoders.embed.settings_for_locale`; with `--features
vec+char` also character 2-4-gram TF-IDF of the key, fitted on that arm's own training
texts; with `--class-weight balanced` classes weighted inversely to their total sample
weight), trained twice, with the same settings:
- `baseline`: what the NLU served successfully in the log, the team's current view: every
  distinct (text key, nlu_intent) of the log's `success` turns, weight 1;
- `+training`: the same plus every `training/` row (its `text` key and `intent`, with its
  `weight` as sample weight, `train` and `dev` splits both: the evaluation is on fresh
  traffic, not on `dev`); a key with a training row loses its log label (the log's label
  is what the NLU did when it failed: nothing, or a wrong intent that reads `success`),
  unless `--supersede none`; with `--supersede carrier`, also the log label of every key
  that is the same carrier phrase as a training row (its slot values as wildcards).
Both see keys made by `selflearn.core.keys.text_key` (the pipeline's masking + normalize_text),
so a training row's key and a request's key are the same string when the same thing was
said.

Evaluated on fresh replay requests from the simulation's world (another seed than the
log), split by whether the simulated NLU serves the request's goal today (`working`) or
not (`failing`): intent accuracy against the request's true intent, per locale. A
request that fails today is one the NLU did not understand or understood wrongly.
With --lookup carrier, the `+training` arms put a lookup table of their training rows in
front of the classifier (a request with a row's key, or its carrier phrase with other slot
values, takes the row's intent when those rows agree). With --breakdown, also why the
failing requests stay wrong (`breakdown`). With --by-source, also: the same gain per training `label_source` alone (`rewrite`, `paraphrase`,
`pattern` where the run has it), so what each kind of label adds is measured, not said.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selflearn.config import Settings  # noqa: E402
from selflearn.evaluation.evaluate import resolve_run  # noqa: E402
from selflearn.core.keys import text_keys  # noqa: E402


MLP_HIDDEN = 256  # --model mlp: one hidden layer of this many ReLU units


def _train(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, texts=None, features: str = "vec",
           class_weight: str = "none", model_kind: str = "lr"):
    """A predictor (keys' vectors, keys' texts) -> intents, fitted on one arm's rows.

    ``model_kind`` ``lr``: logistic regression (inverse regularisation ``c``); ``mlp``: a small
    neural network over the same features (one hidden layer of MLP_HIDDEN units, Adam, L2
    1e-4, 200 epochs, a fixed seed), the issue's "small model" that a trainer would fit on
    these vectors. Both take the rows' weights as sample weights."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if len(set(y)) < 2:  # no or one class: a constant predictor
        only = y[0] if len(y) else None
        return lambda xs, ts=None: np.full(len(xs), only, dtype=object)
    if class_weight == "balanced":  # each class's total weight made equal (the arm's own weights)
        total = pd.Series(w).groupby(y).sum()
        w = w * np.array([total.mean() / total[k] for k in y])
    tfidf = None
    if features == "vec+char":
        tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=1)
        x = sparse.hstack([sparse.csr_matrix(x), tfidf.fit_transform(texts)]).tocsr()
    if model_kind == "mlp":
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,), alpha=1e-4, max_iter=200, random_state=0)
    else:
        model = LogisticRegression(C=c, max_iter=300, tol=1e-3)
    model.fit(x, y, sample_weight=w)

    def predict(xs, ts=None):
        if tfidf is not None:
            xs = sparse.hstack([sparse.csr_matrix(xs), tfidf.transform(ts)]).tocsr()
        return model.predict(xs)

    return predict


def _carrier(text: str, slots) -> str | None:
    """A regex of `text` with each slot value (its `slots`) matching any non-empty span;
    None without slots, or when fewer than 4 letters of the text are not slot values (a
    carrier that is all or nearly all slot would match anything)."""
    values = sorted({str(v["value"]) for v in (slots if slots is not None else []) if v.get("value")}, key=len, reverse=True)
    values = [v for v in values if v in text]
    if not values:
        return None
    parts = re.split("(" + "|".join(re.escape(v) for v in values) + ")", text)
    if sum(len(p.replace(" ", "")) for p in parts[0::2]) < 4:
        return None
    return "".join(".+?" if i % 2 else re.escape(p) for i, p in enumerate(parts))


def _lookup(rows: pd.DataFrame, keys: list[str], predicted: np.ndarray, served: frozenset = frozenset()) -> np.ndarray:
    """A lookup table in front of the classifier (as an NLU's regex/lookup features are): a
    request whose key is a training row's key, or its carrier phrase with other slot values,
    gets that row's intent when all such rows agree; the classifier answers the rest."""
    exact: dict[str, set] = {}
    carriers: list[tuple["re.Pattern", str]] = []
    for text, intent, slots in zip(rows["text"], rows["intent"], rows["slots"]):
        exact.setdefault(text, set()).add(intent)
        rx = _carrier(text, slots)
        if rx is not None:
            carriers.append((re.compile(rx), intent))
    out = predicted.copy()
    for i, key in enumerate(keys):
        intents = exact.get(key) or (set() if key in served else {intent for rx, intent in carriers if rx.fullmatch(key)})
        if len(intents) == 1:
            out[i] = next(iter(intents))
    return out


def run(sim: str, root: str, n_requests: int, seed: int, c: float, training_boost: float, supersede: str = "key",
        by_source: bool = False, features: str = "vec", class_weight: str = "none", lookup: str = "none",
        model_kind: str = "lr") -> dict:
    return evaluate(prepare(sim, root, n_requests, seed), c, training_boost, supersede, by_source, features, class_weight,
                    lookup, model_kind)


def prepare(sim: str, root: str, n_requests: int, seed: int) -> dict:
    """The log's view, training/, the fresh requests and every key's vector (one encoding
    for any number of `evaluate` settings)."""
    from selflearn.encoders.embed import load_encoder, settings_for_locale
    from selflearn.simulate import World

    run_dir = resolve_run(root)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    cfg = manifest.get("config") or {}
    scrub, digits = bool(cfg.get("scrub_pii", True)), int(cfg.get("pii_min_digits", 7))
    log = pd.read_parquet(Path(sim) / "log", columns=["locale", "utterance", "response_status", "nlu_intent"])
    ok = log[(log["response_status"] == "success") & log["nlu_intent"].notna()].copy()
    ok["text"] = text_keys(ok["utterance"], scrub, digits)
    base = ok.groupby(["locale", "text", "nlu_intent"]).size().rename("n").reset_index()
    base = base.rename(columns={"nlu_intent": "intent"})[["locale", "text", "intent"]]
    base["weight"], base["label_source"] = 1.0, "log"
    training = pd.read_parquet(run_dir / "training", columns=["locale", "text", "intent", "weight", "label_source", "slots"])
    training["weight"] = training["weight"].astype(float)
    world = World.load(sim)
    fresh = world.fresh_traffic(n_requests, seed=seed)
    fresh["text"] = text_keys(fresh["utterance"], scrub, digits)
    fresh["working"] = [bool(world.serves(loc, k, g)) for loc, k, g in zip(fresh["locale"], fresh["text"], fresh["goal_id"])]

    settings = Settings(**{k: cfg[k] for k in ("embedding_model", "embedding_backend") if k in cfg})
    locales = sorted(set(fresh["locale"]))
    t0 = time.time()
    vec: dict[tuple[str, str], np.ndarray] = {}  # (locale, key) -> vector of the locale's encoder
    encoders, n_new = {}, 0
    for loc in locales:
        encoder = load_encoder(settings_for_locale(settings, loc), device="cpu")
        encoders[loc] = f"{encoder.name} ({encoder.backend})"
        texts = sorted({t for d in (base, training, fresh) for t in d.loc[d["locale"] == loc, "text"]})
        # The run's own embedding cache (same encoder, same keys) saves re-encoding the log.
        cache_dir = run_dir.parent.parent / "state" / "embeddings" / encoder.cache_id
        got: dict[str, np.ndarray] = {}
        if cache_dir.is_dir():
            cached = pd.read_parquet(cache_dir)
            wanted = set(texts)
            got = {t: np.asarray(v, dtype=np.float32) for t, v in zip(cached["text"], cached["vector"]) if t in wanted}
        missing = [t for t in texts if t not in got]
        if missing:
            got.update(zip(missing, encoder.encode(missing)))
        n_new += len(missing)
        dim = encoder.dim
        vec.update(((loc, t), got[t]) for t in texts)
    embed_s = time.time() - t0

    return {"run_dir": run_dir, "sim": sim, "seed": seed, "base": base, "training": training, "fresh": fresh,
            "vec": vec, "dim": dim, "encoders": encoders, "embed_s": embed_s, "n_new": n_new}


def evaluate(prep: dict, c: float, training_boost: float, supersede: str = "key", by_source: bool = False,
             features: str = "vec", class_weight: str = "none", lookup: str = "none", model_kind: str = "lr") -> dict:
    """Both arms trained and scored with these settings."""
    run_dir, sim, seed, base, vec, dim = (prep[k] for k in ("run_dir", "sim", "seed", "base", "vec", "dim"))
    encoders, embed_s, n_new = prep["encoders"], prep["embed_s"], prep["n_new"]
    fresh = prep["fresh"].copy()
    training = prep["training"].copy()
    training["weight"] = training["weight"] * training_boost

    def xs(loc, keys):
        return np.stack([vec[(loc, k)] for k in keys]) if len(keys) else np.zeros((0, dim), np.float32)

    def plus(rows: pd.DataFrame) -> pd.DataFrame:
        # A training row corrects the log's view of its key: the log's label for that key
        # is what the NLU did when the request failed (nothing, or a wrong intent that
        # still reads `success`), so it is replaced, not outvoted. With supersede
        # "carrier", also the log's label of every key that is the same carrier phrase
        # (the row's text with its slot values, from its `slots`, as wildcards).
        if not supersede or supersede == "none":
            return pd.concat([base, rows], ignore_index=True)
        corrected = set(zip(rows["locale"], rows["text"]))
        keep = np.array([(loc, t) not in corrected for loc, t in zip(base["locale"], base["text"])])
        if supersede == "carrier":
            for loc, g in rows.groupby("locale"):
                carriers = {_carrier(t, sl) for t, sl in zip(g["text"], g["slots"])} - {None}
                if not carriers:
                    continue
                rx = re.compile("|".join(f"(?:{c})" for c in sorted(carriers)))
                in_loc = (base["locale"] == loc).to_numpy()
                hit = np.array([bool(rx.fullmatch(t)) for t in base["text"]]) & in_loc
                keep &= ~hit
        return pd.concat([base[keep], rows], ignore_index=True)

    sources = sorted(training["label_source"].unique())
    variants = {"baseline": base, "+training": plus(training)}
    for s in (sources if by_source else []):
        variants[f"+{s} only"] = plus(training[training["label_source"] == s])
    preds: dict[str, np.ndarray] = {name: np.empty(len(fresh), dtype=object) for name in variants}
    for loc, idx in fresh.groupby("locale").groups.items():
        req = fresh.loc[idx]
        for name, data in variants.items():
            d = data[data["locale"] == loc]
            predict = _train(xs(loc, d["text"].tolist()), d["intent"].to_numpy(), d["weight"].to_numpy(float), c,
                             d["text"].tolist(), features, class_weight, model_kind)
            got = predict(xs(loc, req["text"].tolist()), req["text"].tolist())
            if lookup in ("carrier", "carrier-unserved") and name != "baseline":
                served = frozenset(d.loc[d["label_source"] == "log", "text"]) if lookup == "carrier-unserved" else frozenset()
                got = _lookup(d[d["label_source"] != "log"], req["text"].tolist(), got, served)
            preds[name][fresh.index.get_indexer(idx)] = got
    for name in variants:
        fresh[name] = preds[name] == fresh["gold_intent"].to_numpy()

    def table(d: pd.DataFrame) -> dict:
        out = {"requests": int(len(d))}
        for name in variants:
            out[name] = round(float(d[name].mean()) * 100, 1) if len(d) else None
        if len(d):
            out["gain_points"] = round(out["+training"] - out["baseline"], 1)
        return out

    result = {"run_id": run_dir.name, "sim": sim, "requests": int(len(fresh)), "seed": seed, "C": c,
              "training_boost": training_boost, "supersede": supersede, "features": features, "class_weight": class_weight,
              "lookup": lookup, "model": model_kind, "encoders": encoders,
              "train_rows": {"log_success_keys": int(len(base)), "training": int(len(training)),
                             "by_label_source": training["label_source"].value_counts().sort_index().to_dict()},
              "embed_s": round(embed_s, 1), "embedded_new": n_new, "failing": {}, "working": {}}
    for part, mask in (("failing", ~fresh["working"]), ("working", fresh["working"])):
        d = fresh[mask]
        result[part]["overall"] = table(d)
        result[part]["per_locale"] = {loc: table(g) for loc, g in d.groupby("locale", sort=True)}
    # which failing requests training/ can address at all: its key is a training key
    tkeys = set(zip(training["locale"], training["text"]))
    fail = fresh[~fresh["working"]]
    result["failing"]["overall"]["key_in_training"] = int(sum((l, t) in tkeys for l, t in zip(fail["locale"], fail["text"])))
    result["_training"] = training
    result["_requests"] = fresh  # per request: each variant's correctness (for --breakdown; not in the JSON)
    return result


def template_matchers(world, locale: str) -> list[tuple[int, "re.Pattern"]]:
    """(template id, regex over text keys) of the locale's phrasings with some fixed text: a key
    fullmatches when that phrasing, filled with some values, says it (the World's own `parse` rule,
    kept per template)."""
    from selflearn.core.text import normalize_text

    out = []
    for t in world.templates:
        if t["locale"] != locale:
            continue
        rx = [r"\s?(.+?)\s?" if kind else re.escape(normalize_text(piece)) for kind, piece in t["parts"]]
        if sum(len(normalize_text(p)) for k, p in t["parts"] if not k):  # bare slots read any text
            out.append((t["tid"], re.compile("".join(rx))))
    return out


def breakdown(r: dict, training: pd.DataFrame, sim: str) -> pd.DataFrame:
    """Why failing requests stay wrong, per locale. Each failing request gets
    - its failure kind, from the world's NLU: `not_understood` (no interpretation), `wrong_intent`
      (a confused or colliding phrasing), `wrong_slots` (right intent, a misheard slot value:
      the intent is right today, so intent accuracy has nothing to gain there);
    - its reach in training/: `key` (a row with the request's own key), `template` (a row that
      is another fill of the request's phrasing, the template the world drew it from), `none`
      (neither: issue 14's business; `intent_only` when some row at least has its intent);
    and each arm's correctness. The rows' intents are checked against the world too."""
    from selflearn.simulate import World

    world = World.load(sim)
    fresh = r["_requests"]
    fail = fresh[~fresh["working"]].copy()
    key_intents: dict = {}
    tmpl_intents: dict = {}
    for loc, g in training.groupby("locale"):
        matchers = template_matchers(world, loc)
        for text, intent in zip(g["text"], g["intent"]):
            key_intents.setdefault((loc, text), set()).add(intent)
            for tid, rx in matchers:
                if rx.fullmatch(text):
                    tmpl_intents.setdefault((loc, tid), set()).add(intent)
    row_intents = set(zip(training["locale"], training["intent"]))

    def kind(loc, text, gold):
        it = world.interpret(loc, text)
        return "not_understood" if it is None else ("wrong_intent" if it["intent"] != gold else "wrong_slots")

    def reach(loc, text, tid, gold):
        if gold in key_intents.get((loc, text), ()):
            return "key"
        if gold in tmpl_intents.get((loc, tid), ()):
            return "template"
        return "intent_only" if (loc, gold) in row_intents else "none"

    fail["kind"] = [kind(*a) for a in zip(fail["locale"], fail["text"], fail["gold_intent"])]
    fail["reach"] = [reach(*a) for a in zip(fail["locale"], fail["text"], fail["template_id"], fail["gold_intent"])]
    rows = []
    for loc, g in [("all", fail)] + list(fail.groupby("locale", sort=True)):
        row = {"locale": loc, "failing": len(g)}
        for k in ("not_understood", "wrong_intent", "wrong_slots"):
            row[k] = int((g["kind"] == k).sum())
        for part, m in (("key", g["reach"] == "key"), ("template", g["reach"] == "template"),
                        ("no_row", g["reach"].isin(["intent_only", "none"]))):
            row[f"{part}"] = int(m.sum())
            row[f"{part}_base_ok"] = int(g.loc[m, "baseline"].sum())
            row[f"{part}_train_ok"] = int(g.loc[m, "+training"].sum())
        row["no_row_intent_only"] = int((g["reach"] == "intent_only").sum())
        rows.append(row)
    return pd.DataFrame(rows)


def render_breakdown(b: pd.DataFrame) -> str:
    head = ("| locale | failing | not understood / wrong intent / wrong slots | key row: n, baseline ok, +training ok "
            "| template row: n, ok, ok | no row: n, ok, ok |")
    lines = [head, "|---|---|---|---|---|---|"]
    for x in b.itertuples(index=False):
        lines.append(f"| {x.locale} | {x.failing} | {x.not_understood} / {x.wrong_intent} / {x.wrong_slots} "
                     f"| {x.key}, {x.key_base_ok}, {x.key_train_ok} | {x.template}, {x.template_base_ok}, {x.template_train_ok} "
                     f"| {x.no_row}, {x.no_row_base_ok}, {x.no_row_train_ok} |")
    return "\n".join(lines)


def render(r: dict) -> str:
    names = [k for k in r["failing"]["overall"] if k not in ("requests", "gain_points", "key_in_training")]
    head = "| locale | part | requests | " + " | ".join(names) + " | gain |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for part in ("failing", "working"):
        rows = [("all", r[part]["overall"])] + sorted(r[part]["per_locale"].items())
        for loc, t in rows:
            lines.append(f"| {loc} | {part} | {t['requests']} | " + " | ".join(f"{t[n]:.1f}" if t[n] is not None else "-" for n in names)
                         + f" | {t.get('gain_points', 0):+.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="intent accuracy with and without training/ on fresh replay requests")
    p.add_argument("--sim", required=True)
    p.add_argument("--run", required=True, help="ROOT (its LATEST run) or a run directory")
    p.add_argument("--requests", type=int, default=6000)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--C", type=float, default=10.0, help="inverse regularisation of the logistic regression")
    p.add_argument("--training-boost", type=float, default=1.0, help="multiplier on training/ weights (1: as published)")
    p.add_argument("--supersede", choices=("none", "key", "carrier"), default="key",
                   help="which log labels a training row replaces: none, its key's (default), or every key of its "
                        "carrier phrase (its text with its slot values as wildcards)")
    p.add_argument("--by-source", action="store_true", help="also train with each training label_source alone")
    p.add_argument("--features", choices=("vec", "vec+char"), default="vec",
                   help="encoder vectors, or those plus character 2-4-gram TF-IDF of the key")
    p.add_argument("--class-weight", choices=("none", "balanced"), default="none")
    p.add_argument("--model", choices=("lr", "mlp"), default="lr",
                   help="lr: logistic regression (--C); mlp: one hidden layer of %d units over the same features" % MLP_HIDDEN)
    p.add_argument("--lookup", choices=("none", "carrier", "carrier-unserved"), default="none",
                   help="carrier: a lookup table of training/ in front of the +training classifier (a request whose key "
                        "is a row's key or its carrier phrase with other slot values takes the row's intent); "
                        "carrier-unserved: the carrier part only for keys the log never shows served")
    p.add_argument("--breakdown", action="store_true",
                   help="also: why failing requests stay wrong (failure kind, reach of training/, each arm's hits)")
    p.add_argument("--json", help="write the result here too")
    args = p.parse_args(argv)
    r = run(args.sim, args.run, args.requests, args.seed, args.C, args.training_boost, args.supersede, args.by_source,
            args.features, args.class_weight, args.lookup, args.model)
    if args.breakdown:
        r["breakdown"] = breakdown(r, r["_training"], args.sim).to_dict(orient="records")
    requests = r.pop("_requests")
    r.pop("_training")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in r.items() if k not in ("failing", "working", "breakdown")}))
    print(render(r))
    if args.breakdown:
        print(render_breakdown(pd.DataFrame(r["breakdown"])))
    del requests
    return 0


if __name__ == "__main__":
    sys.exit(main())
