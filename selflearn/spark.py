"""The Spark session and the few helpers that apply stage functions to DataFrames.

Stage modules hold the logic as pandas/Arrow functions; this module only decides where
the data lives: it never interprets a row."""
from __future__ import annotations

import os
import sys
from typing import Callable

from .config import Settings

_LOG4J = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")


def get_spark(settings: Settings, app_name: str = "selflearn"):
    """The one SparkSession of the process (created on first use, reused after)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.HF_HUB_OFFLINE", "1")
        .config("spark.executorEnv.TRANSFORMERS_OFFLINE", "1")
        .config("spark.executorEnv.TOKENIZERS_PARALLELISM", "false")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{_LOG4J}")
        .config("spark.executor.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{_LOG4J}")
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
