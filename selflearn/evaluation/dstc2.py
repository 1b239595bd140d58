"""DSTC2 (dialog bAbI task 6 format) -> a contract interaction log plus re-ask labels.

DSTC2 holds real spoken dialogues between callers and a live statistical dialogue system
(Cambridge restaurant information). The bAbI task 6 release gives each dialogue as lines
``N user_utterance<TAB>system_reply``; lines without a tab are database results
(``N name R_attr value``), ``<SILENCE>`` means the caller said nothing and ``api_call ...``
is a system action. A blank line separates dialogues.

`convert(path, out_dir)` writes

* ``out_dir/log.parquet``: the contract log (exactly ``schema.arrow_schema('log')``), one row
  per user turn that is not ``<SILENCE>`` (event_id "dstc2-<split>-<dialogue>-<N>", N the
  turn number in the file);
* ``out_dir/labels.parquet``: one row per pair of consecutive user turns of a dialogue:
  ``first_event_id``, ``second_event_id``, ``is_reask`` (the second turn re-asks the first),
  ``reworded`` (the two turns' text keys differ), ``reask_kind`` (``not_understood`` or
  ``correction`` for re-asks, null otherwise).

Mapping (see also bench/dstc2_rephrase.md):

* one dialogue = one session = one user: DSTC2 callers were distinct people, so
  ``user_id = "dstc2-<split>-<dialogue index>"`` and ``session_id`` the same string;
  ``device_id`` is null; ``locale`` is ``en-US``; ``utterance`` the transcript as given.
* timestamps are SYNTHETIC: DSTC2 in this format carries no timing at all. Dialogue i
  starts at 2013-06-01T00:00:00Z + i hours and its k-th (non-silent) user turn is at
  start + k * TURN_SPACING_S seconds, so every consecutive pair has the same gap and the
  gap feature carries no information here.
* ``response_status`` comes from the system's reply to THIS user turn (same line):
  - "Could you please repeat that?", "Sorry, I can't hear you", "Sorry I am a bit
    confused ..." -> ``unhandled`` (the system did not understand; nlu_* null);
  - explicit confirmation questions ("Did you say ...?", "You are looking for ... right?",
    "Let me confirm , ...", "Ok , a restaurant ... is that right?") -> ``success`` with a low
    ``nlu_confidence`` (CONFIRM_CONFIDENCE): the system understood something but was unsure;
  - everything else, including "I'm sorry but there is no restaurant serving X" (the system
    understood and searched: an empty result is an answer, not a failure) and ``api_call``
    -> ``success`` with ``nlu_confidence`` ACTED_CONFIDENCE. Nothing maps to ``error``.
  ``nlu_confidence`` is thus a synthetic encoding of the system's dialogue act, not a model
  score. ``nlu_domain`` is ``restaurant`` and ``nlu_intent`` a coarse label read off the
  reply (``request_phone``, ``request_address``, ``request_postcode``, ``goodbye``, else
  ``find_restaurant``) for understood turns. ``asr_confidence``, ``nlu_slots``,
  ``barge_in``, ``feedback``, ``dwell_ms``, ``rewritten_from``, ``nlu_model_version``: null.
* ``system_act`` (contract v3) is the system's act in its reply to THIS user turn
  (`act_of`): a failure prompt -> ``reprompt``; a confirmation question -> ``confirm``;
  any other question ("What part of town do you have in mind?", "There are restaurants in
  the cheap price range . What type of food do you want?", "Can I help you with anything
  else?") -> ``elicit``: the caller's next turn answers it; everything else (an offer, a
  phone number, "no restaurant serving X", ``api_call``) -> ``inform``.
* ``blinded=True``: every turn ``success``, and every nlu_* / confidence field and
  ``system_act`` null: only text and (uninformative) time remain -- what a log without
  system-side signals shows.

Ground truth ``is_reask`` for a pair (A, B) of consecutive user turns:

* ``not_understood``: the system's reply to A was a failure prompt (above) -- the caller then
  repeats or rephrases; or
* ``correction``: the system's reply to A was a confirmation question and B starts with
  "no" followed by a restatement (a bare "no" / "no no" is a denial, not a re-ask);

and, in both cases, every system reply to silent turns between A and B is of the same
kind (a failure prompt, resp. a confirmation): if the system moved on meanwhile, B answers
that, not A. Everything else (answering a question, asking for the phone or address,
"thank you good bye", a new request after "no restaurant serving X") is a negative.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.schema import arrow_schema
from selflearn.core.text import normalize_text

TURN_SPACING_S = 5.0
DIALOGUE_SPACING_S = 3600.0
T0 = datetime(2013, 6, 1, tzinfo=timezone.utc)
LOCALE = "en-US"
CONFIRM_CONFIDENCE = 0.3
ACTED_CONFIDENCE = 0.9

SILENCE = "<SILENCE>"
_FAILURE = re.compile(
    r"^\s*(could you please repeat that|sorry,? i can'?t hear you|sorry,? i am a bit confused)", re.I)
_CONFIRM = re.compile(
    r"^\s*(did you say\b.*|let me confirm\b.*|you are looking for\b.*\bright\s*\?|"
    r"ok\s*,\s*a restaurant\b.*\bis that right\s*\?)\s*$", re.I)
_INTENTS = (
    (re.compile(r"^\s*the phone number of\b", re.I), "request_phone"),
    (re.compile(r"^\s*the post ?code of\b", re.I), "request_postcode"),
    (re.compile(r"^\s*(sure\s*,\s*)?\S.* is on \S", re.I), "request_address"),
    (re.compile(r"^\s*you are welcome\b", re.I), "goodbye"),
)
_SPLITS = {"trn": "trn", "dev": "dev", "tst": "tst"}


def reply_kind(reply: str) -> str:
    """'failure', 'confirm' or 'acted' for a system reply."""
    if _FAILURE.match(reply):
        return "failure"
    if _CONFIRM.match(reply):
        return "confirm"
    return "acted"


def act_of(reply: str) -> str:
    """The contract's `system_act` of a system reply: reprompt, confirm, elicit or inform."""
    kind = reply_kind(reply)
    if kind == "failure":
        return "reprompt"
    if kind == "confirm":
        return "confirm"
    return "elicit" if reply.rstrip().endswith("?") else "inform"


def _intent(reply: str) -> str:
    for pattern, name in _INTENTS:
        if pattern.match(reply):
            return name
    return "find_restaurant"


def _is_correction(text_key: str) -> bool:
    tokens = text_key.split()
    if not tokens or tokens[0] != "no":
        return False
    rest = [t for t in tokens if t != "no"]
    return len(rest) > 0


@dataclass
class _Line:
    num: int  # the turn number N of the file (KB lines count too)
    user: str
    reply: str


@dataclass
class Dialogue:
    lines: list[_Line] = field(default_factory=list)  # user/system exchanges only (KB lines dropped)


def parse(path: str | Path) -> list[Dialogue]:
    """Dialogues of a bAbI task 6 file; KB result lines (no tab) are dropped."""
    dialogues: list[Dialogue] = []
    current: Dialogue | None = None
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                current = None
                continue
            num, _, rest = line.partition(" ")
            if not num.isdigit():
                raise ValueError(f"{path}: unexpected line {line[:80]!r}")
            if num == "1" or current is None:
                current = Dialogue()
                dialogues.append(current)
            if "\t" not in rest:
                continue  # KB result line
            user, reply = rest.split("\t", 1)
            current.lines.append(_Line(int(num), user.strip(), reply.strip()))
    return [d for d in dialogues if d.lines]


def _split_name(path: Path) -> str:
    m = re.search(r"-(trn|dev|tst)\.txt$", path.name)
    return _SPLITS[m.group(1)] if m else "x"


def convert(path: str | Path, out_dir: str | Path, blinded: bool = False) -> dict:
    """Convert a DSTC2 bAbI task 6 file into ``out_dir/log.parquet`` (contract log) and
    ``out_dir/labels.parquet`` (consecutive user-turn pairs with ``is_reask``). Returns
    counts and the two paths."""
    path = Path(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = _split_name(path)
    dialogues = parse(path)

    rows: dict[str, list] = {f.name: [] for f in arrow_schema("log")}
    labels: dict[str, list] = {k: [] for k in
                               ("first_event_id", "second_event_id", "is_reask", "reworded", "reask_kind")}
    counts = dict(dialogues=len(dialogues), turns=0, silent_turns=0, unhandled=0, failure_replies=0, confirm_replies=0,
                  pairs=0, reask=0, reask_not_understood=0, reask_correction=0,
                  reask_reworded=0, reask_exact_repeat=0)

    for d_idx, dialogue in enumerate(dialogues):
        sid = f"dstc2-{split}-{d_idx:04d}"
        start = T0 + timedelta(seconds=d_idx * DIALOGUE_SPACING_S)
        k = 0
        prev = None  # (event_id, key, reply kind of its reply, silent replies since)
        for ln in dialogue.lines:
            kind = reply_kind(ln.reply)
            if ln.user == SILENCE or not ln.user:
                counts["silent_turns"] += 1
                if prev is not None:
                    prev["between"].append(kind)
                continue
            event_id = f"{sid}-{ln.num:03d}"
            key = normalize_text(ln.user)
            status = "unhandled" if kind == "failure" else "success"
            counts["turns"] += 1
            counts["failure_replies"] += kind == "failure"
            counts["confirm_replies"] += kind == "confirm"
            counts["unhandled"] += kind == "failure" and not blinded
            understood = kind != "failure" and not blinded
            rows["event_id"].append(event_id)
            rows["user_id"].append(sid)
            rows["device_id"].append(None)
            rows["session_id"].append(sid)
            rows["ts"].append(start + timedelta(seconds=k * TURN_SPACING_S))
            rows["locale"].append(LOCALE)
            rows["utterance"].append(ln.user)
            rows["asr_confidence"].append(None)
            rows["nlu_domain"].append("restaurant" if understood else None)
            rows["nlu_intent"].append(_intent(ln.reply) if understood else None)
            rows["nlu_slots"].append(None)
            rows["nlu_confidence"].append(
                (CONFIRM_CONFIDENCE if kind == "confirm" else ACTED_CONFIDENCE) if understood else None)
            rows["response_status"].append("success" if blinded else status)
            rows["barge_in"].append(None)
            rows["feedback"].append(None)
            rows["dwell_ms"].append(None)
            rows["rewritten_from"].append(None)
            rows["nlu_model_version"].append(None)
            rows["system_act"].append(None if blinded else act_of(ln.reply))
            k += 1

            if prev is not None:
                first_kind = prev["kind"]
                same_since = all(b == first_kind for b in prev["between"])
                reask_kind = None
                if first_kind == "failure" and same_since:
                    reask_kind = "not_understood"
                elif first_kind == "confirm" and same_since and _is_correction(key):
                    reask_kind = "correction"
                reworded = key != prev["key"]
                labels["first_event_id"].append(prev["event_id"])
                labels["second_event_id"].append(event_id)
                labels["is_reask"].append(reask_kind is not None)
                labels["reworded"].append(reworded)
                labels["reask_kind"].append(reask_kind)
                counts["pairs"] += 1
                if reask_kind is not None:
                    counts["reask"] += 1
                    counts[f"reask_{reask_kind}"] += 1
                    counts["reask_reworded" if reworded else "reask_exact_repeat"] += 1
            prev = dict(event_id=event_id, key=key, kind=kind, between=[])

    log_table = pa.Table.from_pydict(rows, schema=arrow_schema("log"))
    label_table = pa.Table.from_pydict(labels, schema=pa.schema([
        pa.field("first_event_id", pa.string(), nullable=False),
        pa.field("second_event_id", pa.string(), nullable=False),
        pa.field("is_reask", pa.bool_(), nullable=False),
        pa.field("reworded", pa.bool_(), nullable=False),
        pa.field("reask_kind", pa.string()),
    ]))
    log_path, labels_path = out / "log.parquet", out / "labels.parquet"
    pq.write_table(log_table, log_path)
    pq.write_table(label_table, labels_path)
    counts.update(log=str(log_path), labels=str(labels_path), blinded=blinded, split=split)
    return counts
