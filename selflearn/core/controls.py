"""Operator controls that every run honours: the deny lists (settings `deny_domains`,
`deny_intents`; empty by default), the sensitive lists (`sensitive_intents`,
`sensitive_domains`: purchases and messages by default, reached by exact rewrites with
`sensitive_min_users` users only, never by a pattern) and the file of manual blocks and
pins (setting `controls_file`).

The file is YAML or CSV (by extension). YAML:

    block:
      - {locale: en-US, source: "play maj and dragons"}               # never rewrite this source
      - {locale: en-US, source: "call mom", target: "call tom"}       # never this pair
    pin:
      - {locale: en-US, source: "wake me at five", target: "set an alarm for five am"}

CSV: a header `action,locale,source,target`, one entry a row (`target` empty for a block
of a whole source). Sources and targets may be written as users say them: they are
compared by their text keys (normalize_text).

A block is never emitted (rule `blocked`); a source blocked without a target also gets
no training row. A pin protects a mined rewrite: when the run's graph proposes exactly
the pinned (locale, source, target), it is emitted whatever the statistical rules say
(defect rate, significance, confidence, paraphrase agreement, retraction), and it is
left out of the publish gate's churn. The privacy floor (`min_users`), the deny lists,
the sensitive lists and blocks still win over a pin, and a pin adds no row the logs do
not support (the contract's `evidence` stays what the graph found). Another target proposed for a pinned
source is rejected (rule `pinned_elsewhere`). Pins the run found no candidate for are
counted in the manifest (`rewrites.pins_unmatched`).

The same entries apply to pattern rewrites (`rewrite_patterns/`): write the source (and
target) as a pattern with `{slot_name}` placeholders, e.g.
`{locale: en-US, source: "wake me up at {time} please"}`.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from selflearn.config import ConfigError, Settings, read_text_file, read_yaml
from selflearn.core.text import normalize_text

COLUMNS = ["locale", "source", "target"]


@dataclass(frozen=True)
class Controls:
    blocks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS))  # target None: the whole source
    pins: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS))

    def is_blocked(self, locale: pd.Series, source: pd.Series, target: pd.Series | None = None) -> pd.Series:
        """Per row: the (locale, source[, target]) falls under a block."""
        keys = pd.DataFrame({"locale": locale.to_numpy(), "source": source.to_numpy(),
                             "target": target.to_numpy() if target is not None else None})
        whole = {(l, s) for l, s, t in self.blocks[COLUMNS].itertuples(index=False) if not isinstance(t, str)}
        pairs = {(l, s, t) for l, s, t in self.blocks[COLUMNS].itertuples(index=False) if isinstance(t, str)}
        out = [((l, s) in whole) or ((l, s, t) in pairs) for l, s, t in keys.itertuples(index=False)]
        return pd.Series(out, index=locale.index, dtype=bool)

    def pinned(self, locale: pd.Series, source: pd.Series, target: pd.Series) -> tuple[pd.Series, pd.Series]:
        """(the row is a pinned pair, the row's source is pinned to another target)."""
        pairs = set(self.pins[COLUMNS].itertuples(index=False, name=None))
        sources = {(l, s) for l, s, _ in pairs}
        is_pin = [(l, s, t) in pairs for l, s, t in zip(locale, source, target)]
        elsewhere = [((l, s) in sources) and not p for l, s, p in zip(locale, source, is_pin)]
        return pd.Series(is_pin, index=locale.index, dtype=bool), pd.Series(elsewhere, index=locale.index, dtype=bool)


def _entry(raw, where: str, action: str) -> tuple[str, str, str | None]:
    if not isinstance(raw, dict):
        raise ConfigError(f"controls: {where}: a {action} entry must be a mapping with locale, source[, target]")
    unknown = set(raw) - set(COLUMNS)
    if unknown:
        raise ConfigError(f"controls: {where}: unknown field(s) {sorted(unknown)}")
    locale, source, target = raw.get("locale"), raw.get("source"), raw.get("target")
    if not isinstance(locale, str) or not locale.strip():
        raise ConfigError(f"controls: {where}: {action} needs a locale")
    if not isinstance(source, str) or not normalize_text(source):
        raise ConfigError(f"controls: {where}: {action} needs a non-empty source")
    if target in ("", None):
        target = None
    elif not isinstance(target, str) or not normalize_text(target):
        raise ConfigError(f"controls: {where}: target must be text")
    if action == "pin" and target is None:
        raise ConfigError(f"controls: {where}: a pin needs a target")
    return locale.strip(), _key(source), (_key(target) if target is not None else None)


def _key(text: str) -> str:
    """The text key of an entry; a pattern rewrite's source or target keeps its `{name}`
    placeholders (selflearn.core.patterns.normalize_template)."""
    if "{" in text:
        from selflearn.core.patterns import normalize_template

        return normalize_template(text)
    return normalize_text(text)


def load_controls(path: str | Path | None) -> Controls:
    """Controls from a YAML or CSV file; no path gives empty controls. Any problem is a
    ConfigError with one line naming the file and entry."""
    if not path:
        return Controls()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"controls: no such file: {p}")
    entries: dict[str, list] = {"block": [], "pin": []}
    expected = "a YAML file with 'block' and/or 'pin' lists, or a CSV file with header action,locale,source,target"
    if p.suffix.lower() == ".csv":
        import io

        with io.StringIO(read_text_file(p, "controls", expected), newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"action", "locale", "source"} <= set(reader.fieldnames):
                raise ConfigError(f"controls: {p}: CSV header must be action,locale,source,target")
            for i, row in enumerate(reader, start=2):
                action = (row.pop("action") or "").strip()
                if action not in entries:
                    raise ConfigError(f"controls: {p} line {i}: action must be block or pin, got {action!r}")
                row = {k: v for k, v in row.items() if k is not None}
                entries[action].append(_entry(row, f"{p} line {i}", action))
    elif p.suffix.lower() in (".yaml", ".yml"):
        data = read_yaml(p, "controls", expected) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"controls: {p}: expected a YAML mapping with 'block' and/or 'pin' lists, got a "
                              f"{type(data).__name__}")
        if set(data) - set(entries):
            raise ConfigError(f"controls: {p}: top level must be a mapping with 'block' and/or 'pin' lists")
        for action in entries:
            items = data.get(action) or []
            if not isinstance(items, list):
                raise ConfigError(f"controls: {p}: '{action}' must be a list")
            for i, raw in enumerate(items):
                entries[action].append(_entry(raw, f"{p} {action}[{i}]", action))
    else:
        raise ConfigError(f"controls: {p}: must be .yaml, .yml or .csv")
    return Controls(
        blocks=pd.DataFrame(entries["block"], columns=COLUMNS).drop_duplicates().reset_index(drop=True),
        pins=pd.DataFrame(entries["pin"], columns=COLUMNS).drop_duplicates().reset_index(drop=True),
    )


def _listed(intent: pd.Series, domain: pd.Series, intents: tuple, domains: tuple) -> pd.Series:
    return intent.isin(intents).fillna(False) | domain.isin(domains).fillna(False)


def denied(intent: pd.Series, domain: pd.Series, settings: Settings) -> pd.Series:
    """Per row: the interpretation (intent, domain) is on a deny list."""
    return _listed(intent, domain, settings.deny_intents, settings.deny_domains)


def sensitive(intent: pd.Series, domain: pd.Series, settings: Settings) -> pd.Series:
    """Per row: the interpretation (intent, domain) acts outward (settings
    `sensitive_intents`, `sensitive_domains`): exact rewrites only, with
    `sensitive_min_users` users."""
    return _listed(intent, domain, settings.sensitive_intents, settings.sensitive_domains)
