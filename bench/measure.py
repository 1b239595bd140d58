"""Pieces of the benchmark that run in their own process (so each one's memory and JVM are
its own): one pipeline run with time and peak memory per stage, and the embedding-only time
of a run's distinct keys.

    python -m bench.measure pipeline --input LOG --output ROOT --json OUT.json
    python -m bench.measure embed --run RUN_DIR --json OUT.json [--sample 0.25]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path


class PeakRSS:
    """Samples the memory of this process and all its descendants (the Spark JVM and its
    Python workers) in a background thread; ``take()`` returns the peak since the previous
    ``take()``.

    Two sums: RSS counts a page shared by several processes (the forked PySpark workers
    share their libraries and the model) once per process, an upper bound; PSS divides each
    shared page among its sharers, so the sum is the memory the run really holds. The
    targets use PSS; both are reported."""

    def __init__(self, interval: float = 1.0):  # 0.2 s took a fifth of a core (smaps of 6 processes)
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._all = 0
        self._peak_pss = 0
        self._all_pss = 0
        self._by_kind: dict[str, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    @staticmethod
    def _kind(p, me) -> str:
        if p.pid == me.pid:
            return "driver_python"
        try:
            name = p.name()
        except Exception:  # noqa: BLE001
            return "other"
        return "jvm" if name == "java" else "python_workers" if name.startswith("python") else "other"

    def _sample(self) -> tuple[int, int]:
        """(RSS sum, PSS sum) now; also raises the per-kind PSS peaks."""
        total = pss_total = 0
        kinds: dict[str, int] = {}
        procs = [self._me]
        try:
            procs += self._me.children(recursive=True)
        except self._psutil.Error:
            pass
        for p in procs:
            try:
                info = p.memory_full_info()  # rss and pss (Linux: /proc/PID/smaps_rollup)
            except self._psutil.Error:
                continue
            total += info.rss
            pss = getattr(info, "pss", info.rss)
            pss_total += pss
            k = self._kind(p, self._me)
            kinds[k] = kinds.get(k, 0) + pss
        for k, v in kinds.items():
            self._by_kind[k] = max(self._by_kind.get(k, 0), v)
        return total, pss_total

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss, pss = self._sample()
            self._peak = max(self._peak, rss)
            self._all = max(self._all, rss)
            self._peak_pss = max(self._peak_pss, pss)
            self._all_pss = max(self._all_pss, pss)
            self._stop.wait(self._interval)

    def take(self) -> tuple[int, int]:
        """Peak (RSS sum, PSS sum) since the previous take()."""
        rss, pss = self._sample()
        v = max(self._peak, rss), max(self._peak_pss, pss)
        self._peak = self._peak_pss = 0
        return v

    def overall(self) -> tuple[int, int]:
        """Peak (RSS sum, PSS sum) over the whole run."""
        rss, pss = self._sample()
        return max(self._all, rss), max(self._all_pss, pss)

    def by_kind(self) -> dict[str, int]:
        """Peak PSS of each kind of process over the whole run (driver, JVM, workers)."""
        return dict(self._by_kind)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=2)


def run_pipeline(input_path: str, output_root: str, config: dict | None = None) -> dict:
    from selflearn.config import Settings
    from selflearn.run.runner import Run
    from selflearn.run.stages import STAGE_NAMES

    mem = PeakRSS()
    settings = Settings.from_dict(config or {})
    run = Run(input_path, output_root, settings)
    peaks: dict[str, int] = {}
    peaks_pss: dict[str, int] = {}
    t0 = time.perf_counter()
    run.start()
    try:
        mem.take()
        for name in STAGE_NAMES:
            run.stage(name)
            peaks[name], peaks_pss[name] = mem.take()
    finally:
        run.finish()
    total = time.perf_counter() - t0
    rss_max, pss_max = mem.overall()
    out = {
        "run_dir": str(run.dirs.final),
        "total_s": round(total, 3),
        "stages_s": run.timings,
        "peak_rss_bytes": peaks,
        "peak_rss_bytes_max": rss_max,
        "peak_pss_bytes_max": pss_max,
        "peak_pss_bytes": peaks_pss,
        "peak_pss_bytes_by_process": mem.by_kind(),
        "counts": run.counts,
    }
    mem.stop()
    return out


def distinct_keys(run_dir: str) -> list[str]:
    import pyarrow.parquet as pq

    texts = pq.read_table(str(Path(run_dir) / "turns"), columns=["text"]).column("text").to_pylist()
    return sorted({t for t in texts if t})


def embed_only(run_dir: str, config: dict | None = None, sample: float = 1.0) -> dict:
    """Time to embed the run's distinct keys with the pipeline's encoder, in one process with
    every core and no cache: the unavoidable cost the end-to-end ratio divides by.

    `sample` < 1 embeds every (1/sample)-th key of the sorted keys (all scripts and
    lengths in proportion) and reports `embed_s` scaled up by the same factor, beside the
    measured `sample_embed_s`: encoding time is linear in keys, and on a slow machine the
    full set can take half an hour."""
    from selflearn.encoders import embed
    from selflearn.config import Settings

    all_texts = distinct_keys(run_dir)
    step = max(1, round(1 / sample)) if 0 < sample < 1 else 1
    texts = all_texts[::step]
    settings = embed.settings_for_locale(Settings.from_dict(config or {}), "en-US")  # mixed keys: auto's en-US route
    settings, note = embed.prepare_encoder(settings, texts[:: max(1, len(texts) // 1000)])
    enc = embed.load_encoder(settings, worker=False)
    enc.encode(texts[:64])  # warm-up: first-call allocations are not embedding work
    t0 = time.perf_counter()
    enc.encode(texts)
    dt = time.perf_counter() - t0
    out = {"keys": len(all_texts), "embed_s": round(dt * len(all_texts) / len(texts), 3), "backend": enc.backend,
           "precision": enc.precision, "keys_per_s": round(len(texts) / dt, 1) if dt > 0 else None}
    if step > 1:
        out.update({"sample_keys": len(texts), "sample_embed_s": round(dt, 3), "sampled_every": step})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.measure")
    ap.add_argument("what", choices=["pipeline", "embed"])
    ap.add_argument("--input")
    ap.add_argument("--output")
    ap.add_argument("--run")
    ap.add_argument("--config", default="{}", help="Settings overrides as JSON")
    ap.add_argument("--json", required=True)
    ap.add_argument("--sample", type=float, default=1.0, help="embed: share of the keys to time (default all)")
    a = ap.parse_args(argv)
    cfg = json.loads(a.config)
    if a.what == "pipeline":
        res = run_pipeline(a.input, a.output, cfg)
    else:
        res = embed_only(a.run, cfg, a.sample)
    Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- one worker with 2 threads, or 2 single-thread workers ---------------------------------


def _half(args) -> float:
    settings_dict, texts, barrier = args
    from selflearn.encoders import embed
    from selflearn.config import Settings

    enc = embed.load_encoder(Settings.from_dict(settings_dict), worker=True)  # 1 thread, as in Spark
    enc.encode(texts[:32])
    barrier.wait()
    t0 = time.perf_counter()
    enc.encode(texts)
    return time.perf_counter() - t0


def thread_layouts(texts: list[str], settings) -> dict:
    """keys/s of the encoder as Spark runs it (one single-thread Python worker per core, the
    keys split between them) against one process using every core."""
    import multiprocessing as mp

    from selflearn.encoders import embed

    cores = os.cpu_count() or 1
    d = settings.to_dict()
    d.pop("defect_model"), d.pop("rephrase_model")
    ctx = mp.get_context("spawn")
    with ctx.Manager() as m:
        barrier = m.Barrier(cores)
        parts = [texts[i::cores] for i in range(cores)]
        with ctx.Pool(cores) as pool:
            times = pool.map(_half, [(d, p, barrier) for p in parts])
    one = embed.load_encoder(settings, worker=False)
    one.encode(texts[:32])
    t0 = time.perf_counter()
    one.encode(texts)
    t_one = time.perf_counter() - t0
    return {"workers_x_1_thread_keys_per_s": round(len(texts) / max(times), 1),
            "one_process_all_threads_keys_per_s": round(len(texts) / t_one, 1), "cores": cores}
