"""The absorbing Markov chain against chains solvable by hand."""
import pandas as pd
import pytest

from selflearn.core.graph import FAILURE, SUCCESS, inherit_paraphrase_evidence, solve_rewrite_targets


def edges(rows):
    return pd.DataFrame(rows, columns=["src", "dst", "prob"])


def test_chain_a_b_c_by_hand():
    e = edges([
        ("a", "b", 0.8), ("a", FAILURE, 0.2),
        ("b", "c", 0.5), ("b", SUCCESS, 0.1), ("b", FAILURE, 0.4),
        ("c", SUCCESS, 0.9), ("c", FAILURE, 0.1),
    ])
    out = solve_rewrite_targets(e, ["a", "b"]).set_index("source")
    assert out.loc["a", "target"] == "c"
    assert out.loc["a", "confidence"] == pytest.approx(0.8 * 0.5 * 0.9)
    assert out.loc["a", "source_success"] == pytest.approx(0.0)
    assert out.loc["b", "target"] == "c"
    assert out.loc["b", "confidence"] == pytest.approx(0.45)
    assert out.loc["b", "source_success"] == pytest.approx(0.1)


def test_cycle_needs_the_linear_solve():
    # b sends mass back to a: x_b = 0.45 + 0.2 * x_a, x_a = 0.8 * x_b
    e = edges([
        ("a", "b", 0.8), ("a", FAILURE, 0.2),
        ("b", "c", 0.5), ("b", "a", 0.2), ("b", FAILURE, 0.3),
        ("c", SUCCESS, 0.9), ("c", FAILURE, 0.1),
    ])
    out = solve_rewrite_targets(e, ["a", "b"]).set_index("source")
    assert out.loc["b", "confidence"] == pytest.approx(0.45 / 0.84)
    assert out.loc["a", "confidence"] == pytest.approx(0.8 * 0.45 / 0.84)


def test_components_are_solved_apart_and_best_target_wins():
    e = edges([
        ("a", "b", 0.3), ("a", "c", 0.6), ("a", FAILURE, 0.1),
        ("b", SUCCESS, 1.0), ("c", SUCCESS, 0.8), ("c", FAILURE, 0.2),
        ("x", "y", 1.0), ("y", SUCCESS, 1.0),
    ])
    out = solve_rewrite_targets(e).set_index("source")
    # a -> c: 0.6 * 0.8 = 0.48 beats a -> b: 0.3 * 1.0 = 0.30, although b succeeds more often
    assert out.loc["a", "target"] == "c"
    assert out.loc["a", "confidence"] == pytest.approx(0.48)
    # the other component is solved on its own: nothing of a's mass reaches it
    assert out.loc["x", "target"] == "y" and out.loc["x", "confidence"] == pytest.approx(1.0)


def test_a_tie_goes_to_the_first_key_in_sorted_order():
    e = edges([("a", "c", 0.5), ("a", "b", 0.5), ("b", SUCCESS, 0.6), ("c", SUCCESS, 0.6)])
    out = solve_rewrite_targets(e).set_index("source")
    assert out.loc["a", "target"] == "b" and out.loc["a", "confidence"] == pytest.approx(0.3)


def test_a_target_said_by_too_few_users_gives_way_to_a_class_mate_said_by_enough():
    """b and c are served the same way (one class); a reaches b more, but b was said by
    one user: b cannot be published (contract section 4), so the target is c, with the
    class's confidence. A class with no member said by enough keeps its best key."""
    e = edges([("a", "b", 0.6), ("a", "c", 0.2), ("a", FAILURE, 0.2), ("b", SUCCESS, 1.0), ("c", SUCCESS, 1.0),
               ("x", "y", 1.0), ("y", SUCCESS, 1.0)])
    classes = {"b": "alarm_set|seven", "c": "alarm_set|seven", "y": "weather_query|"}
    plain = solve_rewrite_targets(e, None, classes).set_index("source")
    assert plain.loc["a", "target"] == "b" and plain.loc["a", "confidence"] == pytest.approx(0.8)
    said = {"a": 4, "b": 1, "c": 5, "x": 3, "y": 2}
    out = solve_rewrite_targets(e, None, classes, said, 3).set_index("source")
    assert out.loc["a", "target"] == "c" and out.loc["a", "confidence"] == pytest.approx(0.8)
    assert out.loc["x", "target"] == "y"  # no class mate said by 3 users: left to the emission rules
    assert solve_rewrite_targets(e, None, classes, said, 1).equals(plain.reset_index())  # every key said enough


def test_paraphrase_inheritance_gives_a_failing_key_its_mates_continuation():
    e = edges([
        ("a", FAILURE, 1.0),                      # a: fails, nobody rephrased it
        ("m", "t", 0.9), ("m", FAILURE, 0.1),     # m: a paraphrase of a, users rephrase m -> t
        ("t", SUCCESS, 1.0),
    ])
    mates = pd.DataFrame([("a", "m"), ("m", "a")], columns=["key", "mate"])
    mixed = inherit_paraphrase_evidence(e, mates, {"a": 2, "m": 4, "t": 5}, weight=0.5)
    rows = mixed.groupby("src")["prob"].sum()
    assert rows["a"] == pytest.approx(1.0) and rows["m"] == pytest.approx(1.0)
    out = solve_rewrite_targets(mixed, ["a"]).set_index("source")
    # a's row: (2 * fail + 0.5*4 * (0.9 -> t, 0.1 fail)) / (2 + 2) -> t with 0.45
    assert out.loc["a", "target"] == "t"
    assert out.loc["a", "confidence"] == pytest.approx(0.45)
    assert mixed[(mixed.src == "a") & (mixed.dst == "t")]["inherited"].iloc[0] == pytest.approx(0.45)


def test_keys_with_enough_direct_evidence_keep_their_own_row():
    e = edges([
        ("a", "b", 0.9), ("a", FAILURE, 0.1),
        ("b", "c", 0.97), ("b", FAILURE, 0.03),
        ("c", SUCCESS, 1.0),
    ])
    mates = pd.DataFrame([("a", "b"), ("b", "a")], columns=["key", "mate"])
    mixed = inherit_paraphrase_evidence(e, mates, {"a": 4, "b": 4}, weight=0.5, rephrase_users={"a": 4, "b": 4}, enough_users=3)
    assert mixed["inherited"].sum() == 0
    out = solve_rewrite_targets(mixed, ["b"]).set_index("source")
    assert out.loc["b", "confidence"] == pytest.approx(0.97)


def test_reachable_agrees_with_networkx_descendants():
    """Random sparse digraphs with cycles, unknown keys and self-queries: the C
    breadth-first searches answer exactly what networkx.descendants does."""
    import networkx as nx
    import numpy as np

    from selflearn.core.graph import reachable

    rng = np.random.default_rng(3)
    keys = [f"k{i}" for i in range(300)]
    src = rng.integers(0, 300, 420)
    dst = rng.integers(0, 300, 420)
    rows = [(keys[a], keys[b], 0.5) for a, b in zip(src, dst) if a != b]
    rows += [(k, SUCCESS, 0.3) for k in keys[:50]] + [(k, FAILURE, 0.2) for k in keys[:50]]
    e = edges(rows)
    g = nx.DiGraph([(a, b) for a, b, _ in rows if b not in (SUCCESS, FAILURE)])
    origins = [keys[i] for i in rng.integers(0, 300, 2000)] + ["not a key", "k1"]
    targets = [keys[i] for i in rng.integers(0, 300, 2000)] + ["k1", "k1"]
    want = [o in g and t in nx.descendants(g, o) for o, t in zip(origins, targets)]
    got = reachable(e, origins, targets)
    assert got.tolist() == want
    assert 100 < sum(want) < 1900  # both answers were exercised
    assert reachable(e.iloc[:0], origins, targets).sum() == 0


@pytest.mark.parametrize("block_keys", [1, 16, 4096])
def test_block_solves_equal_a_dense_inverse(monkeypatch, block_keys):
    """Many components of random sizes (cycles included), interpretation classes shared
    across keys: whatever the packing of components into blocks, targets and
    confidences equal those read off the dense fundamental matrix N = (I - Q)^-1."""
    import numpy as np

    from selflearn.core import graph

    monkeypatch.setattr(graph, "BLOCK_KEYS", block_keys)
    rng = np.random.default_rng(11)
    keys = [f"k{i:03d}" for i in range(240)]
    rows = []
    for lo in range(0, 240, 12):  # 20 blocks of 12 keys, each cut into a few components
        for _ in range(14):
            a, b = rng.integers(lo, lo + 12, 2)
            if a != b:
                rows.append((keys[a], keys[b], float(rng.uniform(0.05, 0.3))))
    e = edges(rows).groupby(["src", "dst"], as_index=False)["prob"].sum()
    out_mass = e.groupby("src")["prob"].sum()
    extra = [(k, SUCCESS, float(rng.uniform(0, 1 - out_mass.get(k, 0)))) for k in keys]
    e = pd.concat([e, edges(extra)], ignore_index=True)
    e = pd.concat([e, edges([(k, FAILURE, 1 - p) for k, p in e.groupby("src")["prob"].sum().items()])], ignore_index=True)
    classes = {k: f"intent{int(rng.integers(0, 25))}" for k in keys if rng.random() < 0.6}
    sources = [k for k in keys if rng.random() < 0.5]
    got = graph.solve_rewrite_targets(e, sources, classes).set_index("source")

    index = {k: i for i, k in enumerate(keys)}
    q = np.zeros((240, 240))
    r = np.zeros(240)
    for s, d, p in e.itertuples(index=False):
        if d == SUCCESS:
            r[index[s]] += p
        elif d != FAILURE:
            q[index[s], index[d]] += p
    n = np.linalg.inv(np.eye(240) - q)
    labels = np.array([classes.get(k) or f"key:{k}" for k in keys], dtype=object)
    class_ids, class_of = np.unique(labels, return_inverse=True)
    want = {}
    for s in sources:
        a = index[s]
        if not q[a].any():
            continue
        absorbed = n[a] * r
        absorbed[a] = 0
        totals = np.bincount(class_of, weights=absorbed, minlength=len(class_ids))
        best_class = int(np.argmax(totals))
        if totals[best_class] > 1e-12:
            members = np.flatnonzero(class_of == best_class)
            want[s] = (keys[int(members[np.argmax(absorbed[members])])], totals[best_class], n[a, a] * r[a])
    assert set(got.index) == set(want) and len(want) > 60
    for s, (target, conf, own) in want.items():
        assert got.loc[s, "target"] == target
        assert got.loc[s, "confidence"] == pytest.approx(min(conf, 1.0), abs=1e-9)
        assert got.loc[s, "source_success"] == pytest.approx(own, abs=1e-9)
