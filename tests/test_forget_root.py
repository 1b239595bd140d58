"""Issue 19 item 5: forget and the quarantine. A forgotten user's rejected rows never reach
a later run's quarantine (counted as forgotten), forget removes the user's rows from earlier
quarantines, refuses a path that is no ROOT, and says when the user was not found."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.cli import main
from selflearn.run.forget import FORGET_NOT_FOUND_EXIT
from selflearn.run.state import State


def _log(massive, path):
    utts = [r["utt"] for r in massive("en-US", 4)]
    ok = lambda i, user, utt: json.dumps({"event_id": f"e{i}", "user_id": user, "ts": f"2026-11-02T08:0{i}:00Z",  # noqa: E731
                                          "locale": "en-US", "utterance": utt, "response_status": "success"})
    lines = [ok(0, "X", utts[0]), ok(1, "Y", utts[1]),
             json.dumps({"event_id": "e2", "user_id": "X", "ts": "not a time", "locale": "en-US",
                         "utterance": utts[2], "response_status": "success"}),              # bad_timestamp of X
             '{"event_id": "e3", "user_id": "X", "utterance": "' + utts[3] + '", broken',  # unparseable line of X
             json.dumps({"event_id": "e4", "user_id": "Y", "ts": "2026-11-02T08:09:00Z", "locale": "en-US",
                         "utterance": utts[3], "response_status": "exploded"})]             # unknown_status of Y
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_forgotten_users_rejected_rows_stay_out_of_the_quarantine(tmp_path, massive, spark, settings):
    from selflearn.run.runner import Run

    root = tmp_path / "root"
    state = State(root / "state")
    state.add_forgotten(state.hash_value("X"))
    run = Run(input_path=str(_log(massive, tmp_path / "log.jsonl")), output_root=str(root), settings=settings)
    run.start()
    try:
        run.stage("ingest")
    finally:
        run.finish()
    q = pq.read_table(run.dirs.quarantine_staging).to_pydict()
    assert q["reason"] == ["unknown_status"] and all('"X"' not in r for r in q["raw"])
    c = run.counts["ingest"]
    assert (c["rows_in"], c["rows_accepted"], c["rows_quarantined"], c["rows_forgotten"]) == (5, 1, 1, 3)


def test_forget_refuses_a_path_that_is_no_root_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "root"
    assert main(["forget", "--user", "X", "--output", str(missing)]) == 2
    assert not missing.exists() and not (tmp_path / "no").exists()
    (tmp_path / "afile").write_text("x")
    assert main(["forget", "--user", "X", "--output", str(tmp_path / "afile")]) == 2
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    assert main(["forget", "--user", "X", "--output", str(tmp_path / "home"), "--init"]) == 2  # not empty, not a ROOT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("not a selflearn output ROOT" in e or "is a file" in e for e in err)


def test_forget_says_when_the_user_is_not_found_and_cleans_old_quarantines(tmp_path, capsys):
    root = tmp_path / "root"
    state = State(root / "state")
    state.salt  # a ROOT after its first run has a salt
    qdir = root / "quarantine" / "20261102T000000Z-abcdef"
    qdir.mkdir(parents=True)
    raws = [json.dumps({"event_id": "e1", "user_id": "X", "ts": "bad"}), '{"user_id": "X", broken', json.dumps({"user_id": "Y"})]
    pq.write_table(pa.table({"raw": raws, "reason": ["bad_timestamp", "unparseable", "missing_field"],
                             "source": ["a", "b", "c"]}), qdir / "part-00000.parquet")
    assert main(["forget", "--user", "nobody", "--output", str(root)]) == FORGET_NOT_FOUND_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "user not found" in err[0]
    assert main(["forget", "--user", "X", "--output", str(root)]) == 0
    assert "2 quarantined rows" in capsys.readouterr().out
    assert pq.read_table(qdir).to_pydict()["raw"] == [raws[2]]


def _published_run(root, run_id, days, event_ids):
    run = root / "runs" / run_id
    for table, cols in (("turns", {"event_id": event_ids, "locale": ["en-US"] * len(event_ids)}),
                        ("rephrase_pairs", {"first_event_id": event_ids, "second_event_id": event_ids[::-1]})):
        (run / table).mkdir(parents=True)
        pq.write_table(pa.table(cols), run / table / "part-00000.parquet")
    (run / "_SUCCESS").write_text("")
    (run / "manifest.json").write_text(json.dumps({"evidence": {"days_merged": days}, "checksums": {}}))
    return run


def test_forget_finds_the_users_turns_in_a_held_run_and_names_runs_it_cannot_link(tmp_path, capsys):
    """A run the publish gate held published turns of a day it never committed: forget
    finds the user's turns there through the uncommitted evidence version (an adversarial
    probe found them left behind). A run of a day that left the evidence window holds
    turns nothing links to a user any more: forget says so, and --purge-unlinked removes
    its operator tables."""
    root = tmp_path / "root"
    state = State(root / "state")
    day = root / "state" / "evidence" / "20261103T000000Z-held00" / "day=2026-11-03"
    day.mkdir(parents=True)
    pq.write_table(pa.table({"eid": [state.hash_value(e) for e in ("e1", "e2", "e3")],
                             "user_id": [state.hash_value(u) for u in ("X", "Y", "X")]}), day / "part-00000.parquet")
    held = _published_run(root, "20261103T000000Z-held00", ["2026-11-03"], ["e1", "e2", "e3"])
    old = _published_run(root, "20261001T000000Z-old000", ["2026-10-01"], ["e7", "e8"])
    assert main(["forget", "--user", "X", "--output", str(root)]) == 0
    out = capsys.readouterr().out
    assert "4 rows of operator tables in 1 published runs removed" in out and "1 published runs (the oldest 20261001T000000Z-old000)" in out
    assert pq.read_table(held / "turns").to_pydict()["event_id"] == ["e2"]
    assert pq.read_table(held / "rephrase_pairs").to_pydict()["first_event_id"] == ["e2"]
    assert json.loads((held / "manifest.json").read_text())["forget_amendments"][0]["rows_removed"] == {"turns": 2, "rephrase_pairs": 2}
    assert (old / "turns").is_dir()  # only said, not done, without --purge-unlinked
    # (forget committed the state: the held run's uncommitted evidence is gone with it, so
    # nothing links that run's turns any more either)
    assert main(["forget", "--user", "Z", "--output", str(root), "--purge-unlinked"]) == FORGET_NOT_FOUND_EXIT
    assert "removed from 2 runs that covered days past the evidence window" in capsys.readouterr().err
    assert not (old / "turns").exists() and not (old / "rephrase_pairs").exists() and (old / "_SUCCESS").exists()
    assert json.loads((old / "manifest.json").read_text())["forget_amendments"][0]["operator_tables_removed"] == ["turns", "rephrase_pairs"]
