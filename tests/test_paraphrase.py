"""Paraphrase mining on real MASSIVE utterances embedded by the real bundled model."""
from __future__ import annotations

import dataclasses
import itertools
import re

import faiss
import numpy as np
import pandas as pd
import pytest

from conftest import massive_records
from selflearn.core import paraphrase as P
from selflearn.encoders.embed import load_encoder, paraphrase_min_cosine
from selflearn.schema import required_fields
from selflearn.core.text import normalize_text


@pytest.fixture(scope="session")  # session: the session-scoped spark fixture depends on it
def settings(settings):
    """These tests are about the torch path (the ONNX int8 path: test_onnx_encoder.py)."""
    return dataclasses.replace(settings, embedding_backend="sentence-transformers")


@pytest.fixture(scope="module")
def encoder(settings):
    return load_encoder(settings)


def _slots(annot: str) -> list[dict]:
    return [{"name": a.strip(), "value": b.strip()} for a, b in re.findall(r"\[([^\]:]+):([^\]]+)\]", annot)]


@pytest.fixture(scope="module")
def alarm(encoder):
    """Every distinct en-US alarm_set utterance of MASSIVE, with its annotated slots."""
    seen: dict[str, list[dict]] = {}
    for r in massive_records("en-US"):
        if r["intent"] == "alarm_set":
            seen.setdefault(normalize_text(r["utt"]), _slots(r["annot_utt"]))
    texts = sorted(seen)
    n = len(texts)
    keys = pd.DataFrame({
        "locale": "en-US", "text": texts,
        "n_users": [1 + i % 4 for i in range(n)], "n_turns": [4] * n, "n_success": [3] * n,
        "intent": "alarm_set", "slots": [seen[t] for t in texts], "nlu_slot_values": [[] for _ in texts],
    })
    return keys, encoder.encode(texts)


def test_knn_pairs_removes_self_by_id_with_exact_duplicates(settings, encoder):
    texts = [normalize_text(r["utt"]) for r in massive_records("en-US", 6)]
    v = encoder.encode(texts)
    x = np.vstack([v, v[0], v[0]])  # rows 0, 6 and 7 are exact duplicates
    pairs = P.knn_pairs(x, 2, -1.0, settings)
    assert (pairs["i"] < pairs["j"]).all()
    assert not pairs.duplicated(["i", "j"]).any()
    got = {(int(i), int(j)): float(c) for i, j, c in pairs.itertuples(index=False)}
    # the duplicates' nearest neighbours are each other, never themselves
    for a, b in [(0, 6), (0, 7), (6, 7)]:
        assert got[(a, b)] == pytest.approx(1.0, abs=1e-5)
    assert pairs.loc[pairs["i"].isin([0, 6, 7]) & pairs["j"].isin([0, 6, 7])].shape[0] == 3
    # min_cosine filters
    high = P.knn_pairs(x, 2, 0.999, settings)
    assert set(zip(high["i"], high["j"])) == {(0, 6), (0, 7), (6, 7)}
    assert P.knn_pairs(x[:1], 2, 0.0, settings).empty


@pytest.mark.heavy  # second tier: embeds thousands of real keys to reach the IVF path
def test_ivf_path_recall_on_real_embeddings(settings, encoder):
    texts = sorted({normalize_text(r["utt"]) for r in massive_records("en-US", 2500)})
    x = encoder.encode(texts)
    s = dataclasses.replace(settings, exact_index_max_keys=500)
    info: dict = {}
    index = P.build_index(x, s, info=info)
    assert info["kind"] == "ivf" and info["nlist"] == P.ivf_nlist(len(x))
    assert info["recall"] >= 0.95
    k = 10
    D, I = index.search(x, k)
    eD, eI = faiss.knn(x, x, k, faiss.METRIC_INNER_PRODUCT)
    assert P._recall_at_k(I, D, eI, eD) >= 0.95
    # pairs: IVF finds nearly all the exact path's pairs
    exact = P.knn_pairs(x, k, 0.8, settings)
    approx = P.knn_pairs(x, k, 0.8, s)
    e, a = set(zip(exact["i"], exact["j"])), set(zip(approx["i"], approx["j"]))
    assert len(e) > 100 and len(e & a) / len(e) >= 0.95


def test_value_occurs_is_token_aligned():
    assert P.value_occurs("five am", "wake me up at five am tomorrow")
    assert not P.value_occurs("five", "set an alarm for fifteen minutes")
    assert not P.value_occurs("six am", "set an alarm for six thirty am")
    assert P.value_occurs("5点", "明天早上5点叫醒我")
    assert not P.value_occurs("5点", "明天早上15点叫醒我")


def test_clusters_respect_slot_values(settings, alarm):
    keys, x = alarm
    out = P.cluster_paraphrases(keys, x, settings)
    assert len(out) > 20
    cluster_of = dict(zip(out["text"], out["cluster_id"]))
    slots = dict(zip(keys["text"], keys["slots"]))
    # every pair in a cluster: each side's slot values occur in the other's text
    for _, g in out.groupby("cluster_id"):
        for a, b in itertools.combinations(g["text"], 2):
            for s, t in [(a, b), (b, a)]:
                assert all(P.value_occurs(normalize_text(v["value"]), t) for v in slots[s]), (a, b)
    # real MASSIVE utterances that differ only by their time: close, never merged
    idx = {t: i for i, t in enumerate(keys["text"])}
    five, six, nine = "set an alarm for five am", "set an alarm for six am", "set an alarm for nine am"
    for a, b in [(five, six), (five, nine), (six, nine)]:
        assert float(x[idx[a]] @ x[idx[b]]) >= paraphrase_min_cosine(settings, "en-US")
        assert cluster_of.get(a) is None or cluster_of.get(a) != cluster_of.get(b)
    # same-value paraphrases do merge
    assert cluster_of[six] == cluster_of["set my alarm for six am"] == cluster_of["create an alarm for six am"]
    assert cluster_of["set an alarm for seven am"] == cluster_of["set my alarm for seven am"]
    # without slot knowledge the same embeddings would merge different times
    bare = keys.assign(slots=[[] for _ in range(len(keys))], intent=None)
    out_bare = P.cluster_paraphrases(bare, x, settings)
    bare_of = dict(zip(out_bare["text"], out_bare["cluster_id"]))
    values = {t: {normalize_text(v["value"]) for v in slots[t]} for t in keys["text"]}
    mixed = [g for _, g in out_bare.groupby("cluster_id") if len({frozenset(values[t]) for t in g["text"]}) > 1]
    assert mixed and bare_of


def test_nlu_slot_values_and_intents_block_edges(settings, alarm):
    keys, x = alarm
    idx = {t: i for i, t in enumerate(keys["text"])}
    a, b = "set an alarm for six am", "set my alarm for six am"
    base = dict(zip(*[P.cluster_paraphrases(keys, x, settings)[c] for c in ("text", "cluster_id")]))
    assert base[a] == base[b]
    k3 = keys.copy()
    k3.at[idx[b], "intent"] = "alarm_query"
    out3 = P.cluster_paraphrases(k3, x, settings)
    of3 = dict(zip(out3["text"], out3["cluster_id"]))
    assert of3.get(b) is None or of3.get(a) != of3.get(b)
    k4 = keys.copy()
    k4.at[idx[a], "nlu_slot_values"] = ["tomorrow"]  # b does not say tomorrow
    out4 = P.cluster_paraphrases(k4, x, settings)
    of4 = dict(zip(out4["text"], out4["cluster_id"]))
    assert of4.get(a) is None or of4.get(a) != of4.get(b)


def test_cluster_output_columns_values_and_determinism(settings, alarm):
    keys, x = alarm
    out = P.cluster_paraphrases(keys, x, settings)
    assert list(out.columns) == P.OUTPUT_COLUMNS
    assert set(required_fields("paraphrase_clusters")) <= set(out.columns)
    assert str(out["n_users"].dtype) == "int64" and str(out["cluster_size"].dtype) == "int64"
    assert out.equals(out.sort_values(["locale", "cluster_id", "text"]).reset_index(drop=True))
    n_users = dict(zip(keys["text"], keys["n_users"]))
    for cid, g in out.groupby("cluster_id"):
        assert (g["cluster_size"] == len(g)).all() and len(g) >= 2
        assert cid == P.cluster_id_of("en-US", min(g["text"]))
        assert (g["cluster_n_users"] == sum(n_users[t] for t in g["text"])).all()
    assert np.allclose(out["success_rate"], 0.75)
    assert (out["intent"] == "alarm_set").all() and np.allclose(out["intent_agreement"], 1.0)
    assert not out["text"].duplicated().any()
    # same output whatever the input order
    perm = np.random.default_rng(7).permutation(len(keys))
    again = P.cluster_paraphrases(keys.iloc[perm], x[perm], settings)
    pd.testing.assert_frame_equal(out, again)


def test_cluster_intent_weighting_and_user_sets(settings, alarm):
    keys, x = alarm
    idx = {t: i for i, t in enumerate(keys["text"])}
    members = ["set an alarm for six am", "set my alarm for six am", "create an alarm for six am"]
    sel = [idx[t] for t in members]
    k = keys.iloc[sel].reset_index(drop=True).copy()
    k["n_success"] = [5, 1, 0]
    k["n_turns"] = [6, 2, 2]
    k["intent"] = ["alarm_set", "alarm_set", None]
    k["user_sets"] = [["u1", "u2"], ["u2", "u3"], ["u1"]]
    out = P.cluster_paraphrases(k, x[sel], settings)
    assert len(out) == 3 and out["cluster_id"].nunique() == 1
    row = out.iloc[0]
    assert row["cluster_n_users"] == 3  # exact union of user sets
    assert row["success_rate"] == pytest.approx(6 / 10)
    assert row["intent"] == "alarm_set" and row["intent_agreement"] == pytest.approx(1.0)
    assert P.cluster_paraphrases(k.iloc[:0], x[:0], settings).columns.tolist() == P.OUTPUT_COLUMNS


def test_stars_keep_at_most_max_cluster_size_of_the_medoids_nearest(settings, encoder):
    """The English MiniLM cannot read Devanagari: on real hi-IN MASSIVE keys it makes one star
    of well over a hundred keys (2,183 at 1M simulated turns, 4.7M mate pairs). The cap keeps
    the medoid's nearest members and re-splits the rest."""
    texts = sorted({normalize_text(r["utt"]) for r in massive_records("hi-IN", 500)})
    x = encoder.encode(texts)
    keys = pd.DataFrame({"locale": "hi-IN", "text": texts, "n_users": 1, "n_turns": 2, "n_success": 1,
                         "intent": None, "slots": [[] for _ in texts], "nlu_slot_values": [[] for _ in texts]})
    uncapped = P.cluster_paraphrases(keys, x, dataclasses.replace(settings, max_cluster_size=10**6))
    capped = P.cluster_paraphrases(keys, x, dataclasses.replace(settings, max_cluster_size=64))
    big = uncapped.groupby("cluster_id").size().idxmax()
    star = set(uncapped.loc[uncapped["cluster_id"] == big, "text"])
    assert len(star) > 64
    assert capped.groupby("cluster_id").size().max() <= 64
    assert len(capped) >= len(uncapped) - len(star)  # the rest of the big star is re-split, not dropped wholesale
    row = {t: i for i, t in enumerate(texts)}
    # one capped star is the big star's medoid with its 63 nearest members
    nearest = []
    for _, g in capped.groupby("cluster_id"):
        kept = set(g["text"])
        if len(kept) != 64 or not kept <= star:
            continue
        for m in kept:
            inside = [float(x[row[m]] @ x[row[t]]) for t in kept - {m}]
            outside = [float(x[row[m]] @ x[row[t]]) for t in star - kept]
            if min(inside) >= max(outside) - 1e-6:
                nearest.append(m)
    assert nearest
    with pytest.raises(ValueError, match="max_cluster_size"):
        P.cluster_paraphrases(keys, x, dataclasses.replace(settings, max_cluster_size=1))
