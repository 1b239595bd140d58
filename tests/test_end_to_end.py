"""End to end with the real stack: local Spark, the bundled embedding model and FAISS,
on a small log built from real MASSIVE utterances in three locales (three scripts), run
once for the fast tier (`published_run` in conftest.py; the log: tests/small_logs.py).

In each locale four users say A (not understood), re-ask with B (not understood) and
then C (served); other users say C and are served. The run must publish every output of
the contract and learn A -> C and B -> C with the confidence the rewrite graph defines:
conf(A) = P(A->B) * P(B->C) * P(C->success(C)), conf(B) = P(B->C) * P(C->success(C)),
each P pooled over users from the published pair scores and defect probabilities.
The Prefect flow's own run of the stages is tested in tests/test_prefect_server.py."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from selflearn.schema import PUBLISHED_TABLES, arrow_schema


@pytest.fixture(scope="module")
def mined(published_run):
    return published_run["root"], published_run["final"], published_run["expected"], published_run["rows"]


PUBLISHED = {"turns": "turns", "rephrase_pairs": "rephrase_pairs", "rewrites": "rewrites", "rewrite_patterns": "rewrite_patterns",
             "training": "training", "paraphrase_clusters": "paraphrase_clusters"}


def test_every_published_output_is_there_atomically(mined):
    root, final, _, rows = mined
    assert (root / "LATEST").read_text().strip() == final.name
    assert (final / "_SUCCESS").is_file() and (final / "report.html").is_file()
    assert not any((root / ".staging").iterdir()) if (root / ".staging").exists() else True
    for name, schema in PUBLISHED.items():
        t = pq.read_table(final / name)
        for field in arrow_schema(schema):
            assert field.name in t.schema.names, (name, field.name)
    for part in ("nodes", "edges"):
        assert pq.read_table(final / "rewrite_graph" / part).num_rows > 0
    assert list((final / "rewrite_graph" / "graphml").glob("*.graphml"))
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["rows_in"] == len(rows) == manifest["rows_accepted"] + manifest["rows_quarantined"]
    assert set(manifest["checksums"]) == set(PUBLISHED) | {"rewrite_graph/nodes", "rewrite_graph/edges"}
    # the manifest records the encoder that ran (this machine has no GPU: torch on the CPU)
    ran = manifest["embedding"]["ran"]
    encoders = ran["routes"] or {ran["backend"]: ran}  # auto routes locales to encoders
    assert ran["backend"] == manifest["embedding"]["backend"]
    if ran["routes"]:
        assert ran["backend"] == "auto" and sorted(sum((r["locales"] for r in encoders.values()), [])) == sorted(
            pd.read_parquet(final / "turns")["locale"].unique())
    for enc in encoders.values():
        assert enc["device"] == "cpu" and (mined[0] / "state" / "embeddings" / enc["cache_id"]).is_dir()
    html = (final / "report.html").read_text()
    assert "<svg" in html and "Top rewrites" in html
    # every parquet table the run published is one of schemas/' published tables (so it is
    # checksummed and schema-checked), and every published table of schemas/ was written
    written = {"/".join(part for part in p.parent.relative_to(final).parts if "=" not in part)
               for p in final.rglob("*.parquet")}  # hive partition folders (key=value) belong to their table
    assert written == set(PUBLISHED_TABLES), written ^ set(PUBLISHED_TABLES)


def test_no_user_or_device_id_is_published(mined):
    """Every published value, decoded (parquet row by row; JSON, HTML and GraphML as text):
    compressed parquet pages would hide an id from a search of the raw bytes."""
    _, final, _, rows = mined
    ids = {r["user_id"] for r in rows} | {r["device_id"] for r in rows}
    texts = []
    for p in final.rglob("*"):
        if p.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(p).to_pylist(), default=str, ensure_ascii=False))
        elif p.is_file():
            texts.append(p.read_text(encoding="utf-8", errors="replace"))
    blob = "\n".join(texts)
    assert "\"intent\"" in blob and len(blob) > 1000  # the decoded outputs are really there
    leaked = [i for i in ids if i in blob]
    assert leaked == []


def test_a_b_c_yields_both_rewrites_with_the_documented_confidence(mined):
    _, final, expected, _ = mined
    rewrites = pd.read_parquet(final / "rewrites")
    pairs = pd.read_parquet(final / "rephrase_pairs")
    turns = pd.read_parquet(final / "turns")
    for locale, e in expected.items():
        got = rewrites[rewrites.locale == locale].set_index("source")
        assert got.loc[e["A"], "target"] == e["C"], got
        assert got.loc[e["B"], "target"] == e["C"], got
        assert got.loc[e["A"], "n_users"] == 4 and got.loc[e["B"], "n_users"] == 4
        p = pairs[pairs.locale == locale]
        p_ab = p[(p["first"] == e["A"]) & (p["second"] == e["B"])]["score"].mean()
        p_bc = p[(p["first"] == e["B"]) & (p["second"] == e["C"])]["score"].mean()
        # C ends every session it is in: all of its mass is absorbed, served with 1 - defect_prob,
        # pooled over users (each user's turns averaged, one vote per user).
        t = turns[(turns.locale == locale) & (turns.text == e["C"])]
        r_c = 1 - t["defect_prob"].mean()  # every user of C says it once
        # The scores the formula reads must themselves say what happened: the re-asks are
        # rephrases, A and B failed, C was served (else a broken scorer would pass unseen).
        ab_bc = p[((p["first"] == e["A"]) & (p["second"] == e["B"])) | ((p["first"] == e["B"]) & (p["second"] == e["C"]))]
        assert len(ab_bc) == 8 and ab_bc["is_rephrase"].all()
        failed = turns[(turns.locale == locale) & turns.text.isin([e["A"], e["B"]])]["defect_prob"]
        assert failed.min() > 0.5 and t["defect_prob"].max() < 0.5
        assert got.loc[e["B"], "confidence"] == pytest.approx(p_bc * r_c, abs=1e-6)
        assert got.loc[e["A"], "confidence"] == pytest.approx(p_ab * p_bc * r_c, abs=1e-6)
        assert set(got.loc[[e["A"], e["B"]], "evidence"]) <= {"rephrase", "both"}


def test_sources_are_labeled_with_the_targets_interpretation(mined):
    _, final, expected, _ = mined
    training = pd.read_parquet(final / "training")
    for locale, e in expected.items():
        rows = training[(training.locale == locale) & (training.label_source == "rewrite")].set_index("text")
        for key in (e["A"], e["B"]):
            if f" {e['value']} " not in f" {key} " and e["value"] not in key:
                assert key not in rows.index  # the slot value does not project: no NLU row
                continue
            assert rows.loc[key, "intent"] == e["intent"]
            assert [(s["name"], s["value"]) for s in rows.loc[key, "slots"]] == [(e["slot"], e["value"])]
    assert set(training["split"]) <= {"train", "dev"}
