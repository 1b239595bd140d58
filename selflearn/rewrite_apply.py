"""How published rewrites apply to a text key: contract section 4.1, written once.

The pipeline (pattern statistics, evaluation replay) and the runtime (`selflearn.serving`)
both call these functions, so the semantics an outside evaluator reads in the contract is
the one code path:

1. an exact rewrite of (locale, key) wins;
2. otherwise a pattern matches when its `source`, as a regular expression with its
   literal parts escaped, the first occurrence of each `{name}` as `(?P<name>.+?)` and any
   later one as `(?P=name)`, fullmatches the key; its result is `target` with each
   placeholder replaced by what it bound; a result equal to the key is no rewrite;
3. among matching patterns whose result is a rewrite, the most literal characters in
   `source` win, then the higher confidence, then the smaller `source` in code-point order.

`RewriteIndex` compiles every pattern once and buckets it by its literal prefix (or
suffix), so a lookup tries only the patterns whose fixed text the key can carry, not every
pattern of the locale.
"""
from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from typing import Iterable

# A text key never holds a brace (normalize_text turns symbols into spaces), so a
# placeholder cannot be confused with text.
PLACEHOLDER = re.compile(r"\{([a-z0-9_]+)\}")


def placeholder_names(template: str) -> list[str]:
    """The distinct placeholder names of a template, in order of first occurrence."""
    seen: list[str] = []
    for name in PLACEHOLDER.findall(template):
        if name not in seen:
            seen.append(name)
    return seen


def literal_text(template: str) -> str:
    """The template with every placeholder removed: its fixed text."""
    return PLACEHOLDER.sub("", template)


def literal_chars(template: str) -> int:
    """How many characters of the template are not placeholders (rule 3's specificity)."""
    return len(literal_text(template))


def has_literal_text(template: str) -> bool:
    """True when the template holds text besides its placeholders and spaces: a source of
    bare placeholders would match every key."""
    return bool(literal_text(template).strip())


def pattern_regex(source: str) -> re.Pattern:
    """The contract's regular expression for a pattern source."""
    parts: list[str] = []
    seen: set[str] = set()
    pos = 0
    for m in PLACEHOLDER.finditer(source):
        parts.append(re.escape(source[pos:m.start()]))
        name = m.group(1)
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
        seen.add(name)
        pos = m.end()
    parts.append(re.escape(source[pos:]))
    return re.compile("".join(parts), re.DOTALL)


def fill(template: str, bindings: dict[str, str]) -> str:
    """`template` with each `{name}` replaced by bindings[name]."""
    return PLACEHOLDER.sub(lambda m: bindings[m.group(1)], template)


@dataclass(frozen=True)
class Pattern:
    locale: str
    source: str
    target: str
    confidence: float
    regex: re.Pattern = field(compare=False, repr=False)
    literal: int = field(compare=False)

    @classmethod
    def make(cls, locale: str, source: str, target: str, confidence: float) -> "Pattern":
        return cls(locale, source, target, float(confidence), pattern_regex(source), literal_chars(source))

    def rank(self) -> tuple:
        """Sort key of rule 3: the first matching pattern in this order wins."""
        return (-self.literal, -self.confidence, self.source)

    def apply(self, key: str) -> str | None:
        """The rewritten key, or None when the pattern does not match or would not change it."""
        m = self.regex.fullmatch(key)
        if m is None:
            return None
        result = fill(self.target, m.groupdict())
        return None if result == key else result


@dataclass(frozen=True)
class Applied:
    """What applying the published rewrites to one key gave."""
    rewrite: str
    kind: str  # "exact" or "pattern"
    confidence: float
    source: str  # the exact source or the pattern source that fired


def best_pattern(patterns: Iterable[Pattern], key: str) -> tuple[Pattern, str] | None:
    """Rule 2 and 3 over any collection of one locale's patterns (no index)."""
    for p in sorted(patterns, key=Pattern.rank):
        out = p.apply(key)
        if out is not None:
            return p, out
    return None


class _LocalePatterns:
    """One locale's patterns bucketed by fixed text: by the literal text before the first
    placeholder when there is any, else by the literal text after the last one, else
    (a placeholder at both ends) in a short list checked by its longest literal part.

    Every bucket is sorted by rule 3 when the index is built, so a lookup merges the
    buckets the key can reach in rank order and stops at the first pattern that rewrites
    the key: with many patterns behind one prefix it does not sort or try them all."""

    def __init__(self, patterns: list[Pattern]):
        by_prefix: dict[str, list[Pattern]] = {}
        by_suffix: dict[str, list[Pattern]] = {}
        middle: list[Pattern] = []
        for p in patterns:
            pieces = PLACEHOLDER.split(p.source)  # literal, name, literal, name, ..., literal
            head, tail = pieces[0], pieces[-1]
            if head:
                by_prefix.setdefault(head, []).append(p)
            elif tail:
                by_suffix.setdefault(tail, []).append(p)
            else:
                middle.append(p)
        rank = Pattern.rank
        # (rank, pattern, the literal part a key must hold, where) in rule-3 order
        self.by_prefix = {k: sorted(((rank(p), p, PLACEHOLDER.split(p.source)[-1]) for p in v), key=lambda t: t[0])
                          for k, v in by_prefix.items()}
        self.by_suffix = {k: sorted(((rank(p), p, PLACEHOLDER.split(p.source)[0]) for p in v), key=lambda t: t[0])
                          for k, v in by_suffix.items()}
        self.middle = sorted(((rank(p), p, max(PLACEHOLDER.split(p.source)[::2], key=len)) for p in middle),
                             key=lambda t: t[0])
        self.prefix_lengths = sorted({len(k) for k in self.by_prefix})
        self.suffix_lengths = sorted({len(k) for k in self.by_suffix})

    def candidates(self, key: str) -> list[Pattern]:
        """Every pattern whose fixed start or end (or longest literal part) the key holds,
        in rule-3 order."""
        return [e[1] for e in self._ranked(key)]

    def _ranked(self, key: str):
        lists = []
        n_key = len(key)
        for n in self.prefix_lengths:
            if n > n_key:
                break
            b = self.by_prefix.get(key[:n])
            if b is not None:  # its tail literal must end the key (a cheap test before the regex)
                lists.append(e for e in b if key.endswith(e[2]))
        for n in self.suffix_lengths:
            if n > n_key:
                break
            b = self.by_suffix.get(key[-n:])
            if b is not None:
                lists.append(b)
        if self.middle:
            lists.append(e for e in self.middle if e[2] in key)
        if len(lists) == 1:
            return lists[0]
        return heapq.merge(*lists, key=lambda e: e[0])

    def best(self, key: str) -> tuple[Pattern, str] | None:
        for e in self._ranked(key):
            out = e[1].apply(key)
            if out is not None:
                return e[1], out
        return None


class RewriteIndex:
    """Exact rewrites and compiled patterns of one run, applied per contract section 4.1."""

    def __init__(self, exact: dict[tuple[str, str], tuple[str, float]], patterns: Iterable[Pattern]):
        self.exact = exact
        grouped: dict[str, list[Pattern]] = {}
        for p in patterns:
            grouped.setdefault(p.locale, []).append(p)
        self.patterns = {loc: _LocalePatterns(ps) for loc, ps in grouped.items()}
        self.n_patterns = sum(len(ps) for ps in grouped.values())

    @classmethod
    def from_frames(cls, rewrites, patterns=None) -> "RewriteIndex":
        """From the published tables as pandas frames (`patterns` may be None: a run
        published before pattern rewrites existed)."""
        exact = {(loc, src): (tgt, float(conf)) for loc, src, tgt, conf in zip(
            rewrites["locale"], rewrites["source"], rewrites["target"], rewrites["confidence"])}
        pats: list[Pattern] = []
        if patterns is not None and len(patterns):
            pats = [Pattern.make(loc, src, tgt, conf) for loc, src, tgt, conf in zip(
                patterns["locale"], patterns["source"], patterns["target"], patterns["confidence"])]
        return cls(exact, pats)

    def lookup(self, locale: str, key: str) -> Applied | None:
        hit = self.exact.get((locale, key))
        if hit is not None:
            return Applied(hit[0], "exact", hit[1], key)
        bucket = self.patterns.get(locale)
        if bucket is None:
            return None
        found = bucket.best(key)
        if found is None:
            return None
        p, out = found
        return Applied(out, "pattern", p.confidence, p.source)
