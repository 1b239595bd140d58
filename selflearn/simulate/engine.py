"""Runs the users of a World through simulated days and writes log, truth and summary."""
from __future__ import annotations

import difflib
import json
import logging
import math
import os
import shutil
import time
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from selflearn.core.text import normalize_text
from .config import SimConfig
from .world import SLOTS_TYPE, World, h64, hunit, rng_for

log = logging.getLogger("selflearn")
PROGRESS_EVERY_S = 20.0

LOG_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("user_id", pa.string()),
    ("device_id", pa.string()),
    ("session_id", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("locale", pa.string()),
    ("utterance", pa.string()),
    ("asr_confidence", pa.float64()),
    ("nlu_domain", pa.string()),
    ("nlu_intent", pa.string()),
    ("nlu_slots", SLOTS_TYPE),
    ("nlu_confidence", pa.float64()),
    ("response_status", pa.string()),
    ("barge_in", pa.bool_()),
    ("feedback", pa.int8()),
    ("dwell_ms", pa.int64()),
    ("rewritten_from", pa.string()),
    ("nlu_model_version", pa.string()),
    ("system_act", pa.string()),
])

TRUTH_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("goal_id", pa.string()),
    ("gold_intent", pa.string()),
    ("gold_slots", SLOTS_TYPE),
    ("is_defect", pa.bool_()),
    ("rephrase_of", pa.string()),
    ("trap", pa.string()),  # topic_switch, follow_up, elicit, value_change, restate (SimConfig); null otherwise
])

MALFORMED_VARIANTS = [
    ("missing_field", "user_id"), ("missing_field", "utterance"),
    ("bad_timestamp", "1970"), ("bad_timestamp", "future"),
    ("bad_locale", ""), ("empty_utterance", ""), ("utterance_too_long", ""),
    ("unknown_status", ""), ("duplicate_event_id", ""),
    ("bad_type", "asr_confidence"), ("bad_type", "feedback"),
]

_US = 1_000_000


def _poisson(rng, lam: float) -> int:
    if lam <= 0:
        return 0
    l, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= l:
            return k
        k += 1


def _slots(pairs):
    return [{"name": n, "value": v} for n, v in pairs]


class _Sim:
    def __init__(self, world: World):
        self.w = world
        self.cfg: SimConfig = world.config
        self.log: list[dict] = []
        self.truth: list[dict] = []
        self.canon_cache: dict = {}
        self.t0 = int(datetime.fromisoformat(self.cfg.start_date).replace(
            tzinfo=timezone.utc).timestamp()) * _US
        self.version_switch = self.t0 + (self.cfg.days // 2) * 86400 * _US
        self.stats = dict(goals=0, failed_goals=0, gave_up_goals=0, retries_exhausted=0,
                          defect_turns=0, silent_defect_turns=0, misheard_turns=0,
                          transient_error_turns=0, rephrase_turns=0, repeat_turns=0,
                          quick_switch_after_give_up=0, same_intent_next=0,
                          same_intent_next_within_60s=0, sessions=0,
                          trap_topic_switch=0, trap_follow_up=0, trap_elicit=0,
                          trap_value_change=0, trap_restate=0)

    # ------------------------------------------------------------------ one turn
    def _canon(self, pairs):
        c = self.canon_cache.get(pairs)
        if c is None:
            c = tuple(sorted((n, normalize_text(v)) for n, v in pairs))
            self.canon_cache[pairs] = c
        return c

    def turn(self, rng, u, g, t, mis, ctx, force_success=False):
        w, cfg = self.w, self.cfg
        loc = g["locale"]
        text, _ = w.render(g, t, mis)
        key = w.render_key(g, t, mis)
        e = w.nlu[loc].get(key)
        silent = False
        if e is None:
            status, defect = "unhandled", True
            nlu_int = nlu_dom = None
            nlu_slots = None
            nconf = rng.betavariate(2, 5)
        else:
            nlu_int, nlu_dom, sl = e[0], e[1], e[2]
            nlu_slots = _slots(sl)
            correct = nlu_int == g["intent"] and self._canon(tuple(sl)) == self._canon(g["slots"])
            if correct:
                nconf = rng.betavariate(9, 2)
                if not force_success and rng.random() < cfg.transient_error_prob:
                    status, defect = "error", True
                    self.stats["transient_error_turns"] += 1
                else:
                    status, defect = "success", False
            elif nlu_int == g["intent"] and mis:
                nconf = rng.betavariate(6, 3)
                defect = True
                status = "success" if g["mishear_silent"] else "error"
                silent = status == "success"
            else:
                nconf = rng.betavariate(4, 3)
                status, defect, silent = "success", True, True
        aconf = rng.betavariate(4, 3) if mis else rng.betavariate(12, 1.5)
        barge = rng.random() < (cfg.barge_in_defect_prob if defect else cfg.barge_in_good_prob)
        fb = None
        if rng.random() < cfg.feedback_prob:
            r = rng.random()
            if r < cfg.feedback_zero_prob:
                fb = 0
            else:
                fb = -1 if defect else 1
                if rng.random() < cfg.feedback_flip_prob:
                    fb = -fb
        med = cfg.dwell_defect_median_ms if defect else cfg.dwell_good_median_ms
        dwell = int(rng.lognormvariate(math.log(med), cfg.dwell_sigma))
        if barge:
            dwell = int(dwell * 0.5)
        ts = ctx["ts"]
        n = ctx["n"]
        ctx["n"] += 1
        eid = f"ev-{h64(cfg.seed, u['user_id'], n):016x}"
        row = {
            "event_id": eid, "user_id": u["user_id"], "device_id": ctx["device"],
            "session_id": ctx["session_id"], "ts": ts, "locale": loc, "utterance": text,
            "asr_confidence": round(aconf, 4), "nlu_domain": nlu_dom, "nlu_intent": nlu_int,
            "nlu_slots": nlu_slots, "nlu_confidence": round(nconf, 4),
            "response_status": status, "barge_in": barge, "feedback": fb, "dwell_ms": dwell,
            "rewritten_from": None,
            "nlu_model_version": cfg.nlu_versions[0 if ts < self.version_switch else -1],
            "system_act": ("reprompt" if status == "unhandled" else "inform") if u.get("acts") else None,
        }
        self.log.append(row)
        self.stats["defect_turns"] += defect
        self.stats["silent_defect_turns"] += silent
        self.stats["misheard_turns"] += mis
        return row, defect

    def _advance(self, ctx, rng, lo, hi):
        """Move the clock to the next turn; clamp the previous turn's dwell to the gap."""
        gap = rng.uniform(lo, hi)
        prev = ctx.get("prev_row")
        gap_us = int(gap * _US)
        if prev is not None and prev["dwell_ms"] * 1000 > gap_us - 300_000:
            prev["dwell_ms"] = max(100, int(gap_us / 1000) - 300 - rng.randrange(500))
        ctx["ts"] += gap_us
        return gap

    def _popular_phrasing(self, rng, template_ids):
        """One of the templates, drawn by popularity: how a user picks another phrasing."""
        ws = [self.w.templates[x]["weight"] for x in template_ids]
        return self.w.templates[rng.choices(template_ids, weights=ws)[0]]

    # ------------------------------------------------------------------ a goal
    def goal(self, rng, u, g, ctx):
        w, cfg = self.w, self.cfg
        self.stats["goals"] += 1
        t = w.habit(u["user_id"], g["frame_id"])
        restating = ctx.pop("restate", False)
        if restating and rng.random() >= cfg.restate_same_words:  # the same request in other words
            others = [x for x in w.frames[g["frame_id"]] if x != t["tid"]]
            if others:
                t = self._popular_phrasing(rng, others)
        tried = [t["tid"]]
        trap = ctx.pop("trap", None)
        if not restating and cfg.elicit_prob and g["slots"] and rng.random() < cfg.elicit_prob:
            if self.elicitation(rng, u, g, t, ctx, trap):
                return "served"
        mis = g["mishear_value"] is not None and rng.random() < cfg.mishear_prob
        row, defect = self.turn(rng, u, g, t, mis, ctx)
        self.truth.append(self._truth(row, g, defect, None, trap))
        ctx["prev_row"] = row
        if not defect:
            return "served"
        self.stats["failed_goals"] += 1
        retries = 0
        while True:
            if cfg.topic_switch_prob and rng.random() < cfg.topic_switch_prob:
                self.stats["gave_up_goals"] += 1
                return "switched"
            if retries >= cfg.max_retries:
                self.stats["retries_exhausted"] += 1
                self.stats["gave_up_goals"] += 1
                return "gave_up"
            if rng.random() < cfg.abandon_prob:
                self.stats["gave_up_goals"] += 1
                return "gave_up"
            retries += 1
            self._advance(ctx, rng, *cfg.retry_gap_s)
            frame = w.frames[g["frame_id"]]
            if rng.random() < u["repeat_prob"]:
                kind = "repeat"
            else:
                kind = "rephrase"
                others = [x for x in frame if x not in tried]
                if not others:
                    kind = "repeat"
                else:
                    if rng.random() < u["know_prob"]:
                        good = [x for x in others if w.templates[x]["supported"]]
                        if good:
                            others = good
                    t = self._popular_phrasing(rng, others)
                    tried.append(t["tid"])
            p = cfg.mishear_prob if kind == "repeat" else cfg.mishear_prob_rephrase
            mis = g["mishear_value"] is not None and rng.random() < p
            prev = row
            row, defect = self.turn(rng, u, g, t, mis, ctx)
            self.stats["rephrase_turns" if kind == "rephrase" else "repeat_turns"] += 1
            self.truth.append(self._truth(row, g, defect, prev["event_id"]))
            ctx["prev_row"] = row
            if not defect:
                return "served"

    def _truth(self, row, g, defect, reph, trap=None):
        return {"event_id": row["event_id"], "goal_id": g["goal_id"], "gold_intent": g["intent"],
                "gold_slots": _slots(g["slots"]), "is_defect": bool(defect), "rephrase_of": reph,
                "trap": trap}

    def elicitation(self, rng, u, g, t, ctx, trap) -> bool:
        """The request without its slot values, the system's question (elicit), the values
        alone as the answer, which the system then serves. False (nothing said) when the
        template holds nothing but slots."""
        cfg = self.cfg
        bare = " ".join("".join(s for kind, s in t["parts"] if kind == 0).split())
        answer = " ".join(v for _, v in g["slots"])
        if not normalize_text(bare) or not normalize_text(answer):
            return False
        domain = g["intent"].split("_", 1)[0]
        acts = bool(u.get("acts"))
        row = self._plain_row(rng, u, ctx, g, bare, domain, [], "elicit" if acts else None)
        self.truth.append(self._truth(row, g, False, None, trap))
        ctx["prev_row"] = row
        self._advance(ctx, rng, *cfg.retry_gap_s)
        row = self._plain_row(rng, u, ctx, g, answer, domain, _slots(g["slots"]), "inform" if acts else None)
        self.truth.append(self._truth(row, g, False, None, "elicit"))
        ctx["prev_row"] = row
        self.stats["trap_elicit"] += 1
        return True

    def _plain_row(self, rng, u, ctx, g, text, domain, slots, act):
        """A turn the system understood and served (status success, no defect signals)."""
        cfg = self.cfg
        n = ctx["n"]
        ctx["n"] += 1
        row = {
            "event_id": f"ev-{h64(cfg.seed, u['user_id'], n):016x}", "user_id": u["user_id"],
            "device_id": ctx["device"], "session_id": ctx["session_id"], "ts": ctx["ts"], "locale": g["locale"],
            "utterance": text, "asr_confidence": round(rng.betavariate(12, 1.5), 4),
            "nlu_domain": domain, "nlu_intent": g["intent"], "nlu_slots": slots,
            "nlu_confidence": round(rng.betavariate(9, 2), 4), "response_status": "success",
            "barge_in": False, "feedback": None,
            "dwell_ms": int(rng.lognormvariate(math.log(cfg.dwell_good_median_ms), cfg.dwell_sigma)),
            "rewritten_from": None,
            "nlu_model_version": cfg.nlu_versions[0 if ctx["ts"] < self.version_switch else -1],
            "system_act": act,
        }
        self.log.append(row)
        return row

    # ------------------------------------------------------------------ a user
    def user(self, ui, u):
        w, cfg = self.w, self.cfg
        rng = rng_for(cfg.seed, "sim", u["user_id"])
        # a hash, not a draw: the share does not move any other random choice
        u["acts"] = hunit(cfg.seed, "system_act", u["user_id"]) < cfg.system_act_share
        ctx = {"n": 0}
        last_end = -10**18
        sidx = 0
        for day in range(cfg.days):
            ns = _poisson(rng, cfg.sessions_per_day_mean * u["activity"])
            day0 = self.t0 + day * 86400 * _US
            starts = sorted(rng.uniform(cfg.day_start_hour, cfg.day_end_hour) for _ in range(ns))
            for st in starts:
                ts = max(day0 + int(st * 3600 * _US),
                         last_end + int((cfg.min_session_gap_s + rng.expovariate(1 / 600)) * _US))
                ctx.update(ts=ts, device=rng.choice(u["devices"]), prev_row=None,
                           session_id=(f"s-{h64(cfg.seed, u['user_id'], sidx):016x}"
                                       if u["has_session_id"] else None))
                sidx += 1
                self.stats["sessions"] += 1
                self.session(rng, u, ctx)
                last_end = ctx["ts"] + ctx["prev_row"]["dwell_ms"] * 1000

    def session(self, rng, u, ctx):
        w, cfg = self.w, self.cfg
        m = cfg.goals_per_session_mean
        n_goals = 1
        while rng.random() > 1.0 / max(m, 1.0):
            n_goals += 1
        g = w.sample_goal(u["locale"], rng)
        for k in range(n_goals):
            out = self.goal(rng, u, g, ctx)
            if k == n_goals - 1:
                break
            sibling = (self._value_changed_sibling(g) if out != "served" and cfg.value_change_prob
                       and rng.random() < cfg.value_change_prob else None)
            if sibling is not None:  # at once, the same frame with one value changed (a new request)
                self._advance(ctx, rng, *cfg.retry_gap_s)
                g = sibling
                ctx["trap"] = "value_change"
                self.stats["trap_value_change"] += 1
            elif out == "switched":  # at once, with a re-ask's gap, to an unrelated goal
                self._advance(ctx, rng, *cfg.retry_gap_s)
                g = self._unrelated_goal(rng, u, g)
                ctx["trap"] = "topic_switch"
                self.stats["trap_topic_switch"] += 1
            elif out == "served" and cfg.restate_prob and rng.random() < cfg.restate_prob:
                # at once, with a re-ask's gap, the same goal again although it was served
                self._advance(ctx, rng, *cfg.retry_gap_s)
                ctx["trap"] = "restate"
                ctx["restate"] = True
                self.stats["trap_restate"] += 1
            elif out == "served" and cfg.follow_up_prob and rng.random() < cfg.follow_up_prob:
                same = [i for i in w.goals_by_intent[(g["locale"], g["intent"])]
                        if i != g["gidx"] and w.goals[i]["frame_id"] == g["frame_id"]]
                if same:
                    self._advance(ctx, rng, *cfg.retry_gap_s)
                    g = w.goals[rng.choice(same)]
                    ctx["trap"] = "follow_up"
                    self.stats["trap_follow_up"] += 1
                else:
                    self._advance(ctx, rng, *cfg.next_goal_gap_s)
                    g = w.sample_goal(u["locale"], rng)
            elif out == "served":
                gap = self._advance(ctx, rng, *cfg.next_goal_gap_s)
                nxt = None
                if rng.random() < cfg.same_intent_next_prob:
                    nxt = w.sample_same_intent(g, rng)
                    if nxt is not None:
                        self.stats["same_intent_next"] += 1
                        self.stats["same_intent_next_within_60s"] += gap <= 60
                g = nxt or w.sample_goal(u["locale"], rng)
            else:
                if rng.random() < cfg.quick_switch_prob:
                    gap = self._advance(ctx, rng, *cfg.quick_switch_gap_s)
                    self.stats["quick_switch_after_give_up"] += gap <= 60
                    if gap <= 60 and cfg.topic_switch_prob:  # labelled only when the traps are on
                        ctx["trap"] = "topic_switch"
                else:
                    self._advance(ctx, rng, *cfg.next_goal_gap_s)
                g = self._unrelated_goal(rng, u, g)

    def _value_changed_sibling(self, g):
        """The goal of g's frame whose slot values differ from g's in exactly one slot, by the
        most alike value (difflib ratio of the text keys, at least 0.5; ties: the lower goal
        index), or with ``value_change_alike`` False by the least alike value (ratio under
        0.5), or None. Cached per goal: every user changes a value the same way."""
        cache = self.__dict__.setdefault("_siblings", {})
        if g["gidx"] in cache:
            return cache[g["gidx"]]
        alike = self.cfg.value_change_alike
        w, best, best_ratio = self.w, None, 0.5
        mine = [(n, normalize_text(v)) for n, v in g["slots"]]
        for i in sorted(w.goals_by_intent[(g["locale"], g["intent"])]):
            o = w.goals[i]
            if i == g["gidx"] or o["frame_id"] != g["frame_id"] or o["unseen"]:
                continue
            theirs = [(n, normalize_text(v)) for n, v in o["slots"]]
            diff = [(a[1], b[1]) for a, b in zip(mine, theirs) if a != b]
            if len(theirs) != len(mine) or len(diff) != 1 or not all(diff[0]):
                continue
            ratio = difflib.SequenceMatcher(None, diff[0][0], diff[0][1], autojunk=False).ratio()
            if (ratio > best_ratio) if alike else (ratio < best_ratio):
                best, best_ratio = o, ratio
        cache[g["gidx"]] = best
        return best

    def _unrelated_goal(self, rng, u, g):
        g2 = self.w.sample_goal(u["locale"], rng)
        tries = 0
        while g2["intent"] == g["intent"] and tries < 10:  # an unrelated goal
            g2 = self.w.sample_goal(u["locale"], rng)
            tries += 1
        return g2

    # ------------------------------------------------------------------ flooding user
    def flood(self, u):
        w, cfg, f = self.w, self.cfg, self.w.flood
        rng = rng_for(cfg.seed, "flood-sim")
        loc = f["locale"]
        ga = {"goal_id": f["source_goal_id"], "intent": f["source_intent"],
              "slots": tuple(tuple(x) for x in f["source_slots"])}
        gb = w.goal(f["target_goal_id"])
        ctx = {"n": 0, "device": u["devices"][0], "session_id": None}
        left = cfg.flood_repeats
        per_day = math.ceil(left / cfg.days)
        for day in range(cfg.days):
            day0 = self.t0 + day * 86400 * _US
            ts = day0 + int(cfg.day_start_hour * 3600 * _US)
            k = 0
            while k < per_day and left > 0:
                ctx.update(ts=ts, prev_row=None)
                self.stats_flood_sessions += 1
                for j in range(min(rng.choice([1, 1, 2, 3]), left)):
                    if j:
                        self._advance(ctx, rng, 20.0, 50.0)
                    row = self._flood_row(rng, u, ctx, loc, f["source_text"], None, "unhandled", 0.2)
                    self.truth.append(self._truth(row, ga, True, None))
                    self._advance(ctx, rng, 1.5, 4.0)
                    e = w.nlu[loc][normalize_text(f["target_text"])]
                    row = self._flood_row(rng, u, ctx, loc, f["target_text"], e, "success", 0.9)
                    self.truth.append(self._truth(row, gb, False, None))
                    left -= 1
                    k += 1
                ts = ctx["ts"] + int((cfg.min_session_gap_s + rng.uniform(0, 900)) * _US)

    def _flood_row(self, rng, u, ctx, loc, text, e, status, nconf):
        cfg = self.cfg
        n = ctx["n"]
        ctx["n"] += 1
        row = {
            "event_id": f"ev-{h64(cfg.seed, u['user_id'], n):016x}", "user_id": u["user_id"],
            "device_id": ctx["device"], "session_id": None, "ts": ctx["ts"], "locale": loc,
            "utterance": text, "asr_confidence": round(rng.betavariate(12, 1.5), 4),
            "nlu_domain": e[1] if e else None, "nlu_intent": e[0] if e else None,
            "nlu_slots": _slots(e[2]) if e else None,
            "nlu_confidence": round(min(1.0, max(0.0, nconf + rng.uniform(-0.1, 0.1))), 4),
            "response_status": status, "barge_in": status != "success" and rng.random() < 0.5,
            "feedback": None, "dwell_ms": int(rng.lognormvariate(math.log(1500 if e is None else 9000), 0.5)),
            "rewritten_from": None,
            "nlu_model_version": cfg.nlu_versions[0 if ctx["ts"] < self.version_switch else -1],
            "system_act": None,
        }
        self.log.append(row)
        ctx["prev_row"] = row
        return row

    # ------------------------------------------------------------------ malformed
    def malformed(self):
        cfg = self.cfg
        rng = rng_for(cfg.seed, "malformed")
        fu = self.w.flood["user_id"] if self.w.flood else None
        base_rows = [r for r in self.log if r["user_id"] != fu]  # flood rows stay exact
        n = max(len(MALFORMED_VARIANTS), int(round(cfg.malformed_share * len(base_rows))))
        out, record = [], []
        long_src = [r["utterance"] for r in base_rows[:200]]
        for i in range(n):
            reason, var = MALFORMED_VARIANTS[i % len(MALFORMED_VARIANTS)]
            b = base_rows[rng.randrange(len(base_rows))]
            r = dict(b)
            r["event_id"] = f"ev-m{h64(cfg.seed, 'malformed', i):016x}"
            r["_malformed_dt"] = b["ts"]
            if reason == "missing_field":
                r[var] = None
            elif reason == "bad_timestamp":
                r["ts"] = (int(rng.uniform(0, 86400 * 300)) * _US if var == "1970"
                           else int(datetime(2099, 1, 1, tzinfo=timezone.utc).timestamp() * _US)
                           + rng.randrange(86400) * _US)
            elif reason == "bad_locale":
                r["locale"] = rng.choice(["english!", "en_US!", "??", "123-45"])
            elif reason == "empty_utterance":
                r["utterance"] = rng.choice(["   ", "", " \t "])
            elif reason == "utterance_too_long":
                parts = []
                while len(" ".join(parts)) <= 1000:  # strictly longer than the default limit
                    parts.append(rng.choice(long_src))
                r["utterance"] = " ".join(parts)
            elif reason == "unknown_status":
                r["response_status"] = "maybe"
            elif reason == "duplicate_event_id":
                r = dict(b)
                r["_malformed_dt"] = b["ts"]
                r["_dup"] = 1
            elif reason == "bad_type":
                if var == "asr_confidence":
                    r["asr_confidence"] = 7.5
                else:
                    r["feedback"] = 5
            out.append(r)
            record.append({"event_id": r["event_id"], "reason": reason,
                           "detail": var or None})
        return out, record


def _dt(ts_us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ts_us)).strftime("%Y-%m-%d")


def run_simulation(world: World, out_dir: str) -> dict:
    """Simulate the world's users into ``out_dir`` (a fresh folder). Returns the summary."""
    cfg = world.config
    sim = _Sim(world)
    sim.stats_flood_sessions = 0
    flood_user = None
    start = last_said = time.monotonic()
    for i, u in enumerate(world.users):
        if u["flood"]:
            flood_user = u
            continue
        sim.user(i, u)
        now = time.monotonic()
        if now - last_said >= PROGRESS_EVERY_S:  # a person waiting sees a rate and an ETA
            last_said, rate = now, (i + 1) / (now - start)
            log.info(f"[simulate] {i + 1} of {len(world.users)} users, {rate:.0f} users/s, "
                     f"about {(len(world.users) - i - 1) / rate:.0f} s left, then writing the log")
    reg_stats = dict(sim.stats)
    n_regular_rows = len(sim.log)
    if flood_user is not None:
        sim.flood(flood_user)
    bad_rows, bad_record = sim.malformed()

    # ---- log
    rows = [(r["ts"], r["event_id"], 0, r) for r in sim.log]
    rows += [(r["ts"], r["event_id"], 1 + r.get("_dup", 0), r) for r in bad_rows]
    rows.sort(key=lambda x: (x[0], x[1], x[2]))
    parts: dict[str, list[dict]] = {}
    for _, _, _, r in rows:
        parts.setdefault(_dt(r.get("_malformed_dt", r["ts"])), []).append(r)
    log_dir = os.path.join(out_dir, "log")
    os.makedirs(log_dir)
    names = LOG_SCHEMA.names
    for dt in sorted(parts):
        pr = parts[dt]
        cols = {n: [r[n] for r in pr] for n in names}
        tab = pa.table({n: pa.array(cols[n], LOG_SCHEMA.field(n).type) for n in names},
                       schema=LOG_SCHEMA)
        d = os.path.join(log_dir, f"dt={dt}")
        os.makedirs(d)
        pq.write_table(tab, os.path.join(d, "part-00000.parquet"), compression="snappy",
                       write_statistics=True)
    # ---- truth
    truth = sorted(sim.truth, key=lambda r: r["event_id"])
    tt = pa.table({n: pa.array([r[n] for r in truth], TRUTH_SCHEMA.field(n).type)
                   for n in TRUTH_SCHEMA.names}, schema=TRUTH_SCHEMA)
    pq.write_table(tt, os.path.join(out_dir, "truth.parquet"), compression="snappy")
    # ---- world
    world.save(os.path.join(out_dir, "world"))

    # ---- summary
    s = reg_stats
    regular_users = [u for u in world.users if not u["flood"]]
    status_counts: dict[str, int] = {}
    for r in sim.log:
        status_counts[r["response_status"]] = status_counts.get(r["response_status"], 0) + 1
    per_locale: dict[str, int] = {}
    for r in sim.log:
        per_locale[r["locale"]] = per_locale.get(r["locale"], 0) + 1
    mal_counts: dict[str, int] = {}
    for m in bad_record:
        mal_counts[m["reason"]] = mal_counts.get(m["reason"], 0) + 1
    f = world.flood
    summary = {
        "format": 1,
        "seed": cfg.seed,
        "locales": list(cfg.locales),
        "start_date": cfg.start_date,
        "days": cfg.days,
        "rows": len(rows),
        "turns": len(sim.log),
        "turns_regular_users": n_regular_rows,
        "turns_flood_user": len(sim.log) - n_regular_rows,
        "malformed_rows": len(bad_rows),
        "malformed_by_reason": dict(sorted(mal_counts.items())),
        "malformed": bad_record,
        "malformed_note": ("malformed rows are extra rows outside truth.parquet; a "
                           "duplicate_event_id row is an identical copy of a valid turn "
                           "(same event_id, listed in truth) written right after it"),
        "users": len(world.users),
        "users_regular": len(regular_users),
        "users_with_session_id": sum(u["has_session_id"] for u in world.users),
        "devices": sum(len(u["devices"]) for u in world.users),
        "sessions": s["sessions"] + sim.stats_flood_sessions,
        "sessions_regular": s["sessions"],
        "goals_requested": s["goals"],
        "failed_goals": s["failed_goals"],
        "gave_up_goals": s["gave_up_goals"],
        "give_up_share": s["gave_up_goals"] / max(1, s["failed_goals"]),
        "defect_turns": s["defect_turns"],
        "defect_share": s["defect_turns"] / max(1, n_regular_rows),
        "silent_defect_turns": s["silent_defect_turns"],
        "silent_defect_share": s["silent_defect_turns"] / max(1, s["defect_turns"]),
        "misheard_turns": s["misheard_turns"],
        "transient_error_turns": s["transient_error_turns"],
        "rephrase_turns": s["rephrase_turns"],
        "repeat_turns": s["repeat_turns"],
        "retries_exhausted": s["retries_exhausted"],
        "quick_switch_after_give_up": s["quick_switch_after_give_up"],
        "same_intent_next_goal": s["same_intent_next"],
        "same_intent_next_goal_within_60s": s["same_intent_next_within_60s"],
        "traps": {"topic_switch": s["trap_topic_switch"], "follow_up": s["trap_follow_up"],
                  "elicit": s["trap_elicit"], "value_change": s["trap_value_change"],
                  "restate": s["trap_restate"]},
        "response_status": dict(sorted(status_counts.items())),
        "turns_per_locale": dict(sorted(per_locale.items())),
        "world": {
            "templates": len(world.templates),
            "templates_supported": sum(t["supported"] for t in world.templates),
            "templates_confused": sum(bool(t["confused_intent"]) for t in world.templates),
            "frames": len(world.frames),
            "goals": len(world.goals),
            "goals_mishearing": sum(g["mishear_value"] is not None for g in world.goals),
            "nlu_keys": sum(len(v) for v in world.nlu.values()),
        },
        "flood": None if not f else {
            "locale": f["locale"], "user_id": f["user_id"],
            "source_text": f["source_text"], "target_text": f["target_text"],
            "source_key": f["source_key"], "target_key": f["target_key"],
            "repeats": cfg.flood_repeats,
        },
        "config": cfg.to_dict(),
    }
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, ensure_ascii=False, indent=1, sort_keys=True)
    return summary
