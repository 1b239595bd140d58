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
