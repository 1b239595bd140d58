"""Knobs of the simulator (every one documented, with realistic defaults)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LOCALES = ("en-US", "de-DE", "ja-JP", "ar-SA", "hi-IN", "ru-RU")
DEFAULT_DATA_DIR = ""  # empty: resolve_data_dir looks in the usual places
DATA_DIR_ENV = "SELFLEARN_MASSIVE_DIR"


def resolve_data_dir(configured: str = "") -> str:
    """The MASSIVE locales folder: the configured one, else $SELFLEARN_MASSIVE_DIR, else
    shared/data/massive/locales beside the checkout (where this project keeps its data)."""
    import os
    from pathlib import Path

    if configured:
        return configured
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    repo = Path(__file__).resolve().parents[2]
    for base in (repo.parent, repo, Path.cwd().parent, Path.cwd()):
        candidate = base / "shared" / "data" / "massive" / "locales"
        if candidate.is_dir():
            return str(candidate)
    raise FileNotFoundError(
        f"MASSIVE locale files not found: pass --data-dir or set {DATA_DIR_ENV} to the folder of <locale>.jsonl.gz files"
    )


@dataclass
class SimConfig:
    """Every knob of ``selflearn simulate``. Field docstrings follow each field."""

    users: int = 3000
    """Number of simulated (ordinary) users, split evenly across locales; the flooding
    user comes on top. Scales the log roughly linearly (~25-30 turns per user)."""

    locales: tuple = DEFAULT_LOCALES
    """MASSIVE locales to simulate (any of the 52). Defaults cover Latin, Japanese,
    Arabic, Devanagari and Cyrillic scripts."""

    seed: int = 0
    """Master seed: the same seed and knobs give byte-identical outputs."""

    data_dir: str = DEFAULT_DATA_DIR
    """Folder holding MASSIVE 1.1 ``<locale>.jsonl.gz`` files (empty: see resolve_data_dir)."""

    start_date: str = "2026-11-01"
    """First simulated day (UTC)."""

    days: int = 7
    """Number of simulated days."""

    # ---- world: phrasings, goals, NLU -------------------------------------------------
    min_templates_per_frame: int = 2
    """A frame (intent + multiset of slot names) is used only if it has at least this many
    distinct real templates."""

    max_templates_per_frame: int = 12
    """Cap on the templates kept per frame (a seeded sample): the phrasings a goal can be
    said with. Keeps the NLU table small."""

    max_goals_per_locale: int = 4000
    """Cap on goals per locale (the popularity tail beyond it is cut; the tail is hardly
    ever requested anyway)."""

    goal_zipf_s: float = 1.05
    """Zipf exponent of goal popularity within a locale (weight 1/(rank+q)^s)."""

    goal_zipf_q: float = 2.0
    """Zipf-Mandelbrot offset q of goal popularity (softens the very top)."""

    template_zipf_s: float = 1.0
    """Zipf exponent of how popular each phrasing (template) of a frame is among users."""

    supported_share: float = 0.70
    """Share of templates the simulated NLU understands (each frame keeps at least one)."""

    confused_share: float = 0.40
    """Share of unsupported templates the NLU confuses with a fixed wrong intent: the
    system acts wrongly but reports ``success`` (a silent defect). The rest are
    ``unhandled``."""

    mishear_goal_share: float = 0.08
    """Share of goals (with slots) that have a slot value ASR recurrently mishears into a
    fixed corrupted form."""

    mishear_char_share: float = 0.5
    """Of those, share whose corruption is a character-level perturbation of the real
    value; the rest substitute another real value of the same slot type."""

    mishear_prob: float = 0.70
    """Probability that a turn of a mishearing goal is misheard (first attempt or a
    near-identical repeat)."""

    mishear_prob_rephrase: float = 0.30
    """Probability a rephrase (a different phrasing) of such a goal is misheard."""

    mishear_silent_share: float = 0.5
    """Share of mishearing goals where the wrong value leads to a wrong action reported as
    ``success`` (silent); the rest fail with ``error``."""

    transient_error_prob: float = 0.03
    """A correctly understood turn still fails at random with ``error``."""

    unseen_goal_share: float = 0.2
    """Share of goals (a seeded draw) the log never requests; fresh replay traffic
    (``World.fresh_traffic``) requests every goal, so these bring slot values that were
    never in the log: only a rewrite that generalizes across values can fix them. 0: off."""

    collide_frame_share: float = 0.1
    """Share of one-slot frames that get an extra, popular, not-understood phrasing whose
    carrier phrase is a working phrasing of another one-slot frame of the locale (another
    intent): a pattern learned from it must not fire on the other frame's working
    requests. 0: off."""

    # ---- users and sessions -----------------------------------------------------------
    two_device_share: float = 0.2
    """Share of users with two devices (a session is on one device)."""

    session_id_user_share: float = 0.2
    """Share of users whose rows carry a ``session_id``; other rows leave it null so that
    the pipeline cuts sessions itself."""

    sessions_per_day_mean: float = 1.5
    """Mean sessions per user per day (Poisson, with per-user activity spread)."""

    activity_sigma: float = 0.6
    """Log-normal sigma of the per-user activity multiplier (mean 1)."""

    goals_per_session_mean: float = 2.0
    """Mean goals per session (1 + geometric)."""

    min_session_gap_s: float = 1800.0
    """Least inactivity between two sessions of one user (>> the pipeline's 300 s)."""

    day_start_hour: float = 6.0
    """Earliest planned session start (hour of the UTC day)."""

    day_end_hour: float = 23.0
    """Latest planned session start (hour of the UTC day)."""

    # ---- behaviour --------------------------------------------------------------------
    max_retries: int = 3
    """Retries after a failure before giving up."""

    abandon_prob: float = 0.22
    """After a failed turn, probability of giving up / switching topic instead of retrying."""

    repeat_prob_mean: float = 0.25
    """Mean per-user probability that a retry repeats the same words (else rephrases)."""

    know_supported_mean: float = 0.6
    """Mean per-user probability that a rephrase picks a phrasing that works (a user who
    knows the system); otherwise any other phrasing of the goal."""

    retry_gap_s: tuple = (2.0, 20.0)
    """Range of seconds between a failed turn and its retry."""

    next_goal_gap_s: tuple = (20.0, 120.0)
    """Range of seconds between a served goal and the next goal of the session."""

    quick_switch_prob: float = 0.5
    """After giving up, probability the next goal comes quickly (within quick_switch_gap_s:
    a hard negative inside the 60 s rephrase window)."""

    quick_switch_gap_s: tuple = (3.0, 40.0)
    """Range of seconds of a quick topic switch after giving up."""

    same_intent_next_prob: float = 0.35
    """After a served goal, probability the next goal has the same intent with different
    slot values (another hard negative)."""

    # ---- traps for rephrase detection (all off by default: the same seed gives the same
    # log as before; bench/traps.yaml turns them on) ------------------------------------
    topic_switch_prob: float = 0.0
    """After a failed turn, probability the user drops the goal and at once asks for an
    unrelated one (another intent), with the gap of a re-ask (retry_gap_s): timing alone
    cannot tell it from a rephrase. Truth ``trap`` = ``topic_switch`` on the new request
    (also set on the quick switches of quick_switch_prob that land within 60 s)."""

    follow_up_prob: float = 0.0
    """After a served goal, probability the next request is a follow-up of the same frame
    (same intent and slot names, other values: "alarm for five" -> "alarm for six") at the
    gap of a re-ask. Truth ``trap`` = ``follow_up``."""

    value_change_prob: float = 0.0
    """After a goal that failed to the end (given up or switched), probability the user asks
    at once, with a re-ask's gap, for the same frame with one slot value changed to the most
    alike value (as strings, difflib ratio >= 0.5) another goal of that frame has: "wake me
    up at five am" fails, then "set an alarm for nine am". A new request, not a correction of
    a misheard value: value corrections must not learn "five am" -> "nine am". Truth
    ``trap`` = ``value_change``."""

    value_change_alike: bool = True
    """The value a ``value_change_prob`` trap changes to: the most alike one (True), or the
    least alike one (False: difflib ratio < 0.5; "what is sprint" -> "what is hockey" in the
    seed-0 log), the case value corrections between unlike values must still refuse. Every
    user of a goal changes it the same way, so the users always agree."""

    restate_prob: float = 0.0
    """After a served goal, probability the user says the same request again at once, with
    the gap of a re-ask, although nothing failed: in the user's own phrasing again or in
    another phrasing of the frame, with the same slot values. DSTC2's dev set is full of these ("gastropub" ->
    `api_call gastropub ...` -> "gastropub food"; "thank you good bye" twice): a caller
    restating a request the system got. Nothing failed, so it is not a re-ask, and a rewrite
    learned from it fixes nothing. Truth ``trap`` = ``restate``."""

    restate_same_words: float = 0.5
    """Share of ``restate_prob``'s restatements said in the user's habitual phrasing again
    (the same words, up to the simulated ASR's noise); the others take another phrasing of
    the frame."""

    elicit_prob: float = 0.0
    """Probability that a goal with slots starts as an elicitation dialogue: the user says
    the request without its slot values ("set an alarm"), the system asks for them
    (``system_act`` ``elicit``, status ``success``) and the user answers with the values
    alone ("seven am") at the gap of a re-ask. Truth ``trap`` = ``elicit`` on the answer."""

    system_act_share: float = 0.0
    """Share of users whose rows carry ``system_act`` (contract v3): ``reprompt`` after an
    ``unhandled`` turn, ``elicit`` for the system's question of an elicitation dialogue,
    ``inform`` otherwise; the other users' rows leave it null."""

    # ---- signals ----------------------------------------------------------------------
    barge_in_defect_prob: float = 0.55
    """P(barge_in) on a defective turn."""

    barge_in_good_prob: float = 0.05
    """P(barge_in) on a good turn."""

    feedback_prob: float = 0.15
    """Share of turns with explicit feedback."""

    feedback_flip_prob: float = 0.10
    """Share of feedback with the 'wrong' sign (-1 on good, +1 on defective)."""

    feedback_zero_prob: float = 0.05
    """Share of feedback that is neutral (0)."""

    dwell_good_median_ms: float = 9000.0
    """Median dwell of a good turn (log-normal)."""

    dwell_defect_median_ms: float = 1800.0
    """Median dwell of a defective turn (log-normal)."""

    dwell_sigma: float = 0.8
    """Log-normal sigma of dwell (the two distributions overlap)."""

    nlu_versions: tuple = ("nlu-2026.10.2", "nlu-2026.11.1")
    """NLU model versions; the second serves from the middle of the period (cosmetic:
    behaviour does not change)."""

    # ---- adversarial and malformed ----------------------------------------------------
    flood: bool = True
    """Add one flooding user who says a bogus pair (failing A then unrelated successful B)."""

    flood_repeats: int = 300
    """How many times the flooding user says the pair (in many sessions)."""

    malformed_share: float = 0.002
    """Share of extra malformed rows (at least one per expressible reason code)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in names:
                continue
            if isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        return cls(**kw)
