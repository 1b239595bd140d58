"""Spark steps: one function per stage of the run, each applying a stage module's pure
functions to DataFrames (applyInPandas / mapInPandas / aggregations).

Where the data lives is decided here; what it means is decided in the stage modules.
Per-locale work (a FAISS index, a graph) runs inside one applyInPandas group; nothing
collects the log to the driver. The driver only sees key-level tables that are small by
construction (rewrite candidates, per-stage counts).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from selflearn.core import graph as graph_mod
from selflearn.config import Settings
from selflearn.core.controls import Controls, load_controls
from selflearn.core.defects import interpretation_class as key_class, is_failing, is_good_turn
from selflearn.core.labels import drop_controlled, paraphrase_labels, rewrite_labels, training_rows
from selflearn.core.rewrites import published_rewrites, rephrase_chain_pairs, select_rewrites, users_behind
from selflearn.schema import arrow_schema, spark_schema
from selflearn.core.sessions import ENRICHED_TURNS, enrich_turns
from selflearn.spark.session import map_groups

SUCCESS, FAILURE = graph_mod.SUCCESS, graph_mod.FAILURE


# --- sessions, defects, rephrases ----------------------------------------------------

def sessions_step(accepted: DataFrame, settings: Settings) -> DataFrame:
    """Enriched turns: text keys, sessions, defect probability, rephrase score of each
    turn with its successor. Whole (user, device) groups per pandas batch."""
    cols = ["event_id", "user_id", "device_id", "session_id", "ts", "locale", "utterance",
            "asr_confidence", "response_status", "barge_in", "feedback", "dwell_ms",
            "nlu_intent", "nlu_domain", "nlu_slots", "rewritten_from", "system_act", "order"]
    if "system_act" not in accepted.columns:  # a state's session tail from before contract v3
        accepted = accepted.withColumn("system_act", F.lit(None).cast("string"))
    df = accepted.select(*cols).withColumn("device_id", F.coalesce("device_id", F.lit("")))

    def apply(pdf: pd.DataFrame) -> pd.DataFrame:
        return enrich_turns(pdf, settings)

    return map_groups(df, ["user_id", "device_id"], ["ts", "order"], apply, from_arrow_schema(ENRICHED_TURNS))


def pair_keys(enriched: DataFrame, settings: Settings) -> DataFrame:
    """(locale, text) of both turns of every pair in the rephrase window: the keys whose
    vectors the meaning feature needs."""
    pairs = enriched.where(F.col("next_event_id").isNotNull() & (F.col("gap_s") <= settings.rephrase_window_s))
    return (pairs.select("locale", "text").unionByName(pairs.select("locale", F.col("next_text").alias("text")))
            .distinct())


def served_keys(enriched: DataFrame, turn_days: DataFrame) -> DataFrame:
    """(locale, day, nlu_intent, text), distinct, of this run's own turns (not carried
    tails) that the NLU served with an intent, said by the user (not rewritten): what the
    served-intent centroids of each (locale, day) are made of. Per day, so a log mined day
    by day gets the centroids one run over all its days gets (a day is always mined whole)."""
    served = enriched.where((F.col("response_status") == "success") & F.col("nlu_intent").isNotNull()
                            & F.col("rewritten_from").isNull())
    return (served.join(turn_days.where(~F.col("carried")).select("event_id", "day"), "event_id")
            .select("locale", "day", "nlu_intent", "text").distinct())


def next_intent_ranks(enriched: DataFrame, vectors: DataFrame, turn_days: DataFrame, served: DataFrame,
                      tail_ranks: DataFrame | None, settings: Settings) -> DataFrame:
    """DataFrame[event_id, next_intent_rank] for the pairs in the rephrase window whose second
    turn was served with an intent: rephrase.served_intent_rank among the served-intent
    centroids of the second turn's locale and day (rephrase.served_intent_centroids of that
    day's `served` keys), one cogroup per (locale, day). A second turn from a carried session
    tail (a day an earlier run mined) keeps the rank that run gave (`tail_ranks`): this run
    has none of that day's centroids."""
    from selflearn.core.rephrase import served_intent_centroids, served_intent_rank

    nxt = (enriched.select(F.col("event_id").alias("next_event_id"), F.col("nlu_intent").alias("_next_intent"),
                           F.col("response_status").alias("_next_status"))
           .join(turn_days.select(F.col("event_id").alias("next_event_id"), F.col("day").alias("_next_day"),
                                  F.col("carried").alias("_next_carried")), "next_event_id"))
    pairs = (enriched.where(F.col("next_event_id").isNotNull() & (F.col("gap_s") <= settings.rephrase_window_s))
             .select("event_id", "locale", "text", "next_event_id").join(nxt, "next_event_id"))
    fresh = (pairs.where(~F.col("_next_carried") & (F.col("_next_status") == "success") & F.col("_next_intent").isNotNull())
             .join(vectors.select("locale", "text", F.col("vector").alias("_v1")), ["locale", "text"])
             .select("event_id", "locale", "_next_day", "_next_intent", "_v1"))

    def apply(pdf: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
        names, mat = served_intent_centroids(keys["nlu_intent"], keys["text"], keys["vector"])
        rank = served_intent_rank(pdf["_v1"].to_numpy(dtype=object), pdf["_next_intent"].to_numpy(dtype=object),
                                  names, mat)
        known = ~np.isnan(rank)  # unranked pairs stay null, like pairs never ranked
        return pd.DataFrame({"event_id": pdf["event_id"].to_numpy(dtype=object)[known], "next_intent_rank": rank[known]})

    # both sides come from `enriched`: new names (new attributes), or Spark finds the
    # cogroup's columns ambiguous, as in a self-join
    keys = (served.join(vectors.select("locale", "text", "vector"), ["locale", "text"])
            .select(F.col("locale").alias("_key_locale"), F.col("day").alias("_key_day"), "nlu_intent", "text", "vector"))
    ranks = fresh.groupBy("locale", "_next_day").cogroup(keys.groupBy("_key_locale", "_key_day")).applyInPandas(
        apply, "event_id string, next_intent_rank double")
    if tail_ranks is not None:
        kept = pairs.where(F.col("_next_carried")).select("event_id").join(tail_ranks, "event_id")
        ranks = ranks.unionByName(kept.select("event_id", F.col("next_intent_rank").cast("double")))
    return ranks


def meaning_step(enriched: DataFrame, vectors: DataFrame, settings: Settings, ranks: DataFrame | None = None) -> DataFrame:
    """Enriched turns with `meaning_z` (rephrase.meaning_z of the pair's two key vectors)
    and the pair score recomputed with it (and with `next_intent_rank` from `ranks`, the
    output of next_intent_ranks, when given). The chance baseline comes from a sample of
    keys per locale (the first `meaning_baseline_keys` by sha256 of the text, as
    rephrase.meaning_baseline takes them), collected to the driver: a few thousand vectors."""
    from selflearn.core.rephrase import calibrated_baseline, meaning_baseline, meaning_z, pair_cosines
    from selflearn.core.sessions import score_pairs

    model = settings.rephrase_model
    w = Window.partitionBy("locale").orderBy(F.sha2("text", 256))
    sample = (vectors.withColumn("rk", F.row_number().over(w)).where(F.col("rk") <= model.meaning_baseline_keys)
              .select("locale", "text", "vector").toPandas())
    baseline = meaning_baseline(sample, model.meaning_baseline_keys)
    # calibrated chance levels where the encoder and locale have one (incremental runs
    # then score a pair the same whatever else their input holds)
    from selflearn.encoders.embed import encoder_cache_id, settings_for_locale

    def encoder_of(locale: str) -> str:
        return encoder_cache_id(settings_for_locale(settings, locale), "cpu")

    # the sampled locales are every locale with vectors (no extra Spark job for the list)
    baseline = calibrated_baseline(baseline, sorted(set(sample["locale"])), encoder_of)
    v = vectors.select("locale", "text", "vector")
    if ranks is not None:
        enriched = enriched.drop("next_intent_rank").join(ranks, "event_id", "left")
    joined = (enriched.join(v.withColumnRenamed("vector", "_v1"), ["locale", "text"], "left")
              .join(v.withColumnRenamed("text", "next_text").withColumnRenamed("vector", "_v2"),
                    ["locale", "next_text"], "left"))
    cols = [f.name for f in ENRICHED_TURNS]

    def apply(batches):
        for pdf in batches:
            cos = pair_cosines(pdf["_v1"].to_numpy(dtype=object), pdf["_v2"].to_numpy(dtype=object))
            pdf["meaning_z"] = meaning_z(pdf["locale"].to_numpy(dtype=object), cos, baseline)
            yield score_pairs(pdf.drop(columns=["_v1", "_v2"]), settings)[cols]

    return joined.select(*cols, "_v1", "_v2").mapInPandas(apply, from_arrow_schema(ENRICHED_TURNS))


def turns_output(enriched: DataFrame) -> DataFrame:
    return enriched.select("event_id", "locale", "text", F.round("defect_prob", 9).alias("defect_prob"))


def rephrase_pairs_output(enriched: DataFrame, settings: Settings) -> DataFrame:
    return (
        enriched.where(F.col("next_event_id").isNotNull() & (F.col("gap_s") <= settings.rephrase_window_s))
        .select(
            "locale",
            F.col("event_id").alias("first_event_id"),
            F.col("next_event_id").alias("second_event_id"),
            F.col("text").alias("first"),
            F.col("next_text").alias("second"),
            F.round("gap_s", 6).alias("gap_s"),
            F.round("pair_score", 9).alias("score"),
            "is_rephrase",
        )
    )


# --- key-level statistics ------------------------------------------------------------

def _organic(enriched: DataFrame) -> DataFrame:
    return enriched.where(F.col("rewritten_from").isNull())


def key_stats_step(enriched: DataFrame, settings: Settings) -> DataFrame:
    """Per (locale, text): n_turns, n_users, user-weighted defect_rate, n_success, the
    slot values the NLU recognised on any turn, and the dominant successful
    interpretation (intent, domain, slots_json, its user agreement)."""
    org = _organic(enriched)
    per_user = org.groupBy("locale", "text", "user_id").agg(
        F.count("*").alias("n"), F.avg("defect_prob").alias("user_defect")
    )
    base = per_user.groupBy("locale", "text").agg(
        F.sum("n").alias("n_turns"),
        F.count("*").alias("n_users"),
        F.avg("user_defect").alias("defect_rate"),
    )
    slot_values = (
        org.select("locale", "text", F.explode("nlu_slots").alias("s"))
        .groupBy("locale", "text")
        .agg(F.sort_array(F.collect_set(F.col("s.value"))).alias("nlu_slot_values"))
    )
    good = org.where(is_good_turn(F.col("response_status"), F.col("defect_prob"), F.col("nlu_intent")))
    n_success = good.groupBy("locale", "text").agg(F.count("*").alias("n_success"))
    interp = good.withColumn("slots_json", F.to_json(F.coalesce("nlu_slots", F.array())))
    votes = interp.groupBy("locale", "text", "nlu_intent", "nlu_domain", "slots_json").agg(
        F.countDistinct("user_id").alias("votes")
    )
    w = Window.partitionBy("locale", "text").orderBy(F.desc("votes"), "nlu_intent", "slots_json")
    total = votes.groupBy("locale", "text").agg(F.sum("votes").alias("all_votes"))
    dominant = (
        votes.withColumn("rk", F.row_number().over(w)).where("rk = 1").join(total, ["locale", "text"])
        .select("locale", "text", F.col("nlu_intent").alias("intent"), F.col("nlu_domain").alias("domain"),
                "slots_json", (F.col("votes") / F.col("all_votes")).alias("agreement"))
    )
    return (
        base.join(slot_values, ["locale", "text"], "left")
        .join(n_success, ["locale", "text"], "left")
        .join(dominant, ["locale", "text"], "left")
        .withColumn("n_success", F.coalesce("n_success", F.lit(0)).cast("long"))
        .withColumn("nlu_slot_values", F.coalesce("nlu_slot_values", F.array().cast("array<string>")))
    )


# --- paraphrase clusters -------------------------------------------------------------

CLUSTERS = arrow_schema("paraphrase_clusters")


def paraphrase_step(key_stats: DataFrame, vectors: DataFrame, settings: Settings, evidence: DataFrame | None = None) -> DataFrame:
    """Per locale: FAISS kNN over the key embeddings and slot-respecting clusters. With
    the evidence given, cluster_n_users is the exact count of distinct users of the
    cluster's keys (cluster_users), not the sum of per-key counts (an upper bound)."""
    from selflearn.core.paraphrase import cluster_paraphrases

    keyed = key_stats.join(vectors, ["locale", "text"], "inner").select(
        "locale", "text", "n_users", "n_turns", "n_success", "intent", "slots_json", "nlu_slot_values", "vector"
    )

    def apply(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values("text", kind="mergesort").reset_index(drop=True)
        vecs = np.stack(pdf["vector"].to_numpy()).astype(np.float32) if len(pdf) else np.zeros((0, 1), np.float32)
        keys = pdf.drop(columns=["vector"])
        keys["slots"] = [json.loads(s) if isinstance(s, str) else [] for s in keys["slots_json"]]
        keys["nlu_slot_values"] = [list(v) if v is not None else [] for v in keys["nlu_slot_values"]]
        out = cluster_paraphrases(keys.drop(columns=["slots_json"]), vecs, settings)
        return out[[f.name for f in CLUSTERS]]

    clusters = keyed.groupBy("locale").applyInPandas(apply, spark_schema("paraphrase_clusters"))
    return clusters if evidence is None else cluster_users(clusters, evidence)


def cluster_users(clusters: DataFrame, evidence: DataFrame) -> DataFrame:
    """Clusters with cluster_n_users = distinct users who said any member key (organic
    turns, as key_stats counts n_users): one user saying three keys of a cluster is one
    user, so a paraphrase label can never rest on fewer than min_users people."""
    said = _organic(evidence).select("locale", "text", "user_id").distinct()
    exact = (
        clusters.select("locale", "cluster_id", "text").join(said, ["locale", "text"])
        .groupBy("locale", "cluster_id").agg(F.countDistinct("user_id").alias("cluster_n_users"))
    )
    return (clusters.drop("cluster_n_users").join(exact, ["locale", "cluster_id"], "left")
            .withColumn("cluster_n_users", F.coalesce("cluster_n_users", F.lit(0)).cast("long"))
            .select(*[f.name for f in CLUSTERS]))


def floor_rows(pdf: pd.DataFrame, min_users: int, column: str = "n_users") -> pd.DataFrame:
    """Rows whose text rests on at least min_users distinct users: what may leave the
    operator's hands (contract v3 section 4)."""
    if pdf.empty:
        return pdf
    return pdf[pdf[column].fillna(0).astype("int64") >= int(min_users)].reset_index(drop=True)


# --- the rewrite graph ---------------------------------------------------------------

def edges_step(enriched: DataFrame, settings: Settings) -> DataFrame:
    """Pooled transition probabilities (locale, src, dst, prob, n_users): the transition
    model of core.transitions over each key's organic turns, many whole keys per batch."""
    from selflearn.core.transitions import EDGE_COLUMNS, TURN_COLUMNS, pooled_transitions

    cap = float(settings.per_user_edge_cap)
    schema = ", ".join(f"{c} {t}" for c, t in zip(EDGE_COLUMNS, ("string", "string", "string", "double", "long")))
    return map_groups(_organic(enriched).select(*TURN_COLUMNS), ["locale", "text"], ["user_id"],
                      lambda turns: pooled_transitions(turns, cap), schema)


def reach_step(enriched: DataFrame) -> DataFrame:
    """(locale, source, target, user_id, session) for every pair of turns linked by a
    chain of rephrases in one session (rewrites.rephrase_chain_pairs), many whole
    sessions per pandas batch."""
    schema = "locale string, source string, target string, user_id string, session string"
    # a chain follows the graph's evidence (graph_score), as the edges do
    org = _organic(enriched).select("locale", "user_id", "session", "seq", "text",
                                    F.col("graph_score").isNotNull().alias("is_rephrase"))
    return map_groups(org, ["user_id", "session"], ["seq"], rephrase_chain_pairs, schema)


CANDIDATES = arrow_schema("candidates")


def mates_step(clusters: DataFrame, key_stats: DataFrame, settings: Settings) -> DataFrame:
    """(locale, key, mate): two failing members of one paraphrase cluster."""
    failing = clusters.join(key_stats.select("locale", "text", "defect_rate"), ["locale", "text"]).where(
        is_failing(F.col("defect_rate"), settings.min_source_defect_rate)
    ).select("locale", "cluster_id", "text")
    a, b = failing.alias("a"), failing.alias("b")
    return a.join(b, (F.col("a.locale") == F.col("b.locale")) & (F.col("a.cluster_id") == F.col("b.cluster_id")) & (F.col("a.text") != F.col("b.text"))).select(
        F.col("a.locale").alias("locale"), F.col("a.text").alias("key"), F.col("b.text").alias("mate")
    )


def interpretation_class(key_stats: DataFrame, settings: Settings):
    """core.defects.interpretation_class over key_stats' columns."""
    return key_class(F.col("defect_rate"), F.col("intent"), F.col("slots_json"), settings.min_source_defect_rate)


def solve_step(edges: DataFrame, mates: DataFrame, key_stats: DataFrame, settings: Settings) -> DataFrame:
    """Per locale: paraphrase inheritance, then the absorbing chain's best target per
    defective source key."""
    users = key_stats.select("locale", F.col("text").alias("src"), F.col("n_users").alias("src_users"),
                             F.col("defect_rate").alias("src_defect"), interpretation_class(key_stats, settings).alias("src_class"))
    e = edges.join(users, ["locale", "src"], "left")

    def apply(edges_pdf: pd.DataFrame, mates_pdf: pd.DataFrame) -> pd.DataFrame:
        if edges_pdf.empty:
            return pd.DataFrame(columns=[f.name for f in CANDIDATES])
        locale = edges_pdf["locale"].iloc[0]
        edges_pdf = edges_pdf.sort_values(["src", "dst"], kind="mergesort")
        n_users = dict(zip(edges_pdf["src"], edges_pdf["src_users"].fillna(0)))
        transient = edges_pdf[~edges_pdf["dst"].isin([SUCCESS, FAILURE])]
        rephrased_by = transient.groupby("src")["n_users"].max().to_dict()  # a lower bound of distinct users
        mixed = graph_mod.inherit_paraphrase_evidence(
            edges_pdf, mates_pdf.sort_values(["key", "mate"]), n_users, settings.paraphrase_evidence_weight,
            rephrased_by, settings.min_users,
        )
        defect = dict(zip(edges_pdf["src"], edges_pdf["src_defect"].fillna(0)))
        sources = sorted(k for k, v in defect.items() if is_failing(v, settings.min_source_defect_rate))
        classes = {k: c for k, c in zip(edges_pdf["src"], edges_pdf["src_class"]) if isinstance(c, str)}
        solved = graph_mod.solve_rewrite_targets(mixed, sources, classes, n_users, settings.min_users)
        if solved.empty:
            return pd.DataFrame(columns=[f.name for f in CANDIDATES])
        solved["evidence"] = graph_mod.evidence_kinds(edges_pdf, mixed, solved)
        solved["locale"] = locale
        return solved[[f.name for f in CANDIDATES]]

    return e.groupBy("locale").cogroup(mates.groupBy("locale")).applyInPandas(apply, spark_schema("candidates"))


def candidates_step(candidates: DataFrame, reach: DataFrame, mates: DataFrame, key_stats: DataFrame,
                    enriched: DataFrame, clusters: DataFrame, settings: Settings) -> pd.DataFrame:
    """Rewrite candidates with the users behind them, key statistics and served evidence;
    key-level and small, so it comes to the driver as pandas.

    The users behind (source, target) are those whose sessions went from the source (or,
    where the rewrite rests on paraphrase evidence, a failing cluster mate of it) to any
    key served like the target (same interpretation class); the target's success is pooled over that class too. Each
    candidate also carries the target's intent and the dominant successful intent of the
    source's paraphrase cluster, which paraphrase-only evidence must agree with."""
    cls = key_stats.select("locale", F.col("text").alias("key"), interpretation_class(key_stats, settings).alias("cls"))
    cls = cls.withColumn("cls", F.coalesce("cls", F.concat(F.lit("key:"), F.col("key"))))
    # Who stands behind each candidate is core.rewrites.users_behind; here each locale's
    # chain pairs (with their user's active days) meet its key-level tables in one call.
    if settings.min_user_active_days > 1:  # only users with history stand behind a rewrite (anti-sybil)
        # the evidence's day (the dt= partition, else the UTC date of ts): a column, or the
        # state's day=D folder the rows were read from
        day = F.col("day") if "day" in enriched.columns else F.regexp_extract(F.input_file_name(), r"day=([0-9]{4}-[0-9]{2}-[0-9]{2})", 1)
        # projected first: Spark refuses input_file_name() inside an aggregate
        days = enriched.select("user_id", day.alias("day")).groupBy("user_id").agg(F.countDistinct("day").alias("user_days"))
        reach_days = reach.join(days, "user_id", "left").fillna({"user_days": 0})
    else:
        reach_days = reach.withColumn("user_days", F.lit(1).cast("long"))
    none = F.lit(None).cast("string")
    key_tables = (
        mates.select("locale", F.lit("mate").alias("table"), F.col("key").alias("a"), F.col("mate").alias("b"), none.alias("c"))
        .unionByName(candidates.select("locale", F.lit("candidate").alias("table"), F.col("source").alias("a"),
                                       F.col("target").alias("b"), F.col("evidence").alias("c")))
        .unionByName(cls.select("locale", F.lit("class").alias("table"), F.col("key").alias("a"), F.col("cls").alias("b"), none.alias("c")))
    )
    min_days = settings.min_user_active_days

    def behind_of_locale(reach_pdf: pd.DataFrame, tables: pd.DataFrame) -> pd.DataFrame:
        def table(name: str, cols: tuple[str, ...]) -> pd.DataFrame:
            t = tables[tables["table"] == name]
            return t.rename(columns=dict(zip(("a", "b", "c"), cols)))[["locale", *cols]]

        return users_behind(reach_pdf, table("mate", ("key", "mate")), table("candidate", ("source", "target", "evidence")),
                            table("class", ("key", "cls")), min_days)

    behind = reach_days.groupBy("locale").cogroup(key_tables.groupBy("locale")).applyInPandas(
        behind_of_locale, "locale string, source string, target string, n_users long, n_sessions long, n_source_users long")
    cand = candidates.join(cls.withColumnRenamed("key", "target").withColumnRenamed("cls", "target_cls"), ["locale", "target"], "left")
    src = key_stats.select("locale", F.col("text").alias("source"), F.col("defect_rate").alias("source_defect_rate"),
                           F.col("n_users").alias("source_n_users"), F.col("intent").alias("source_intent"),
                           F.col("domain").alias("source_domain"))
    tgt = (
        key_stats.join(cls.withColumnRenamed("key", "text"), ["locale", "text"])
        .groupBy("locale", F.col("cls").alias("target_cls"))
        .agg(
            (F.sum((1 - F.col("defect_rate")) * F.col("n_users")) / F.sum("n_users")).alias("target_success_rate"),
            F.sum("n_users").alias("target_n_users"),
        )
    )
    served = (
        enriched.where(F.col("rewritten_from").isNotNull())
        .groupBy("locale", F.col("rewritten_from").alias("source"), F.col("text").alias("target"))
        .agg(F.count("*").alias("served_turns"), F.avg("defect_prob").alias("served_defect_rate"))
    )
    target_intent = key_stats.select("locale", F.col("text").alias("target"), F.col("intent").alias("target_intent"),
                                     F.col("domain").alias("target_domain"), F.col("slots_json").alias("target_slots_json"),
                                     F.col("n_users").alias("target_key_users"))
    source_cluster = clusters.select("locale", F.col("text").alias("source"), F.col("intent").alias("source_cluster_intent"))
    joined = (
        cand.join(behind, ["locale", "source", "target"], "left")
        .join(target_intent, ["locale", "target"], "left").join(source_cluster, ["locale", "source"], "left")
        .join(src, ["locale", "source"], "left").join(tgt, ["locale", "target_cls"], "left")
        .join(served, ["locale", "source", "target"], "left")
        .fillna({"n_users": 0, "n_sessions": 0, "n_source_users": 0, "target_success_rate": 0.0, "target_n_users": 0,
                 "source_n_users": 0, "target_key_users": 0})
    )
    return joined.toPandas()


def rewrites_step(candidates_pdf: pd.DataFrame, settings: Settings, controls: Controls | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    # controls: the run's, loaded once (Run.controls); loaded here only when called alone
    controls = load_controls(settings.controls_file) if controls is None else controls
    decided = select_rewrites(candidates_pdf, settings, controls)
    return decided, published_rewrites(decided)


def labels_step(rewrites_pdf: pd.DataFrame, clusters_pdf: pd.DataFrame, key_stats: DataFrame, settings: Settings,
                controls: Controls | None = None, pattern_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Weak labels; reads only the key statistics of keys named by rewrites/clusters."""
    needed = pd.concat([
        rewrites_pdf[["locale", "target"]].rename(columns={"target": "text"}),
        rewrites_pdf[["locale", "source"]].rename(columns={"source": "text"}),
        clusters_pdf[["locale", "text"]],
    ]).drop_duplicates()
    spark = key_stats.sparkSession
    if needed.empty:
        stats = pd.DataFrame(columns=["locale", "text", "n_users", "defect_rate", "intent", "domain", "slots_json"])
    else:
        stats = key_stats.join(spark.createDataFrame(needed), ["locale", "text"]).select(
            "locale", "text", "n_users", "defect_rate", "intent", "domain", "slots_json"
        ).toPandas()
    interp = stats[stats["intent"].notna()][["locale", "text", "intent", "domain", "slots_json"]]
    rw = rewrite_labels(rewrites_pdf, interp)
    pp = paraphrase_labels(clusters_pdf, stats[["locale", "text", "defect_rate"]], interp, settings)
    controls = load_controls(settings.controls_file) if controls is None else controls
    rows = drop_controlled(training_rows(rw, pp, settings.dev_share, pattern_rows), settings, controls)
    if not len(rows):
        return rows
    # A label's text must itself have been said by min_users distinct users: a rewrite's
    # source may rest on its cluster mates' users, a cluster member on its cluster's.
    # Pattern rows are template fills no user said as such: their floor is the pattern's
    # users and slot values served to min_users users (patterns.pattern_labels).
    templated = (rows["label_source"] == "pattern").to_numpy()
    said_by = rows[~templated].merge(stats[["locale", "text", "n_users"]], on=["locale", "text"], how="left")
    kept = floor_rows(said_by, settings.min_users)[rows.columns.tolist()]
    return pd.concat([kept, rows[templated]], ignore_index=True)



# --- pattern rewrites (selflearn.core.patterns) -------------------------------------------

PATTERN_CANDIDATES = arrow_schema("pattern_candidates")


def failing_to_served(reach: DataFrame, key_stats: DataFrame, settings: Settings) -> DataFrame:
    """The chain pairs (`reach`) from a failing key to a key served with an intent, with the
    source's reading (source_intent, source_domain) and the target's interpretation
    (target_intent, target_domain, target_slots_json, target_defect_rate): the evidence of
    pattern rewrites and of value corrections."""
    failing = key_stats.where(is_failing(F.col("defect_rate"), settings.min_source_defect_rate)).select(
        "locale", F.col("text").alias("source"), F.col("intent").alias("source_intent"), F.col("domain").alias("source_domain"))
    served = key_stats.where(interpretation_class(key_stats, settings).isNotNull()).select(  # keys served with an intent
        "locale", F.col("text").alias("target"), F.col("intent").alias("target_intent"),
        F.col("domain").alias("target_domain"), F.col("slots_json").alias("target_slots_json"),
        F.col("defect_rate").alias("target_defect_rate"))
    return reach.join(failing, ["locale", "source"]).join(served, ["locale", "target"])


def pattern_candidates_step(reach: DataFrame, key_stats: DataFrame, settings: Settings) -> pd.DataFrame:
    """Pattern candidates with their statistics (patterns.pattern_candidates), one
    applyInPandas group per locale: the locale's pattern pairs and its key statistics
    (every key a source or target pattern may match). Small: to the driver as pandas."""
    from selflearn.core.patterns import pattern_candidates, pattern_pairs

    pairs = failing_to_served(reach, key_stats, settings)

    def delex(batches):
        for pdf in batches:
            yield pattern_pairs(pdf)

    ppairs = pairs.mapInPandas(delex, spark_schema("pattern_pairs"))
    # every failing key's rephrase evidence (any served target, whether or not it
    # delexicalizes): what the users who said the key were served in the end
    reached = pairs.groupBy("locale", "source").agg(F.to_json(F.sort_array(F.collect_set(
        F.struct("user_id", "target_intent", "target_slots_json")))).alias("reached")).withColumnRenamed("source", "text")
    keys = key_stats.select("locale", "text", "n_users", "defect_rate", "intent").join(reached, ["locale", "text"], "left")

    names = list(PATTERN_CANDIDATES.names)  # the driver's schema travels with the function

    def apply(pairs_pdf: pd.DataFrame, keys_pdf: pd.DataFrame) -> pd.DataFrame:
        if pairs_pdf.empty:
            return pd.DataFrame(columns=names)
        keys_pdf = keys_pdf.sort_values("text", kind="mergesort")
        out = pattern_candidates(pairs_pdf, keys_pdf, settings)
        for col in ("n_users", "n_sessions", "n_values", "target_users", "source_users", "source_n_keys"):
            out[col] = out[col].astype("int64")
        return out[names]

    cands = ppairs.groupBy("locale").cogroup(keys.groupBy("locale")).applyInPandas(apply, spark_schema("pattern_candidates"))
    return cands.toPandas().sort_values(["locale", "source", "target"], kind="mergesort").reset_index(drop=True)


def served_values_step(enriched: DataFrame, settings: Settings) -> pd.DataFrame:
    """(locale, intent, name, value, n_users): slot values (as text keys) at least min_users
    distinct users were served with in that slot of that intent, for pattern labels (a
    device an iot_cleaning request names is no value for "activate the {device_type}"
    of another intent)."""
    from selflearn.core.text import normalize_text

    good = _organic(enriched).where(is_good_turn(F.col("response_status"), F.col("defect_prob"), F.col("nlu_intent")))
    slots = good.select("locale", "nlu_intent", "user_id", F.explode("nlu_slots").alias("s")).select(
        "locale", F.col("nlu_intent").alias("intent"), "user_id", F.col("s.name").alias("name"),
        F.col("s.value").alias("value")).distinct()

    def norm(batches):
        for pdf in batches:
            pdf = pdf.copy()
            pdf["value"] = [normalize_text(str(v)) for v in pdf["value"]]
            yield pdf[pdf["value"] != ""]

    normed = slots.mapInPandas(norm, "locale string, intent string, user_id string, name string, value string")
    counted = normed.groupBy("locale", "intent", "name", "value").agg(F.countDistinct("user_id").alias("n_users")).where(
        F.col("n_users") >= settings.min_users)
    return counted.toPandas().sort_values(["locale", "intent", "name", "value"], kind="mergesort").reset_index(drop=True)


CORRECTION_DDL = (
    "locale string, slot string, heard string, meant string, intent string, domain string, n_users long, "
    "n_sessions long, n_phrasings long, heard_users long, share double, similarity double, heard_key_users long, "
    "working_share double, source_defect_rate double, target_success_rate double, specializations string"
)


def value_corrections_step(reach: DataFrame, key_stats: DataFrame, enriched: DataFrame, pattern_candidates: pd.DataFrame,
                           published_patterns: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Value correction candidates (core.corrections.correction_candidates), one
    applyInPandas group per locale: the locale's chain pairs from a failing key to a
    served one, and its key statistics (the working phrasings, and every key that may say
    a heard value). The run's pattern sources and published patterns (small, on the
    driver) travel with the function, and so do the distinct users of each working
    phrasing, counted over the evidence turns of its keys. Small: to the driver as pandas."""
    from selflearn.core.corrections import (
        CORRECTION_COLUMNS, align_heard_values, correction_candidates, served_keys, template_of_key, working_templates,
    )

    def phrasing(batches):
        for pdf in batches:
            pdf = served_keys(pdf, settings)
            yield pd.DataFrame({"locale": pdf["locale"].to_numpy(dtype=object), "text": pdf["text"].to_numpy(dtype=object),
                                "template": pd.array([template_of_key(t, j) for t, j in zip(pdf["text"], pdf["slots_json"])],
                                                     dtype="string")})

    key_phrasing = key_stats.select("locale", "text", "defect_rate", "intent", "slots_json").mapInPandas(
        phrasing, "locale string, text string, template string").where(F.col("template").isNotNull())
    template_users = (
        _organic(enriched).select("locale", "text", "user_id").join(key_phrasing, ["locale", "text"])
        .groupBy("locale", "template").agg(F.countDistinct("user_id").alias("n_users")).toPandas()
    )

    pairs = failing_to_served(reach, key_stats, settings).where(F.col("target_slots_json").isNotNull()).select(
        "locale", "source", "target", "user_id", "session", "target_intent", "target_domain", "target_slots_json",
        "target_defect_rate")
    keys = key_stats.select("locale", "text", "n_users", "defect_rate", "intent", "domain", "slots_json")
    sources = pattern_candidates[["locale", "source"]].drop_duplicates() if len(pattern_candidates) else pd.DataFrame(columns=["locale", "source"])
    cols = ["locale", "source", "target", "target_intent"]
    patterns = published_patterns[cols].copy() if len(published_patterns) else pd.DataFrame(columns=cols)

    def apply(pairs_pdf: pd.DataFrame, keys_pdf: pd.DataFrame) -> pd.DataFrame:
        if pairs_pdf.empty or keys_pdf.empty:
            return pd.DataFrame(columns=CORRECTION_COLUMNS)
        locale = pairs_pdf["locale"].iloc[0]
        keys_pdf = keys_pdf.sort_values("text", kind="mergesort").reset_index(drop=True)
        templates = working_templates(keys_pdf, settings, template_users[template_users["locale"] == locale])
        read_through = list(templates["template"]) + list(sources.loc[sources["locale"] == locale, "source"])
        pairs_pdf = pairs_pdf.sort_values(["source", "target", "user_id", "session"], kind="mergesort")
        aligned = align_heard_values(pairs_pdf, read_through)
        out = correction_candidates(aligned, keys_pdf, templates, patterns[patterns["locale"] == locale], settings)
        for col in ("n_users", "n_sessions", "n_phrasings", "heard_users", "heard_key_users"):
            out[col] = out[col].astype("int64")
        return out[CORRECTION_COLUMNS]

    cands = pairs.groupBy("locale").cogroup(keys.groupBy("locale")).applyInPandas(apply, CORRECTION_DDL)
    return cands.toPandas().sort_values(["locale", "slot", "heard", "meant"], kind="mergesort").reset_index(drop=True)
