"""Text keys (contract section 3) and script-aware similarity."""
import gzip
import hashlib
import json

import pandas as pd
import pytest

from selflearn import normalize_text
from selflearn.core.rephrase import pair_similarity
from selflearn.core.text import tokens

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


# sha256 over "utterance<TAB>key<LF>" of every distinct MASSIVE utterance (52 locales,
# 818,308 strings) in code-point order, the keys as normalize_text gave them on 2026-12-02
# (NORMALIZER_VERSION "1"). A change to any key of MASSIVE changes it: update it only together
# with text.NORMALIZER_VERSION, since embedding caches and published keys depend on it.
MASSIVE_KEYS_SHA256 = "13b44db90c6be91120eee5d0419d3d8ab5af7d85e5784e7f6bad357147262421"


def _massive_utterances() -> list[str]:
    rows = set()
    for path in sorted(MASSIVE.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows.update(json.loads(line)["utt"] for line in fh)
    return sorted(rows)


def _digest(pairs) -> str:
    h = hashlib.sha256()
    for utt, key in pairs:
        h.update(f"{utt}\t{key}\n".encode())
    return h.hexdigest()


def test_keys_of_all_of_massive_are_the_pinned_keys():
    utts = _massive_utterances()
    assert len(utts) == 818_308
    assert _digest((u, normalize_text(u)) for u in utts) == MASSIVE_KEYS_SHA256


@pytest.mark.heavy
def test_spark_keys_of_all_of_massive_are_the_pinned_keys(spark):
    """Every utterance of MASSIVE in all 52 locales through the Spark path (normalize in
    mapInPandas batches) gives exactly the pinned keys."""
    from selflearn.core.sessions import normalize_series

    utts = _massive_utterances()
    df = spark.createDataFrame(pd.DataFrame({"utt": utts}))

    def apply(batches):
        for pdf in batches:
            yield pd.DataFrame({"utt": pdf["utt"], "key": normalize_series(pdf["utt"])})

    got = df.mapInPandas(apply, "utt string, key string").toPandas().sort_values("utt", kind="mergesort")
    assert len(got) == len(utts)
    assert _digest(zip(got["utt"], got["key"])) == MASSIVE_KEYS_SHA256
