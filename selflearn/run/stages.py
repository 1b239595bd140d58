"""The mining run's stages, declared: what each reads, what it writes, and its body.

A stage is one `Stage`: a name, the tables it `reads` and `writes` (names of the run's
tables, `TABLES` below), and `run(ctx) -> stats`, a function of one run context
(`selflearn.run.runner.Run`) that returns the stats the manifest records under the stage's
name. Executors (the CLI, the Prefect flow, the spark-submit job, the benches) only loop
over `STAGES`; the run context resolves a table name to its place under ROOT and refuses a
table the running stage did not declare, so the declarations below are what the stages do.

Bodies only place data: they read tables, hand them to `selflearn.spark.steps` (Spark
placement) and `selflearn.core` (meaning), and write the results. No rule is decided here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from selflearn.run.publish import write_table
from selflearn.schema import PUBLISHED_TABLES

if TYPE_CHECKING:
    from selflearn.run.runner import Run

Stats = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    run: Callable[["Run"], Stats]
    doc: str = ""


# Every table a run reads or writes, by name -> where it lives. Published tables live in
# the run's staging dir (then runs/<run_id>/), work tables under ROOT/.work/<run_id>/ and
# are deleted after publish. Work tables with a schema in schemas/ (kind "work") name it.
INPUTS = ("input", "state")  # the log given to the run; ROOT/state/ (forgotten users, tails, days)
WORK_TABLES = {
    "accepted": "accepted",                # ingest: checked, pseudonymized log rows
    "turns_in": "turns_in",                # sessions: accepted rows + the previous run's open session tails
    "enriched_lexical": "enriched_lexical",  # sessions: pairs scored on form, before meaning
    "enriched": "enriched",                # sessions: turns with defect and rephrase scores (schema enriched_turns)
    "pending_state": "state.json",         # evidence: the state to commit if the run is published
    "key_stats": "key_stats",              # keys: per (locale, key) users, defect rate, served interpretation
    "vectors": "vectors",                  # embed: one unit vector per key
    "clusters": "clusters",                # paraphrase: every clustered key (published ones are floored)
    "edges": "edges",                      # graph: pooled transition probabilities (core.transitions)
    "mates": "mates",                      # graph: failing keys of one paraphrase cluster
    "candidates": "candidates",            # graph: each failing key's best target (schema candidates)
    "reach": "reach",                      # rewrites: turn pairs linked by a rephrase chain, with their users
    "decided": "decided.parquet",          # rewrites: every candidate with the rule that decided it
    "patterns_decided": "patterns_decided.parquet",  # patterns: every pattern candidate and its decision
    "served_values": "served_values.parquet",        # patterns: slot values >= min_users users were served with
    "corrections_decided": "corrections_decided.parquet",  # patterns: every value correction and its decision
}
# "evidence" is not a folder: the retained days of state/ plus this run's pending days
# (incremental.read_evidence), so the key, graph and rewrite stages see all days.
VIRTUAL = ("evidence",)
# published folders (rewrite_graph/ holds two tables) and files
PUBLISHED_DIRS = tuple(dict.fromkeys(t.split("/")[0] for t in PUBLISHED_TABLES))
PUBLISHED = PUBLISHED_DIRS + ("quarantine", "manifest.json", "report.html")


def ingest(run: Run) -> Stats:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from selflearn.schema import arrow_schema
    from selflearn.spark.incremental import drop_forgotten, drop_forgotten_rejects, mark_cross_run_duplicates, pseudonymize, with_day
    from selflearn.spark.readers import IngestResult, ingest as read_log

    n_files, n_bytes = _input_size(run.input_path)
    run.say(f"[ingest] reading {n_files} files, {n_bytes / 1e6:.1f} MB; parsing, checking and de-duplicating rows")
    first = read_log(run.spark, run.input_path, run.settings, now=run.now)
    annotated = mark_cross_run_duplicates(run.spark, with_day(run.spark, first.annotated, run.input_path), run.state)
    # A forgotten user's rows never reach the quarantine either (it holds rows as read,
    # raw ids included): rejected rows of a forgotten user are dropped and counted
    # with the forgotten, like their accepted rows.
    annotated, rejected_forgotten = drop_forgotten_rejects(annotated, run.state)
    result = IngestResult(annotated.persist(StorageLevel.MEMORY_AND_DISK))
    accepted = pseudonymize(annotated.where(F.col("reason").isNull()).select(*arrow_schema("log").names, "order", "day"), run.state)
    kept, forgotten = drop_forgotten(run.spark, accepted, run.state)
    kept.write.mode("overwrite").parquet(str(run.path("accepted")))
    # Partitions whose name disagrees with their rows' timestamps: reported, the rows
    # keep the day of their own timestamp (incremental.with_day).
    mismatch = {r["partition_mismatch"]: int(r["count"]) for r in annotated.where(
        F.col("reason").isNull() & F.col("partition_mismatch").isNotNull()).groupBy("partition_mismatch").count().collect()}
    result.quarantine.orderBy("source").coalesce(1).write.mode("overwrite").parquet(str(run.path("quarantine")))
    c = dict(result.counts())
    # Rows of forgotten users: counted, never silently gone (rows_in = accepted + quarantined + forgotten).
    c["rows_forgotten"] = accepted.where(F.col("user_id").isin(forgotten)).count() if forgotten else 0
    c["rows_accepted"] -= c["rows_forgotten"]
    c["rows_forgotten"] += rejected_forgotten
    c["rows_in"] += rejected_forgotten
    c["partition_day_mismatch"] = dict(sorted(mismatch.items()))
    result.unpersist()
    first.unpersist()
    run.say(f"[ingest] {c['rows_in']} rows in, {c['rows_accepted']} accepted, {c['rows_quarantined']} quarantined, "
            f"{c['rows_forgotten']} of forgotten users")
    return c


def sessions(run: Run) -> Stats:
    from pyspark.sql import functions as F

    from selflearn.spark.incremental import carried_tails
    from selflearn.spark.steps import rephrase_pairs_output, sessions_step, turns_output

    accepted = run.read("accepted")
    new_days = sorted(r["day"] for r in accepted.select("day").distinct().collect())
    # Turns of sessions the previous run left open go first, so they meet their successors.
    tails = carried_tails(run.spark, run.state, accepted, new_days)
    turns = accepted.withColumn("carried", F.lit(False))
    if tails is not None:
        turns = turns.unionByName(tails.withColumn("carried", F.lit(True)))
    turns = run.write_read(turns, "turns_in")
    enriched = sessions_step(turns, run.settings)
    model = run.settings.rephrase_model
    turn_days = turns.select("event_id", "day", "carried")
    vectors = None
    if model.w_meaning or model.w_unrelated:  # the pair score uses meaning: embed the pairs' keys first
        from selflearn.encoders.embed import embed_keys
        from selflearn.spark.steps import meaning_step, pair_keys

        enriched = run.write_read(enriched, "enriched_lexical")
        keys = pair_keys(enriched, run.settings)
        if model.w_other_intent:  # the other-intent veto: centroids of each day's served keys
            from selflearn.spark.steps import served_keys

            served = served_keys(enriched, turn_days)
            keys = keys.unionByName(served.select("locale", "text")).distinct()
        # Into the embedding cache: the embed stage then reuses these vectors. Kept in memory:
        # the meaning baseline, both keys of every pair and the ranks read them.
        from pyspark import StorageLevel

        vectors = embed_keys(run.spark, keys, run.settings, run.dirs.state / "embeddings").persist(
            StorageLevel.MEMORY_AND_DISK)
        ranks = None
        if model.w_other_intent:
            from selflearn.spark.incremental import carried_tail_ranks
            from selflearn.spark.steps import next_intent_ranks

            ranks = next_intent_ranks(enriched, vectors, turn_days, served, carried_tail_ranks(run.spark, run.state),
                                      run.settings)
        enriched = meaning_step(enriched, vectors, run.settings, ranks)
    enriched = run.write_read(enriched.join(turn_days, "event_id"), "enriched")
    if vectors is not None:
        vectors.unpersist()
    # turns and rephrase_pairs describe this run's input: carried turns only as the
    # first turn of a pair whose second is new.
    n_turns = run.write_sorted(turns_output(enriched.where(~F.col("carried"))), "turns", ["event_id"])
    carried = enriched.where(F.col("carried")).select("event_id")
    pairs = rephrase_pairs_output(enriched, run.settings).join(
        carried.withColumnRenamed("event_id", "second_event_id"), "second_event_id", "left_anti")
    n_pairs = run.write_sorted(pairs, "rephrase_pairs", ["first_event_id"])
    # pairs the other-intent veto turned down (the condition of rephrase.pair_features)
    other_intent = (F.col("next_intent_rank") >= model.other_intent_min_rank) & (
        F.col("meaning_z") < model.other_intent_max_meaning_z) & (F.col("similarity") < model.unrelated_max_similarity)
    n_other = enriched.where(~F.col("carried") & F.col("next_event_id").isNotNull()
                             & (F.col("gap_s") <= run.settings.rephrase_window_s) & other_intent).count() \
        if model.w_other_intent else 0
    return {"turns": n_turns, "rephrase_pairs": n_pairs, "pairs_served_as_another_goal": n_other,
            "tails_carried_in": 0 if tails is None else turns.where(F.col("carried")).count()}


def evidence(run: Run) -> Stats:
    from selflearn.spark.incremental import evidence_rows, session_tails, write_evidence

    state = run.state
    enriched = run.read("enriched")
    new_days = sorted(r["day"] for r in run.read("accepted").select("day").distinct().collect())
    pending, info = write_evidence(run.spark, state, evidence_rows(enriched, state), new_days, run.run_id,
                                   run.settings.evidence_window_days, today=run.now.date().isoformat())
    tails = session_tails(enriched, run.read("turns_in").drop("carried"), run.settings.session_gap_s)
    # with the rank each tail turn's pair got here: the next run has none of this day's
    # served-intent centroids (sessions: next_intent_ranks)
    tails = tails.join(enriched.select("event_id", "next_intent_rank"), "event_id", "left")
    rel = f"tails/{run.run_id}"
    tails.write.mode("overwrite").parquet(str(state.path(rel)))
    n_tails = run.spark.read.parquet(str(state.path(rel))).count()
    # A back-fill (every input day older than the newest committed day) leaves the newest
    # day's open sessions as they are: the next day continues those, not the back-filled
    # day's (whose own tails into the day after it are lost: it is computed alone).
    committed_days = list(state.committed()["days"])
    backfill = bool(new_days) and bool(committed_days) and max(new_days) < max(committed_days)
    if new_days and not backfill:  # an input with no accepted turn leaves the open sessions open
        pending["tails"] = rel if n_tails else None
    # Committed only after the run is published (the publish stage).
    run.path("pending_state").write_text(json.dumps(pending, sort_keys=True), encoding="utf-8")
    return {"input_days": new_days, "days_merged": sorted(pending["days"]),
            "days_dropped": info["dropped_days"], "days_written": info["touched_days"],
            "window_days": run.settings.evidence_window_days, "tails_kept": 0 if backfill else n_tails,
            "backfill": backfill,
            **{k: info[k] for k in ("rows_retained_before", "rows_dropped", "drop_share")}}


def keys(run: Run) -> Stats:
    from selflearn.spark.steps import key_stats_step

    stats = run.write_read(key_stats_step(run.evidence(), run.settings), "key_stats")
    return {"distinct_keys": stats.count()}


def embed(run: Run) -> Stats:
    from selflearn.encoders.embed import embed_keys

    ran: dict = {}
    vectors = embed_keys(run.spark, run.read("key_stats").select("locale", "text"), run.settings,
                         run.dirs.state / "embeddings", stats=ran)
    vectors = run.write_read(vectors, "vectors")
    return {"keys_embedded": vectors.count(), "keys_encoded": ran.get("embedded", 0),
            "ran": {**{k: ran.get(k) for k in ("backend", "device", "cache_id")},
                    # under auto: which encoder embedded which locales
                    "routes": {b: {"locales": r.get("locales"), "cache_id": r.get("cache_id"), "device": r.get("device")}
                               for b, r in (ran.get("routes") or {}).items()} or None}}


def paraphrase(run: Run) -> Stats:
    from selflearn.spark.steps import floor_rows, paraphrase_step

    clusters = paraphrase_step(run.read("key_stats"), run.read("vectors"), run.settings, run.evidence()).toPandas()
    # Every clustered key feeds the graph and labels (clusters); only keys said by
    # min_users distinct users are published.
    order = ["locale", "cluster_id", "text"]
    n = write_table(clusters, run.path("clusters"), "paraphrase_clusters", order)
    n_pub = write_table(floor_rows(clusters, run.settings.min_users), run.path("paraphrase_clusters"), "paraphrase_clusters", order)
    return {"clustered_keys": n, "clusters": int(clusters["cluster_id"].nunique()) if n else 0, "published_keys": n_pub}


def graph(run: Run) -> Stats:
    from selflearn.spark.graph_output import write_rewrite_graph
    from selflearn.spark.steps import edges_step, mates_step, solve_step

    stats = run.read("key_stats")
    edges = run.write_read(edges_step(run.evidence(), run.settings), "edges")
    mates = run.write_read(mates_step(run.read("clusters"), stats, run.settings), "mates")
    solve_step(edges, mates, stats, run.settings).write.mode("overwrite").parquet(str(run.path("candidates")))
    return write_rewrite_graph(run.spark, edges, stats, run.path("rewrite_graph"), run.settings.min_users)


def rewrites(run: Run) -> Stats:
    from selflearn.core.rewrites import unmatched_pins
    from selflearn.spark.steps import candidates_step, reach_step, rewrites_step

    enriched = run.evidence()
    reach = run.write_read(reach_step(enriched), "reach")
    cands = candidates_step(run.read("candidates"), reach, run.read("mates"), run.read("key_stats"), enriched,
                            run.read("clusters"), run.settings)
    decided, published = rewrites_step(cands, run.settings, run.controls)
    decided.to_parquet(run.path("decided"), index=False)
    n = write_table(published, run.path("rewrites"), "rewrites", ["locale", "source", "target"])
    return {"candidates": int(len(decided)), "emitted": n, "pins_unmatched": unmatched_pins(decided, run.controls),
            "rejected_by_rule": {k: int(v) for k, v in decided["decision"].value_counts().sort_index().items() if k != "emit"}}


def patterns(run: Run) -> Stats:
    from selflearn.core.corrections import CORRECTION_COLUMNS, correction_patterns, select_corrections
    from selflearn.core.patterns import published_patterns, rejected_by_rule, select_patterns
    from selflearn.spark.steps import PATTERN_CANDIDATES, pattern_candidates_step, served_values_step, value_corrections_step

    s = run.settings
    if s.patterns_enabled:
        cands = pattern_candidates_step(run.read("reach"), run.read("key_stats"), s)
        served = served_values_step(run.evidence(), s)
    else:
        cands = pd.DataFrame(columns=PATTERN_CANDIDATES.names)
        served = pd.DataFrame(columns=["locale", "name", "value", "n_users"])
    decided = select_patterns(cands, s, run.controls)
    decided.to_parquet(run.path("patterns_decided"), index=False)
    served.to_parquet(run.path("served_values"), index=False)
    published = published_patterns(decided)
    # value corrections: read through the phrasings above, published beside them
    if s.patterns_enabled and s.value_corrections_enabled:
        emitted = decided[decided["decision"] == "emit"] if len(decided) else decided
        corr = select_corrections(value_corrections_step(run.read("reach"), run.read("key_stats"), run.evidence(), cands, emitted, s), s)
    else:
        corr = select_corrections(pd.DataFrame(columns=CORRECTION_COLUMNS), s)
    corr.to_parquet(run.path("corrections_decided"), index=False)
    corrected = correction_patterns(corr, published, run.controls, pd.read_parquet(run.path("rewrites"), columns=["locale", "source"]))
    table = pd.concat([published, corrected], ignore_index=True) if len(corrected) else published
    n = write_table(table, run.path("rewrite_patterns"), "rewrite_patterns", ["locale", "source", "target"])
    return {"enabled": s.patterns_enabled, "candidates": int(len(decided)), "emitted": n,
            "rejected_by_rule": rejected_by_rule(decided),
            "value_corrections": {"enabled": s.patterns_enabled and s.value_corrections_enabled,
                                  "candidates": int(len(corr)), "emitted": int((corr["decision"] == "emit").sum()) if len(corr) else 0,
                                  "rows": int(len(corrected)), "rejected_by_rule": rejected_by_rule(corr)}}


def labels(run: Run) -> Stats:
    from selflearn.core.patterns import pattern_labels
    from selflearn.spark.steps import labels_step

    decided = pd.read_parquet(run.path("patterns_decided"))
    emitted = decided[decided["decision"] == "emit"] if len(decided) else decided
    pattern_rows = pattern_labels(emitted, pd.read_parquet(run.path("served_values")), run.settings)
    training = labels_step(pd.read_parquet(run.path("rewrites")), pd.read_parquet(run.path("clusters")),
                           run.read("key_stats"), run.settings, run.controls, pattern_rows)
    n = write_table(training, run.path("training"), "training", ["locale", "text"])
    by_source = training["label_source"].value_counts().sort_index().to_dict() if n else {}
    return {"training_rows": n, "by_label_source": {k: int(v) for k, v in by_source.items()}}


def publish(run: Run) -> Stats:
    from selflearn.run.gate import evaluate_gate
    from selflearn.run.publish import latest_name, latest_run, publish as move_into_place, write_json_atomic
    from selflearn.run.report import write_report

    if (run.dirs.final / "_SUCCESS").is_file():  # a retry after the move: keep its verdict
        manifest = json.loads((run.dirs.final / "manifest.json").read_text(encoding="utf-8"))
    else:
        previous = latest_run(run.dirs.root)
        manifest = run.manifest()
        manifest["gate"] = evaluate_gate(manifest, previous, run.dirs.staging, run.settings, run.force_publish, run.controls,
                                         latest_names=latest_name(run.dirs.root) if previous is None else None)
        write_json_atomic(run.path("manifest.json"), manifest)
        write_report(run.dirs.staging, manifest, run.dirs.work, previous)
    move_into_place(run.dirs, move_latest=manifest["gate"]["latest_moved"])
    # State moves only with a published run that LATEST names: a crash before this line,
    # or a run the gate held back, leaves the state of the previous run, and re-running
    # this input (with --force-publish after review) gives the same result.
    if manifest["gate"]["latest_moved"]:
        run.state.commit(json.loads(run.path("pending_state").read_text(encoding="utf-8")))
    return {"latest_moved": manifest["gate"]["latest_moved"]}


def _input_size(path: str) -> tuple[int, int]:
    """Data files and bytes under the input (hidden and _-prefixed files are not data)."""
    p = Path(path)
    if p.is_file():
        return 1, p.stat().st_size
    files = [f for f in p.rglob("*") if f.is_file() and not any(x.startswith((".", "_")) for x in f.relative_to(p).parts)]
    return len(files), sum(f.stat().st_size for f in files)


# The report reads the work tables it explains (decisions, candidates) besides the published ones.
_REPORT_READS = ("decided", "patterns_decided", "served_values")

STAGES: tuple[Stage, ...] = (
    Stage("ingest", ("input", "state"), ("accepted", "quarantine"), ingest,
          "read, check and de-duplicate the log; quarantine bad rows with their reason; pseudonymize users"),
    Stage("sessions", ("accepted", "state"), ("turns_in", "enriched_lexical", "enriched", "turns", "rephrase_pairs"), sessions,
          "sessions, defect scores, rephrase pairs scored on form and meaning"),
    Stage("evidence", ("enriched", "accepted", "turns_in", "state"), ("pending_state",), evidence,
          "this run's days into the evidence window; open session tails for the next run"),
    Stage("keys", ("evidence",), ("key_stats",), keys, "per-key users, defect rate and served interpretation"),
    Stage("embed", ("key_stats", "state"), ("vectors",), embed, "one vector per key (through the embedding cache)"),
    Stage("paraphrase", ("key_stats", "vectors", "evidence"), ("clusters", "paraphrase_clusters"), paraphrase,
          "cross-user paraphrase clusters per locale (FAISS)"),
    Stage("graph", ("evidence", "key_stats", "clusters"), ("edges", "mates", "candidates", "rewrite_graph"), graph,
          "the absorbing chain over keys and each failing key's best target"),
    Stage("rewrites", ("evidence", "candidates", "mates", "key_stats", "clusters"), ("reach", "decided", "rewrites"), rewrites,
          "the users behind each candidate; emission rules; rewrites/"),
    Stage("patterns", ("reach", "key_stats", "evidence", "rewrites"), ("patterns_decided", "served_values", "corrections_decided", "rewrite_patterns"), patterns,
          "delexicalized pairs pooled into patterns, misheard values into corrections; emission rules; rewrite_patterns/"),
    Stage("labels", ("rewrites", "clusters", "patterns_decided", "served_values", "key_stats"), ("training",), labels,
          "weak labels from rewrites, clusters and patterns; training/"),
    Stage("publish", ("pending_state", *PUBLISHED_DIRS, *_REPORT_READS), ("manifest.json", "report.html"), publish,
          "manifest, publish gate, report; atomic move into runs/ and LATEST; state commit"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(STAGE_NAMES)}") from None
