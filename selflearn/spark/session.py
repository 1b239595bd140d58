"""The Spark session and the few helpers that apply stage functions to DataFrames.

Stage modules hold the logic as pandas/Arrow functions; this module only decides where
the data lives: it never interprets a row."""
from __future__ import annotations

import os
import sys
from typing import Callable

from selflearn.config import Settings

SUBMIT = "submit"  # spark_master value: take the master from spark-submit


def submitted() -> bool:
    """True when spark-submit started this process: its JVM is already up and hands Python
    the gateway port, so --master, --driver-memory and the like are already decided."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def log4j_file() -> str:
    """A real file holding the package's log4j2.properties. The JVM needs a path, and with
    --py-files the package is a zip (zipimport), where there is no such file: copy it out."""
    import hashlib
    import tempfile
    from importlib import resources
    from pathlib import Path

    ref = resources.files("selflearn") / "log4j2.properties"
    if isinstance(ref, Path):
        return str(ref)
    data = ref.read_bytes()
    out = Path(tempfile.gettempdir()) / f"selflearn-log4j2-{hashlib.sha1(data).hexdigest()[:10]}.properties"
    if not out.is_file():
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return str(out)


def local_env_defaults() -> None:
    """Loopback-only, offline and quiet, unless the environment says otherwise: set before
    pyspark, Prefect or transformers read it (get_spark; tests/conftest.py at start-up)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def get_spark(settings: Settings, app_name: str = "selflearn", local_dir: str | None = None):
    """The one SparkSession of the process (created on first use, reused after).

    Under spark-submit the submitted master and driver settings stand (whatever
    `spark_master` says); `spark_master: submit` demands spark-submit.

    `local_dir` (a run's ROOT/.work/spark-<run_id>): where this process's Spark keeps its
    scratch files, when this call starts the JVM. Shuffle files (blockmgr-*) hold raw user
    ids and utterances: under ROOT they are removed by the next run's locked cleanup and by
    forget even after a SIGKILL, never left in /tmp. spark.local.dir takes blockmgr-* and
    the driver's spark-*; java.io.tmpdir the JVM's other temp dirs (artifacts-*, spark-*)."""
    local_env_defaults()
    from pyspark.sql import SparkSession

    from_submit = submitted()
    if settings.spark_master == SUBMIT and not from_submit:
        raise RuntimeError("spark_master 'submit' takes the master from spark-submit: run the job with deploy/submit.sh or spark-submit")
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    if not from_submit:
        # Driver JVM options only count before the JVM starts, i.e. outside spark-submit.
        log4j = log4j_file()
        java_opts = f"-Dlog4j2.configurationFile=file:{log4j}"
        if local_dir:
            os.makedirs(local_dir, exist_ok=True)
            java_opts += f" -Djava.io.tmpdir={local_dir}"
            builder = builder.config("spark.local.dir", local_dir)
        builder = (
            builder.master(settings.spark_master)
            .config("spark.driver.memory", settings.spark_driver_memory)
            .config("spark.driver.extraJavaOptions", java_opts)
            .config("spark.executor.extraJavaOptions", java_opts)
        )
    builder = (
        builder.config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.HF_HUB_OFFLINE", "1")
        .config("spark.executorEnv.TRANSFORMERS_OFFLINE", "1")
        .config("spark.executorEnv.TOKENIZERS_PARALLELISM", "false")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def map_groups(df, keys: list[str], order: list[str], fn: Callable, schema, partitions: int | None = None):
    """Apply `fn` to pandas frames each holding *whole* groups of `keys`, many groups per
    frame (vectorised work, unlike one Python call per group with applyInPandas).

    Rows are clustered by the keys and sorted within partitions; Arrow batches may cut a
    group in two, so the last group of each batch is carried into the next one
    (`whole_groups`)."""
    n = partitions or df.sparkSession.sparkContext.defaultParallelism * 2
    clustered = df.repartition(n, *keys).sortWithinPartitions(*keys, *order)

    def _apply(batches):
        return whole_groups(batches, keys, fn)

    return clustered.mapInPandas(_apply, schema)


def whole_groups(batches, keys: list[str], fn: Callable):
    """`fn` over frames of whole groups, from batches sorted by `keys` that may cut a group
    anywhere. The open group's pieces are kept in a list and concatenated once, when it
    ends: a group spanning k batches costs O(its rows) copying, not O(k x its rows)."""
    import pandas as pd

    pending: list = []  # pieces of the group(s) that may go on in the next batch
    for pdf in batches:
        if pdf.empty:
            continue
        last = pdf.iloc[-1][keys]
        tail = (pdf[keys] == last.values).all(axis=1)
        head = pdf[~tail]
        if len(head):
            yield fn(pd.concat([*pending, head], ignore_index=True) if pending else head)
            pending = []
        pending.append(pdf[tail])
    if pending:
        yield fn(pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0])
