"""Local implementation of the contract's text key (section 3).

Unicode NFKC, then ``str.casefold``, then every character of category P* or S*
replaced by a space, except an apostrophe (U+0027 or U+2019) between two
characters of category L* or M*, which is kept as U+0027; whitespace is then
collapsed to single spaces and trimmed.

The simulator uses this local copy (``selflearn.text`` did not exist when it was
written, and the simulator must not depend on the pipeline). It implements the same
rule, so keys agree with ``selflearn.normalize_text``; ``tests/test_simulate.py``
checks that whenever that function can be imported.
"""
from __future__ import annotations

import unicodedata

__all__ = ["normalize_text"]

_APOS = ("'", "\u2019")


class _Table(dict):
    """str.translate table filled lazily: P*/S* -> space, apostrophes kept for now."""

    def __missing__(self, cp: int):
        ch = chr(cp)
        if ch in _APOS:
            val = cp  # kept for now; decided in context below
        else:
            cat = unicodedata.category(ch)
            val = " " if cat[0] in "PS" else cp
        self[cp] = val
        return val


_TABLE = _Table()


def _is_lm(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LM"


def normalize_text(text: str) -> str:
    """Return the normalized text key of ``text`` (contract section 3)."""
    if text is None:
        return None  # type: ignore[return-value]
    s = unicodedata.normalize("NFKC", text).casefold()
    s = s.translate(_TABLE)
    if "'" in s or "\u2019" in s:
        out = []
        n = len(s)
        for i, ch in enumerate(s):
            if ch in _APOS:
                if 0 < i < n - 1 and _is_lm(s[i - 1]) and _is_lm(s[i + 1]):
                    out.append("'")
                else:
                    out.append(" ")
            else:
                out.append(ch)
        s = "".join(out)
    return " ".join(s.split())
