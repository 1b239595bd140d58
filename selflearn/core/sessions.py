"""Sessions and turn enrichment: text keys, sessions, each turn's successor, defect
probability and the rephrase score of (turn, successor).

`enrich_turns` takes all turns of some (user_id, device_id) groups -- sessions never span
devices -- so Spark applies it to partitions clustered by those keys (spark.map_groups);
it is plain pandas, vectorised across groups, and testable without Spark.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from selflearn.config import Settings
from selflearn.core.defects import defect_probability
from selflearn.core.keys import text_keys
from selflearn.core.privacy import scrub_slots
from selflearn.core.rephrase import pair_features, pair_similarity, score_of, slots_changed
from selflearn.schema import arrow_schema
from selflearn.core.text import normalize_text


# Operator data (holds user ids): kept under state/, never published as is.
ENRICHED_TURNS = arrow_schema("enriched_turns")


def normalize_series(texts: pd.Series) -> pd.Series:
    """normalize_text over a column, computing each distinct string once."""
    uniq = pd.unique(texts)
    mapping = {t: (normalize_text(t) if isinstance(t, str) else None) for t in uniq}
    return texts.map(mapping)


GROUP_KEYS = ["user_id", "device_id"]


def cut_sessions(turns: pd.DataFrame, gap_s: float) -> pd.Series:
    """Session label per turn; turns sorted by (user_id, device_id, ts, order). The given
    session_id when present, else a new session after `gap_s` of inactivity."""
    same_group = (turns["user_id"].eq(turns["user_id"].shift()) & turns["device_id"].eq(turns["device_id"].shift()))
    gaps = turns["ts"].diff().dt.total_seconds()
    new = ~same_group | gaps.isna() | (gaps > gap_s)
    # Named by its first turn's time: the same label whatever else shares the batch.
    start = turns["ts"].dt.strftime("%Y%m%dT%H%M%S.%f").where(new).ffill()
    cut = turns["user_id"].astype(str) + "|" + turns["device_id"].astype(str) + "|" + start
    given = turns["session_id"]
    has_given = given.notna() & (given.astype("string").str.len() > 0).fillna(False)
    return given.where(has_given, cut).astype(str)


def enrich_turns(turns: pd.DataFrame, settings: Settings, meaning=None) -> pd.DataFrame:
    """Turns of any number of (user, device) groups in -- every turn of each group that
    is present -- one enriched row per turn out (ENRICHED_TURNS).

    `meaning` (optional): a callable (locales, texts, next_texts) -> meaning z per turn
    (rephrase.EncoderMeaning); without it `meaning_z` is NaN and the pair score leaves the
    meaning feature out (the Spark path adds it after embedding: steps.meaning_step)."""
    if turns.empty:
        return pd.DataFrame({f.name: pd.Series(dtype=object) for f in ENRICHED_TURNS})
    df = turns.copy()
    df["device_id"] = df["device_id"].fillna("")
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df = df.sort_values(GROUP_KEYS + ["ts", "order"], kind="mergesort").reset_index(drop=True)
    df["session"] = cut_sessions(df, settings.session_gap_s)
    if settings.scrub_pii:  # slot values are masked like the utterance, so they still project onto its key
        df["nlu_slots"] = [scrub_slots(s, settings.pii_min_digits) if s is not None else None for s in df["nlu_slots"]]
    # The one key function a runtime also calls (selflearn.core.keys): masking, then normalize_text.
    df["text"] = text_keys(df["utterance"], settings.scrub_pii, settings.pii_min_digits)
    df["rewritten_from"] = text_keys(df["rewritten_from"], settings.scrub_pii, settings.pii_min_digits)
    by_session = df.groupby(GROUP_KEYS + ["session"], sort=False)
    df["seq"] = by_session.cumcount().astype("int64")
    nxt = by_session[["event_id", "text", "ts"]].shift(-1)
    df["next_event_id"] = nxt["event_id"]
    df["next_text"] = nxt["text"]
    df["gap_s"] = (pd.to_datetime(nxt["ts"], utc=True) - df["ts"]).dt.total_seconds()
    has_next = df["next_event_id"].notna().to_numpy()
    sim = np.full(len(df), np.nan)
    texts, next_texts = df["text"].to_numpy(), df["next_text"].to_numpy()
    for i in np.flatnonzero(has_next):
        sim[i] = pair_similarity(texts[i], next_texts[i])
    df["similarity"] = sim

    if "system_act" not in df.columns:  # a log (or a state's tail) from before contract v3
        df["system_act"] = None
    df["defect_prob"] = defect_probability(df, settings.defect_model)
    # the turn's own signals only: the pair's gap and similarity speak for themselves
    own_model = dataclasses.replace(settings.defect_model, reask=0.0, quick_next=0.0)
    df["own_defect_prob"] = defect_probability(df, own_model)

    in_window = has_next & (df["gap_s"] <= settings.rephrase_window_s).to_numpy()
    z = np.full(len(df), np.nan)
    if meaning is not None and in_window.any():
        idx = np.flatnonzero(in_window)
        z[idx] = meaning(df["locale"].to_numpy()[idx], texts[idx], next_texts[idx])
    df["meaning_z"] = z
    # needs the served-intent centroids of the second turn's day: the Spark path adds it
    # (steps.next_intent_ranks); bench/rephrase_intent_probe.py computes it the same way
    df["next_intent_rank"] = np.nan
    df["slots_changed"] = slots_changed(df["nlu_slots"].to_numpy(dtype=object), df["next_text"].to_numpy(dtype=object),
                                        df["text"].to_numpy(dtype=object), settings.rephrase_model.slot_value_near)
    return score_pairs(df, settings)[[f.name for f in ENRICHED_TURNS]]


def score_pairs(df: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """pair_score, is_rephrase and graph_score of enriched turns from their pair features
    (similarity, gap_s, defect_prob, own_defect_prob, meaning_z, system_act, slots_changed,
    next_intent_rank): NaN / False / NaN outside the rephrase window. graph_score is the
    score with rephrase_model.graph_w_slots_changed for w_slots_changed, kept where it
    reaches the threshold (NaN elsewhere): the rewrite graph's evidence (config.RephraseModel)."""
    df = df.copy()
    model = settings.rephrase_model
    in_window = (df["next_event_id"].notna() & (df["gap_s"] <= settings.rephrase_window_s)).to_numpy()

    x = pair_features(
        df["similarity"].fillna(0.0), df["gap_s"].fillna(settings.rephrase_window_s), df["defect_prob"],
        df["meaning_z"].to_numpy(dtype=np.float64), df["system_act"].to_numpy(dtype=object),
        settings.rephrase_window_s, model, own_defect_prob=df["own_defect_prob"].to_numpy(dtype=np.float64),
        changed=df["slots_changed"].to_numpy(dtype=np.float64),
        intent_rank=df["next_intent_rank"].to_numpy(dtype=np.float64) if "next_intent_rank" in df else None,
    )
    pair = np.where(in_window, score_of(x, model), np.nan)
    graph = np.where(in_window, score_of(x, model, model.graph_w_slots_changed), np.nan)
    df["pair_score"] = pair
    df["is_rephrase"] = in_window & (pair >= model.threshold)
    df["graph_score"] = np.where(in_window & (graph >= model.threshold), graph, np.nan)
    return df
