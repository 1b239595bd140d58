"""Defect estimation: how likely a turn failed the user, from what the system reported
and, above all, from how the user behaved next.

A wrong action still reads `success`; only behaviour reveals it (a barge-in, a short
dwell, a negative rating, a quick re-ask of nearly the same thing). The model is one
logistic function over named signals whose weights live in `config.DefectModel`, so it
is documented, tunable from the YAML config, and testable alone.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from selflearn.config import DefectModel

SIGNALS = (
    "status_error", "status_unhandled", "barge_in", "feedback_negative", "feedback_positive",
    "short_dwell", "long_dwell", "reask", "quick_next", "low_asr", "system_reprompt", "system_elicit",
)


def defect_signals(turns: pd.DataFrame, model: DefectModel) -> pd.DataFrame:
    """0/1 signal columns for each turn. Expects response_status, barge_in, feedback,
    dwell_ms, asr_confidence, and the pair columns gap_s / similarity of the turn's
    successor in its session (NaN when there is none)."""
    status = turns["response_status"].astype("string")
    feedback = pd.to_numeric(turns["feedback"], errors="coerce")
    dwell = pd.to_numeric(turns["dwell_ms"], errors="coerce")
    asr = pd.to_numeric(turns["asr_confidence"], errors="coerce")
    gap = pd.to_numeric(turns["gap_s"], errors="coerce")
    sim = pd.to_numeric(turns["similarity"], errors="coerce")
    quick = (gap <= model.reask_window_s).fillna(False)
    out = pd.DataFrame(index=turns.index)
    out["status_error"] = (status == "error").fillna(False)
    out["status_unhandled"] = (status == "unhandled").fillna(False)
    out["barge_in"] = turns["barge_in"].astype("boolean").fillna(False).astype(bool)
    out["feedback_negative"] = (feedback < 0).fillna(False)
    out["feedback_positive"] = (feedback > 0).fillna(False)
    out["short_dwell"] = (dwell < model.short_dwell_ms).fillna(False)
    out["long_dwell"] = (dwell >= model.long_dwell_ms).fillna(False)
    out["reask"] = quick & (sim >= model.reask_min_similarity).fillna(False)
    out["quick_next"] = quick
    out["low_asr"] = (asr < 0.5).fillna(False)
    act = turns["system_act"] if "system_act" in turns.columns else pd.Series(None, index=turns.index, dtype=object)
    out["system_reprompt"] = act.eq("reprompt").fillna(False)
    out["system_elicit"] = act.eq("elicit").fillna(False)
    return out.astype(np.float64)


def defect_probability(turns: pd.DataFrame, model: DefectModel) -> np.ndarray:
    """P(defect) per turn: sigmoid(bias + sum(weight * signal))."""
    signals = defect_signals(turns, model)
    weights = np.array([getattr(model, name) for name in SIGNALS])
    logit = model.bias + signals[list(SIGNALS)].to_numpy() @ weights
    return 1.0 / (1.0 + np.exp(-logit))


def is_failing(defect_rate, min_source_defect_rate: float):
    """The one rule that makes a key failing: its turns' mean defect probability reaches
    `min_source_defect_rate`. Works on a float, a pandas Series or a Spark Column alike
    (it is one comparison), so every stage asks the same question the same way."""
    return defect_rate >= min_source_defect_rate


def is_working(defect_rate, min_source_defect_rate: float):
    """The complement of `is_failing` for a known rate (an unknown rate is neither)."""
    return defect_rate < min_source_defect_rate


# A turn the NLU served well enough that its interpretation counts as a vote for its key
# (key statistics, served slot values): half the defect probability is where a turn is
# more likely failed than served.
GOOD_TURN_MAX_DEFECT = 0.5


def _present(x):
    """Not null, for a scalar, a pandas Series or a Spark Column."""
    if hasattr(x, "isNotNull"):
        return x.isNotNull()
    if hasattr(x, "notna"):
        return x.notna()
    return x is not None


def is_good_turn(response_status, defect_prob, nlu_intent):
    """A turn served with an intent, status success and defect probability under
    GOOD_TURN_MAX_DEFECT. Scalars, pandas Series or Spark Columns, like `is_failing`."""
    return (response_status == "success") & (defect_prob < GOOD_TURN_MAX_DEFECT) & _present(nlu_intent)


def interpretation_class(defect_rate, intent, slots_json, min_source_defect_rate: float):
    """A working key's interpretation, "intent|slots_json": keys of one class are the same
    outcome for a user (a rewrite to any of them serves the same goal). None (null) for a
    key that is failing, unknown or served without an intent. Scalars, Series or Columns."""
    served = is_working(defect_rate, min_source_defect_rate) & _present(intent)
    if hasattr(intent, "isNotNull"):  # a Spark Column
        from pyspark.sql import functions as F

        return F.when(served, F.concat_ws("|", intent, F.coalesce(slots_json, F.lit("[]"))))
    if hasattr(intent, "notna"):  # a pandas Series
        cls = intent.astype("object").astype(str) + "|" + slots_json.fillna("[]").astype(str)
        return cls.where(served.fillna(False).astype(bool), None).astype("object")
    return f"{intent}|{slots_json if slots_json is not None else '[]'}" if served else None
