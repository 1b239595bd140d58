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
the plain per-key argmax). Components are solved in blocks of a few thousand keys, one
sparse LU factorisation reused for every source of the block (never a dense inverse).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from threadpoolctl import threadpool_limits
from selflearn.schema import evidence_kind

SUCCESS = "__success__"  # dest marker: absorbed at success of the row's own key
FAILURE = "__failure__"


BLOCK_KEYS = 512  # components are solved together, in blocks of at least this many keys
# (a solve costs in proportion to its block: small blocks, but few LU calls)
SOURCES_PER_SOLVE = 256  # right-hand sides per triangular solve (a dense block x this matrix)


def transition_rows(edges: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{key: {dest: prob}} from rows (src, dst, prob); dst is a key, SUCCESS or FAILURE."""
    rows: dict[str, dict[str, float]] = {}
    for src, dst, p in edges[["src", "dst", "prob"]].itertuples(index=False):
        rows.setdefault(src, {})[dst] = rows.get(src, {}).get(dst, 0.0) + float(p)
    return rows


def _component_blocks(adj: sp.csr_matrix, keep: np.ndarray) -> list[np.ndarray]:
    """Key indices (keys sorted) of the weakly connected components that hold a `keep`
    key, components ordered by their first key, packed into blocks of >= BLOCK_KEYS keys.
    (I - Q) is block diagonal over components, so a block's factorisation is exact for
    every component in it, and a few thousand small components cost a few LU calls."""
    from scipy.sparse.csgraph import connected_components

    _, comp = connected_components(adj, directed=True, connection="weak")
    wanted = np.zeros(comp.max() + 1, dtype=bool)
    wanted[comp[keep]] = True
    first = np.full(len(wanted), len(comp))
    np.minimum.at(first, comp, np.arange(len(comp)))  # a component's first key (keys are sorted)
    members = np.flatnonzero(wanted[comp])
    members = members[np.lexsort((members, first[comp[members]]))]
    ends = np.flatnonzero(np.diff(comp[members])) + 1  # where one component gives way to the next
    blocks, lo = [], 0
    for hi in [*ends, len(members)]:  # whole components, until the block is big enough
        if hi - lo >= BLOCK_KEYS or hi == len(members):
            blocks.append(members[lo:hi])
            lo = hi
    return blocks


def solve_rewrite_targets(edges: pd.DataFrame, sources: list[str] | None = None,
                          classes: dict[str, str] | None = None, said_by: dict[str, float] | None = None,
                          min_said: int = 0) -> pd.DataFrame:
    """For each source key (default: every key with transient out-edges), its best
    target and confidence. `edges` columns: src, dst, prob (dst SUCCESS/FAILURE/key).

    With Q the transient block and r[k] = P(k -> success(k)), the probability of being
    absorbed at success(k) from a is N[a, k] * r[k]. Row a of N solves (I - Q)^T x = e_a,
    so one LU factorisation of (I - Q)^T serves every source of a block of components,
    and each triangular solve takes SOURCES_PER_SOLVE of them at once.

    `classes` maps keys to their interpretation (what the NLU did when the key was
    served). Keys served the same way are one outcome for the user, so the target is
    chosen by the class with the largest total absorption (the source itself excluded),
    and within it the key with the largest absorption; `confidence` is the class total.
    Without classes every key is its own class (the plain per-key argmax). Ties go to the
    first class and key in sorted order.

    `said_by` (key -> distinct users who said it) and `min_said`: a target is a text that
    gets published, so it must have been said by min_said users (contract section 4).
    Where the class's best key was said by fewer, the target is the class member that was
    (the most absorption, then the most users): it is served the same way, so the class
    and its confidence stay; a class with no such member keeps its best key, which the
    emission rules then refuse (`text_too_few_users`)."""
    columns = ["source", "target", "confidence", "source_success"]
    e = edges[["src", "dst", "prob"]]
    trans = e[~e["dst"].isin([SUCCESS, FAILURE])]
    keys = np.array(sorted(set(e["src"]) | set(trans["dst"])), dtype=object)
    if not len(keys) or trans.empty:
        return pd.DataFrame(columns=columns)
    index, n = pd.Index(keys), len(keys)
    si, di = index.get_indexer(trans["src"]), index.get_indexer(trans["dst"])
    q = sp.csr_matrix((trans["prob"].to_numpy(dtype=np.float64), (si, di)), shape=(n, n))  # duplicates add up
    succ = e[e["dst"] == SUCCESS]
    r = np.bincount(index.get_indexer(succ["src"]), weights=succ["prob"].to_numpy(dtype=np.float64), minlength=n)
    is_source = np.bincount(si, minlength=n) > 0  # only keys with a transient out-edge
    if sources is not None:
        is_source &= index.isin(list(sources))
    if not is_source.any():
        return pd.DataFrame(columns=columns)
    labels = np.array([(classes or {}).get(k) or f"key:{k}" for k in keys], dtype=object)
    said = np.array([float((said_by or {}).get(k, 0) or 0) for k in keys]) if said_by is not None else None
    adj = sp.csr_matrix((np.ones(len(si)), (si, di)), shape=(n, n))
    out = []
    # One BLAS thread: the solves are small, and Spark already runs a worker per core
    # (threaded BLAS there spun 10x the CPU time, measured on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        for block in _component_blocks(adj, is_source):
            out.extend(_absorb_block(keys[block], q[block][:, block], r[block], labels[block], np.flatnonzero(is_source[block]),
                                     None if said is None else said[block], min_said))
    return pd.DataFrame(out, columns=columns)


def _absorb_block(keys: np.ndarray, q: sp.csr_matrix, r: np.ndarray, labels: np.ndarray, sources: np.ndarray,
                  said: np.ndarray | None = None, min_said: int = 0) -> list[tuple]:
    n = len(keys)
    lu = splu((sp.identity(n, format="csc") - q).T.tocsc())
    class_ids, class_of = np.unique(labels, return_inverse=True)
    in_class = sp.csr_matrix((np.ones(n), (class_of, np.arange(n))), shape=(len(class_ids), n))
    out = []
    for lo in range(0, len(sources), SOURCES_PER_SOLVE):
        src = sources[lo:lo + SOURCES_PER_SOLVE]
        cols = np.arange(len(src))
        rhs = np.zeros((n, len(src)))
        rhs[src, cols] = 1.0
        absorbed = lu.solve(rhs) * r[:, None]
        source_success = absorbed[src, cols].copy()
        absorbed[src, cols] = 0.0
        totals = in_class @ absorbed  # (classes, sources)
        best_class = totals.argmax(axis=0)
        best_total = totals[best_class, cols]
        best = np.where(class_of[:, None] == best_class[None, :], absorbed, -np.inf).argmax(axis=0)
        for j in np.flatnonzero(best_total > 1e-12):
            k = best[j]
            if said is not None and said[k] < min_said:
                members = np.flatnonzero((class_of == best_class[j]) & (said >= min_said))
                if len(members):  # the most absorption, then the most users, then key order
                    k = members[np.lexsort((-said[members], -absorbed[members, j]))[0]]
            out.append((keys[src[j]], keys[k], float(min(best_total[j], 1.0)), float(source_success[j])))
    return out


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


def evidence_kinds(edges_pdf: pd.DataFrame, mixed: pd.DataFrame, solved: pd.DataFrame) -> list[str]:
    """`rephrase` where the source's own rephrase edges lead to the target, `paraphrase`
    where a key it inherited from a cluster mate is the target or leads to it, `both`."""
    inherited = mixed.loc[mixed["inherited"] > 0, ["src", "dst"]].drop_duplicates()
    via = solved[["source", "target"]].reset_index(drop=True).rename_axis("row").reset_index().merge(
        inherited, left_on="source", right_on="src")
    # one call: the graph is indexed once for both sets of questions
    reached = reachable(edges_pdf, pd.concat([solved["source"], via["dst"]]), pd.concat([solved["target"], via["target"]]))
    direct = reached[:len(solved)]
    hit = (via["dst"] == via["target"]).to_numpy() | reached[len(solved):]
    by_mate = np.zeros(len(solved), dtype=bool)
    by_mate[via["row"].to_numpy()[hit]] = True
    return [evidence_kind(bool(d), bool(p)) for d, p in zip(direct, by_mate)]
