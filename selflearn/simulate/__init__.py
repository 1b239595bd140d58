"""``selflearn simulate``: a simulated voice-assistant interaction log with ground truth.

All text comes from MASSIVE 1.1 (real utterances; templates of a frame filled with real
slot values of a real record; recurrent ASR mishearings perturb a real value or swap in
another real value of the same slot type).

    from selflearn.simulate import simulate, World, SimConfig
    summary = simulate("out/sim", users=300, locales=["en-US", "ja-JP"], seed=0)
    world = World.load("out/sim")

Writes ``DIR/log/dt=YYYY-MM-DD/part-00000.parquet`` (contract section 1),
``DIR/truth.parquet`` (section 2), ``DIR/world/`` (templates, goals, users, the NLU
table, world.json) and ``DIR/summary.json``. The directory is built beside ``DIR`` and
renamed into place.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time

from .config import DEFAULT_LOCALES, SimConfig
from .engine import LOG_SCHEMA, TRUTH_SCHEMA, run_simulation
from .world import World

__all__ = ["simulate", "World", "SimConfig", "LOG_SCHEMA", "TRUTH_SCHEMA", "main"]


def simulate(output_dir: str, users: int | None = None, locales=None, seed: int | None = None,
             config: SimConfig | None = None, **knobs) -> dict:
    """Simulate a log into ``output_dir``; returns the summary (also in summary.json).

    ``users``, ``locales`` and ``seed`` override ``config`` (default ``SimConfig()``);
    any other ``SimConfig`` field may be given as a keyword. An existing ``output_dir``
    is replaced only if it is empty or a previous simulation (has summary.json)."""
    cfg = dataclasses.replace(config) if config is not None else SimConfig()
    if users is not None:
        cfg.users = int(users)
    if locales is not None:
        if isinstance(locales, str):
            locales = [x.strip() for x in locales.split(",") if x.strip()]
        cfg.locales = tuple(locales)
    if seed is not None:
        cfg.seed = int(seed)
    names = {f.name for f in dataclasses.fields(SimConfig)}
    for k, v in knobs.items():
        if k not in names:
            raise TypeError(f"unknown simulation knob: {k}")
        setattr(cfg, k, tuple(v) if isinstance(v, list) else v)
    if cfg.users < 1:
        raise ValueError("users must be >= 1")
    if not cfg.locales:
        raise ValueError("at least one locale is needed")

    out = os.path.abspath(output_dir)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise FileExistsError(f"output exists and is not a directory: {out}")
        if os.listdir(out) and not os.path.exists(os.path.join(out, "summary.json")):
            raise FileExistsError(f"output directory is not empty and not a simulation: {out}")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    t0 = time.perf_counter()
    try:
        world = World.build(cfg)
        summary = run_simulation(world, tmp)
        if os.path.exists(out):
            old = f"{out}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = dict(summary)
    summary["elapsed_s"] = round(time.perf_counter() - t0, 3)  # not written to summary.json
    return summary


def main(argv=None) -> int:
    """``selflearn simulate --output DIR [--users N] [--locales L,L] [--seed S]``."""
    ap = argparse.ArgumentParser(prog="selflearn simulate")
    ap.add_argument("--output", required=True)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--locales", default=None, help="comma separated, e.g. en-US,ja-JP")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data-dir", default=None, help="MASSIVE locales folder")
    a = ap.parse_args(argv)
    try:
        kw = {}
        if a.data_dir:
            kw["data_dir"] = a.data_dir
        s = simulate(a.output, users=a.users, locales=a.locales, seed=a.seed, **kw)
    except Exception as e:  # one-line reason, non-zero exit
        print(f"selflearn simulate: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"simulated {s['turns']} turns, {s['users']} users, {s['sessions']} sessions "
          f"into {os.path.abspath(a.output)} in {s['elapsed_s']} s")
    return 0
