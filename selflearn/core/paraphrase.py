"""Cross-user paraphrase mining over text-key embeddings (pure numpy/pandas/faiss/networkx).

Steps: ``build_index`` (exact or IVF, GPU when faiss has one) -> ``knn_pairs`` (symmetric
k-nearest-neighbour pairs above a cosine) -> ``cluster_paraphrases`` (slot-respecting,
chaining-guarded clusters, one output row per clustered key).

Vectors are float32 and L2-normalized (``selflearn.encoders.embed``), so inner product = cosine.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from selflearn.config import Settings
from selflearn.core.text import normalize_text, token_occurrences

# IVF: nprobe starts here and doubles until recall@10 on a sample of the data's own queries
# (against exact search) reaches IVF_TARGET_RECALL. Measured on real MiniLM embeddings of
# MASSIVE utterances (see the docstring of build_index).
IVF_START_NPROBE = 8
IVF_TARGET_RECALL = 0.96
IVF_CALIBRATION_QUERIES = 1000
# k-means for the IVF lists: 10 iterations on at most 40 points per list. faiss' defaults
# (25 iterations on up to 256 per list) spent half of the 200k-key mining time training,
# for no recall: on 200k real MiniLM keys (1,789 lists) recall@10 at nprobe 16/32/64 was
# 0.928/0.952/0.971 with the defaults and 0.927/0.953/0.971 with 10 x 32, training 9x faster.
IVF_KMEANS_NITER = 10
IVF_KMEANS_POINTS_PER_LIST = 40
_SEARCH_CHUNK = 16384
_COS_EPS = 1e-6

_GPU_RESOURCES: list[Any] = []  # keeps faiss GPU resources alive as long as the process

OUTPUT_COLUMNS = [
    "locale", "cluster_id", "text", "n_users", "cluster_n_users", "cluster_size",
    "success_rate", "intent", "intent_agreement",
]


# --- index ------------------------------------------------------------------------------


def _as_f32(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-d (n, d), got shape {x.shape}")
    return x


def ivf_nlist(n: int) -> int:
    """nlist ~ 4 sqrt(n), but never fewer than 39 training points per list (faiss' floor)."""
    return max(1, min(int(round(4.0 * math.sqrt(n))), n // 39))


def _recall_at_k(approx_I: np.ndarray, approx_D: np.ndarray, exact_I: np.ndarray, exact_D: np.ndarray) -> float:
    """Share of the exact top-k found by the approximate search. An exact neighbour tied
    with the approximate k-th similarity counts as found (duplicates make ids ambiguous)."""
    k = exact_I.shape[1]
    hits = 0
    for a_i, a_d, e_i, e_d in zip(approx_I, approx_D, exact_I, exact_D):
        found = set(a_i[a_i >= 0].tolist())
        kth = a_d[a_i >= 0].min() if (a_i >= 0).any() else np.inf
        hits += sum(1 for j, s in zip(e_i, e_d) if j in found or s <= kth + _COS_EPS)
    return hits / (k * len(exact_I))


def build_index(vectors: np.ndarray, settings: Settings, info: dict | None = None, k: int | None = None):
    """A faiss inner-product index over ``vectors`` (all added).

    * n <= ``settings.exact_index_max_keys``: exact ``IndexFlatIP``.
    * larger: ``IndexIVFFlat`` with nlist = ``ivf_nlist(n)`` (about 4 sqrt(n)), k-means seeded
      (deterministic; ``IVF_KMEANS_NITER`` iterations on a seeded sample of at most
      ``IVF_KMEANS_POINTS_PER_LIST`` points per list). nprobe is calibrated on the data itself: starting at
      ``IVF_START_NPROBE`` it doubles until recall@k (k = ``settings.knn_k``) of 1,000 sampled
      queries (fixed seed) against exact search reaches ``IVF_TARGET_RECALL`` (0.96, a margin
      over the 0.95 required). Measured on 16,430 real MiniLM embeddings of MASSIVE en-US
      keys (421 lists), recall@10 by nprobe: 4: 0.882, 8: 0.932, 16: 0.960, 32: 0.979; on the
      first 5,000 (128 lists): 8: 0.948, 16: 0.974. Calibration picked nprobe 16 (0.966).
    * moved to GPU 0 when ``faiss.get_num_gpus() > 0`` (after calibration on CPU).

    ``info`` (optional dict) receives kind, n, nlist, nprobe, recall, gpu.
    """
    import faiss

    x = _as_f32(vectors)
    n, d = x.shape
    k = int(k or settings.knn_k)
    meta: dict[str, Any] = {"n": n, "kind": "flat", "nlist": None, "nprobe": None, "recall": 1.0, "gpu": False}
    if n <= settings.exact_index_max_keys:
        index = faiss.IndexFlatIP(d)
        index.add(x)
    else:
        nlist = ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        index.cp.niter = IVF_KMEANS_NITER
        index.cp.max_points_per_centroid = IVF_KMEANS_POINTS_PER_LIST
        index.train(x)
        index.add(x)
        rng = np.random.default_rng(0)
        q = x[np.sort(rng.choice(n, size=min(IVF_CALIBRATION_QUERIES, n), replace=False))]
        kk = min(k, n)
        exact_D, exact_I = faiss.knn(q, x, kk, faiss.METRIC_INNER_PRODUCT)
        nprobe = min(IVF_START_NPROBE, nlist)
        while True:
            index.nprobe = nprobe
            D, I = index.search(q, kk)
            recall = _recall_at_k(I, D, exact_I, exact_D)
            if recall >= IVF_TARGET_RECALL or nprobe >= nlist:
                break
            nprobe = min(nprobe * 2, nlist)
        meta.update(kind="ivf", nlist=nlist, nprobe=nprobe, recall=recall)
    if faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        _GPU_RESOURCES.append(res)
        if meta["kind"] == "ivf":
            index.nprobe = min(index.nprobe, 2048)  # GPU limit
        index = faiss.index_cpu_to_gpu(res, 0, index)
        meta["gpu"] = True
    if info is not None:
        info.update(meta)
    return index


# --- exact top-k in torch (the GPU path without faiss-gpu) ------------------------------


def torch_topk(x: np.ndarray, k: int, device: str = "cpu", block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of every row of ``x`` against all rows (self included), as
    faiss' ``search`` returns it: (D float32 (n, k), I int64 (n, k)), best first.

    Blocked over queries so memory stays ``block x n`` similarities; fp32 on any device so the
    result is exact. Runs on CUDA when ``device`` says so (checked on an H200 by
    bench/gpu_check.py), else CPU.
    """
    import torch

    xs = _as_f32(x)
    n = xs.shape[0]
    k = min(int(k), n)
    base = torch.from_numpy(xs).to(device)
    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    with torch.inference_mode():
        for s in range(0, n, block):
            sims = base[s : s + block] @ base.T
            v, i = torch.topk(sims, k, dim=1, largest=True, sorted=True)
            D[s : s + len(v)] = v.float().cpu().numpy()
            I[s : s + len(v)] = i.cpu().numpy()
    return D, I


# --- pairs ------------------------------------------------------------------------------


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({"i": pd.Series([], dtype="int64"), "j": pd.Series([], dtype="int64"),
                         "cosine": pd.Series([], dtype="float32")})


def knn_pairs(vectors: np.ndarray, k: int, min_cosine: float, settings: Settings, info: dict | None = None) -> pd.DataFrame:
    """Symmetric nearest-neighbour pairs: columns i < j (row numbers of ``vectors``), cosine.

    Each row's k nearest neighbours other than itself: the self-match is removed by id (an
    exact duplicate also sits at cosine 1 and is a real neighbour), so k+1 are searched.
    A pair found from both ends appears once (the higher cosine kept); only pairs with
    cosine >= ``min_cosine``. Sorted by (i, j).
    """
    from selflearn.encoders.devices import choose_devices

    x = _as_f32(vectors)
    n = x.shape[0]
    if n < 2 or k <= 0:
        return _empty_pairs()
    ks = min(k + 1, n)
    engine = choose_devices(settings).knn
    if engine.startswith("torch"):
        D_all, I_all = torch_topk(x, ks, "cuda" if engine == "torch-cuda" else "cpu")
        if info is not None:
            info.update(n=n, kind="torch-exact", nlist=None, nprobe=None, recall=1.0, gpu=engine == "torch-cuda")

        def search(q_start: int, q_len: int):
            return D_all[q_start : q_start + q_len], I_all[q_start : q_start + q_len]
    else:
        index = build_index(x, settings, info=info, k=k)

        def search(q_start: int, q_len: int):
            return index.search(x[q_start : q_start + q_len], ks)
    frames = []
    for start in range(0, n, _SEARCH_CHUNK):
        q = x[start : start + _SEARCH_CHUNK]
        D, I = search(start, len(q))
        rows = np.arange(start, start + len(q), dtype=np.int64)[:, None]
        valid = (I >= 0) & (I != rows)
        valid &= np.cumsum(valid, axis=1) <= k  # the first k neighbours that are not self
        valid &= D >= min_cosine
        r = np.broadcast_to(rows, I.shape)[valid]
        c = I[valid].astype(np.int64)
        frames.append(pd.DataFrame({"i": np.minimum(r, c), "j": np.maximum(r, c),
                                    "cosine": np.minimum(D[valid], 1.0).astype(np.float32)}))
    pairs = pd.concat(frames, ignore_index=True)
    if pairs.empty:
        return _empty_pairs()
    pairs = pairs.sort_values(["i", "j", "cosine"], ascending=[True, True, False], kind="mergesort")
    pairs = pairs.drop_duplicates(["i", "j"], keep="first")
    return pairs.reset_index(drop=True)


# --- slot-respecting admissibility ------------------------------------------------------

def value_occurs(value_key: str, text_key: str) -> bool:
    """Whether a normalized slot value occurs in a text key as a token sequence
    (`text.token_occurrences`). "five" occurs in "wake me at five am", not in "fifteen".
    An empty value occurs everywhere."""
    return not value_key or next(token_occurrences(value_key, text_key), None) is not None


def _values_of(slots: Any, nlu_values: Any) -> frozenset[str]:
    out: set[str] = set()
    for s in _iter(slots):
        v = s.get("value") if isinstance(s, dict) else (s[1] if isinstance(s, (tuple, list)) and len(s) > 1 else None)
        if v is not None:
            out.add(normalize_text(str(v)))
    for v in _iter(nlu_values):
        if v is not None:
            out.add(normalize_text(str(v)))
    out.discard("")
    return frozenset(out)


def _iter(x: Any) -> Iterable:
    if x is None:
        return ()
    if isinstance(x, float) and math.isnan(x):
        return ()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _intent_or_none(x: Any) -> str | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return str(x)


def admissible(text_a: str, values_a: frozenset[str], intent_a: str | None,
               text_b: str, values_b: frozenset[str], intent_b: str | None) -> bool:
    """The slot rule: every value known for a occurs in b's text and vice versa, and the
    successful intents are equal when both keys have one."""
    if intent_a is not None and intent_b is not None and intent_a != intent_b:
        return False
    return all(value_occurs(v, text_b) for v in values_a) and all(value_occurs(v, text_a) for v in values_b)


# --- clusters ---------------------------------------------------------------------------


def _components(nodes: Iterable[int], adj: dict[int, set[int]]) -> list[list[int]]:
    """Connected components of the subgraph induced by ``nodes``; each sorted."""
    pool = set(nodes)
    out = []
    while pool:
        seed = min(pool)
        comp, stack = {seed}, [seed]
        pool.discard(seed)
        while stack:
            u = stack.pop()
            for v in adj.get(u, ()):
                if v in pool:
                    pool.discard(v)
                    comp.add(v)
                    stack.append(v)
        out.append(sorted(comp))
    return out


def _star_split(comp: list[int], x: np.ndarray, adj: dict[int, set[int]], ok, min_cos: float,
                max_size: int) -> list[list[int]]:
    """Split one connected component into stars around medoids (the anti-chaining guard).

    The medoid is the member closest to the component's normalized mean vector (ties: the
    lowest row). Its cluster is every member with cosine >= min_cos to the medoid that is
    admissible with the medoid (slot values, intents), and at most `max_size` of them: the
    medoid and its nearest members (ties: the lower row). The rest is re-split into connected
    components of the admissible graph and handled the same way, until nothing of size >= 2
    remains.
    """
    out: list[list[int]] = []
    stack = [comp]
    while stack:
        c = stack.pop()
        if len(c) < 2:
            continue
        sub = x[c]
        centroid = sub.mean(axis=0)
        norm = float(np.linalg.norm(centroid))
        centroid = centroid / norm if norm > 0 else centroid
        m = int(np.argmax(sub @ centroid))
        med = c[m]
        sims = sub @ x[med]
        near = [(u, s) for u, s in zip(c, sims) if u != med and s >= min_cos - _COS_EPS and ok(med, u)]
        if len(near) >= max_size:
            near = sorted(near, key=lambda us: (-us[1], us[0]))[:max_size - 1]
        members = [med] + [u for u, _ in near]
        if len(members) >= 2:
            out.append(sorted(members))
            taken = set(members)
        else:  # cannot happen for a connected component of admissible edges; be safe
            taken = {med}
        rest = [u for u in c if u not in taken]
        stack.extend(_components(rest, adj))
    return out


def _empty_clusters() -> pd.DataFrame:
    return pd.DataFrame({
        "locale": pd.Series([], dtype=object), "cluster_id": pd.Series([], dtype=object),
        "text": pd.Series([], dtype=object), "n_users": pd.Series([], dtype="int64"),
        "cluster_n_users": pd.Series([], dtype="int64"), "cluster_size": pd.Series([], dtype="int64"),
        "success_rate": pd.Series([], dtype="float64"), "intent": pd.Series([], dtype=object),
        "intent_agreement": pd.Series([], dtype="float64"),
    })


def cluster_id_of(locale: str, smallest_text: str) -> str:
    return hashlib.sha1(f"{locale}\x1f{smallest_text}".encode("utf-8")).hexdigest()[:16]


def cluster_paraphrases(keys: pd.DataFrame, vectors: np.ndarray, settings: Settings, info: dict | None = None) -> pd.DataFrame:
    """Cross-user paraphrase clusters of the text keys of one locale (several locales are
    handled one by one; keys of different locales never share a cluster).

    ``keys`` (aligned row by row with ``vectors``): locale, text, n_users, n_turns, n_success,
    intent (dominant interpretation of the key's successful turns, or None), slots (list of
    {name, value} of that interpretation), nlu_slot_values (slot values the NLU recognised on
    any turn of the key); optional ``user_sets`` (iterable of user ids per key).

    Rule. Candidate edges are ``knn_pairs(vectors, knn_k, paraphrase_min_cosine)``. An edge
    (a, b) is admissible only if every slot value known for a (the values of its successful
    slots and its nlu_slot_values, normalized with ``normalize_text``) occurs as a token
    sequence in b's text (``value_occurs``) and vice versa, and, when both keys have a
    successful intent, the intents are equal. So "set an alarm for five" and "set an alarm
    for six" never merge, however close their vectors. A value the NLU canonicalised so that it
    no longer appears in any text ("05:00") blocks its key's edges: precision over recall.

    Anti-chaining. Connected components of admissible edges would chain a-b-c although a and
    c are no paraphrases (e.g. through a key without a known intent linking two intents).
    Each component is therefore split into stars: every member must itself have cosine >=
    ``paraphrase_min_cosine`` to the component's medoid and be admissible with it; whatever
    is left is re-split the same way (``_star_split``). Deterministic, no random seed.
    A star holds at most ``max_cluster_size`` keys, the medoid's nearest: paraphrase
    inheritance pairs every two failing members, so one star of thousands (what an encoder
    that cannot read a script makes of it) would cost millions of pairs and mean nothing.
    Measured on the 16,430 MASSIVE en-US keys (MiniLM, k=10, min cosine 0.80, intents hidden,
    the annotated slot values as nlu_slot_values), share of same-gold-intent pairs inside
    clusters: plain components 0.387 (largest 451 keys), networkx Louvain (seed 0) 0.797
    (largest 178), medoid stars 0.890 (largest 60; 6,728 keys in 1,845 clusters, 2.3 s).

    Output: one row per clustered key (singletons are left out): locale, cluster_id (a hash of
    locale and the smallest member text), text, n_users, cluster_n_users (the exact union of
    ``user_sets`` when given, else the sum of members' n_users: an upper bound when users
    repeat across keys), cluster_size, success_rate (cluster n_success / n_turns), intent
    (dominant successful intent, weighted by n_success; ties: alphabetical), intent_agreement
    (share of the cluster's successful turns behind the member keys of that intent). Sorted
    by locale, cluster_id, text.
    """
    keys = keys.reset_index(drop=True)
    x = _as_f32(vectors) if len(keys) else np.zeros((0, 1), np.float32)
    if len(keys) != x.shape[0]:
        raise ValueError(f"keys ({len(keys)} rows) and vectors ({x.shape[0]} rows) are not aligned")
    if keys.empty:
        return _empty_clusters()
    locales = keys["locale"].astype(str)
    if locales.nunique() > 1:
        parts = []
        for loc in sorted(locales.unique()):
            idx = np.flatnonzero((locales == loc).to_numpy())
            parts.append(cluster_paraphrases(keys.iloc[idx], x[idx], settings))
        out = pd.concat(parts, ignore_index=True)
        return out.sort_values(["locale", "cluster_id", "text"], kind="mergesort").reset_index(drop=True)

    locale = str(locales.iloc[0])
    if settings.max_cluster_size < 2:
        raise ValueError(f"max_cluster_size must be at least 2 (a cluster is a pair or more), got {settings.max_cluster_size}")
    from selflearn.encoders.embed import paraphrase_min_cosine

    min_cos = paraphrase_min_cosine(settings, locale)  # the setting, else the locale's encoder's floor
    texts = keys["text"].astype(str).tolist()
    intents = [_intent_or_none(v) for v in (keys["intent"] if "intent" in keys else [None] * len(keys))]
    slots_col = keys["slots"] if "slots" in keys else [None] * len(keys)
    nlu_col = keys["nlu_slot_values"] if "nlu_slot_values" in keys else [None] * len(keys)
    values = [_values_of(s, v) for s, v in zip(slots_col, nlu_col)]

    def ok(a: int, b: int) -> bool:
        return admissible(texts[a], values[a], intents[a], texts[b], values[b], intents[b])

    pairs = knn_pairs(x, settings.knn_k, min_cos, settings, info=info)
    adj: dict[int, set[int]] = {}
    n_admissible = 0
    for a, b in zip(pairs["i"].tolist(), pairs["j"].tolist()):
        if ok(a, b):
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
            n_admissible += 1
    clusters: list[list[int]] = []
    for comp in _components(adj.keys(), adj):
        clusters.extend(_star_split(comp, x, adj, ok, min_cos, settings.max_cluster_size))
    if info is not None:
        info.update(pairs=len(pairs), admissible_pairs=n_admissible, clusters=len(clusters))
    if not clusters:
        return _empty_clusters()

    n_users = keys["n_users"].fillna(0).astype("int64").to_numpy()
    n_turns = keys["n_turns"].fillna(0).astype("int64").to_numpy()
    n_success = keys["n_success"].fillna(0).astype("int64").to_numpy()
    user_sets = keys["user_sets"].tolist() if "user_sets" in keys else None

    rows = []
    for members in clusters:
        m_texts = [texts[u] for u in members]
        cid = cluster_id_of(locale, min(m_texts))
        if user_sets is not None:
            c_users = len(set().union(*[set(_iter(user_sets[u])) for u in members]))
        else:
            c_users = int(n_users[members].sum())
        turns = int(n_turns[members].sum())
        succ = int(n_success[members].sum())
        weights: dict[str, int] = {}
        for u in members:
            if intents[u] is not None:
                weights[intents[u]] = weights.get(intents[u], 0) + int(n_success[u])
        intent, agreement = None, 0.0
        if weights and sum(weights.values()) > 0:
            intent = min(weights, key=lambda t: (-weights[t], t))
            agreement = weights[intent] / succ if succ > 0 else 0.0
        for u in members:
            rows.append((locale, cid, texts[u], int(n_users[u]), c_users, len(members),
                         succ / turns if turns > 0 else 0.0, intent, min(1.0, float(agreement))))
    out = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
    out = out.astype({"n_users": "int64", "cluster_n_users": "int64", "cluster_size": "int64",
                      "success_rate": "float64", "intent_agreement": "float64"})
    return out.sort_values(["locale", "cluster_id", "text"], kind="mergesort").reset_index(drop=True)
