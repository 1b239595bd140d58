"""Issue 20: cluster_n_users counts distinct users, not the sum of per-key counts, so a
paraphrase label never rests on fewer than min_users people when one user said several
keys of a cluster. Real local Spark, real FAISS, real MASSIVE keys."""
from __future__ import annotations

import numpy as np
import pandas as pd

from selflearn.spark.incremental import EVIDENCE_SCHEMA
from selflearn.spark.steps import key_stats_step, paraphrase_step
from selflearn.core.text import normalize_text


def test_one_user_saying_three_keys_of_a_cluster_counts_once(spark, settings, massive):
    recs = [r for r in massive("en-US") if r["intent"] == "weather_query"][:3]
    keys = [normalize_text(r["utt"]) for r in recs]
    said = [("a", keys[0]), ("a", keys[1]), ("a", keys[2]), ("b", keys[0]), ("c", keys[1])]  # 3 people, per-key sum 5
    rows = [dict(eid=f"e{i}", user_id=u, session=f"{u}-s{i}", locale="en-US", seq=0, text=t, response_status="unhandled",
                 nlu_intent=None, nlu_domain=None, nlu_slots=None, rewritten_from=None, defect_prob=0.9,
                 next_text=None, pair_score=None, is_rephrase=False, graph_score=None) for i, (u, t) in enumerate(said)]
    evidence = spark.createDataFrame(pd.DataFrame(rows)[EVIDENCE_SCHEMA.fieldNames()], EVIDENCE_SCHEMA)
    stats = key_stats_step(evidence, settings)
    # three near-identical unit vectors: one cluster (the clustering itself is tested elsewhere)
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    vecs = [(base + 0.01 * rng.normal(size=16)) for _ in keys]
    vecs = [(v / np.linalg.norm(v)).astype(np.float32).tolist() for v in vecs]
    vectors = spark.createDataFrame([("en-US", k, v) for k, v in zip(keys, vecs)], "locale string, text string, vector array<float>")
    clusters = paraphrase_step(stats, vectors, settings, evidence).toPandas()
    assert len(clusters) == 3 and clusters["cluster_id"].nunique() == 1
    assert set(clusters["cluster_n_users"]) == {3}
    assert sorted(clusters["n_users"]) == [1, 2, 2]
