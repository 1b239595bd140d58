"""The rewrite graph's transition model: where a key leads users, as probabilities.

The graph (`graph.py`) is an absorbing Markov chain over text keys with two absorbing
states, SUCCESS and FAILURE. This module says how one turn spreads its probability mass
over its outcomes, and how the turns of many users at one key are pooled into that key's
transition probabilities. Pure pandas; `selflearn.spark.steps.edges_step` only groups the
turns of each key together and calls `pooled_transitions`.

One turn at key k, whose next turn (at key k') counts as its re-ask with graph score s
(enriched `graph_score`; 0 when it does not count) and whose own defect probability is d:
    k -> k'       with mass s          (the user re-asked in other words)
    k -> SUCCESS  with mass (1-s)(1-d)
    k -> FAILURE  with mass (1-s) d
A user's outcome distribution at k is the mean of their turns' masses. Users, not turns,
vote: each user's distribution is weighted by min(turns, per_user_edge_cap), so one user
repeating a key cannot outweigh the others, yet someone who said it twice counts more than
someone who said it once (up to the cap).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from selflearn.core.graph import FAILURE, SUCCESS


TURN_COLUMNS = ("locale", "user_id", "text", "graph_score", "defect_prob", "next_text")
EDGE_COLUMNS = ("locale", "src", "dst", "prob", "n_users")


def turn_outcomes(turns: pd.DataFrame) -> pd.DataFrame:
    """(locale, user_id, text, dst, mass) for every outcome of every turn with mass > 0
    (a missing score or defect probability gives no mass)."""
    # graph_score is null where the pair does not count (sessions.score_pairs)
    s = np.nan_to_num(turns["graph_score"].astype("float64").to_numpy(), nan=0.0)
    d = turns["defect_prob"].astype("float64").to_numpy()
    base = turns[["locale", "user_id", "text"]].reset_index(drop=True)
    parts = [
        base.assign(dst=turns["next_text"].to_numpy(), mass=s),
        base.assign(dst=SUCCESS, mass=(1 - s) * (1 - d)),
        base.assign(dst=FAILURE, mass=(1 - s) * d),
    ]
    out = pd.concat(parts, ignore_index=True)
    return out[out["mass"] > 0].reset_index(drop=True)


def pooled_transitions(turns: pd.DataFrame, per_user_edge_cap: float) -> pd.DataFrame:
    """Transition probabilities (locale, src, dst, prob, n_users) of every key in `turns`
    (organic turns, columns TURN_COLUMNS; whole keys: all turns of a (locale, text)).
    `n_users` counts the distinct users with mass on the edge; each key's probabilities
    sum to 1 over its outgoing edges."""
    if turns.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(EDGE_COLUMNS, ("object", "object", "object", "float64", "int64"))})
    keys = ["locale", "user_id", "text"]
    per_user = turns.groupby(keys, sort=False).size().rename("n").reset_index()
    per_user["w"] = np.minimum(per_user["n"].astype("float64"), float(per_user_edge_cap))
    user_mass = (
        turn_outcomes(turns).groupby([*keys, "dst"], sort=False)["mass"].sum().reset_index()
        .merge(per_user, on=keys)
    )
    user_mass["wm"] = user_mass["w"] * user_mass["mass"] / user_mass["n"]
    denom = per_user.groupby(["locale", "text"], sort=False)["w"].sum().rename("wsum").reset_index()
    # user_mass holds one row per (user, text, dst): counting rows counts distinct users
    edges = (
        user_mass.groupby(["locale", "text", "dst"], sort=False)
        .agg(num=("wm", "sum"), n_users=("wm", "size")).reset_index()
        .merge(denom, on=["locale", "text"])
    )
    edges["prob"] = edges["num"] / edges["wsum"]
    edges["n_users"] = edges["n_users"].astype("int64")
    return edges.rename(columns={"text": "src"})[list(EDGE_COLUMNS)]
