"""Privacy, poisoning and operator controls end to end: real local Spark runs of the
pipeline (runner.run_all; the CLI once) on a small simulated log of real MASSIVE
utterances into which PII, colluding accounts and a defect-rate inflater are injected.

One output ROOT holds a sequence of runs that trips each publish-gate check in turn;
the poisoning runs repeat the attack log with the per-user rate limit on and off, with
the default settings and with the anti-sybil setting. All runs share one embedding
cache (ROOT/state), so only the first run embeds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from selflearn.config import Settings
from selflearn.core.privacy import EMAIL_MASK, scrub_text
from selflearn.run.publish import latest_run
from selflearn.run.runner import Run, run_all
from selflearn.core.text import normalize_text

pytestmark = pytest.mark.heavy  # second tier (make test-full): runs whole pipelines or servers

from trust_logs import (colluders, id_forms, inflater, inject_pii, published_text, read_log, report_tables,
                        served_targets, unused_rephrase, write_log)

RATE_OFF = 10_000_000  # the largest max_turns_per_user_day config.RANGES allows: the limit off in effect
INFLATE_TURNS = 2200  # > max_turns_per_user_day (2000): 200 quarantined with the limit on


@pytest.fixture(scope="module")
def attack(tmp_path_factory, massive):
    from selflearn.simulate import simulate

    base = tmp_path_factory.mktemp("trust")
    simulate(str(base / "sim"), users=150, locales=["en-US"], seed=0)
    log = read_log(base / "sim" / "log")
    targets = served_targets(log)
    picks = targets[targets["nlu_intent"] != "general_quirky"].drop_duplicates("nlu_intent").head(3).reset_index(drop=True)
    # each colluders' source re-asks its target's goal in other words (a pair the detector
    # reads as a rephrase), so what stops them is the privacy floor, not the detector
    taken: set[str] = set()
    sources = [unused_rephrase(massive, log, picks.iloc[i], taken) for i in range(3)]
    first_day = log.loc[log["ts"] > pd.Timestamp("2020-01-01", tz="UTC"), "ts"].min().normalize()  # not a malformed ts
    start = first_day + timedelta(days=1, hours=9)
    pii_email = "jane.roe@example.org"
    words = sources[2]["utt"].split(" ")
    pii_source = " ".join(words[:2] + [pii_email] + words[2:])
    rows = (colluders("coll2", 2, sources[0]["utt"], picks.iloc[0], start)             # k < min_users
            + colluders("coll3", 3, sources[1]["utt"], picks.iloc[1], start + timedelta(hours=3))  # k = min_users
            + colluders("collpii", 4, pii_source, picks.iloc[2], start + timedelta(hours=6)))
    victim = targets[~targets["nlu_intent"].isin(picks["nlu_intent"]) & (targets["users"] >= 4)].iloc[0]
    rows += inflater("inflater", victim["utterance"], INFLATE_TURNS, start.normalize() + timedelta(days=1, hours=6))
    log_pii, raw = inject_pii(log)
    full = pd.concat([log_pii, pd.DataFrame(rows)], ignore_index=True)
    write_log(full, base / "attack-log")
    return dict(
        base=base, log=full, first_day=first_day, raw_pii=raw + [pii_email],
        pair2=(normalize_text(sources[0]["utt"]), picks.iloc[0]["key"]),
        pair3=(normalize_text(sources[1]["utt"]), picks.iloc[1]["key"]),
        pii_pair=(normalize_text(pii_source.replace(pii_email, EMAIL_MASK)), picks.iloc[2]["key"]),
        victim=victim["key"],
    )


def _run(log_dir, root: Path, state_from: Path | None = None, force: bool = False, **overrides):
    if state_from is not None and not (root / "state").exists():
        shutil.copytree(state_from / "state", root / "state")
    settings = Settings(spark_master="local[2]", spark_shuffle_partitions=4, **overrides)
    run = Run(input_path=str(log_dir), output_root=str(root), settings=settings, force_publish=force)
    final = run_all(run)
    return dict(dir=final, work=root / ".work" / run.run_id, manifest=json.loads((final / "manifest.json").read_text()),
                rewrites=pd.read_parquet(final / "rewrites"), training=pd.read_parquet(final / "training"))


@pytest.fixture(scope="module")
def keep_work():
    old = os.environ.get("SELFLEARN_KEEP_WORK")
    os.environ["SELFLEARN_KEEP_WORK"] = "1"  # the tests read key statistics and decisions
    yield
    if old is None:
        os.environ.pop("SELFLEARN_KEEP_WORK", None)
    else:
        os.environ["SELFLEARN_KEEP_WORK"] = old


@pytest.fixture(scope="module")
def first(attack, spark, keep_work):
    """Run A: the attack log, default settings (rate limit on), first run of its ROOT."""
    return _run(attack["base"] / "attack-log", attack["base"] / "root")


@pytest.fixture(scope="module")
def poisoned(attack, first, spark, keep_work):
    """The attack log again: rate limit off; anti-sybil setting with the limit on and off."""
    root = attack["base"]
    return {
        ("on", "defaults"): first,
        ("off", "defaults"): _run(root / "attack-log", root / "p-off", root / "root", max_turns_per_user_day=RATE_OFF),
        ("on", "history"): _run(root / "attack-log", root / "p-hist-on", root / "root", min_user_active_days=2),
        ("off", "history"): _run(root / "attack-log", root / "p-hist-off", root / "root", min_user_active_days=2,
                                 max_turns_per_user_day=RATE_OFF),
    }


def _pairs(run) -> set:
    return set(zip(run["rewrites"]["source"], run["rewrites"]["target"]))


def _pattern_pairs(run) -> set:
    path = run["dir"] / "rewrite_patterns"
    if not path.exists():
        return set()
    p = pd.read_parquet(path)
    return set(zip(p["source"], p["target"]))


def _decided(run) -> pd.DataFrame:
    return pd.read_parquet(run["work"] / "decided.parquet")


# --- privacy --------------------------------------------------------------------------

def test_no_pii_and_no_user_or_device_id_in_any_published_file(attack, first):
    text = published_text(first["dir"])
    assert EMAIL_MASK in text  # PII reached the pipeline and was masked
    for pii in attack["raw_pii"]:
        digits = "".join(ch for ch in pii if ch.isdigit())
        for form in {pii.lower(), normalize_text(pii), digits if len(digits) >= 7 else pii.lower()}:
            assert form not in text, form
    log = attack["log"]
    leaked = [i for i in id_forms(set(log["user_id"]) | set(log["device_id"].dropna())) if i in text]
    assert leaked == []


def test_a_rewrite_keyed_on_a_masked_source_carries_no_address(attack, first):
    """Four users with one e-mail address in their failing request: the rewrite is
    learned on the masked key; the address itself is nowhere."""
    assert attack["pii_pair"] in _pairs(first)


# --- poisoning ------------------------------------------------------------------------

@pytest.mark.parametrize("limit", ["on", "off"])
def test_fewer_than_min_users_colluders_are_never_emitted(attack, poisoned, limit):
    for defence in ("defaults", "history"):
        run = poisoned[(limit, defence)]
        stats = pd.read_parquet(run["work"] / "key_stats").set_index("text")
        assert stats.loc[attack["pair2"][0], "n_users"] == 2  # the colluders' turns were mined
        assert attack["pair2"] not in _pairs(run)
        # the pair reached the rules and the privacy floor is what refused it (not, say, a
        # mining miss that would make this test pass whatever the floor did)
        d = _decided(run).set_index(["source", "target"])
        assert attack["pair2"] in d.index
        assert d.loc[attack["pair2"], "decision"] == "too_few_users"


@pytest.mark.parametrize("limit", ["on", "off"])
def test_min_users_colluders_pass_the_defaults_and_the_history_setting_stops_them(attack, poisoned, limit):
    """k = min_users fresh accounts on a source only they say: every default rule is
    satisfied (documented weakness); min_user_active_days=2 stops them (too_few_users)."""
    assert attack["pair3"] in _pairs(poisoned[(limit, "defaults")])
    hist = poisoned[(limit, "history")]
    assert attack["pair3"] not in _pairs(hist)
    d = _decided(hist).set_index(["source", "target"])
    assert d.loc[attack["pair3"], "decision"] == "too_few_users"
    # the organic traffic keeps most of its rewrites: its users come back on other days
    organic = {p for p in _pairs(poisoned[(limit, "defaults")]) if p not in (attack["pair3"], attack["pii_pair"])}
    assert len(organic & _pairs(hist)) >= 0.5 * len(organic)


@pytest.mark.parametrize("limit", ["on", "off"])
def test_an_all_failure_user_moves_a_keys_defect_rate_by_one_vote_at_most(attack, poisoned, limit):
    run = poisoned[(limit, "defaults")]
    log = attack["log"]
    stats = pd.read_parquet(run["work"] / "key_stats")
    victim = stats[stats["text"] == attack["victim"]].iloc[0]
    turns = pd.read_parquet(run["dir"] / "turns")
    t = turns[turns["text"] == attack["victim"]].merge(log[["event_id", "user_id"]], on="event_id")
    by_user = t.groupby("user_id")["defect_prob"].mean()
    attacker_turns = int((t["user_id"] == "inflater").sum())
    assert attacker_turns == (2000 if limit == "on" else INFLATE_TURNS)  # the rate limit at work
    # one vote per user: the published defect rate is the mean of per-user means ...
    assert victim["defect_rate"] == pytest.approx(by_user.mean(), abs=1e-9)
    assert victim["defect_rate"] <= by_user.drop("inflater").mean() + 1.0 / len(by_user) + 1e-9
    # ... where a turn-weighted mean would have made the served key look broken
    assert t["defect_prob"].mean() >= Settings().min_source_defect_rate
    assert victim["defect_rate"] < Settings().min_source_defect_rate
    assert attack["victim"] not in set(run["rewrites"]["source"])


# --- publish gate, controls, report ---------------------------------------------------

@pytest.fixture(scope="module")
def gated(attack, first, spark, keep_work):
    """Runs B, C, D in run A's ROOT, each tripping one gate check."""
    base, root = attack["base"], attack["base"] / "root"
    log = attack["log"]
    # B: 15% extra rows with a bad locale -> quarantine rate
    bad = log.sample(n=int(0.15 * len(log)), random_state=1).copy()
    bad["event_id"] = "bad-" + bad["event_id"]
    bad["locale"] = "not a locale"
    write_log(pd.concat([log, bad], ignore_index=True), base / "log-bad")
    b = _run(base / "log-bad", root)
    # C: one day of traffic -> volume (churn allowed, so only volume can trip)
    day = log[log["ts"].dt.normalize() == attack["first_day"]]
    write_log(day, base / "log-day")
    c = _run(base / "log-day", root, gate_max_rewrite_churn=1.0)
    # D: the same log as A with half of A's rewrites blocked, one domain denied, one pin on
    # a candidate A rejected as not significant; churn limit 0.3; forced through
    a_rw = first["rewrites"].sort_values(["source", "target"]).reset_index(drop=True)
    a_dec = _decided(first)
    emitted = a_dec[a_dec["decision"] == "emit"]
    deny_domain = emitted["target_domain"].dropna().value_counts().index[-1]
    denied_pairs = set(zip(emitted.loc[emitted["target_domain"] == deny_domain, "source"],
                           emitted.loc[emitted["target_domain"] == deny_domain, "target"]))
    blocked = [p for p in zip(a_rw["source"], a_rw["target"]) if p not in denied_pairs][::2]
    pin = a_dec[(a_dec["decision"] == "not_significant") & (a_dec["n_users"] >= 3)
                & (a_dec["target_domain"] != deny_domain)].iloc[0]
    controls = base / "controls.yaml"
    import yaml

    controls.write_text(yaml.safe_dump({
        "block": [{"locale": "en-US", "source": s, "target": t} for s, t in blocked],
        "pin": [{"locale": "en-US", "source": pin["source"], "target": pin["target"]}],
    }))
    d = _run(base / "attack-log", root, force=True, controls_file=str(controls), deny_domains=(deny_domain,),
             gate_max_rewrite_churn=0.3, gate_churn_min_rewrites=10)
    return dict(b=b, c=c, d=d, blocked=set(blocked), denied=denied_pairs, deny_domain=deny_domain,
                pin=(pin["source"], pin["target"]), root=root)


def test_first_run_passes_the_gate_and_moves_latest(first, attack):
    gate = first["manifest"]["gate"]
    assert gate["passed"] and gate["previous_run"] is None and set(gate["checks"]) == {"quarantine_rate"}
    assert "xxemailxx" in published_text(first["dir"])
    tables = report_tables(first["dir"])
    assert tables.text_by_id["gate-verdict"] == "passed"


def test_quarantine_rate_gate_holds_latest(gated, first):
    b = gated["b"]["manifest"]
    assert b["gate"]["failed"] == ["quarantine_rate"] and not b["gate"]["latest_moved"]
    assert b["gate"]["checks"]["quarantine_rate"]["value"] > Settings().gate_max_quarantine_rate
    assert (gated["b"]["dir"] / "_SUCCESS").is_file()  # written completely all the same
    assert b["gate"]["previous_run"] == first["manifest"]["run_id"]
    assert "not moved" in report_tables(gated["b"]["dir"]).text_by_id["gate-verdict"]


def test_volume_gate_compares_with_latest_not_with_a_held_run(gated, first):
    c = gated["c"]["manifest"]
    assert c["gate"]["failed"] == ["volume_ratio"]
    assert c["gate"]["previous_run"] == first["manifest"]["run_id"]  # B was held back
    v = c["gate"]["checks"]["volume_ratio"]
    assert v["value"] == pytest.approx(first["manifest"]["rows_in"] / c["rows_in"], rel=1e-6) and v["value"] > 5


def test_churn_gate_blocks_denies_pins_and_force(gated, first):
    d = gated["d"]
    gate = d["manifest"]["gate"]
    assert gate["failed"] == ["rewrite_churn"] and gate["forced"] and gate["latest_moved"]
    assert latest_run(gated["root"]) == d["dir"]  # --force-publish moved LATEST
    pairs = _pairs(d)
    assert not (pairs & gated["blocked"]) and not (pairs & gated["denied"])
    assert gated["pin"] in pairs  # a pin overrides the significance rule
    rules = d["manifest"]["counts"]["rewrites"]["rejected_by_rule"]
    # every blocked pair is refused: as blocked, or as denied where the denied domain is its
    # source cluster's interpretation (controls.denied; the deny rule comes first); no other
    # pair is refused as blocked
    d_dec = _decided(d).set_index(["source", "target"])["decision"]
    assert all(d_dec.get(p) in ("blocked", "denied") for p in gated["blocked"])
    assert rules["blocked"] == sum(d_dec.get(p) == "blocked" for p in gated["blocked"]) >= len(gated["blocked"]) - 2
    assert rules["denied"] >= len(gated["denied"])
    assert d["manifest"]["counts"]["rewrites"]["pins_unmatched"] == 0
    assert gated["deny_domain"] not in set(d["training"]["domain"])
    # churn by hand: A's rewrites and pattern rewrites vs D's (the gate counts both kinds),
    # the pin left out of both
    a = (_pairs(first) | _pattern_pairs(first)) - {gated["pin"]}
    now = (pairs | _pattern_pairs(d)) - {gated["pin"]}
    churn = gate["checks"]["rewrite_churn"]
    assert (churn["added"], churn["removed"]) == (len(now - a), len(a - now))
    assert churn["value"] == pytest.approx(len(a ^ now) / len(a | now), abs=1e-6)


def test_report_shows_what_changed_against_the_previous_run(gated, first):
    d = gated["d"]
    t = report_tables(d["dir"])
    # a source kept with another target is one "retargeted" row, not a removal and an addition
    head, *moved = t.tables["diff-retargeted"] if "diff-retargeted" in t.tables else [["source", "target_prev", "target"]]
    moved = [dict(zip(head, r)) for r in moved]
    removed = {(r[1], r[2]) for r in t.tables["diff-removed"][1:]} | {(m["source"], m["target_prev"]) for m in moved}
    # what D's rules refused of A's rewrites: the blocks, and the denied domain whether it is
    # the target's or the source's cluster interpretation (controls.denied)
    d_dec = _decided(d).set_index(["source", "target"])["decision"]
    refused = {p for p in _pairs(first) if d_dec.get(p) in ("blocked", "denied")}
    assert gated["blocked"] | (gated["denied"] & _pairs(first)) <= refused
    assert removed == refused
    added = {(r[1], r[2]) for r in t.tables["diff-added"][1:]} | {(m["source"], m["target"]) for m in moved}
    assert added == {gated["pin"]}
    counts = {r[0]: r[1:] for r in t.tables["diff-counts"][1:]}
    n_a, n_d = len(first["rewrites"]), len(d["rewrites"])
    assert counts["rewrites"] == [str(n_a), str(n_d), str(n_d - n_a)]
    # B's report: same accepted rows as A, so no rewrite changed
    tb = report_tables(gated["b"]["dir"])
    assert "none" in tb.text_by_id["diff-added"] and "none" in tb.text_by_id["diff-removed"]


def test_cli_exits_3_with_one_line_when_the_gate_holds(attack, first, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(attack["base"] / "root" / "state", root / "state")
    cfg = tmp_path / "s.yaml"
    cfg.write_text("spark_master: 'local[2]'\nspark_shuffle_partitions: 4\ngate_max_quarantine_rate: 0.0\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    env.pop("SELFLEARN_KEEP_WORK", None)
    r = subprocess.run([sys.executable, "-m", "selflearn.cli", "run", "--input", str(attack["base"] / "attack-log"),
                        "--output", str(root), "--config", str(cfg)], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 3, r.stderr[-2000:]
    held = [line for line in r.stderr.splitlines() if "publish gate held" in line]
    assert len(held) == 1 and held[0].startswith("selflearn run: publish gate held LATEST at none: quarantine rate")
    run_dir, report = (Path(line) for line in r.stdout.strip().splitlines()[-2:])
    assert report == run_dir / "report.html" and report.is_file()
    assert (run_dir / "_SUCCESS").is_file() and not (root / "LATEST").exists()


def _users_by_key(log: pd.DataFrame) -> pd.Series:
    """Distinct users behind each text key, recounted from the raw log (the key made as the
    pipeline documents it: PII scrubbed, then normalize_text), not from the run's counts."""
    keys = log["utterance"].map(lambda u: normalize_text(scrub_text(u)) if isinstance(u, str) else None)
    return log.assign(key=keys).dropna(subset=["key"]).groupby("key")["user_id"].agg(lambda s: set(s))


def test_every_rewrite_and_training_row_rests_on_min_users(attack, first):
    """Every rewrite's source was said by >= min_users distinct users of the log; every
    training row's text is a rewrite's source or a member of a paraphrase cluster whose
    members were said by >= min_users distinct users together (distinct users, recounted
    from the log). Quarantine stays out of runs/."""
    m = Settings().min_users
    rw, tr = first["rewrites"], first["training"]
    users = _users_by_key(attack["log"])
    clusters = pd.read_parquet(first["work"] / "clusters")  # every clustered key, published or not
    mates = clusters.merge(clusters, on=["locale", "cluster_id"], suffixes=("", "_mate"))
    mates_of = mates.groupby(["locale", "text"])["text_mate"].agg(set)
    assert len(rw)
    for r in rw.itertuples():
        # a rephrase rewrite rests on its source's own users; paraphrase evidence also on the
        # source's cluster mates' users (the chain inherits their continuations)
        keys = {r.source} | (mates_of.get((r.locale, r.source), set()) if r.evidence != "rephrase" else set())
        assert len(set().union(*(users.get(k, set()) for k in keys))) >= m, (r.source, r.evidence)
    clusters = pd.read_parquet(first["dir"] / "paraphrase_clusters")
    cluster_users = clusters.groupby(["locale", "cluster_id"])["text"].agg(
        lambda texts: len(set().union(*(users.get(t, set()) for t in texts))))
    backed_clusters = set(cluster_users[cluster_users >= m].index)
    backed = set(rw["source"]) | set(clusters.loc[[k in backed_clusters for k in zip(clusters["locale"], clusters["cluster_id"])], "text"])
    assert len(tr) and set(tr.loc[tr["label_source"] != "pattern", "text"]) <= backed
    assert not any(p.name == "quarantine" for p in first["dir"].rglob("*"))


def test_published_keys_rest_on_min_users_distinct_users(attack, first):
    """Issue 19 item 3: rewrite_graph nodes, edges and GraphML, paraphrase_clusters/,
    training/ and the sources and targets of rewrites/ hold only texts said by min_users distinct users (counted here from the
    input's user ids, independently of the pipeline's own counts); turns/ and
    rephrase_pairs/ are operator data, and the manifest and report say so."""
    import xml.etree.ElementTree as ET

    m = Settings().min_users
    turns = pd.read_parquet(first["dir"] / "turns")
    said = turns.merge(attack["log"][["event_id", "user_id"]], on="event_id").groupby(["locale", "text"])["user_id"].nunique()

    def users(locale, text):
        return int(said.get((locale, text), 0))

    nodes = pd.read_parquet(first["dir"] / "rewrite_graph" / "nodes")
    edges = pd.read_parquet(first["dir"] / "rewrite_graph" / "edges")
    clusters = pd.read_parquet(first["dir"] / "paraphrase_clusters")
    training = first["training"]
    assert len(nodes) and len(edges) and len(clusters) and len(training)
    few = [("node", r.text) for r in nodes.itertuples() if users(r.locale, r.text) < m]
    few += [("edge", r.source, r.target) for r in edges.itertuples()
            if min(users(r.locale, r.source), users(r.locale, r.target)) < m or r.n_users < m]
    few += [("cluster", r.text) for r in clusters.itertuples() if users(r.locale, r.text) < m]
    # pattern rows are template fills nobody said as such: their floor is the pattern's
    # users and slot values served to min_users users (tests/test_patterns.py)
    few += [("training", r.text) for r in training.itertuples()
            if r.label_source != "pattern" and users(r.locale, r.text) < m]
    # a rewrite's own texts too (contract section 4), not only the users behind the pair
    few += [("rewrite", r.source, r.target) for r in first["rewrites"].itertuples()
            if min(users(r.locale, r.source), users(r.locale, r.target)) < m]
    assert few == [], few[:10]
    # the two-account pair's source (2 users) is in no published table but turns/ and rephrase_pairs/
    src2 = attack["pair2"][0]
    assert src2 in set(turns["text"]) and src2 not in set(nodes["text"]) | set(clusters["text"]) | set(training["text"])
    node_ids = {n.get("id") for f in (first["dir"] / "rewrite_graph" / "graphml").glob("*.graphml")
                for n in ET.parse(f).getroot().iter("{http://graphml.graphdrawing.org/xmlns}node")}
    assert node_ids <= set(nodes["text"])
    privacy = first["manifest"]["privacy"]
    assert privacy["operator_data"] == ["turns", "rephrase_pairs"] and privacy["below_floor"] is False
    assert "id='operator-data'" in (first["dir"] / "report.html").read_text(encoding="utf-8")
