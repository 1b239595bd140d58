"""Text keys (contract section 3) and script-aware similarity."""
import gzip
import json

import pandas as pd
import pytest

from selflearn import normalize_text
from selflearn.rephrase import pair_similarity
from selflearn.text import tokens

from conftest import MASSIVE


@pytest.mark.parametrize("raw,key", [
    ("Play  Imagine-Dragons!!", "play imagine dragons"),
    ("don't", "don't"),
    ("don\u2019t", "don't"),          # typographic apostrophe between letters is kept as U+0027
    ("'quoted'", "quoted"),           # not between two letters: a space
    ("rock 'n' roll", "rock n roll"),
    ("STRASSE Straße", "strasse strasse"),  # casefold, not lower
    ("ｆｕｌｌ　ｗｉｄｔｈ", "full width"),   # NFKC
    ("price: $5 + tax", "price 5 tax"),     # symbols become spaces
    ("  \t tabs\nand  lines ", "tabs and lines"),
    ("今週は、午前五時に起こして。", "今週は 午前五時に起こして"),
    ("हिंदी में बोलो!", "हिंदी में बोलो"),      # combining marks stay
    ("l'heure", "l'heure"),
])
def test_normalize_text_rules(raw, key):
    assert normalize_text(raw) == key


def test_normalize_is_idempotent_on_massive_sample(massive):
    for locale in ("en-US", "de-DE", "ja-JP", "ar-SA", "hi-IN", "ru-RU"):
        for rec in massive(locale, 300):
            k = normalize_text(rec["utt"])
            assert normalize_text(k) == k


def test_unspaced_scripts_tokenize_to_bigrams():
    assert tokens("今週は") == ["今週", "週は"]
    assert tokens("play abc日本語") == ["play", "abc", "日本", "本語"]


def test_similarity_works_across_scripts(massive):
    ja = [r["utt"] for r in massive("ja-JP", 40)]
    # a real utterance against itself with one character dropped stays similar; unrelated ones do not
    a = normalize_text(ja[0])
    assert pair_similarity(a, a[:-1]) > 0.8
    assert pair_similarity(a, normalize_text(ja[30])) < 0.5


def test_spark_and_python_keys_agree_on_all_of_massive(spark):
    """Every utterance of MASSIVE in all 52 locales: the Spark path (normalize in
    mapInPandas batches) gives exactly normalize_text's result."""
    from selflearn.sessions import normalize_series

    rows = []
    for path in sorted(MASSIVE.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows.extend(json.loads(line)["utt"] for line in fh)
    assert len(rows) > 800_000
    expected = {u: normalize_text(u) for u in set(rows)}
    df = spark.createDataFrame(pd.DataFrame({"utt": sorted(expected)}))

    def apply(batches):
        for pdf in batches:
            yield pd.DataFrame({"utt": pdf["utt"], "key": normalize_series(pdf["utt"])})

    got = df.mapInPandas(apply, "utt string, key string").toPandas()
    assert len(got) == len(expected)
    mismatched = [(u, k) for u, k in zip(got["utt"], got["key"]) if expected[u] != k]
    assert mismatched == []
