"""Every setting's range is checked when Settings are made (issue 19 item 2): one line
naming the key and the allowed range, exit 2 from the CLI; min_users below 2 only with
the documented override, which the manifest's privacy block flags."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from selflearn.config import RANGES, ConfigError, Settings, load_settings

PROBE = {  # what the adversarial probe was let through
    "min_users": [0, -1],
    "session_gap_s": [-5.0],
    "max_turns_per_user_day": [-1],
    "dev_share": [7.0],
    "knn_k": [0],
    "gate_max_quarantine_rate": [float("nan")],
}


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in PROBE.items() for v in vs])
def test_the_probes_values_are_refused_with_one_line_naming_key_and_range(key, value):
    with pytest.raises(ConfigError) as err:
        Settings(**{key: value})
    msg = str(err.value)
    assert "\n" not in msg and f"'{key}'" in msg
    lo, hi = RANGES[key]
    assert f"[{lo}, {hi}]" in msg


def test_yaml_nan_and_nested_model_settings_are_checked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gate_max_quarantine_rate: .nan\n")
    with pytest.raises(ConfigError, match="gate_max_quarantine_rate"):
        load_settings(cfg)
    cfg.write_text("rephrase_model:\n  threshold: 2\n")
    with pytest.raises(ConfigError, match=r"rephrase_model\.threshold.*\[0\.0, 1\.0\]"):
        load_settings(cfg)


def test_min_users_below_two_needs_the_override_and_zero_never():
    with pytest.raises(ConfigError, match="min_users_override"):
        Settings(min_users=1)
    assert Settings(min_users=1, min_users_override=True).min_users == 1
    with pytest.raises(ConfigError, match="min_users"):
        Settings(min_users=0, min_users_override=True)


def test_the_manifest_privacy_block_flags_the_override():
    from selflearn.core.privacy import privacy_block

    assert privacy_block(Settings())["below_floor"] is False
    flagged = privacy_block(Settings(min_users=1, min_users_override=True))
    assert flagged["below_floor"] is True and flagged["min_users_override"] is True
    assert flagged["operator_data"] == ["turns", "rephrase_pairs"]


def test_a_setting_without_a_range_still_gets_the_generic_check():
    """Other settings are added in parallel: without an entry in RANGES a number must still
    be finite and of its default's type, and Settings() itself never fails."""
    Settings()
    # every float setting, ranged or not, refuses inf and nan
    for f in dataclasses.fields(Settings):
        if isinstance(f.default, float):
            for bad in (float("nan"), float("inf")):
                with pytest.raises(ConfigError, match=f.name):
                    Settings(**{f.name: bad})
    with pytest.raises(ConfigError, match="spark_driver_memory"):
        Settings(spark_driver_memory=4)


def test_cli_refuses_min_users_zero_with_one_line_and_exit_2(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_users: 0\n")
    pq.write_table(pa.table({"event_id": ["e"]}), tmp_path / "t.parquet")
    r = subprocess.run([sys.executable, "-m", "selflearn.cli", "run", "--input", str(tmp_path / "t.parquet"),
                        "--output", str(tmp_path / "root"), "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "'min_users'" in r.stderr and "[2, 1000000]" in r.stderr
    assert not (tmp_path / "root").exists()


# --- property: random settings through the validator -----------------------------------------

def _numeric_ranges():
    out = []
    for name, (lo, hi) in RANGES.items():
        if "." in name:
            continue
        default = next(f.default for f in dataclasses.fields(Settings) if f.name == name)
        out.append((name, lo, hi, type(default)))
    return out


NUMERIC = _numeric_ranges()


@st.composite
def a_setting(draw):
    name, lo, hi, kind = draw(st.sampled_from(NUMERIC))
    if kind is int:
        value = draw(st.one_of(st.integers(min_value=-10**12, max_value=10**12),
                               st.integers(min_value=int(lo) - 3, max_value=int(lo) + 3),
                               st.integers(min_value=int(min(hi, 10**12)) - 3, max_value=int(min(hi, 10**12)) + 3),
                               st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)))
    else:
        value = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                               st.floats(min_value=lo - 1, max_value=hi + 1),
                               st.integers(min_value=-10, max_value=10), st.booleans(), st.text(max_size=3)))
    return name, lo, hi, kind, value


@hsettings(max_examples=400, deadline=None)
@given(a_setting())
def test_property_the_validator_accepts_exactly_the_documented_ranges(case):
    name, lo, hi, kind, value = case
    right_type = (isinstance(value, int) and not isinstance(value, bool)) if kind is int else \
        (isinstance(value, (int, float)) and not isinstance(value, bool))
    valid = right_type and math.isfinite(value) and lo <= value <= hi
    try:
        s = Settings(**{name: value})
    except ConfigError as exc:
        assert not valid, f"{name}={value!r} refused: {exc}"
        msg = str(exc)
        assert "\n" not in msg and f"'{name}'" in msg
    else:
        assert valid, f"{name}={value!r} accepted"
        assert getattr(s, name) == value


def test_the_backend_choices_are_the_embed_modules_backends():
    from selflearn.config import CHOICES
    from selflearn.encoders.embed import BACKENDS

    assert set(CHOICES["embedding_backend"]) == set(BACKENDS)
    assert Settings().embedding_backend in BACKENDS  # the default itself passes the check


@pytest.mark.parametrize("key,value", [
    ("embedding_device", "banana"), ("spark_master", "bogus"), ("spark_master", "local[0]"),
    ("spark_driver_memory", "lots"), ("spark_driver_memory", "-4g"), ("progress_heartbeat_s", -5.0),
])
def test_a_second_probes_values_are_refused_before_spark(key, value):
    """A second probe (2026-12-05) got these past the config: each failed only after Spark
    started (a Java stack trace, or the embed stage after 36-82 s)."""
    with pytest.raises(ConfigError) as err:
        Settings(**{key: value})
    assert "\n" not in str(err.value) and f"'{key}'" in str(err.value)


def test_shaped_settings_accept_what_spark_and_torch_accept():
    for kw in (dict(embedding_device="CUDA:1"), dict(embedding_device="cpu"), dict(spark_master="local[*]"),
               dict(spark_master="local[2, 3]"), dict(spark_master="spark://host:7077"), dict(spark_master="yarn"),
               dict(spark_master="submit"), dict(spark_driver_memory="2048m"), dict(spark_driver_memory="4GB")):
        Settings(**kw)


def test_contradictions_paths_and_yaml_traps_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="short_dwell_ms.*long_dwell_ms"):
        Settings.from_dict({"defect_model": {"short_dwell_ms": 20000, "long_dwell_ms": 100}})
    with pytest.raises(ConfigError, match="embedding_model.*not a directory"):
        Settings(embedding_backend="sentence-transformers", embedding_model=str(tmp_path / "no-model"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_users: 3\nmin_users: 5\n")
    with pytest.raises(ConfigError, match="duplicate key 'min_users'"):
        load_settings(cfg)
    cfg.write_text("dev_share: 5e-2\n")  # YAML 1.1 reads this as the string '5e-2'
    with pytest.raises(ConfigError, match=r"write 0\.05"):
        load_settings(cfg)
