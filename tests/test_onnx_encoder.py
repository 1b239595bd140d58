"""The int8 ONNX encoder path: exported from the bundled model, checked against torch on
real MASSIVE keys, its own embedding cache id, and the fallback to torch."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from conftest import massive_records
from selflearn.encoders import embed
from selflearn.core.text import normalize_text


def _keys(locale: str, start: int, stop: int) -> list[str]:
    return sorted({normalize_text(r["utt"]) for r in massive_records(locale, stop)[start:]})


# second tier (make test-full): the int8 export and its check cost minutes; the default backend is torch
pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def onnx_settings(settings, tmp_path_factory):
    """Settings asking for onnx-int8, with a fresh models folder for this module."""
    return dataclasses.replace(settings, embedding_backend="onnx-int8",
                               embedding_models_dir=str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def prepared(onnx_settings):
    check = _keys("en-US", 0, 300) + _keys("de-DE", 0, 100) + _keys("ja-JP", 0, 100)
    return embed.prepare_encoder(onnx_settings, check)


def test_int8_export_agrees_with_torch_on_held_out_real_keys(settings, prepared):
    s, note = prepared
    assert note["backend"] == "onnx-int8" and s.embedding_backend == "onnx-int8", note
    assert note["mean_cosine"] >= 0.99 and note["check_texts"] > 400
    fast = embed.load_encoder(s)
    torch_enc = embed.load_encoder(dataclasses.replace(settings, embedding_backend="sentence-transformers"))
    # keys the export was not checked on, in three scripts
    held_out = _keys("en-US", 1000, 1400) + _keys("de-DE", 1000, 1200) + _keys("ru-RU", 0, 200)
    a, b = fast.encode(held_out), torch_enc.encode(held_out)
    assert a.shape == b.shape and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    cos = np.sum(a * b, axis=1)
    assert cos.mean() >= 0.985 and cos.min() >= 0.85, (cos.mean(), cos.min())
    assert fast.backend == "onnx-int8" and fast.precision == note["variant"]
    # ONNX vectors never share a cache with torch ones
    assert fast.cache_id != torch_enc.cache_id and f"-{note['variant']}-" in fast.cache_id
    assert fast.cache_id == embed.encoder_cache_id(s, "cpu")


def test_export_is_built_once_and_reused(onnx_settings, prepared):
    from selflearn.encoders.onnx_backend import export_id, read_meta

    s, note = prepared
    path = embed._model_path(onnx_settings.embedding_model)
    meta_file = embed.Path(onnx_settings.embedding_models_dir) / export_id(path) / "meta.json"
    before = meta_file.stat().st_mtime_ns
    s2, note2 = embed.prepare_encoder(onnx_settings, [])  # no texts needed once it exists
    assert note2["backend"] == "onnx-int8" and note2["path"] == note["path"]
    assert meta_file.stat().st_mtime_ns == before
    assert read_meta(onnx_settings.embedding_models_dir, path)["ok"] is True


def test_unchecked_export_falls_back_to_torch_with_a_warning(settings, tmp_path, caplog):
    s = dataclasses.replace(settings, embedding_backend="onnx-int8", embedding_models_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        s2, note = embed.prepare_encoder(s, _keys("en-US", 0, 5))  # too few texts to check an export
    assert note["backend"] == "sentence-transformers" and s2.embedding_backend == "sentence-transformers"
    assert "not used" in caplog.text
    assert embed.encoder_cache_id(s2, "cpu") != embed.encoder_cache_id(s, "cpu")
    assert not list(tmp_path.glob("*/meta.json"))  # nothing half-checked was recorded


def test_embed_keys_runs_the_onnx_path_in_spark(spark, prepared, tmp_path):
    s, _ = prepared
    texts = _keys("en-US", 2000, 2040)
    df = spark.createDataFrame([("en-US", t) for t in texts], "locale string, text string")
    stats: dict = {}
    out = embed.embed_keys(spark, df, s, tmp_path, stats=stats)
    got = {r.text: np.array(r.vector, dtype=np.float32) for r in out.collect()}
    assert stats["backend"] == "onnx-int8" and stats["embedded"] == len(texts)
    assert stats["cache_id"] == embed.encoder_cache_id(s, "cpu")
    local = embed.load_encoder(s).encode(texts)
    # Dynamic int8 quantizes activations with the range of each batch, so a text's vector
    # moves slightly with its batch mates (measured 0.997): close, not identical.
    for t, v in zip(texts, local):
        assert float(v @ got[t]) > 0.99
