"""The simulated world: goals, phrasings, users' habits and the simulated NLU.

A *template* is a real MASSIVE utterance with its slot values cut out (the literal text
is taken from ``utt`` itself, so scripts without spaces around slots stay exact). A
*frame* is (intent, sorted multiset of slot names); a *goal* is (intent, slot values)
from a real record; its phrasings are the templates of its frame filled with its values.

The simulated NLU is a lookup table from text key (contract section 3) to an
interpretation, saved in ``world/nlu.parquet``: a supported template filled with any
goal's values (heard correctly or misheard) is understood as that template's intent with
the heard values; a "confused" unsupported template is understood as a fixed wrong
intent; everything else is not understood (None).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
from bisect import bisect_right
from collections import defaultdict
from itertools import accumulate
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.core.text import normalize_text
from .config import SimConfig, resolve_data_dir

_SLOT_RE = re.compile(r"\[\s*([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")

SLOTS_TYPE = pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))


def h64(*parts: Any) -> int:
    """Deterministic 64-bit hash of the parts (platform and process independent)."""
    b = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "big")


def hunit(*parts: Any) -> float:
    """Deterministic uniform in [0, 1) from the parts."""
    return h64(*parts) / 2.0**64


def rng_for(*parts: Any) -> random.Random:
    return random.Random(h64(*parts))


def _slots_list(pairs) -> list[dict]:
    return [{"name": n, "value": v} for n, v in pairs]


def _canon_slots(pairs) -> tuple:
    return tuple(sorted((n, normalize_text(v)) for n, v in pairs))


# ----------------------------------------------------------------------------------------
# parsing MASSIVE


def parse_record(annot: str, utt: str):
    """Split a record into template parts and slot (name, value) pairs, aligned on ``utt``.

    Parts: list of (0, literal) or (1, slot_name). Returns None when unalignable."""
    slots = [(n.strip(), v) for n, v in _SLOT_RE.findall(annot)]
    parts: list[tuple[int, str]] = []
    cur = 0
    for n, v in slots:
        if not v:
            return None
        i = utt.find(v, cur)
        if i < 0:
            return None
        if i > cur:
            parts.append((0, utt[cur:i]))
        parts.append((1, n))
        cur = i + len(v)
    if cur < len(utt):
        parts.append((0, utt[cur:]))
    return parts, slots


def render(parts, slot_pairs, override: dict | None = None) -> tuple[str, list]:
    """Fill template parts with the goal's (name, value) pairs.

    The k-th occurrence of a slot name takes the k-th value of that name. ``override``
    maps (name, k) -> value (for misheard values). Returns (text, slots in text order)."""
    out = []
    used = []
    if len(slot_pairs) <= 1 and not override:
        v0 = slot_pairs[0][1] if slot_pairs else None
        for kind, s in parts:
            if kind == 0:
                out.append(s)
            else:
                out.append(v0)
                used.append((s, v0))
        return "".join(out), used
    byname: dict[str, list[str]] = {}
    for n, v in slot_pairs:
        byname.setdefault(n, []).append(v)
    seen: dict[str, int] = {}
    for kind, s in parts:
        if kind == 0:
            out.append(s)
        else:
            k = seen.get(s, 0)
            seen[s] = k + 1
            v = byname[s][k]
            if override and (s, k) in override:
                v = override[(s, k)]
            out.append(v)
            used.append((s, v))
    return "".join(out), used


def _perturb(value: str, rng: random.Random, alphabet: str) -> str | None:
    """A character-level ASR-style perturbation of a real value (None if impossible)."""
    chars = list(value)
    for _ in range(20):
        c = chars[:]
        op = rng.randrange(4)
        idx = [i for i, ch in enumerate(c) if not ch.isspace()]
        if not idx:
            return None
        i = rng.choice(idx)
        if op == 0 and len(idx) >= 2:  # swap with neighbour
            j = i + 1 if i + 1 < len(c) and not c[i + 1].isspace() else i - 1
            if j < 0 or c[j].isspace():
                continue
            c[i], c[j] = c[j], c[i]
        elif op == 1 and len(idx) >= 3:  # drop
            del c[i]
        elif op == 2:  # double
            c.insert(i, c[i])
        else:  # replace with a character of the same script (from real values)
            if not alphabet:
                continue
            c[i] = rng.choice(alphabet)
        out = "".join(c)
        if normalize_text(out) and normalize_text(out) != normalize_text(value):
            return out
    return None


# ----------------------------------------------------------------------------------------


class World:
    """Goals, phrasings, users and the simulated NLU of one simulation."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.templates: list[dict] = []  # tid -> dict
        self.frames: dict[str, list[int]] = {}  # frame_id -> [tid]
        self.goals: list[dict] = []  # gidx -> dict
        self.goal_index: dict[str, int] = {}
        self.users: list[dict] = []
        self.flood: dict | None = None
        self.nlu: dict[str, dict[str, tuple]] = {}  # locale -> key -> (intent, domain, slots)
        self._derive()

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, config: SimConfig) -> "World":
        w = cls.__new__(cls)
        w.config = config
        w.templates, w.frames, w.goals, w.goal_index = [], {}, [], {}
        w.users, w.flood, w.nlu = [], None, {}
        for loc in config.locales:
            w._build_locale(loc)
        w._derive()
        w._build_nlu()
        w._build_users()
        if config.flood:
            w._build_flood()
        return w

    def _build_locale(self, loc: str) -> None:
        cfg = self.config
        path = os.path.join(resolve_data_dir(cfg.data_dir), f"{loc}.jsonl.gz")
        if not os.path.exists(path):
            raise FileNotFoundError(f"MASSIVE locale file not found: {path}")
        frame_tmpls: dict[tuple, dict[str, dict]] = defaultdict(dict)  # frame -> skel -> tmpl
        records = []
        values_by_slot: dict[str, set] = defaultdict(set)
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                p = parse_record(r["annot_utt"], r["utt"])
                if p is None:
                    continue
                parts, slots = p
                names = tuple(sorted(n for n, _ in slots))
                frame = (r["intent"], names)
                # skeleton: normalized template with placeholders; dedupes near-identical ones
                ph = [(k, f"zqz{names.index(s)}zqz" if k else s) for k, s in parts]
                skel = normalize_text("".join(s for _, s in ph))
                if not skel:
                    continue
                for n, v in slots:
                    values_by_slot[n].add(v)
                if skel not in frame_tmpls[frame]:
                    frame_tmpls[frame][skel] = {
                        "parts": parts, "scenario": r["scenario"], "intent": r["intent"],
                        "src_id": r["id"], "src_slots": slots, "src_utt": r["utt"],
                    }
                records.append((frame, r["intent"], r["scenario"], slots, r["id"]))
        # frames with enough templates; sample to the cap
        intents_by_scen: dict[str, set] = defaultdict(set)
        for (intent, _), tm in frame_tmpls.items():
            for t in tm.values():
                intents_by_scen[t["scenario"]].add(intent)
        all_intents = sorted({i for (i, _) in frame_tmpls})
        scen_of_intent = {}
        for s, ints in intents_by_scen.items():
            for i in ints:
                scen_of_intent[i] = s
        kept_frames = {}
        for frame in sorted(frame_tmpls):
            tm = frame_tmpls[frame]
            if len(tm) < cfg.min_templates_per_frame:
                continue
            skels = sorted(tm)
            rng = rng_for(cfg.seed, "frame", loc, frame)
            rng.shuffle(skels)
            skels = skels[: cfg.max_templates_per_frame]
            frame_id = f"{loc}:{frame[0]}:{'+'.join(frame[1])}"
            tids = []
            n = len(skels)
            weights = [1.0 / (k + 1) ** cfg.template_zipf_s for k in range(n)]
            sup = [rng.random() < cfg.supported_share for _ in range(n)]
            if not any(sup):
                sup[rng.randrange(n)] = True
            for k, sk in enumerate(skels):
                t = tm[sk]
                confused = None
                if not sup[k] and rng.random() < cfg.confused_share:
                    same = sorted(intents_by_scen[t["scenario"]] - {frame[0]})
                    pool = same if same else [i for i in all_intents if i != frame[0]]
                    confused = rng.choice(pool)
                tid = len(self.templates)
                self.templates.append({
                    "tid": tid, "locale": loc, "frame_id": frame_id, "intent": frame[0],
                    "scenario": t["scenario"], "parts": t["parts"], "supported": sup[k],
                    "confused_intent": confused,
                    "confused_domain": scen_of_intent.get(confused) if confused else None,
                    "weight": weights[k], "src_id": t["src_id"], "src_utt": t["src_utt"],
                    "src_slots": t["src_slots"],
                })
                tids.append(tid)
            self.frames[frame_id] = tids
            kept_frames[frame] = frame_id
        self._add_collisions(loc, kept_frames)
        # goals from records of kept frames
        seen = {}
        for frame, intent, scen, slots, rid in records:
            fid = kept_frames.get(frame)
            if fid is None:
                continue
            canon = tuple(sorted(slots))
            gid = f"{loc}:{intent}:{hashlib.blake2b(json.dumps(canon, ensure_ascii=False).encode(), digest_size=5).hexdigest()}"
            if gid in seen:
                continue
            seen[gid] = {"goal_id": gid, "locale": loc, "intent": intent, "scenario": scen,
                         "frame_id": fid, "slots": canon}
        goals = [seen[k] for k in sorted(seen)]
        rng = rng_for(cfg.seed, "goals", loc)
        rng.shuffle(goals)
        goals = goals[: cfg.max_goals_per_locale]
        alph = "".join(sorted({ch for vs in values_by_slot.values() for v in vs for ch in v
                               if not ch.isspace()}))
        norm_vals: dict[str, list] = {}
        for rank, g in enumerate(goals):
            g["rank"] = rank
            g["weight"] = 1.0 / (rank + cfg.goal_zipf_q) ** cfg.goal_zipf_s
            g["mishear_slot"], g["mishear_value"], g["mishear_kind"] = None, None, None
            g["mishear_silent"] = False
            if g["slots"] and rng.random() < cfg.mishear_goal_share:
                i = rng.randrange(len(g["slots"]))
                name, val = g["slots"][i]
                k = sum(1 for n, _ in g["slots"][:i] if n == name)
                bad = None
                kind = "char" if rng.random() < cfg.mishear_char_share else "substitute"
                if kind == "substitute":
                    if name not in norm_vals:
                        norm_vals[name] = sorted((v, normalize_text(v)) for v in values_by_slot[name])
                    nv = normalize_text(val)
                    others = [v for v, n in norm_vals[name] if n and n != nv]
                    if others:
                        bad = rng.choice(others)
                    else:
                        kind = "char"
                if bad is None:
                    kind = "char"
                    bad = _perturb(val, rng, alph)
                if bad is not None:
                    g["mishear_slot"] = [name, k]
                    g["mishear_value"] = bad
                    g["mishear_kind"] = kind
                    g["mishear_silent"] = rng.random() < cfg.mishear_silent_share
            g["gidx"] = len(self.goals)
            self.goals.append(g)

    def _add_collisions(self, loc: str, kept_frames: dict) -> None:
        """collide_frame_share of the one-slot frames get a not-understood phrasing made of
        another one-slot frame's understood carrier phrase (another intent), as popular as
        the frame's top phrasing."""
        cfg = self.config
        if cfg.collide_frame_share <= 0:
            return
        one_slot = [(frame, fid) for frame, fid in sorted(kept_frames.items()) if len(frame[1]) == 1]
        donors = [(frame, self.templates[t]) for frame, fid in one_slot for t in self.frames[fid]
                  if self.templates[t]["supported"] and sum(k for k, _ in self.templates[t]["parts"]) == 1]
        for frame, fid in one_slot:
            rng = rng_for(cfg.seed, "collide", loc, frame)
            if rng.random() >= cfg.collide_frame_share:
                continue
            top = self.templates[self.frames[fid][0]]
            pool = [t for f, t in donors if f[0] != frame[0]]
            # another intent of the same scenario where there is one ("did you set the alarm
            # for {date}" of alarm_query said to remove one): the realistic collision
            pool = [t for t in pool if t["scenario"] == top["scenario"]] or pool
            if not pool:
                continue
            d = rng.choice(pool)
            slot = frame[1][0]
            parts = [(k, slot if k else s) for k, s in d["parts"]]
            tid = len(self.templates)
            self.templates.append({
                "tid": tid, "locale": loc, "frame_id": fid, "intent": frame[0], "scenario": top["scenario"],
                "parts": parts, "supported": False, "confused_intent": None, "confused_domain": None,
                "weight": max(self.templates[t]["weight"] for t in self.frames[fid]),
                "src_id": d["src_id"], "src_utt": d["src_utt"], "src_slots": d["src_slots"],
                "collides_with": d["frame_id"],
            })
            self.frames[fid].append(tid)

    def _build_nlu(self) -> None:
        """Register every phrasing of every goal (heard right and misheard) in the NLU."""
        entries: dict[str, dict[str, tuple]] = {loc: {} for loc in self.config.locales}
        passes = []
        for g in self.goals:
            for tid in self.frames[g["frame_id"]]:
                t = self.templates[tid]
                if t["supported"]:
                    passes.append((0, g, t, False))
                    if g["mishear_value"] is not None:
                        passes.append((1, g, t, True))
                elif t["confused_intent"]:
                    passes.append((2, g, t, False))
                    if g["mishear_value"] is not None:
                        passes.append((3, g, t, True))
        passes.sort(key=lambda x: (x[0], x[1]["gidx"], x[2]["tid"]))
        for _, g, t, mis in passes:
            text, used = self.render(g, t, mis)
            key = normalize_text(text)
            tab = entries[g["locale"]]
            if key in tab:
                continue
            if t["supported"]:
                tab[key] = (t["intent"], t["scenario"], tuple(used), t["tid"])
            else:
                tab[key] = (t["confused_intent"], t["confused_domain"], tuple(used), t["tid"])
        self.nlu = entries

    def _build_users(self) -> None:
        cfg = self.config
        locs = list(cfg.locales)
        for i in range(cfg.users):
            loc = locs[i % len(locs)]
            rng = rng_for(cfg.seed, "user", i)
            uid = f"u{h64(cfg.seed, 'uid', i):016x}"
            ndev = 2 if rng.random() < cfg.two_device_share else 1
            devs = [f"d{h64(cfg.seed, 'dev', i, k):016x}" for k in range(ndev)]
            act = rng.lognormvariate(-cfg.activity_sigma**2 / 2, cfg.activity_sigma)
            rep = min(0.95, max(0.0, rng.betavariate(2, 2 / cfg.repeat_prob_mean - 2)))
            know = min(1.0, max(0.0, rng.betavariate(3, 3 / cfg.know_supported_mean - 3)))
            self.users.append({
                "user_id": uid, "locale": loc, "devices": devs,
                "has_session_id": rng.random() < cfg.session_id_user_share,
                "activity": act, "repeat_prob": rep, "know_prob": know, "flood": False,
            })

    def _build_flood(self) -> None:
        cfg = self.config
        loc = cfg.locales[0]
        rng = rng_for(cfg.seed, "flood")
        # A: the original MASSIVE utterance of an unsupported, not-confused template
        cands_a = [t for t in self.templates if t["locale"] == loc and not t["supported"]
                   and not t["confused_intent"]
                   and self.interpret(loc, t["src_utt"]) is None]
        a = rng.choice(cands_a)
        cands_b = [t for t in self.templates if t["locale"] == loc and t["supported"]
                   and t["scenario"] != a["scenario"]]
        cands_b = [t for t in cands_b if (self.interpret(loc, t["src_utt"]) or {}).get("intent") == t["intent"]
                   and self._goal_of_src(t) is not None
                   and not self.goals[self.goal_index[self._goal_of_src(t)]]["unseen"]
                   and self.serves(loc, t["src_utt"], self._goal_of_src(t))]
        b = rng.choice(cands_b)
        uid = f"u{h64(cfg.seed, 'flood-user'):016x}"
        self.users.append({
            "user_id": uid, "locale": loc, "devices": [f"d{h64(cfg.seed, 'flood-dev'):016x}"],
            "has_session_id": False, "activity": 1.0, "repeat_prob": 0.0, "know_prob": 0.0,
            "flood": True,
        })
        ga = self._goal_of_src(a) or self._src_goal_id(a)
        self.flood = {
            "locale": loc, "user_id": uid,
            "source_text": a["src_utt"], "target_text": b["src_utt"],
            "source_key": normalize_text(a["src_utt"]), "target_key": normalize_text(b["src_utt"]),
            "source_goal_id": ga, "source_intent": a["intent"],
            "source_slots": [list(x) for x in sorted(a["src_slots"])],
            "target_goal_id": self._goal_of_src(b), "repeats": cfg.flood_repeats,
        }

    def _src_goal_id(self, t: dict) -> str:
        canon = tuple(sorted(t["src_slots"]))
        return f"{t['locale']}:{t['intent']}:{hashlib.blake2b(json.dumps(canon, ensure_ascii=False).encode(), digest_size=5).hexdigest()}"

    def _goal_of_src(self, t: dict) -> str | None:
        gid = self._src_goal_id(t)
        return gid if gid in self.goal_index else None

    # ------------------------------------------------------------------ derived indexes
    def _derive(self) -> None:
        self.goal_index = {g["goal_id"]: g["gidx"] for g in self.goals}
        self.goals_by_locale: dict[str, list[int]] = defaultdict(list)
        self.goals_by_intent: dict[tuple, list[int]] = defaultdict(list)
        for g in self.goals:
            self.goals_by_locale[g["locale"]].append(g["gidx"])
            self.goals_by_intent[(g["locale"], g["intent"])].append(g["gidx"])
        share = getattr(self.config, "unseen_goal_share", 0.0)
        for g in self.goals:  # never requested in the log; fresh traffic requests them
            g["unseen"] = share > 0 and hunit(self.config.seed, "unseen", g["goal_id"]) < share
        self.goal_cum = {loc: list(accumulate(self.goals[i]["weight"] for i in idx))
                         for loc, idx in self.goals_by_locale.items()}
        self.seen_goals_by_locale = {loc: [i for i in idx if not self.goals[i]["unseen"]]
                                     for loc, idx in self.goals_by_locale.items()}
        self.seen_goal_cum = {loc: list(accumulate(self.goals[i]["weight"] for i in idx))
                              for loc, idx in self.seen_goals_by_locale.items()}
        self.frame_cum = {fid: list(accumulate(self.templates[t]["weight"] for t in tids))
                          for fid, tids in self.frames.items()}
        self._render_cache: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ primitives
    def render(self, g: dict, t: dict, misheard: bool) -> tuple[str, list]:
        ck = (g["gidx"], t["tid"], misheard)
        r = self._render_cache.get(ck)
        if r is None:
            override = None
            if misheard and g["mishear_value"] is not None:
                override = {tuple(g["mishear_slot"]): g["mishear_value"]}
            text, used = render(t["parts"], g["slots"], override)
            r = (text, used, normalize_text(text))
            self._render_cache[ck] = r
        return r[0], r[1]

    def render_key(self, g: dict, t: dict, misheard: bool) -> str:
        self.render(g, t, misheard)
        return self._render_cache[(g["gidx"], t["tid"], misheard)][2]

    def sample_goal(self, locale: str, rng: random.Random, include_unseen: bool = False) -> dict:
        """A goal by popularity; the log's goals leave out the unseen ones (fresh traffic
        passes include_unseen)."""
        cum, idx = (self.goal_cum[locale], self.goals_by_locale[locale]) if include_unseen else \
            (self.seen_goal_cum[locale], self.seen_goals_by_locale[locale])
        i = bisect_right(cum, rng.random() * cum[-1])
        return self.goals[idx[min(i, len(cum) - 1)]]

    def sample_same_intent(self, g: dict, rng: random.Random) -> dict | None:
        pool = [i for i in self.goals_by_intent[(g["locale"], g["intent"])] if i != g["gidx"] and not self.goals[i]["unseen"]]
        if not pool:
            return None
        ws = [self.goals[i]["weight"] for i in pool]
        # prefer the same frame (e.g. "alarm for five" -> "alarm for six")
        ws = [w * (3.0 if self.goals[i]["frame_id"] == g["frame_id"] else 1.0)
              for w, i in zip(ws, pool)]
        return self.goals[rng.choices(pool, weights=ws)[0]]

    def habit(self, user_id: str, frame_id: str) -> dict:
        """The user's habitual phrasing of a frame (deterministic, popularity weighted)."""
        cum = self.frame_cum[frame_id]
        u = hunit(self.config.seed, "habit", user_id, frame_id)
        i = min(bisect_right(cum, u * cum[-1]), len(cum) - 1)
        return self.templates[self.frames[frame_id][i]]

    # ------------------------------------------------------------------ evaluation API
    def interpret(self, locale: str, text: str) -> dict | None:
        """The simulated NLU on a text (raw or already a text key): None if not understood."""
        tab = self.nlu.get(locale)
        if tab is None or text is None:
            return None
        e = tab.get(text)
        if e is None:
            e = tab.get(normalize_text(text))
        if e is None:
            return None
        return {"intent": e[0], "domain": e[1], "slots": _slots_list(e[2])}

    def serves(self, locale: str, text: str, goal_id: str) -> bool:
        """Whether saying ``text`` gets the goal served (ignoring transient failures)."""
        gi = self.goal_index.get(goal_id)
        if gi is None:
            return False
        g = self.goals[gi]
        if g["locale"] != locale:
            return False
        it = self.interpret(locale, text)
        if it is None or it["intent"] != g["intent"]:
            return False
        return _canon_slots((s["name"], s["value"]) for s in it["slots"]) == _canon_slots(g["slots"])

    def goal(self, goal_id: str) -> dict:
        return self.goals[self.goal_index[goal_id]]

    def flood_pairs(self) -> list[tuple[str, str, str]]:
        """[(locale, source_text, target_text)] of the flooding user's bogus pair(s)."""
        if not self.flood:
            return []
        f = self.flood
        return [(f["locale"], f["source_text"], f["target_text"])]

    def fresh_traffic(self, n: int, seed: int = 1) -> pd.DataFrame:
        """First attempts of ``n`` new goal requests, from the log's distributions.

        Users are drawn by activity, goals by popularity in the user's locale, phrasing by
        the user's habit, and the goal's recurrent mishearing applies (``utterance`` is
        what ASR heard). Use a seed different from the log's."""
        cfg = self.config
        rng = rng_for(cfg.seed, "fresh", seed)
        users = [u for u in self.users if not u["flood"]]
        ucum = list(accumulate(u["activity"] for u in users))
        rows = []
        for k in range(n):
            u = users[min(bisect_right(ucum, rng.random() * ucum[-1]), len(users) - 1)]
            g = self.sample_goal(u["locale"], rng, include_unseen=True)
            t = self.habit(u["user_id"], g["frame_id"])
            mis = g["mishear_value"] is not None and rng.random() < cfg.mishear_prob
            text, _ = self.render(g, t, mis)
            rows.append({
                "request_id": f"f{seed}-{k:08d}", "locale": g["locale"], "user_id": u["user_id"],
                "goal_id": g["goal_id"], "gold_intent": g["intent"],
                "gold_slots": _slots_list(g["slots"]), "template_id": t["tid"],
                "misheard": mis, "utterance": text,
                "text": self.render_key(g, t, mis), "unseen_goal": bool(g["unseen"]),
            })
        return pd.DataFrame(rows, columns=["request_id", "locale", "user_id", "goal_id",
                                           "gold_intent", "gold_slots", "template_id",
                                           "misheard", "utterance", "text", "unseen_goal"])

    def parse(self, locale: str, key: str) -> list[tuple[str, list]]:
        """(intent, [(slot name, value key)]) of the phrasings (templates) of the locale
        that render to the text key `key` with some values, those with the most fixed text
        only: what a person would read the text as (evaluation judges weak labels of texts
        no one said with it)."""
        if not hasattr(self, "_parsers"):
            self._parsers = {}
        if locale not in self._parsers:
            compiled = []
            for t in self.templates:
                if t["locale"] != locale:
                    continue
                rx, names = [], []
                for kind, piece in t["parts"]:
                    if kind:
                        rx.append(r"\s?(.+?)\s?")
                        names.append(piece)
                    else:
                        lit = normalize_text(piece)
                        if lit:
                            rx.append(re.escape(lit))
                literal = sum(len(normalize_text(p)) for k, p in t["parts"] if not k)
                if literal:  # a phrasing of bare slots reads any text
                    compiled.append((re.compile("".join(rx)), names, t["intent"], literal))
            self._parsers[locale] = compiled
        found = []
        for rx, names, intent, literal in self._parsers[locale]:
            m = rx.fullmatch(key)
            if m is not None:
                found.append((literal, intent, [(n, v.strip()) for n, v in zip(names, m.groups())]))
        # the phrasings with the most fixed text: the reading a person makes
        best = max((f[0] for f in found), default=0)
        return [(intent, slots) for literal, intent, slots in found if literal == best]

    # ------------------------------------------------------------------ persistence
    def save(self, world_dir: str) -> None:
        os.makedirs(world_dir, exist_ok=True)
        wopt = dict(compression="zstd", use_dictionary=True, write_statistics=False)
        t = pa.table({
            "template_id": pa.array([x["tid"] for x in self.templates], pa.int32()),
            "locale": [x["locale"] for x in self.templates],
            "frame_id": [x["frame_id"] for x in self.templates],
            "intent": [x["intent"] for x in self.templates],
            "scenario": [x["scenario"] for x in self.templates],
            "parts": [json.dumps(x["parts"], ensure_ascii=False) for x in self.templates],
            "supported": pa.array([x["supported"] for x in self.templates], pa.bool_()),
            "confused_intent": pa.array([x["confused_intent"] for x in self.templates], pa.string()),
            "confused_domain": pa.array([x["confused_domain"] for x in self.templates], pa.string()),
            "weight": [x["weight"] for x in self.templates],
            "src_id": [x["src_id"] for x in self.templates],
            "src_utt": [x["src_utt"] for x in self.templates],
            "src_slots": pa.array([_slots_list(x["src_slots"]) for x in self.templates], SLOTS_TYPE),
        })
        pq.write_table(t, os.path.join(world_dir, "templates.parquet"), **wopt)
        g = pa.table({
            "goal_id": [x["goal_id"] for x in self.goals],
            "locale": [x["locale"] for x in self.goals],
            "intent": [x["intent"] for x in self.goals],
            "scenario": [x["scenario"] for x in self.goals],
            "frame_id": [x["frame_id"] for x in self.goals],
            "slots": pa.array([_slots_list(x["slots"]) for x in self.goals], SLOTS_TYPE),
            "rank": pa.array([x["rank"] for x in self.goals], pa.int32()),
            "weight": [x["weight"] for x in self.goals],
            "mishear_slot": pa.array([x["mishear_slot"][0] if x["mishear_slot"] else None for x in self.goals], pa.string()),
            "mishear_slot_k": pa.array([x["mishear_slot"][1] if x["mishear_slot"] else None for x in self.goals], pa.int32()),
            "mishear_value": pa.array([x["mishear_value"] for x in self.goals], pa.string()),
            "mishear_kind": pa.array([x["mishear_kind"] for x in self.goals], pa.string()),
            "mishear_silent": pa.array([x["mishear_silent"] for x in self.goals], pa.bool_()),
        })
        pq.write_table(g, os.path.join(world_dir, "goals.parquet"), **wopt)
        u = pa.table({
            "user_id": [x["user_id"] for x in self.users],
            "locale": [x["locale"] for x in self.users],
            "devices": pa.array([x["devices"] for x in self.users], pa.list_(pa.string())),
            "has_session_id": pa.array([x["has_session_id"] for x in self.users], pa.bool_()),
            "activity": [float(x["activity"]) for x in self.users],
            "repeat_prob": [float(x["repeat_prob"]) for x in self.users],
            "know_prob": [float(x["know_prob"]) for x in self.users],
            "flood": pa.array([x["flood"] for x in self.users], pa.bool_()),
        })
        pq.write_table(u, os.path.join(world_dir, "users.parquet"), **wopt)
        locs, keys, ints, doms, slots, tids = [], [], [], [], [], []
        for loc in self.config.locales:
            for k in sorted(self.nlu[loc]):
                e = self.nlu[loc][k]
                locs.append(loc); keys.append(k); ints.append(e[0]); doms.append(e[1])
                slots.append(_slots_list(e[2])); tids.append(e[3])
        n = pa.table({"locale": locs, "key": keys, "intent": ints, "domain": doms,
                      "slots": pa.array(slots, SLOTS_TYPE),
                      "template_id": pa.array(tids, pa.int32())})
        pq.write_table(n, os.path.join(world_dir, "nlu.parquet"), **wopt)
        with open(os.path.join(world_dir, "world.json"), "w", encoding="utf-8") as f:
            json.dump({"format": 1, "config": self.config.to_dict(), "flood": self.flood},
                      f, ensure_ascii=False, indent=1, sort_keys=True)

    @classmethod
    def load(cls, sim_dir: str) -> "World":
        """Load the World of a simulation output ``DIR`` (or its ``DIR/world``)."""
        wd = sim_dir
        if not os.path.exists(os.path.join(wd, "world.json")):
            wd = os.path.join(sim_dir, "world")
        with open(os.path.join(wd, "world.json"), encoding="utf-8") as f:
            meta = json.load(f)
        w = cls.__new__(cls)
        w.config = SimConfig.from_dict(meta["config"])
        w.flood = meta.get("flood")
        t = pq.read_table(os.path.join(wd, "templates.parquet")).to_pylist()
        w.templates = []
        w.frames = defaultdict(list)
        for x in t:
            x["tid"] = x.pop("template_id")
            x["parts"] = [tuple(p) for p in json.loads(x["parts"])]
            x["src_slots"] = [(s["name"], s["value"]) for s in x["src_slots"]]
            w.templates.append(x)
            w.frames[x["frame_id"]].append(x["tid"])
        w.frames = dict(w.frames)
        w.goals = []
        for i, x in enumerate(pq.read_table(os.path.join(wd, "goals.parquet")).to_pylist()):
            x["slots"] = tuple((s["name"], s["value"]) for s in x["slots"])
            x["mishear_slot"] = [x["mishear_slot"], x.pop("mishear_slot_k")] if x["mishear_slot"] else None
            x.pop("mishear_slot_k", None)
            x["gidx"] = i
            w.goals.append(x)
        w.users = pq.read_table(os.path.join(wd, "users.parquet")).to_pylist()
        nt = pq.read_table(os.path.join(wd, "nlu.parquet"))
        w.nlu = {loc: {} for loc in w.config.locales}
        cols = nt.to_pydict()
        for loc, k, i, d, s, tid in zip(cols["locale"], cols["key"], cols["intent"],
                                        cols["domain"], cols["slots"], cols["template_id"]):
            w.nlu[loc][k] = (i, d, tuple((x["name"], x["value"]) for x in s), tid)
        w._derive()
        return w
