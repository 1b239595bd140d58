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
  ``reworded`` (the two turns' text keys differ), ``reask_kind`` (``not_understood``,
  ``correction``, ``unanswered`` or ``misheard`` for re-asks, null otherwise).

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
  ``find_restaurant``) for understood turns, and ``nlu_slots`` likewise what the reply shows
  the system understood (`reply_slots`): the constraints it names (food / area / pricerange
  of "There are restaurants serving X ...", "no restaurant serving X", a confirmation,
  ``api_call``), or the attribute it answers ({requested: phone}); null for offers and "X is
  a great restaurant" (they describe a venue, not the caller's turn). The bAbI release has
  no SLU or ASR hypotheses, so there is no own score of the turn to map.
  ``asr_confidence``, ``barge_in``, ``feedback``, ``dwell_ms``, ``rewritten_from``,
  ``nlu_model_version``: null.
* ``system_act`` (contract v3) is the system's act in its reply to THIS user turn
  (`act_of`): a failure prompt -> ``reprompt``; a confirmation question -> ``confirm``;
  any other question ("What part of town do you have in mind?", "There are restaurants in
  the cheap price range . What type of food do you want?", "Can I help you with anything
  else?") -> ``elicit``: the caller's next turn answers it; everything else (an offer, a
  phone number, "no restaurant serving X", ``api_call``) -> ``inform``.
* ``blinded=True``: every turn ``success``, and every nlu_* / confidence field and
  ``system_act`` null: only text and (uninformative) time remain -- what a log without
  system-side signals shows (``nlu_slots`` null too).

Ground truth ``is_reask`` for a pair (A, B) of consecutive user turns:

* ``not_understood``: the system's reply to A was a failure prompt (above) -- the caller then
  repeats or rephrases; or
* ``correction``: the system's reply to A was a confirmation question and B starts with
  "no" followed by a restatement (a bare "no" / "no no" is a denial, not a re-ask);

and, in both cases, every system reply to silent turns between A and B is of the same
kind (a failure prompt, resp. a confirmation): if the system moved on meanwhile, B answers
that, not A. Further, with no silent turn between A and B, a re-ask after a reply that
acted but missed the caller -- a silent failure, which reads ``success`` in the log and
whose re-asks the simulator's truth counts too (`silent_reask_kind`):

* ``unanswered``: A asks for phone / address / post code / price range / food, the reply
  gives none of them ("phone number" -> "golden_wok is a great restaurant"), B asks again;
* ``misheard``: A names a food / area / price that a reply showing the system's understanding
  (constraints, confirmation, api_call) does not name -- misheard or missed ("thai food" ->
  "no restaurant serving romanian food"; "irish food" -> "any kind of food right?") -- and B
  says that value again.

Everything else (answering a question, asking for the phone after the address was given,
"thank you good bye", a new request after a correct "no restaurant serving X", a partial
answer) is a negative. ``reask_kind`` tells the strict truth (``not_understood`` and
``correction``: the system itself showed it failed) from the silent kinds.
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
# replies that answer a request for the phone number or the post code (the NLU intent they
# show, below, and the attribute answered, _ANSWERS)
_PHONE_REPLY = re.compile(r"^\s*the phone number of\b", re.I)
_POSTCODE_REPLY = re.compile(r"^\s*the post ?code of\b", re.I)
_INTENTS = (
    (_PHONE_REPLY, "request_phone"),
    (_POSTCODE_REPLY, "request_postcode"),
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


AREAS = ("north", "south", "east", "west", "centre")
PRICES = ("cheap", "moderate", "expensive")
_API_CALL = re.compile(r"^\s*api_call\s+(\S+)\s+(\S+)\s+(\S+)")
# the constraints a reply says the system understood (its belief), by slot
# (the templates of the test set's system, and those of the train set's, which the dev set
# shares: "Sorry there is no X restaurant in the east of town", "... that matches your request")
_FOOD_IN_REPLY = (
    re.compile(r"\bserving (?:any kind of )?([a-z ]+?) food\b", re.I),
    re.compile(r"^\s*there are restaurants serving ([a-z ]+?)(?: food)?(?: in the| \.|$)", re.I),
    re.compile(r"\bno (?:other )?(?:(?:cheap|moderate|expensive) )?([a-z ]+?) restaurant\b", re.I),
    re.compile(r"\byou are looking for an? ([a-z ]+?) restaurant right\s*\?", re.I),
)
_AREA_IN_REPLY = re.compile(r"\b(north|south|east|west|centre) (?:part )?of town\b", re.I)
_PRICE_IN_REPLY = re.compile(r"\b(cheap|moderate|expensive) (?:price range\b|restaurant\b)", re.I)
# a constraint-bearing reply: what the system understood the caller to want (not an offer of
# a restaurant, whose attributes describe the venue, not the caller's turn)
_CONSTRAINT_REPLY = re.compile(
    r"^\s*(there are restaurants\b|i'?m sorry but there is no\b|(i am )?sorry,? (but )?there is no\b|api_call\b)", re.I)
# the attribute a reply answers (a request the system understood and served), and the word
# it is asked with, which is the slot value a follow-up names or drops
_ANSWERS = (
    (_PHONE_REPLY, "phone"),
    (re.compile(r"^\s*(sure\s*,\s*)?\S+ is on \S", re.I), "address"),
    (_POSTCODE_REPLY, "post code"),
    (re.compile(r"^\s*\S+ is in the \S+ price range\b|^\s*the price range at \S+ is\b", re.I), "price range"),
    (re.compile(r"^\s*\S+ serves \S.* food\b", re.I), "food"),
    (re.compile(r"^\s*\S+ is in the \S+ part of town\b", re.I), "area"),
)
ASKED_WITH = {"phone": "phone", "address": "address", "post code": "post", "price range": "price", "food": "food",
              "area": "area"}
# what a caller's key asks for (requests of an attribute of the offered restaurant)
_ASKS = (
    (re.compile(r"\b(phone|telephone)\b"), "phone"),
    (re.compile(r"\baddr"), "address"),
    (re.compile(r"\bpost ?code|\bpostal\b|\bpost\b"), "post code"),
    (re.compile(r"\bprice"), "price range"),
    (re.compile(r"\b(type|kind) of food\b|\bwhat food\b|\bfood do they\b|\bdo they serve\b"), "food"),
    (re.compile(r"\bwhat area\b|\bwhich area\b|\bwhat part of town\b|\bwhere is it\b"), "area"),
)


def reply_answers(reply: str) -> str | None:
    """The attribute of a restaurant that a system reply gives (phone, address, post code,
    price range, food, area), or None."""
    for pattern, name in _ANSWERS:
        if pattern.match(reply):
            return name
    return None


def reply_constraints(reply: str) -> dict[str, str]:
    """The constraints {food, area, pricerange} a reply says the system understood: from
    "There are restaurants serving X in the Y of town", "no restaurant serving X food",
    confirmation questions, and `api_call food area price` (its R_* placeholders: none).
    Empty for offers and answers (they describe a restaurant, not the caller's turn)."""
    out: dict[str, str] = {}
    m = _API_CALL.match(reply)
    if m:
        for name, value in zip(("food", "area", "pricerange"), m.groups()):
            if not value.startswith("R_"):
                out[name] = value.replace("_", " ")
        return out
    if not (_CONSTRAINT_REPLY.match(reply) or reply_kind(reply) == "confirm"):
        return out
    for pattern in _FOOD_IN_REPLY:
        f = pattern.search(reply)
        if f and f.group(1).strip().lower() not in ("a", "any", "any kind of", *AREAS, *PRICES):
            out["food"] = f.group(1).strip().lower()
            break
    a = _AREA_IN_REPLY.search(reply)
    if a:
        out["area"] = a.group(1).lower()
    p = _PRICE_IN_REPLY.search(reply)
    if p:
        out["pricerange"] = p.group(1).lower()
    return out


def reply_slots(reply: str) -> list[dict] | None:
    """`nlu_slots` of the caller's turn as its reply shows the system understood it: the
    constraints it names (`reply_constraints`), or the attribute it answers as
    {"name": "requested", "value": the word it is asked with} ("The phone number of X is ..."
    -> phone). None when the reply shows neither (an offer, "X is a great restaurant", a
    question without values). The bAbI release has no SLU hypotheses; the reply is what the
    system made of the turn, as `nlu_intent` is read off it too."""
    c = reply_constraints(reply)
    if c:
        return [{"name": k, "value": v} for k, v in c.items()]
    answered = reply_answers(reply)
    if answered is not None:
        return [{"name": "requested", "value": ASKED_WITH[answered]}]
    return None


def asks(text_key: str) -> set[str]:
    """The attributes a caller's key asks for (phone, address, post code, price range, food, area).
    "price" names a request only without a price value ("moderately priced" is a constraint)."""
    out = {name for pattern, name in _ASKS if pattern.search(text_key)}
    if "price range" in out and any(p in text_key for p in ("cheap", "moderate", "expensive")):
        out.discard("price range")
    return out


def named_values(text_key: str, foods: set[str]) -> dict[str, str]:
    """The constraint values a caller's key names: {food, area, pricerange}, food from the
    file's own vocabulary (`foods`, longest first, so "north american" is a food, not an area)."""
    out: dict[str, str] = {}
    padded = f" {text_key} "
    for food in sorted(foods, key=lambda f: (-len(f), f)):  # a fixed order: sets iterate by hash
        if f" {food} " in padded:
            out["food"] = food
            padded = padded.replace(f" {food} ", " ")
            break
    for name, values in (("area", AREAS), ("pricerange", PRICES)):
        for v in values:
            if re.search(rf"\b{v}", padded):
                out[name] = v
                break
    return out


def food_vocabulary(dialogues) -> set[str]:
    """Every food value the system's replies of a file name (api_call arguments, "serving X
    food", confirmations): the words a caller names a cuisine with."""
    foods: set[str] = set()
    for d in dialogues:
        for ln in d.lines:
            f = reply_constraints(ln.reply).get("food")
            if f:
                foods.add(normalize_text(f))
    return {f for f in foods if f and f not in AREAS and f not in PRICES}


def silent_reask_kind(first_key: str, reply: str, second_key: str, foods: set[str]) -> str | None:
    """A re-ask after a reply that acted but missed the caller (a silent failure: the log
    reads `success`; the simulator's truth counts these re-asks too):

    * ``unanswered``: the first turn asks for attributes (phone, address, post code, price
      range, food, area) and the reply gives none of them ("phone number" -> "golden_wok is a great
      restaurant"), and the second turn asks for one of them again;
    * ``misheard``: the first turn names a constraint value (food, area, price) that the
      reply -- one that shows what the system understood: "There are restaurants ...", "no
      restaurant serving X", a confirmation, ``api_call`` -- does not name, misheard or
      missed ("what about thai food" -> "no restaurant serving romanian food"; "how about
      international" -> "you are looking for a jamaican restaurant right?"; "irish food" ->
      "... serving any kind of food right?"), and the second turn says that value again,
      changing none of the first turn's values (that would be a new request).

    A partial answer ("phone and address" -> the phone) is an answer; a new value after a
    correct "no restaurant serving X" is a new request. None otherwise."""
    kind = reply_kind(reply)
    if kind == "failure":
        return None
    wanted = asks(first_key)
    if wanted and kind == "acted" and not reply.rstrip().endswith("?") and reply_answers(reply) not in wanted:
        if wanted & asks(second_key) and not reply_constraints(reply):
            return "unanswered"
    if not (_CONSTRAINT_REPLY.match(reply) or kind == "confirm"):
        return None  # an offer or an answer does not show what the system understood
    said = named_values(first_key, foods)
    again = named_values(second_key, foods)
    if any(again.get(slot, value) != value for slot, value in said.items()):
        return None  # B changes a value A said: a new request ("indonesian" -> "thai"), not a re-ask
    reply_key = f" {normalize_text(reply.replace('_', ' '))} "
    for slot, value in said.items():
        if f" {value} " not in reply_key and again.get(slot) == value:
            return "misheard"
    return None


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
    foods = food_vocabulary(dialogues)

    rows: dict[str, list] = {f.name: [] for f in arrow_schema("log")}
    labels: dict[str, list] = {k: [] for k in
                               ("first_event_id", "second_event_id", "is_reask", "reworded", "reask_kind")}
    counts = dict(dialogues=len(dialogues), turns=0, silent_turns=0, unhandled=0, failure_replies=0, confirm_replies=0,
                  pairs=0, reask=0, reask_not_understood=0, reask_correction=0, reask_unanswered=0, reask_misheard=0,
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
            rows["nlu_slots"].append(reply_slots(ln.reply) if understood else None)
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
                elif not prev["between"]:  # a silent turn between: the system spoke again
                    reask_kind = silent_reask_kind(prev["key"], prev["reply"], key, foods)
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
            prev = dict(event_id=event_id, key=key, kind=kind, reply=ln.reply, between=[])

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
