"""Rephrase scoring of candidate pairs (two consecutive turns of a session within
`rephrase_window_s`): is the second turn the user re-asking the first?

The score combines lexical similarity (script-aware, see text.similarity_features), the
time gap and the first turn's defect probability in one logistic function whose weights
live in `config.RephraseModel`. The two hard negatives it must separate:
- a failed request followed by an unrelated new request: low similarity;
- a success followed by a different request of the same kind ("... for six" after
  "... for five"): high similarity, but the first turn worked (low defect probability).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .config import RephraseModel
from .text import similarity_features


def pair_similarity(first: str, second: str) -> float:
    """One lexical similarity in [0, 1]: the best of token Dice, char-trigram Dice and
    edit similarity (each catches a different kind of rephrase in some script)."""
    f = similarity_features(first, second)
    return max(f["token_dice"], f["char3_dice"], f["edit_sim"])


def rephrase_score(similarity, gap_s, first_defect_prob, window_s: float, model: RephraseModel) -> np.ndarray:
    """Vectorised score in [0, 1] for arrays of pair features."""
    sim = np.asarray(similarity, dtype=np.float64)
    gap = np.clip(np.asarray(gap_s, dtype=np.float64), 0.0, window_s) / window_s
    defect = np.asarray(first_defect_prob, dtype=np.float64)
    logit = (model.bias + model.w_similarity * sim + model.w_defect * defect
             + model.w_sim_defect * sim * defect + model.w_gap * gap)
    return 1.0 / (1.0 + np.exp(-logit))
