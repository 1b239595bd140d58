"""How published rewrites apply to a text key: contract section 4.1, written once.

The pipeline (pattern statistics, evaluation replay) and the runtime (`selflearn.serving.rewriter`)
both call these functions, so the semantics an outside evaluator reads in the contract is
the one code path:

1. an exact rewrite of (locale, key) wins;
2. otherwise a pattern matches when its `source`, as a regular expression with its
   literal parts escaped, the first occurrence of each `{name}` as `(?P<name>.+?)` and any
   later one as `(?P=name)`, fullmatches the key; its result is `target` with each
   placeholder replaced by what it bound; a result equal to the key is no rewrite;
3. among matching patterns whose result is a rewrite, the most literal characters in
   `source` win, then the higher confidence, then the smaller `source` in code-point order.

`RewriteIndex` prepares every pattern once and buckets it by its literal prefix (or
suffix), so a lookup tries only the patterns whose fixed text the key can carry, not every
pattern of the locale. What rule 2's regular expression binds is computed without running
it into backtracking (`Pattern.bindings`: `lazy_bindings`, `repeated_bindings`): a key is
text anyone may say, and one built to fail kept the regex busy for seconds.
"""
from __future__ import annotations

import itertools
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


def source_plan(source: str) -> tuple:
    """(head, tail, ((name, literal after it), ...) for every placeholder but the last, the
    last name): what `lazy_bindings` walks, split once per pattern. No placeholder: (source,
    None, (), None)."""
    pieces = PLACEHOLDER.split(source)
    if len(pieces) == 1:
        return source, None, (), None
    return pieces[0], pieces[-1], tuple(zip(pieces[1:-2:2], pieces[2:-1:2])), pieces[-2]


def lazy_bindings(plan: tuple, key: str) -> dict[str, str] | None:
    """What the contract's regular expression binds when it fullmatches `key`, or None,
    in one left-to-right pass, for a source (`source_plan`) whose placeholder names are
    distinct.

    The regular expression's lazy groups, tried shortest first, left to right, bind the
    lexicographically smallest tuple of group lengths that fullmatches; backtracking finds
    it in time exponential in the number of placeholders on a key built to fail (a 1 KB
    key kept `selflearn serve` busy 0.2-0.65 s). Ending a group earlier only leaves the
    groups after it more room, so each group's earliest end (the next occurrence of the
    literal after it) is the smallest, and it works whenever any end does: one `find` per
    placeholder decides."""
    head, tail, inner, last = plan
    if tail is None:
        return {} if key == head else None
    if not key.startswith(head) or not key.endswith(tail):
        return None
    last_end = len(key) - len(tail)  # where the last group ends
    start = len(head)
    out = {}
    for name, lit in inner:
        end = key.find(lit, start + 1, last_end)
        if end < 0:
            return None
        out[name] = key[start:end]
        start = end + len(lit)
    if start >= last_end:
        return None
    out[last] = key[start:last_end]
    return out


# How many bindings `repeated_bindings` may try before it answers "no match": a natural key
# needs a few hundred at most (a 100-character key holds ~15 spaces; two free groups try
# ~15 x 15 ends); a key built to make a backtracking matcher explode would need billions.
REPEATED_NAME_STEPS = 10_000


# Below this bound on the regular expression's backtracking (characters tried), a repeated-
# name source is left to the compiled regex itself (C, and exactly the contract); above it,
# to repeated_bindings. A natural key is far below it; a key built to explode far above.
REGEX_WORK_LIMIT = 20_000


def regex_work_bound(pieces, key: str) -> int:
    """An upper bound on the characters the contract's regex tries on `key`: each lazy
    group tries every end up to the key's length, and goes deeper only where the literal
    after it occurs (overlapping occurrences counted; the count stops once the bound passes
    REGEX_WORK_LIMIT)."""
    n, branches, work = len(key), 1, 0
    for lit in pieces[2:-1:2]:
        work += n * branches
        occurrences, at = 0, key.find(lit, 1)
        while at >= 0 and (occurrences + 1) * branches * n <= REGEX_WORK_LIMIT:
            occurrences += 1
            at = key.find(lit, at + 1)
        branches *= occurrences + 1 + (at >= 0)  # + 1 more when the count stopped early
        if branches * n > REGEX_WORK_LIMIT:
            return branches * n
    return work + n * branches


class _OutOfSteps(Exception):
    pass


def repeated_bindings(pieces: tuple[str, ...] | list[str], key: str, steps: int = REPEATED_NAME_STEPS) -> dict[str, str] | None:
    """The contract's bindings for a source that repeats a placeholder name (a later
    occurrence must bind the same text: `(?P=name)`), by the regular expression's own
    search order (each free group's ends tried earliest first, left to right), but with
    at most `steps` tries: past them the key counts as no match. Deterministic, so every
    run and every runtime answers alike; only a key built to explode reaches the bound."""
    lits, names = pieces[::2], pieces[1::2]
    k, n = len(names), len(key)  # a repeated name: k >= 2
    head, tail = lits[0], lits[-1]
    if not key.startswith(head) or not key.endswith(tail) or n - len(tail) < len(head):
        return None
    last_end = n - len(tail)
    budget = [steps]

    def group(j: int, start: int, bound: dict[str, str]) -> dict[str, str] | None:
        budget[0] -= 1
        if budget[0] < 0:
            raise _OutOfSteps
        name, lit = names[j], lits[j + 1]
        if name in bound:  # a later occurrence: its text is fixed
            end = start + len(bound[name])
            if not key.startswith(bound[name], start):
                return None
            if j == k - 1:
                return bound if end == last_end else None
            return group(j + 1, end + len(lit), bound) if key.startswith(lit, end) else None
        if j == k - 1:
            return {**bound, name: key[start:last_end]} if last_end > start else None
        end = key.find(lit, start + 1)
        while 0 <= end <= last_end:
            found = group(j + 1, end + len(lit), {**bound, name: key[start:end]})
            if found is not None:
                return found
            end = key.find(lit, end + 1)
        return None

    try:
        return group(0, len(head), {})
    except _OutOfSteps:
        return None


def fill(template: str, bindings: dict[str, str]) -> str:
    """`template` with each `{name}` replaced by bindings[name]."""
    return PLACEHOLDER.sub(lambda m: bindings[m.group(1)], template)


@dataclass(frozen=True)
class Pattern:
    locale: str
    source: str
    target: str
    confidence: float
    # Compiled on first use (`regex`): compiling is most of the cost of loading 10,000
    # patterns, and a pattern with one placeholder never needs it (`single`).
    _regex: re.Pattern | None = field(compare=False, repr=False)
    literal: int = field(compare=False)
    # (head, tail, name) when the placeholder occurs once: then `head(?P<name>.+?)tail`
    # fullmatches exactly the keys that start with head, end with tail and hold at least
    # one character between them, which string tests decide without a regex.
    single: tuple | None = field(default=None, compare=False, repr=False)
    # Bindings in linear time when the source's names are distinct (lazy_bindings over
    # `plan`; every pattern the pipeline has published so far), else with a bounded
    # search (repeated_bindings over `pieces`), never the backtracking regex itself.
    plan: tuple | None = field(default=None, compare=False, repr=False)
    pieces: tuple = field(default=(), compare=False, repr=False)

    @classmethod
    def make(cls, locale: str, source: str, target: str, confidence: float) -> "Pattern":
        pieces = PLACEHOLDER.split(source)
        single = (pieces[0], pieces[2], pieces[1]) if len(pieces) == 3 else None
        names = pieces[1::2]
        plan = source_plan(source) if len(set(names)) == len(names) else None
        return cls(locale, source, target, float(confidence), None, literal_chars(source), single, plan, tuple(pieces))

    @property
    def regex(self) -> re.Pattern:
        """The contract's regular expression of `source` (pattern_regex), compiled once."""
        rx = self._regex
        if rx is None:
            rx = pattern_regex(self.source)
            object.__setattr__(self, "_regex", rx)
        return rx

    def rank(self) -> tuple:
        """Sort key of rule 3: the first matching pattern in this order wins."""
        return (-self.literal, -self.confidence, self.source)

    def bindings(self, key: str) -> dict[str, str] | None:
        """What the contract's regular expression binds when it fullmatches `key`, or None;
        never by backtracking (a key is text anyone may say)."""
        if self.single is not None:
            head, tail, name = self.single
            if len(key) <= len(head) + len(tail) or not key.startswith(head) or not key.endswith(tail):
                return None
            return {name: key[len(head):len(key) - len(tail)]}
        plan = self.plan
        if plan is not None:
            return lazy_bindings(plan, key)
        if regex_work_bound(self.pieces, key) <= REGEX_WORK_LIMIT:
            m = self.regex.fullmatch(key)
            return m.groupdict() if m else None
        return repeated_bindings(self.pieces, key)

    def apply(self, key: str) -> str | None:
        """The rewritten key, or None when the pattern does not match or would not change it."""
        bindings = self.bindings(key)
        if bindings is None:
            return None
        result = fill(self.target, bindings)
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
    """One locale's patterns indexed by their fixed ends: a character trie of the literal
    text before the first placeholder (the head), and under each head a trie of the
    reversed literal text after the last placeholder (the tail). A lookup walks the key
    forwards through the head trie and, at each head it passes, backwards through that
    head's tail trie: it reaches only patterns whose head starts the key and whose tail
    ends it, in a few dict steps per character, however many patterns the locale has.
    Patterns with a placeholder at both ends ("{time} and {date}") are bucketed by the
    first word of their longest literal part when that part is whole words (the key must
    hold that word as a token), else kept in a short list checked by substring.

    Every list is sorted by rule 3 when the index is built; the few lists a key reaches
    are merged in rank order and the first pattern that rewrites the key wins without
    trying the rest."""

    _LEAF = ""  # a trie node's entry holding its patterns (no character is the empty string)

    def __init__(self, patterns: list[Pattern]):
        self.heads: dict = {}
        self.n = len(patterns)
        staged: dict[tuple[str, str], list[Pattern]] = {}
        by_word: dict[str, list[Pattern]] = {}
        loose: list[Pattern] = []
        for p in patterns:
            pieces = PLACEHOLDER.split(p.source)  # literal, name, literal, name, ..., literal
            head, tail = (pieces[0], pieces[-1]) if len(pieces) > 1 else (p.source, "")
            if head or tail:
                staged.setdefault((head, tail), []).append(p)
                continue
            lit = max(pieces[::2], key=len)
            if lit.startswith(" ") and lit.endswith(" ") and lit.strip():  # whole words between placeholders
                by_word.setdefault(lit.split()[0], []).append(p)
            else:
                loose.append(p)

        def ranked(ps):  # (rank, pattern, longest literal part), rule-3 order
            return sorted(((p.rank(), p, max(PLACEHOLDER.split(p.source)[::2], key=len)) for p in ps), key=lambda e: e[0])

        for (head, tail), ps in staged.items():
            node = self.heads
            for ch in head:
                node = node.setdefault(ch, {})
            tails = node.setdefault(self._LEAF, {})
            for ch in reversed(tail):
                tails = tails.setdefault(ch, {})
            tails[self._LEAF] = ranked(ps)
        self.by_word = {w: ranked(ps) for w, ps in by_word.items()}
        self.loose = ranked(loose)

    def _lists(self, key: str) -> list[list]:
        leaf = self._LEAF
        found = []
        node = self.heads
        i, n = 0, len(key)
        while node is not None:
            tails = node.get(leaf)
            if tails is not None:
                t = tails
                j = n - 1
                while t is not None:
                    ps = t.get(leaf)
                    if ps is not None:
                        found.append(ps)
                    if j < i:
                        break
                    t = t.get(key[j])
                    j -= 1
            if i >= n:
                break
            node = node.get(key[i])
            i += 1
        if self.by_word:
            for w in set(key.split()):
                ps = self.by_word.get(w)
                if ps is not None:
                    ps = [e for e in ps if e[2] in key]
                    if ps:
                        found.append(ps)
        if self.loose:
            ps = [e for e in self.loose if e[2] in key]
            if ps:
                found.append(ps)
        return found

    def _ranked(self, key: str):
        lists = self._lists(key)
        if len(lists) <= 1:
            return lists[0] if lists else ()
        # one C sort of the few reached candidates beats a lazy heapq.merge in Python
        return sorted(itertools.chain.from_iterable(lists), key=_first)

    def candidates(self, key: str) -> list[Pattern]:
        """The patterns whose fixed parts the key holds, in rule-3 order."""
        return [e[1] for e in self._ranked(key)]

    def best(self, key: str) -> tuple[Pattern, str] | None:
        for e in self._ranked(key):
            out = e[1].apply(key)
            if out is not None:
                return e[1], out
        return None


def _first(e):
    return e[0]


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
