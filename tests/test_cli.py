"""The command line: one-line errors and non-zero exits, never a traceback."""
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "selflearn.cli", *args], capture_output=True, text=True, timeout=120)


def test_missing_input_is_one_line(tmp_path):
    r = run_cli("run", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "root"))
    assert r.returncode == 2  # the documented exit code of any failure
    assert r.stderr.strip().count("\n") == 0 and "input not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_parquet_that_cannot_be_a_log_is_one_line(tmp_path):
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), tmp_path / "t.parquet")
    r = run_cli("run", "--input", str(tmp_path / "t.parquet"), "--output", str(tmp_path / "root"))
    assert r.returncode == 2 and "cannot be a log" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_users: many\n")
    pq.write_table(pa.table({"event_id": ["e"]}), tmp_path / "t.parquet")
    r = run_cli("run", "--input", str(tmp_path / "t.parquet"), "--output", str(tmp_path / "root"), "--config", str(cfg))
    assert r.returncode == 2 and "min_users" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_unknown_setting_is_refused(tmp_path):
    from selflearn.config import ConfigError, load_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_user: 3\n")
    try:
        load_settings(cfg)
    except ConfigError as exc:
        assert "min_user" in str(exc)
    else:
        raise AssertionError("unknown setting accepted")


def test_nested_model_settings_load(tmp_path):
    from selflearn.config import RephraseModel, load_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_users: 5\nrephrase_model:\n  threshold: 0.7\n")
    s = load_settings(cfg)
    # the key given is set, the nested model's other weights keep their defaults
    assert s.min_users == 5 and s.rephrase_model.threshold == 0.7 and s.rephrase_model.w_gap == RephraseModel().w_gap


def test_serve_refuses_a_port_outside_1_65535(tmp_path):
    """The socket layer takes 99999 as 99999 mod 65536: the service would say one port and
    listen on another."""
    for port in ("99999", "0", "-1", "http"):
        r = run_cli("serve", "--output", str(tmp_path), "--port", port)
        assert r.returncode == 2 and "1-65535" in r.stderr.strip().splitlines()[-1], (port, r.stderr)
