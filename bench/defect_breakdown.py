"""Why the defects left after a run stay defects (issue 14): every fresh replay request that
fails today, classified by the first reason that explains its fate.

    PYTHONPATH=$PWD .venv/bin/python -m bench.defect_breakdown --sim SIM --run ROOT
        [--work KEPT_WORK_DIR] [--requests 20000] [--out FILE.md]

The requests are the evaluator's (`selflearn evaluate`: the same fresh traffic, the same
seed, the same exact-then-pattern application of contract 4.1), so the "fixed" rows add up
to its defect reduction. Each failing request's *phrasing* is its text with the goal's slot
values cut out (the values it was said with, misheard or not), and the log's turns are cut
the same way with their true values, so "how many users said this phrasing" is counted on
the log the run mined. Reasons, in order:

  fixed (exact | pattern)      the rewrite served the goal;
  wrong rewrite (exact | pattern)  a rewrite fired and did not serve it;
  denied goal                  the goal's intent or domain is on the run's deny list: no
                               rewrite may lead to it (the guard, not a miss);
  misheard value               ASR misheard the value; the phrasing itself works, so only an
                               exact rewrite of this very mishearing could fix it;
  no slot values               the goal has no slot values: exact rewrites only;
  phrasing not in the log      nobody in the log said this phrasing with any value;
  phrasing below min_users     fewer than min_users distinct users said it;
  contract: repeated slot      the phrasing holds one slot name twice with two values
                               ("from {place_name} to {place_name}"): a contract 4.1 pattern
                               binds a repeated placeholder to one value;
  contract: adjacent slots     two placeholders with only spaces between them: the lazy
                               `(.+?)` of contract 4.1 splits their values at the first space;
  pattern rule: <rule>         a pattern candidate for the phrasing was refused by that rule
                               (with --work: the run's kept `patterns_decided.parquet`);
  no pattern evidence          said by >= min_users users, but no published pattern and (with
                               --work) no candidate: too few of its users re-asked in a
                               served phrasing that kept the values.

Only the simulator knows a request's values and goal, so this lives in bench/, next to the
evaluator it mirrors. Keep the work directory with `python -m bench.run_keep_work INPUT ROOT
KEEP_DIR` to get the pattern-rule rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from selflearn.core.patterns import ADJACENT, _replace_value
from selflearn.core.rewrite_apply import PLACEHOLDER
from selflearn.core.text import normalize_text
from selflearn.evaluation.evaluate import FRESH_REQUESTS, replay_requests, resolve_run
from selflearn.simulate import World

REASONS = (
    "fixed: exact", "fixed: pattern", "wrong rewrite: exact", "wrong rewrite: pattern", "denied goal",
    "misheard value", "no slot values", "phrasing not in the log", "phrasing below min_users",
    "contract: repeated slot", "contract: adjacent slots",
)


def phrasing(text: str, slots) -> str:
    """`text`'s key with each slot value (longest first, whole tokens, or inside a word in an
    unspaced script, as the pattern stage cuts values) replaced by `{name}`."""
    key = normalize_text(text)
    pairs = sorted(((str(n), normalize_text(str(v))) for n, v in slots), key=lambda nv: (-len(nv[1]), nv[0]))
    for name, value in pairs:
        cut = _replace_value(key, value, "{" + name + "}") if value else None
        key = cut if cut is not None else key
    return key


def contract_limit(template: str) -> str | None:
    """The contract 4.1 limit a phrasing hits, if any."""
    names = PLACEHOLDER.findall(template)
    if len(names) != len(set(names)):
        return "contract: repeated slot"
    if ADJACENT.search(template):  # the pattern stage's own test for a run of placeholders
        return "contract: adjacent slots"
    return None


def log_phrasing_users(log: pd.DataFrame, truth: pd.DataFrame) -> dict[tuple[str, str], int]:
    """(locale, phrasing) -> distinct users of the log who said it, cut with the true values."""
    log = log[["event_id", "user_id", "locale", "utterance"]].merge(truth[["event_id", "gold_slots"]], on="event_id")
    log["phrasing"] = [phrasing(u, [(s["name"], s["value"]) for s in (sl if sl is not None else [])])
                       for u, sl in zip(log["utterance"], log["gold_slots"])]
    users = log.groupby(["locale", "phrasing"])["user_id"].nunique()
    return {k: int(v) for k, v in users.items()}


def pattern_rule_by_source(work: Path | None) -> dict[tuple[str, str], str]:
    """(locale, source) -> the rule that refused its candidates (the most common one when
    several targets were refused for different rules, `outvoted` only when nothing else)."""
    if work is None:
        return {}
    decided = pd.read_parquet(work / "patterns_decided.parquet", columns=["locale", "source", "decision"])
    out = {}
    for (loc, src), g in decided.groupby(["locale", "source"]):
        rules = g["decision"][~g["decision"].isin(["emitted", "outvoted"])]
        if g["decision"].eq("emitted").any():
            continue
        out[(loc, src)] = (rules.mode().iloc[0] if len(rules) else "outvoted")
    return out


def classify_requests(world, rewrites: pd.DataFrame, patterns: pd.DataFrame | None,
                      log_users: dict[tuple[str, str], int], min_users: int = 3, deny_intents=(),
                      deny_domains=(), rules: dict[tuple[str, str], str] | None = None,
                      n: int = FRESH_REQUESTS, seed: int = 12345) -> pd.DataFrame:
    """One row per fresh request that fails today (the evaluator's requests for the same
    `n` and `seed`): locale, reason, phrasing, log_users, misheard."""
    rules = rules or {}
    denied_intents, denied_domains = set(deny_intents or ()), set(deny_domains or ())
    rows = []
    req = replay_requests(rewrites, world, n, seed, patterns)
    for r in req[~req["before"]].itertuples(index=False):
        goal = world.goal(r.goal_id)
        template = world.templates[r.template_id]
        _, used = world.render(goal, template, r.misheard)
        ph = phrasing(r.utterance, used)
        n_users = log_users.get((r.locale, ph), 0)
        if r.kind is not None:
            reason = f"{'fixed' if r.after else 'wrong rewrite'}: {r.kind}"
        elif goal["intent"] in denied_intents or goal.get("scenario") in denied_domains:
            reason = "denied goal"
        elif r.misheard and template["supported"]:
            reason = "misheard value"
        elif not goal["slots"]:
            reason = "no slot values"
        elif n_users == 0:
            reason = "phrasing not in the log"
        elif n_users < min_users:
            reason = "phrasing below min_users"
        elif contract_limit(ph):
            reason = contract_limit(ph)
        elif (r.locale, ph) in rules:
            reason = f"pattern rule: {rules[(r.locale, ph)]}"
        else:
            reason = "no pattern evidence"
        rows.append((r.locale, reason, ph, n_users, bool(r.misheard)))
    return pd.DataFrame(rows, columns=["locale", "reason", "phrasing", "log_users", "misheard"])


def classify(sim: Path, root: Path, work: Path | None = None, n: int = FRESH_REQUESTS) -> pd.DataFrame:
    """classify_requests for a simulation directory and a published run (its own settings,
    as the evaluator reads them from the manifest)."""
    run = resolve_run(root)
    config = json.loads((run / "manifest.json").read_text()).get("config", {})
    patterns = pq.read_table(run / "rewrite_patterns").to_pandas() if (run / "rewrite_patterns").exists() else None
    log = pq.read_table(sim / "log", columns=["event_id", "user_id", "locale", "utterance"]).to_pandas()
    truth = pq.read_table(sim / "truth.parquet", columns=["event_id", "gold_slots"]).to_pandas()
    return classify_requests(World.load(sim), pq.read_table(run / "rewrites").to_pandas(), patterns,
                             log_phrasing_users(log, truth), int(config.get("min_users", 3)),
                             config.get("deny_intents", ()), config.get("deny_domains", ()),
                             pattern_rule_by_source(work), n)


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """Share of the failing requests per reason, overall and per locale (columns), with the
    count of requests in the last row."""
    counts = pd.crosstab(rows["reason"], rows["locale"])
    counts["all"] = counts.sum(axis=1)
    order = [r for r in REASONS if r in counts.index] + sorted(set(counts.index) - set(REASONS))
    shares = (counts.loc[order] / counts.sum(axis=0)).round(3)
    shares.loc["failing requests"] = counts.sum(axis=0)
    return shares


def markdown(t: pd.DataFrame) -> str:
    cols = [str(c) for c in t.columns]
    lines = ["| reason | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for reason, row in t.iterrows():
        cells = [f"{int(v)}" if reason == "failing requests" else f"{v:.3f}" for v in row]
        lines.append(f"| {reason} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sim", required=True, type=Path)
    ap.add_argument("--run", required=True, type=Path, help="an output ROOT or one run directory")
    ap.add_argument("--work", type=Path, help="the run's kept work directory (bench.run_keep_work)")
    ap.add_argument("--requests", type=int, default=FRESH_REQUESTS)
    ap.add_argument("--out", type=Path, help="also write the table as markdown here")
    a = ap.parse_args(argv)
    rows = classify(a.sim, a.run, a.work, a.requests)
    t = table(rows)
    print(t.to_string())
    if a.out:
        a.out.write_text(f"`python -m bench.defect_breakdown --sim {a.sim} --run {a.run}"
                         f"{' --work ' + str(a.work) if a.work else ''}`\n\n{markdown(t)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
