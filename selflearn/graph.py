"""The rewrite graph: an absorbing Markov chain per locale.

States: one transient state per text key; one absorbing success state per key
("the user got served at k"); one absorbing failure state. A turn at key a whose
successor b is a rephrase (score s) moves mass s from a to b; the rest of the turn's mass,
(1 - s), is absorbed at success(a) with probability 1 - defect_prob and at failure with
probability defect_prob.

Transitions are pooled across users, each user's outcome distribution at a key weighted
by min(turns, per_user_edge_cap): with the default cap of 1 every user is one vote, so a
user flooding a pair hundreds of times counts once.

For a source a, B = N R with N = (I - Q)^-1 gives the absorption probabilities. Success
states of keys the NLU served the same way (same intent and slots) are one outcome for
the user: the rewrite target is the key with the largest B[a, success(k)] inside the
interpretation class with the largest total, k != a, and that class total is the
rewrite's `confidence` (with no interpretation known, a key is its own class, and this is
the plain per-key argmax). Solved per connected component with one sparse LU factorisation
reused for every source of the component (never a dense inverse).
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import splu

SUCCESS = "__success__"  # dest marker: absorbed at success of the row's own key
FAILURE = "__failure__"


@dataclass(frozen=True)
class Absorption:
    source: str
    target: str
    confidence: float  # P(absorbed at success(target) | start at source)
    source_success: float  # P(absorbed at success(source) | start at source)


def transition_rows(edges: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{key: {dest: prob}} from rows (src, dst, prob); dst is a key, SUCCESS or FAILURE."""
    rows: dict[str, dict[str, float]] = {}
    for src, dst, p in edges[["src", "dst", "prob"]].itertuples(index=False):
        rows.setdefault(src, {})[dst] = rows.get(src, {}).get(dst, 0.0) + float(p)
    return rows


def components(rows: dict[str, dict[str, float]]) -> list[list[str]]:
    """Weakly connected components over the transient edges, in a stable order."""
    g = nx.Graph()
    for src, dests in rows.items():
        g.add_node(src)
        for dst in dests:
            if dst not in (SUCCESS, FAILURE):
                g.add_edge(src, dst)
    comps = [sorted(c) for c in nx.connected_components(g)]
    return sorted(comps, key=lambda c: c[0])


def absorb_component(keys: list[str], rows: dict[str, dict[str, float]], sources: list[str],
                     classes: dict[str, str] | None = None) -> list[Absorption]:
    """Absorption into success(k) from each source, for one component.

    With Q the transient block and r[k] = P(k -> success(k)), the probability of being
    absorbed at success(k) from a is N[a, k] * r[k]. Row a of N solves (I - Q)^T x = e_a,
    so one LU factorisation of (I - Q)^T serves every source.

    `classes` maps keys to their interpretation (what the NLU did when the key was
    served). Keys served the same way are one outcome for the user, so the target is
    chosen by the class with the largest total absorption (the source itself excluded),
    and within it the key with the largest absorption; `confidence` is the class total.
    Without classes every key is its own class (the plain per-key argmax)."""
    index = {k: i for i, k in enumerate(keys)}
    n = len(keys)
    data, ri, ci = [], [], []
    r = np.zeros(n)
    for k in keys:
        i = index[k]
        for dst, p in rows.get(k, {}).items():
            if dst == SUCCESS:
                r[i] += p
            elif dst == FAILURE:
                continue
            else:
                data.append(p)
                ri.append(i)
                ci.append(index[dst])
    q = sp.csc_matrix((data, (ri, ci)), shape=(n, n))
    system = (sp.identity(n, format="csc") - q).T.tocsc()
    lu = splu(system)
    labels = np.array([(classes or {}).get(k) or f"key:{k}" for k in keys], dtype=object)
    class_ids, class_of = np.unique(labels, return_inverse=True)
    out = []
    for src in sources:
        e = np.zeros(n)
        e[index[src]] = 1.0
        absorbed = lu.solve(e) * r
        a = index[src]
        source_success = float(absorbed[a])
        absorbed[a] = 0.0
        totals = np.bincount(class_of, weights=absorbed, minlength=len(class_ids))
        best_class = int(np.argmax(totals))
        if totals[best_class] <= 1e-12:
            continue
        members = np.flatnonzero(class_of == best_class)
        best = int(members[np.argmax(absorbed[members])])
        out.append(Absorption(src, keys[best], float(min(totals[best_class], 1.0)), source_success))
    return out


def solve_rewrite_targets(edges: pd.DataFrame, sources: list[str] | None = None,
                          classes: dict[str, str] | None = None) -> pd.DataFrame:
    """For each source key (default: every key with transient out-edges), its best
    target and confidence. `edges` columns: src, dst, prob (dst SUCCESS/FAILURE/key)."""
    rows = transition_rows(edges)
    wanted = set(rows) if sources is None else set(sources)
    results: list[Absorption] = []
    for comp in components(rows):
        comp_sources = [k for k in comp if k in wanted and any(d not in (SUCCESS, FAILURE) for d in rows.get(k, {}))]
        if comp_sources:
            results.extend(absorb_component(comp, rows, comp_sources, classes))
    return pd.DataFrame(
        [(a.source, a.target, a.confidence, a.source_success) for a in results],
        columns=["source", "target", "confidence", "source_success"],
    )


def reachable(edges: pd.DataFrame, origins, targets) -> np.ndarray:
    """For each (origin, target) pair: can a chain of key -> key edges lead from origin to
    a target other than itself? `edges` columns src, dst (SUCCESS / FAILURE rows are ignored).

    One breadth-first search per distinct origin, in C (scipy.sparse.csgraph), answering
    all of that origin's pairs at once: a locale's graph has tens of thousands of keys and
    a search per pair, or a Python one, grows with keys times sources."""
    from scipy.sparse.csgraph import breadth_first_order

    origins, targets = np.asarray(origins, dtype=object), np.asarray(targets, dtype=object)
    out = np.zeros(len(origins), dtype=bool)
    trans = edges[~edges["dst"].isin([SUCCESS, FAILURE])]
    if trans.empty or not len(origins):
        return out
    codes, keys = pd.factorize(pd.concat([trans["src"], trans["dst"]], ignore_index=True))
    n, m = len(keys), len(trans)
    adj = sp.csr_matrix((np.ones(m), (codes[:m], codes[m:])), shape=(n, n))
    index = pd.Index(keys)
    o = index.get_indexer(origins)
    t = index.get_indexer(targets)
    asked = np.flatnonzero((o >= 0) & (t >= 0))
    seen = np.zeros(n, dtype=bool)
    for origin, rows in pd.Series(asked).groupby(o[asked]):
        order = breadth_first_order(adj, int(origin), directed=True, return_predecessors=False)
        seen[order[1:]] = True  # as networkx.descendants: never the origin itself
        out[rows.to_numpy()] = seen[t[rows.to_numpy()]]
        seen[order] = False
    return out


def inherit_paraphrase_evidence(edges: pd.DataFrame, mates: pd.DataFrame, n_users: dict[str, int], weight: float,
                                rephrase_users: dict[str, int] | None = None, enough_users: int = 0) -> pd.DataFrame:
    """Cross-user paraphrase evidence: a failing key inherits the rephrase continuations
    of its cluster's other failing members -- where its own rephrase evidence is thin
    (fewer than `enough_users` users rephrased it; `rephrase_users` counts them), so
    keys with enough direct evidence keep exactly their own row.

    `mates` rows (key, mate): both failing members of one paraphrase cluster. The key's
    row becomes the user-weighted mix
        (n_key * row_key + weight * sum_m n_m * row'_m) / (n_key + weight * sum_m n_m)
    where row'_m is the mate's row with its own success and any edge back to the key
    moved to failure (the mate being served says nothing about saying the key).
    Rows stay distributions; edges gain a column `inherited` (mass that came from mates).
    """
    rows = transition_rows(edges)
    if mates.empty:
        out = edges[["src", "dst", "prob"]].copy()
        out["inherited"] = 0.0
        return out
    mixed: dict[str, dict[str, tuple[float, float]]] = {}
    for key, group in mates.groupby("key", sort=True):
        if rephrase_users is not None and rephrase_users.get(key, 0) >= enough_users:
            continue
        own_n = float(n_users.get(key, 0))
        acc: dict[str, list[float]] = {}
        for dst, p in rows.get(key, {}).items():
            acc.setdefault(dst, [0.0, 0.0])[0] += own_n * p
        total = own_n
        for mate in sorted(group["mate"]):
            m_n = float(n_users.get(mate, 0)) * weight
            if m_n <= 0 or mate not in rows:
                continue
            total += m_n
            for dst, p in rows[mate].items():
                if dst in (SUCCESS, key):
                    dst = FAILURE
                cell = acc.setdefault(dst, [0.0, 0.0])
                cell[0] += m_n * p
                if dst != FAILURE:
                    cell[1] += m_n * p
        if total > 0:
            mixed[key] = {d: (v[0] / total, v[1] / total) for d, v in acc.items()}
    records = []
    for src, dests in rows.items():
        if src in mixed:
            continue
        records.extend((src, d, p, 0.0) for d, p in dests.items())
    for src, dests in mixed.items():
        records.extend((src, d, p, inh) for d, (p, inh) in dests.items())
    return pd.DataFrame(records, columns=["src", "dst", "prob", "inherited"])
