"""Rephrase scoring of candidate pairs (two consecutive turns of a session within
`rephrase_window_s`): is the second turn the user re-asking the first?

The score is one logistic function (weights in `config.RephraseModel`, fitted by
bench/fit_rephrase.py) over
- form: lexical similarity (script-aware, see text.similarity_features);
- meaning: the cosine of the two keys' embeddings, z-scored against the cosine of
  unrelated keys of the same locale under the same encoder (`meaning_baseline`), so the
  feature means "how far above chance" whatever the encoder: a better encoder (the
  multilingual one) simply separates more;
- behaviour: the time gap and the first turn's defect probability, both in full and from
  the turn's own signals alone (`own_defect`: status, barge-in, feedback, dwell, ASR, act;
  not the quick-next / re-ask signals, which say the same as the pair's gap and
  similarity: a quick similar follow-up after a success must not count twice);
- slots: the share of the slot values the NLU heard in the first turn that the second
  drops (`slots_changed`), times the chance the first turn worked by its own signals
  (1 - own_defect): a follow-up of the same frame with other values comes after a success,
  while after a failure a re-ask often gives the misheard value again the right way;
- the system's act on the first turn, where the log has it (contract v3 `system_act`):
  after `elicit` the next turn answers a question (`w_elicit` is a veto like `w_unrelated`:
  an answer is never a re-ask), after `reprompt` it re-asks.
- the second turn's served intent: ranked among the served-intent centroids of its locale
  and day by cosine to the first key (`served_intent_rank`); served as a goal the first
  key is far from, with little meaning and no words shared, the pair is a new goal
  (`w_other_intent`, a veto), however quick after a failure.
A pair with neither shared words nor shared meaning (meaning z below
`unrelated_max_meaning_z` AND lexical similarity below `unrelated_max_similarity`) gets
`w_unrelated` on top, so a fast unrelated request after a failure cannot be a rephrase
however quick it came: a veto for clearly unrelated pairs only, which keeps the recall of
re-asks in other words (they share meaning) and of repeats (they share words).

The hard negatives it must separate:
- a failed request followed by an unrelated new request: low similarity, low meaning;
- a success followed by a different request of the same kind ("... for six" after
  "... for five"): high similarity, but the first turn worked (low defect probability);
- an answer to the system's question ("for what time?" -> "seven am"): `elicit`.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
from rapidfuzz.distance import OSA

from selflearn.config import RephraseModel
from selflearn.core.text import normalize_text, similarity_features

FEATURES = ("similarity", "defect", "sim_defect", "own_defect", "sim_own_defect", "gap", "meaning",
            "unrelated", "slots_changed_own_ok", "act_reprompt", "act_elicit", "act_confirm", "other_intent")
WEIGHTS = ("w_similarity", "w_defect", "w_sim_defect", "w_own_defect", "w_sim_own_defect", "w_gap", "w_meaning",
           "w_unrelated", "w_slots_changed", "w_reprompt", "w_elicit", "w_confirm", "w_other_intent")


def pair_similarity(first: str, second: str) -> float:
    """One lexical similarity in [0, 1]: the best of token Dice, char-trigram Dice and
    edit similarity (each catches a different kind of rephrase in some script)."""
    f = similarity_features(first, second)
    return max(f["token_dice"], f["char3_dice"], f["edit_sim"])


def says_value_again(value: str, text: str, near: float) -> bool:
    """Does `text` (a key) say `value` (a normalized slot value) again: verbatim, or as a
    span of as many words (one more or less) whose optimal-string-alignment similarity to it
    is at least `near`? A misheard value said right ("orrganism" -> "organism", "tonay" ->
    "today", "elton joyn" -> "elton john") is the same value, while a follow-up's new one
    ("five" -> "six", "tuesday" -> "thursday": 0.75) is not. `near` above 1 turns the
    near match off."""
    if value in text:
        return True
    if near > 1.0:
        return False
    words = text.split()
    n = len(value.split())
    for k in sorted({max(1, n - 1), n, n + 1}):
        for i in range(len(words) - k + 1):
            if OSA.normalized_similarity(value, " ".join(words[i:i + k])) >= near:
                return True
    return False


def slots_changed(first_slots, next_texts, first_texts=None,
                  near: float = RephraseModel.slot_value_near) -> np.ndarray:
    """The share of the first turn's NLU slot values that are absent from the second turn's
    key, in [0, 1]: a follow-up of the same frame changes values ("alarm for five" -> "alarm
    for six": 1.0; "meeting on monday at one" -> "meeting on tuesday at three": 1.0; "on monday
    at one" -> "on monday at three": 0.5), a re-ask keeps them (0.0). 0.0 without slots (not
    understood, or none). A share, not "all values gone": a follow-up that keeps one value
    and changes another is still a follow-up.

    `first_texts` (the first turns' keys): only the values the first turn itself says count.
    A value the NLU heard that the caller never said ("what about thai food" understood as
    romanian) is the system's mistake, not the caller's value: its absence from the second
    turn is the caller saying the right value again (a re-ask), not changing it.

    `near` (`RephraseModel.slot_value_near`): a value the second turn says again nearly the
    same (`says_value_again`) is kept, not dropped: after a silent failure the caller says
    the misheard value right, and the first turn looked fine, so the value's change would
    otherwise read as a follow-up's."""
    out = np.zeros(len(next_texts))
    firsts = first_texts if first_texts is not None else [None] * len(out)
    for i, (slots, nxt, first) in enumerate(zip(first_slots, next_texts, firsts)):
        if slots is None or not isinstance(nxt, str):
            continue
        values = [normalize_text(str(s["value"])) for s in slots if s is not None and s.get("value")]
        values = [v for v in values if v and (not isinstance(first, str) or v in first)]
        if values:
            out[i] = sum(not says_value_again(v, nxt, near) for v in values) / len(values)
    return out


def pair_features(similarity, gap_s, first_defect_prob, meaning_z, system_act, window_s: float,
                  model: RephraseModel, own_defect_prob=None, changed=None, intent_rank=None) -> np.ndarray:
    """(n, len(FEATURES)) float matrix. `meaning_z` NaN (no vectors) leaves both the meaning
    term and the unrelated veto out; `system_act` None (unknown) leaves the act terms out.
    `own_defect_prob`: the first turn's defect probability from its own signals only (no
    quick-next / re-ask signal, which the pair's gap and similarity already carry); None:
    the full defect probability. `changed`: `slots_changed` per pair (None: zeros).
    `intent_rank`: `served_intent_rank` per pair (None or NaN: the second turn's served
    intent is unknown, and the other-intent veto stays out)."""
    sim = np.asarray(similarity, dtype=np.float64)
    n = len(sim)
    gap = np.clip(np.asarray(gap_s, dtype=np.float64), 0.0, window_s) / window_s
    defect = np.asarray(first_defect_prob, dtype=np.float64)
    own = defect if own_defect_prob is None else np.asarray(own_defect_prob, dtype=np.float64)
    z = np.asarray(meaning_z, dtype=np.float64) if meaning_z is not None else np.full(n, np.nan)
    known = ~np.isnan(z)
    meaning = np.where(known, np.clip(np.nan_to_num(z), model.meaning_z_min, model.meaning_z_max), 0.0)
    unrelated = known & (np.nan_to_num(z) < model.unrelated_max_meaning_z) & (sim < model.unrelated_max_similarity)
    rank = np.asarray(intent_rank, dtype=np.float64) if intent_rank is not None else np.full(n, np.nan)
    # served as a goal the first key is far from, with little shared meaning and no shared
    # words: the user asked for something else (a topic switch the unrelated veto misses,
    # because the encoder sees some meaning in any two requests of one domain)
    other_intent = (known & ~np.isnan(rank) & (np.nan_to_num(rank) >= model.other_intent_min_rank)
                    & (np.nan_to_num(z) < model.other_intent_max_meaning_z) & (sim < model.unrelated_max_similarity))
    acts = pd.Series(system_act if system_act is not None else [None] * n, dtype=object).to_numpy()
    return np.column_stack([
        sim, defect, sim * defect, own, sim * own, gap, meaning, unrelated.astype(np.float64),
        # values changed after a turn that worked by its own signals: a follow-up; after a
        # failure a re-ask often says the value again the right way (the failure may be the
        # misheard value: "ashab wal aaz" -> "ashab wala aaz")
        np.zeros(n) if changed is None else np.asarray(changed, dtype=np.float64) * (1.0 - own),
        (acts == "reprompt").astype(np.float64), (acts == "elicit").astype(np.float64),
        (acts == "confirm").astype(np.float64), other_intent.astype(np.float64),
    ])


def weights_of(model: RephraseModel) -> np.ndarray:
    return np.array([getattr(model, w) for w in WEIGHTS], dtype=np.float64)


def score_of(x: np.ndarray, model: RephraseModel, w_slots_changed: float | None = None) -> np.ndarray:
    """The score in [0, 1] of each row of `pair_features`; `w_slots_changed` in place of the
    model's when given (the rewrite graph's score: RephraseModel.graph_w_slots_changed)."""
    w = weights_of(model)
    if w_slots_changed is not None:
        w[WEIGHTS.index("w_slots_changed")] = w_slots_changed
    return 1.0 / (1.0 + np.exp(-(model.bias + x @ w)))


# --- the second turn's served intent ----------------------------------------------------

def intent_centroid(vectors) -> np.ndarray:
    """Unit mean of the vectors of the distinct keys served with one intent (in the order
    given: callers sort by text, so the float sum is the same on every run)."""
    c = np.mean(np.stack([np.asarray(v, dtype=np.float64) for v in vectors]), axis=0)
    norm = np.linalg.norm(c)
    return c / norm if norm > 0 else c


def served_intent_centroids(intents, texts, vectors) -> tuple[list[str], np.ndarray]:
    """The served-intent centroids of one locale and day from its served keys (one row per
    distinct (intent, text)): intent names in sorted order and, row for row, the unit mean
    of each intent's key vectors, summed in text order (the same floats on every run)."""
    df = pd.DataFrame({"intent": list(intents), "text": list(texts), "vector": list(vectors)})
    df = df.drop_duplicates(["intent", "text"]).sort_values(["intent", "text"], kind="mergesort")
    names, rows = [], []
    for intent, g in df.groupby("intent", sort=True):
        names.append(intent)
        rows.append(intent_centroid(g["vector"]))
    return names, (np.stack(rows) if rows else np.zeros((0, 1)))


def served_intent_rank(first_vectors, second_intents, intents, centroids: np.ndarray) -> np.ndarray:
    """Per pair: how many of the centroids (`centroids[j]` the unit centroid of
    `intents[j]`, all of one locale and day) are nearer by cosine to the first key's vector
    than the centroid of the intent the second turn was served with; 0 when it is the
    nearest. NaN where the first vector is missing or the second intent has no centroid.

    A re-ask is served (when it is) as what the first turn meant: that intent's centroid is
    among the first key's nearest (within the nearest three for 94% of the simulator's
    re-asks). A new goal after a failure is served as something the first key is far from."""
    out = np.full(len(second_intents), np.nan)
    if len(intents) == 0:
        return out
    index = {name: j for j, name in enumerate(intents)}
    mat = np.asarray(centroids, dtype=np.float64)
    for i, (v, intent) in enumerate(zip(first_vectors, second_intents)):
        j = index.get(intent)
        if v is None or j is None:
            continue
        cos = mat @ np.asarray(v, dtype=np.float64)
        out[i] = float((cos > cos[j]).sum())
    return out


# --- meaning -------------------------------------------------------------------------

def order_key(text: str) -> str:
    # sha256 hex: Spark's F.sha2(text, 256) gives the same order (steps.meaning_step).
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def meaning_baseline(keys: pd.DataFrame, max_keys: int = 1000, min_keys: int = 30) -> pd.DataFrame:
    """Per locale, the mean and standard deviation of the cosine between unrelated keys
    under the run's encoder: DataFrame[locale, mean, std].

    `keys` holds locale, text, vector (L2-normalized). Up to `max_keys` keys per locale (the
    first by sha256 of the text: the same sample whatever the partitioning), each paired
    with the key half the sample further on. Most pairs of keys in a locale want different
    things, so this is the encoder's chance level (MiniLM: about 0.1 +- 0.1 in English; an
    encoder blind to a script: high and narrow; multilingual e5: about 0.75 +- 0.04). A
    locale with fewer than `min_keys` keys takes the pooled figure of all sampled keys;
    with fewer than that overall, no baseline (the meaning feature stays out)."""
    rows, pooled = [], []
    for locale, grp in keys.groupby("locale", sort=True):
        g = grp.drop_duplicates("text").assign(_o=lambda d: d["text"].map(order_key))
        g = g.sort_values("_o", kind="mergesort").head(max_keys)
        v = np.stack(g["vector"].to_numpy()).astype(np.float64) if len(g) else np.zeros((0, 1))
        cos = _shifted_cosines(v)
        pooled.append(cos)
        rows.append((locale, len(g), cos))
    every = np.concatenate(pooled) if pooled else np.zeros(0)
    out = []
    for locale, n, cos in rows:
        use = cos if n >= min_keys else every
        if len(use) < min_keys:
            continue
        out.append((locale, float(use.mean()), float(max(use.std(), 1e-3))))
    return pd.DataFrame(out, columns=["locale", "mean", "std"])


def _shifted_cosines(v: np.ndarray) -> np.ndarray:
    n = len(v)
    if n < 2:
        return np.zeros(0)
    other = np.roll(v, n // 2, axis=0)
    return np.einsum("ij,ij->i", v, other)


def meaning_z(locales, cosines, baseline: pd.DataFrame) -> np.ndarray:
    """(cosine - chance mean) / chance std of each pair's locale; NaN where the cosine or
    the locale's baseline is missing."""
    mean = dict(zip(baseline["locale"], baseline["mean"]))
    std = dict(zip(baseline["locale"], baseline["std"]))
    loc = pd.Series(locales, dtype=object)
    mu = loc.map(mean).to_numpy(dtype=np.float64)
    sd = loc.map(std).to_numpy(dtype=np.float64)
    return (np.asarray(cosines, dtype=np.float64) - mu) / sd


def pair_cosines(first_vectors, second_vectors) -> np.ndarray:
    """Cosine of each pair of L2-normalized vectors (lists/arrays, None -> NaN)."""
    out = np.full(len(first_vectors), np.nan)
    for i, (a, b) in enumerate(zip(first_vectors, second_vectors)):
        if a is not None and b is not None and len(a) and len(b):
            out[i] = float(np.dot(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))
    return out


class EncoderMeaning:
    """The meaning feature without Spark (tests, benchmarks): embeds the keys of the pairs
    it is asked about with `encoder` (selflearn.encoders.embed.Encoder, or a function locale ->
    Encoder when each locale has its own, as under `embedding_backend: auto`), keeps their
    vectors, and z-scores against the baseline of every key it has seen per locale (or a
    given one). `encoder_id` (locale -> the encoder's cache id): replace those figures with
    the calibrated chance levels where the table has them, as the Spark path does
    (`calibrated_baseline`). `for_settings` builds the one a run with `settings` uses."""

    def __init__(self, encoder, baseline: pd.DataFrame | None = None, encoder_id=None):
        self.encoder = encoder
        self.vectors: dict[tuple[str, str], np.ndarray] = {}
        self.baseline = baseline
        self.encoder_id = encoder_id

    @classmethod
    def for_settings(cls, settings) -> "EncoderMeaning":
        from selflearn.encoders.embed import encoder_cache_id, load_encoder, settings_for_locale

        return cls(lambda locale: load_encoder(settings_for_locale(settings, locale)),
                   encoder_id=lambda locale: encoder_cache_id(settings_for_locale(settings, locale), "cpu"))

    def _encoder_of(self, locale: str):
        return self.encoder if hasattr(self.encoder, "encode") else self.encoder(locale)

    def vector_table(self, locales, texts) -> pd.DataFrame:
        df = pd.DataFrame({"locale": list(locales), "text": list(texts)}).dropna().drop_duplicates()
        for locale, grp in df.groupby("locale", sort=True):
            missing = sorted({t for t in grp["text"] if (locale, t) not in self.vectors})
            if missing:
                for t, v in zip(missing, self._encoder_of(locale).encode(missing)):
                    self.vectors[(locale, t)] = v
        df["vector"] = [self.vectors[(lo, t)] for lo, t in zip(df["locale"], df["text"])]
        return df

    def __call__(self, locales, texts, next_texts) -> np.ndarray:
        locales, texts, next_texts = list(locales), list(texts), list(next_texts)
        keys = self.vector_table(locales + locales, texts + next_texts)
        base = self.baseline if self.baseline is not None else meaning_baseline(keys)
        if self.encoder_id is not None:
            base = calibrated_baseline(base, sorted(set(keys["locale"])), self.encoder_id)
        a = [self.vectors.get((lo, t)) if isinstance(t, str) else None for lo, t in zip(locales, texts)]
        b = [self.vectors.get((lo, t)) if isinstance(t, str) else None for lo, t in zip(locales, next_texts)]
        return meaning_z(locales, pair_cosines(a, b), base)


def calibrated_baseline(baseline: pd.DataFrame, locales, encoder_of_locale) -> pd.DataFrame:
    """`baseline` with each locale's figures replaced by the calibrated chance level of the
    encoder that embeds it (selflearn/meaning_baselines.json, written by
    bench/meaning_baselines.py from MASSIVE), where the table has them. A fixed level keeps
    pair scores independent of which other keys a run happens to hold, so a log mined day by
    day scores its pairs as the same log mined at once. `locales`: the run's locales with
    vectors; `encoder_of_locale`: locale -> the encoder's cache id. Locales the table lacks
    keep the run's own figures."""
    table = _calibrations()
    rows = {r.locale: (r.mean, r.std) for r in baseline.itertuples()}
    for locale in set(rows) | set(locales):
        cal = table.get(encoder_of_locale(locale), {}).get(locale)
        if cal is not None:
            rows[locale] = (float(cal[0]), float(cal[1]))
    return pd.DataFrame([(lo, m, sd) for lo, (m, sd) in sorted(rows.items())], columns=["locale", "mean", "std"])


def _calibrations() -> dict:
    from importlib import resources

    f = resources.files("selflearn").joinpath("meaning_baselines.json")
    return json.loads(f.read_text("utf-8")) if f.is_file() else {}
