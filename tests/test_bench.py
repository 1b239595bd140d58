"""The benchmark suite end to end in its --quick mode (tiny sizes): every field of the
JSON and the markdown table is written. Timings are recorded, never asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selflearn.run.stages import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]


# About seven small pipeline runs plus an ONNX export: minutes that CI's budget keeps for the
# behaviour tests. `make bench-check` (or SELFLEARN_BENCH_TEST=1) runs it.
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SELFLEARN_BENCH_TEST"), reason="set SELFLEARN_BENCH_TEST=1 (make bench-check) to run the bench suite's quick mode")
def test_quick_bench_writes_every_field(tmp_path, tmp_path_factory):
    env = dict(os.environ, PYTHONPATH=str(REPO), SELFLEARN_MODELS_DIR=os.environ.get("SELFLEARN_MODELS_DIR", str(tmp_path / "models")))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "latest.json").read_text())
    assert {"cores", "ram_gib", "cpu"} <= set(res["machine"]) and res["command"].startswith("python -m bench.run --quick")
    assert res["startup"]["total_s"] > 0
    assert [s["size"] for s in res["sizes"]] == ["2k", "4k"]
    for s in res["sizes"]:
        assert s["turns"] > 1000 and 0 < s["distinct_keys"] <= s["turns"]
        assert set(s["stages_s"]) == set(STAGE_NAMES)
        assert set(s["peak_rss_gib"]) == set(s["stages_s"]) and s["peak_rss_gib_max"] > 0.2  # a JVM at least
        assert s["embed_only_s"] > 0 and s["e2e_over_embed_only"] > 0 and s["turns_per_s"] > 0
    nd = res["sizes"][-1]["next_day"]
    assert 0.5 <= nd["known_key_share"] <= 1 and nd["warm_s"] > 0 and nd["cold_s"] > 0 and nd["warm_over_cold"] > 0
    sc = res["scaling"]  # tiny logs: a run may be no slower than start-up, so the ratio may be null
    assert sc["small"] == "2k" and sc["large"] == "4k" and "ratio" in sc and sc["startup_s"] > 0
    assert isinstance(sc["s_per_turn_small"], float) and isinstance(sc["s_per_turn_large"], float)
    assert [m["keys"] for m in res["mining"]] == [1000, 2000]
    for m in res["mining"]:
        assert 0.9 <= m["recall_at_10_faiss"] <= 1 and 0.9 <= m["recall_at_10_paraphrase_mining"] <= 1
        assert m["faiss_s"] > 0 and m["paraphrase_mining_s"] > 0 and m["community_detection_s"] > 0
    e = res["encoder"]
    assert e["keys"] == 300 and e["throughput_ratio"] > 0 and e["cosine_mean"] > 0.98
    assert set(res["targets"]) >= {"mining_speedup_largest", "mining_recall_largest", "mining_never_slower_smallest",
                                   "encoder_throughput", "encoder_cosine", "e2e_cold_over_embed_only", "warm_over_cold",
                                   "next_day_known_keys", "peak_memory_gib", "scaling"}
    md = (out / "latest.md").read_text()
    for heading in ("Pipeline, cold cache", "Next day", "Scaling", "Paraphrase mining", "Encoder", "Targets"):
        assert heading in md


def test_gpu_check_recall_counts_a_tie_at_the_kth_place_as_found():
    # bench.gpu_check: identical vectors make the ids at the k-th place arbitrary
    from bench.gpu_check import _recall_at_k

    exact_I = [[0, 1, 2, 3]]  # row 0: self, then 1, 2 and 3 (3 ties with 4 at 0.5)
    exact_D = [[1.0, 0.9, 0.7, 0.5]]
    assert _recall_at_k([0], [[(1, 0.9), (2, 0.7), (4, 0.5)]], exact_I, exact_D, 3) == (2 / 3, 1.0)
    # a worse neighbour found instead of 2 is a miss either way
    assert _recall_at_k([0], [[(1, 0.9), (3, 0.5), (6, 0.45)]], exact_I, exact_D, 3) == (2 / 3, 2 / 3)
