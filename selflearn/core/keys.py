"""The text key of an utterance, as the pipeline makes it and as a runtime must make it.

One function, shared by the pipeline (sessions: the keys of turns and of `rewritten_from`)
and the runtime (`selflearn.serving.rewriter`): PII masking on the raw text first (normalize_text
would turn an e-mail's '@' into a space and hide it), then the contract's normalize_text.
A rewrite learned on "call xxphonexx" only ever fires if the serving side masks the
number the same way, so nothing else may build a key from raw text.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import resources

import pandas as pd

from selflearn.core.privacy import scrub_text
from selflearn.core.text import normalize_text


def text_key(text, scrub_pii: bool = True, pii_min_digits: int = 7):
    """The contract's text key of a raw utterance after the pipeline's PII masking
    (None stays None). `scrub_pii` and `pii_min_digits` are the run's settings of the same
    names: a runtime passes the values of the run whose rewrites it serves."""
    if not isinstance(text, str):
        return None
    if scrub_pii:
        text = scrub_text(text, pii_min_digits)
    return normalize_text(text)


def text_keys(texts: pd.Series, scrub_pii: bool = True, pii_min_digits: int = 7) -> pd.Series:
    """text_key over a column, computing each distinct string once."""
    uniq = pd.unique(texts)
    return texts.map({t: text_key(t, scrub_pii, pii_min_digits) for t in uniq})


# What decides a text key: the masking and normalization code and the word tables they read.
_KEY_SOURCES = ("core/keys.py", "core/privacy.py", "core/text.py", "spoken_email.json", "spoken_numbers.json")


@functools.lru_cache(maxsize=1)
def key_fingerprint() -> str:
    """A short SHA-256 over the files that decide `text_key` (_KEY_SOURCES, as installed).
    A run records it in its manifest (`privacy.key_fingerprint`); a runtime serving the run
    with other keying code may key a request otherwise than the run keyed its log (a
    scrubber that learned a new address shape masks a text the run kept), so serve warns.
    Equal fingerprints mean equal code; unequal ones only that the code changed."""
    h = hashlib.sha256()
    pkg = resources.files("selflearn")
    for rel in _KEY_SOURCES:
        h.update(rel.encode() + b"\0" + pkg.joinpath(rel).read_bytes() + b"\0")
    return h.hexdigest()[:16]
