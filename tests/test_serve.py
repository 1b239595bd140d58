"""selflearn.serving.rewriter and `selflearn serve` (contract section 5): a real uvicorn server on
loopback over run folders with both kinds of rewrites (tests/serve_runs.py), answers
checked against contract 4.1 as rewrite_apply computes it, LATEST moved under load, bad
runs refused, bad requests 4xx."""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse

import pandas as pd
import pytest

from selflearn.core.keys import text_key
from selflearn.serving.rewriter import BadRequest, NotLoaded, Rewriter
from serve_runs import REQUESTS, RUN_A, RUN_B, expected_answer, move_latest_to, write_run


@pytest.fixture()
def root(tmp_path):
    write_run(tmp_path, "run-a", RUN_A)
    return tmp_path


@pytest.fixture()
def server(root):
    from selflearn.serving.server import serve_in_thread

    srv, thread, url = serve_in_thread(root, poll_s=0.05)
    yield srv, url
    srv.should_exit = True
    thread.join(timeout=10)


def _get(conn: http.client.HTTPConnection, path: str, params=None, raw_query: str | None = None):
    q = raw_query if raw_query is not None else urllib.parse.urlencode(params or {})
    conn.request("GET", f"{path}?{q}" if q else path)
    r = conn.getresponse()
    body = r.read()
    return r.status, body


def _conn(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=10)


# --- the library -------------------------------------------------------------------


def test_answers_follow_contract_4_1_exact_first_then_most_specific_pattern(root):
    rw = Rewriter.from_root(root)
    kinds = set()
    for locale, text in REQUESTS:
        got = rw.rewrite(locale, text)
        assert got == expected_answer(RUN_A, "run-a", locale, text), (locale, text)
        kinds.add(got["kind"])
    assert kinds == {"exact", "pattern", None}
    # spot checks, written out: exact beats the more confident pattern; the longer pattern wins
    assert rw.rewrite("en-US", "Wake me up at nine am on Friday!")["rewrite"] == "set an alarm for nine am"
    assert rw.rewrite("en-US", "wake me up at five am on monday")["rewrite"] == "set an alarm for five am monday"
    assert rw.rewrite("ja-JP", "金曜日の午前九時に起こしてください")["rewrite"] == "金曜日の午前九時にアラームをセットする"
    # BCP-47 tags are case-insensitive, and ingest keys them in canonical case
    for tag in ("en-us", "EN-US", "En-Us"):
        got = rw.rewrite(tag, "Wake me up at nine am on Friday!")
        assert got["rewrite"] == "set an alarm for nine am" and got["locale"] == "en-US", tag


def test_requests_are_keyed_with_the_pipelines_pii_masking(root, settings):
    from selflearn.core.sessions import enrich_turns

    said = "add new email to anna jane.doe@example.org"
    got = Rewriter.from_root(root).rewrite("en-US", said)
    assert got["key"] == "add new email to anna xxemailxx" and got["kind"] == "exact"
    # the very key the pipeline gives the same utterance in a log
    turns = pd.DataFrame([dict(event_id="e1", user_id="u1", device_id="d1", session_id=None, ts=pd.Timestamp("2026-11-01", tz="UTC"),
                               order=0, locale="en-US", utterance=said, response_status="unhandled", nlu_intent=None,
                               nlu_domain=None, nlu_slots=None, rewritten_from=None, asr_confidence=0.9, barge_in=False,
                               feedback=None, dwell_ms=900, nlu_confidence=0.1, system_act=None)])
    assert enrich_turns(turns, settings)["text"].tolist() == [got["key"]]


def test_the_served_runs_pii_settings_make_the_key(tmp_path):
    write_run(tmp_path, "run-raw", RUN_A, config={"scrub_pii": False})
    got = Rewriter.from_root(tmp_path).rewrite("en-US", "add new email to anna jane.doe@example.org")
    assert got["key"] == text_key("add new email to anna jane.doe@example.org", scrub_pii=False) == \
        "add new email to anna jane doe example org"
    assert got["rewrite"] is None


def test_a_run_keyed_by_other_keying_code_is_served_with_a_warning(tmp_path, caplog):
    """The manifest records the keying code's fingerprint (privacy.key_fingerprint): a run
    made by a scrubber that masked less keys some texts otherwise than this service does
    (an adversarial probe found a run's own exact rewrite unreachable that way), so the
    service says so when it loads such a run; a run of this code loads without a word."""
    import logging

    from selflearn.core.keys import key_fingerprint
    from selflearn.core.privacy import privacy_block
    from selflearn.config import Settings

    assert privacy_block(Settings())["key_fingerprint"] == key_fingerprint() and len(key_fingerprint()) == 16
    with caplog.at_level(logging.WARNING, logger="selflearn.serving.rewriter"):
        write_run(tmp_path / "same", "run-same", RUN_A)
        assert Rewriter.from_root(tmp_path / "same").rewrite("en-US", "start my jazz playlist")["kind"] == "exact"
        assert not [r for r in caplog.records if "keyed its log with" in r.getMessage()]
        write_run(tmp_path / "other", "run-other", RUN_A, key_fingerprint="0123456789abcdef")
        assert Rewriter.from_root(tmp_path / "other").rewrite("en-US", "start my jazz playlist")["kind"] == "exact"
    said = [r.getMessage() for r in caplog.records if "keyed its log with" in r.getMessage()]
    assert len(said) == 1 and "run-other keyed its log with code 0123456789abcdef" in said[0]


def test_a_run_without_rewrite_patterns_serves_exact_rewrites_only(tmp_path):
    write_run(tmp_path, "run-old", RUN_A, patterns=False)
    rw = Rewriter.from_root(tmp_path)
    assert rw.rewrite("en-US", "start my jazz playlist")["kind"] == "exact"
    assert rw.rewrite("en-US", "start my rock playlist")["rewrite"] is None


def test_bad_runs_are_refused_and_the_old_one_keeps_serving(root, caplog):
    rw = Rewriter.from_root(root)
    assert rw.current.run_id == "run-a"
    write_run(root, "run-incomplete", RUN_B, success=False)  # LATEST moved to a run without _SUCCESS
    with caplog.at_level("WARNING", logger="selflearn.serving.rewriter"):
        assert rw.refresh() is False
    assert rw.current.run_id == "run-a" and "refused run run-incomplete" in caplog.text and "_SUCCESS" in caplog.text
    bad = write_run(root, "run-corrupt", RUN_B)
    (bad / "rewrite_patterns" / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    caplog.clear()
    with caplog.at_level("WARNING", logger="selflearn.serving.rewriter"):
        assert rw.refresh() is False
    assert "rewrite_patterns/ is not readable parquet" in caplog.text
    assert rw.rewrite("en-US", "start my jazz playlist") == expected_answer(RUN_A, "run-a", "en-US", "start my jazz playlist")
    assert rw.n_refused == 2
    write_run(root, "run-b", RUN_B)
    assert rw.refresh() is True and rw.current.run_id == "run-b"


def test_a_latest_that_is_not_text_is_refused_once_and_the_old_run_keeps_serving(root, caplog):
    """LATEST not UTF-8, or a directory: one log line with a reason, counted once while
    LATEST stays so (the watcher polls it), never a watcher error; at start-up, the same."""
    import os

    latest = root / "LATEST"
    rw = Rewriter.from_root(root)
    with caplog.at_level("WARNING", logger="selflearn.serving.rewriter"):
        (root / "LATEST.tmp").write_bytes(b"\xff\xfe\n")
        os.replace(root / "LATEST.tmp", latest)
        rw.start_watching(poll_s=0.01)
        try:
            deadline = time.time() + 10
            while rw.n_refused == 0 and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # about 20 more polls of the same LATEST
        finally:
            rw.stop()
        assert rw.refresh() is False
        latest.unlink()
        latest.mkdir()
        assert rw.refresh() is False and rw.refresh() is False
    assert "reloading failed" not in caplog.text
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2 and rw.n_refused == 2, refusals
    assert "not valid UTF-8" in refusals[0] and "is a directory" in refusals[1]
    assert all(m.endswith("still serving run-a") for m in refusals)
    assert rw.rewrite("en-US", "start my jazz playlist") == expected_answer(RUN_A, "run-a", "en-US", "start my jazz playlist")
    # at start-up: refused (logged and counted), nothing loaded, no exception
    fresh = Rewriter.from_root(root)
    assert fresh.current is None and fresh.n_refused == 1 and "directory" in next(iter(fresh.refused.values()))
    latest.rmdir()
    move_latest_to(root, "run-a")
    assert fresh.refresh() is True and fresh.current.run_id == "run-a"


def test_a_reload_runs_no_garbage_collection_and_leaves_the_run_out_of_its_scans(root):
    """A load allocates many objects; a collection triggered by them would scan the whole
    heap with the GIL held, stalling live requests. None runs during a refresh, and the
    served run's objects are frozen out of later collections."""
    import gc

    rw = Rewriter.from_root(root)
    started: list[int] = []

    def on_gc(phase, info):
        if phase == "start":
            started.append(info["generation"])

    write_run(root, "run-b", RUN_B)
    threshold = gc.get_threshold()
    gc.set_threshold(200)  # this small run's load allocates enough to trigger collections
    gc.callbacks.append(on_gc)
    try:
        assert rw.refresh()
    finally:
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*threshold)
    assert started == [], started[:5]
    assert gc.isenabled()
    tracked = {id(o) for o in gc.get_objects()}  # the three generations, not the frozen
    assert id(rw.current.index.exact) not in tracked and id(rw.current.index.patterns) not in tracked
    for locale, text in REQUESTS:
        assert rw.rewrite(locale, text) == expected_answer(RUN_B, "run-b", locale, text)
    gc.unfreeze()


def test_a_swapped_out_run_still_held_by_a_caller_keeps_answering(root, monkeypatch):
    """The old run is taken apart after a swap only where nothing else holds it."""
    import selflearn.serving.rewriter as serving

    monkeypatch.setattr(serving, "RELEASE_WAIT_S", 0.05)
    rw = Rewriter.from_root(root)
    held = rw.current
    write_run(root, "run-b", RUN_B)
    assert rw.refresh() and rw.current.run_id == "run-b"
    for locale, text in REQUESTS:
        assert held.answer(locale, text) == expected_answer(RUN_A, "run-a", locale, text)


def test_nothing_loaded_until_latest_names_a_complete_run(tmp_path):
    rw = Rewriter.from_root(tmp_path)
    with pytest.raises(NotLoaded):
        rw.rewrite("en-US", "start my jazz playlist")
    write_run(tmp_path, "run-a", RUN_A)
    assert rw.refresh() and rw.rewrite("en-US", "start my jazz playlist")["run_id"] == "run-a"


def test_bad_requests_raise_with_a_reason(root):
    rw = Rewriter.from_root(root)
    for locale, text, status, reason in [
        (None, "play", 400, "missing query parameter 'locale'"), ("en-US", None, 400, "missing query parameter 'text'"),
        ("english", "play", 400, "BCP-47"), ("en-US", "a" * 100_000, 413, "longer than 1000"),
        ("en-US", "play \udcff", 400, "surrogate"),
        # what ingest quarantines is no request either: no key was learned for it
        ("en-US", "", 400, "empty_utterance"), ("en-US", "  \t", 400, "empty_utterance"),
        ("en-US", "?!", 400, "empty_utterance"), ("en-US", "play\x00music", 400, "control character"),
        ("en-US", "play \x85", 400, "control character"),
    ]:
        with pytest.raises(BadRequest, match=reason) as e:
            rw.rewrite(locale, text)
        assert e.value.status == status


def test_a_text_or_locale_that_is_not_a_string_is_a_bad_request(root):
    rw = Rewriter.from_root(root)
    for locale, text, reason in [("en-US", 123, "text is not a string"), ("en-US", b"play", "text is not a string"),
                                 (["en-US"], "play", "BCP-47")]:
        with pytest.raises(BadRequest, match=reason) as e:
            rw.rewrite(locale, text)
        assert e.value.status == 400


# --- the HTTP service ----------------------------------------------------------------


def test_http_answers_match_the_library_and_healthz_and_metrics(server):
    from prometheus_client.parser import text_string_to_metric_families

    _, url = server
    conn = _conn(url)
    status, body = _get(conn, "/healthz")
    assert status == 200 and json.loads(body)["run_id"] == "run-a"
    for locale, text in REQUESTS:
        status, body = _get(conn, "/rewrite", {"locale": locale, "text": text})
        assert status == 200 and json.loads(body) == expected_answer(RUN_A, "run-a", locale, text), text
    status, body = _get(conn, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}  # the real Prometheus parser
    by_kind = {s.labels["kind"]: s.value for s in families["selflearn_serve_rewrites"].samples}
    assert sum(by_kind.values()) == len(REQUESTS) and by_kind["exact"] >= 3 and by_kind["pattern"] >= 3
    hist = {s.name: s.value for s in families["selflearn_serve_request_duration_seconds"].samples if "le" not in s.labels}
    assert hist["selflearn_serve_request_duration_seconds_count"] == len(REQUESTS)
    assert [s.labels["run_id"] for s in families["selflearn_serve_run_info"].samples] == ["run-a"]
    assert families["selflearn_serve_run_age_seconds"].samples[0].value >= 0


def test_http_bad_input_gets_4xx_with_a_reason_never_500(server):
    _, url = server
    conn = _conn(url)
    cases = [
        ({"text": "play my jazz playlist"}, None, 400, "locale"),
        ({"locale": "en-US"}, None, 400, "text"),
        ({"locale": "", "text": "x"}, None, 400, "locale"),
        ({"locale": "en_US!", "text": "x"}, None, 400, "BCP-47"),
        # over the run's max_utterance_chars (1000), and over h11's default 16 KiB request
        # line, under httptools' 64 KiB URL limit: the app's 413
        ({"locale": "en-US", "text": "a" * 20_000}, None, 413, "longer than"),
        (None, "locale=en-US&text=play%FF%FEmusic", 400, "UTF-8"),
        (None, "locale=en-US&text=%C3", 400, "UTF-8"),
        (None, "locale=en-US&locale=de-DE&text=x", 400, "more than once"),
        ({"locale": "en-US", "text": ""}, None, 400, "empty"),
        (None, "locale=en-US&text=play%00music", 400, "control character"),
    ]
    for params, raw, status, reason in cases:
        got, body = _get(conn, "/rewrite", params, raw)
        assert got == status and reason in json.loads(body)["error"], (params, raw, body[:200])
    # a URL over httptools' 64 KiB limit is refused by the HTTP parser (400) before the app
    got, _ = _get(_conn(url), "/rewrite", {"locale": "en-US", "text": "a" * 100_000})
    assert got in (400, 413)
    # the connection and the server survive all of it
    got, body = _get(conn, "/rewrite", {"locale": "en-US", "text": "start my jazz playlist"})
    assert got == 200 and json.loads(body)["kind"] == "exact"
    from prometheus_client.parser import text_string_to_metric_families

    _, body = _get(conn, "/metrics")
    codes = {s.labels["code"] for f in text_string_to_metric_families(body.decode())
             if f.name == "selflearn_serve_requests" for s in f.samples}
    assert "500" not in codes and {"400", "413", "200"} <= codes


def test_healthz_is_503_until_a_run_is_loaded(tmp_path):
    from selflearn.serving.server import serve_in_thread

    srv, thread, url = serve_in_thread(tmp_path, poll_s=0.05)
    try:
        conn = _conn(url)
        assert _get(conn, "/healthz")[0] == 503
        assert _get(conn, "/rewrite", {"locale": "en-US", "text": "x"})[0] == 503
        write_run(tmp_path, "run-a", RUN_A)
        deadline = time.time() + 10
        while _get(conn, "/healthz")[0] != 200:
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_a_latest_move_under_load_loses_no_request_and_mixes_no_runs(server, root):
    """8 clients on keep-alive connections send a bounded number of requests each while
    LATEST moves run-a -> a corrupt run (refused) -> run-b. Every request gets 200, every
    answer is exactly what its run_id's own rewrites give, and no client sees run-a again
    once it has seen run-b."""
    _, url = server
    expected = {(run, loc, text): expected_answer(spec, run, loc, text)
                for run, spec in (("run-a", RUN_A), ("run-b", RUN_B)) for loc, text in REQUESTS}
    n_clients, per_client = 8, 200
    results: list[list] = [[] for _ in range(n_clients)]
    errors: list = []
    go = threading.Barrier(n_clients + 1)

    def client(i):
        conn = _conn(url)
        go.wait()
        for k in range(per_client):
            loc, text = REQUESTS[(i + k) % len(REQUESTS)]
            try:
                status, body = _get(conn, "/rewrite", {"locale": loc, "text": text})
                results[i].append((status, loc, text, json.loads(body)))
            except Exception as exc:  # noqa: BLE001 - counted, and the test fails on any
                errors.append(repr(exc))
            time.sleep(0.002)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    go.wait()

    def answered():
        return sum(len(rs) for rs in results)

    total = n_clients * per_client
    while answered() < total // 4 and any(t.is_alive() for t in threads):
        time.sleep(0.001)
    bad = write_run(root, "run-corrupt", RUN_B, move_latest=False)
    (bad / "rewrites" / "part-0.parquet").write_bytes(b"not parquet at all")
    move_latest_to(root, "run-corrupt")
    while answered() < total // 2 and any(t.is_alive() for t in threads):
        time.sleep(0.001)
    write_run(root, "run-b", RUN_B)  # moves LATEST, half the requests still to send
    for t in threads:
        t.join(timeout=60)
    assert not errors
    flat = [r for rs in results for r in rs]
    assert len(flat) == n_clients * per_client
    assert all(status == 200 for status, *_ in flat)
    for status, loc, text, got in flat:
        assert got == expected[(got["run_id"], loc, text)], (loc, text, got)
    seen = {got["run_id"] for *_, got in flat}
    assert seen == {"run-a", "run-b"}  # the move happened mid-load; the corrupt run never served
    for rs in results:  # monotonic per client: once on run-b, never back
        ids = [got["run_id"] for *_, got in rs]
        assert "run-a" not in ids[ids.index("run-b"):] if "run-b" in ids else True
