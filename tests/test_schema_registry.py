"""schemas/ is the one registry of tables: what the run publishes, the work tables'
columns and the evidence kinds come from it; and the domain rules defined once
(`defects.is_failing`, `schema.evidence_kind`) give the same answer on every kind of input."""
from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa
import pytest

from selflearn import schema
from selflearn.core.defects import is_failing, is_working
from selflearn.schema import PUBLISHED_TABLES, arrow_schema, columns, evidence_kind

# Written down here, not read from the registry: the contract's published tables (section 4)
# by their path under a run folder.
CONTRACT_PUBLISHED = {"turns", "rephrase_pairs", "paraphrase_clusters", "rewrites", "training",
                      "rewrite_graph/nodes", "rewrite_graph/edges"}


def test_every_schema_file_is_a_table_and_the_published_ones_are_the_contracts():
    files = {f.name[: -len(".schema.json")] for f in schema.resources.files("selflearn.schemas").iterdir()
             if f.name.endswith(".schema.json")}
    assert set(schema.TABLES) == files
    assert CONTRACT_PUBLISHED <= set(PUBLISHED_TABLES)
    for path, table in PUBLISHED_TABLES.items():
        assert schema.table_kind(table) == "published" and schema.table_path(table) == path
    assert schema.table_kind("enriched_turns") == "work" and "enriched_turns" not in PUBLISHED_TABLES.values()


@pytest.mark.parametrize("table", schema.TABLES)
def test_every_table_converts_to_arrow_and_spark_types(table):
    arrow = arrow_schema(table)
    assert arrow.names == columns(table)
    from pyspark.sql.types import StructType

    spark = schema.spark_schema(table)
    assert isinstance(spark, StructType) and spark.names == arrow.names


def test_work_tables_keep_their_types():
    turns = arrow_schema("enriched_turns")
    assert turns.field("ts").type == pa.timestamp("us", tz="UTC")
    assert turns.field("nlu_slots").type == pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))
    assert turns.field("is_rephrase").type == pa.bool_() and turns.field("seq").type == pa.int64()
    assert columns("candidates") == ["locale", "source", "target", "confidence", "source_success", "evidence"]


def test_evidence_kinds_are_the_schemas_enum_and_the_rule_names_them():
    assert set(schema.EVIDENCE_KINDS) == {"rephrase", "paraphrase", "both"}
    assert evidence_kind(True, False) == "rephrase"
    assert evidence_kind(False, True) == "paraphrase"
    assert evidence_kind(True, True) == "both"


def test_failing_is_one_rule_on_floats_series_and_spark_columns(spark):
    assert is_failing(0.5, 0.5) and not is_failing(0.49, 0.5)
    assert is_working(0.49, 0.5) and not is_working(0.5, 0.5)
    assert not is_failing(math.nan, 0.5) and not is_working(math.nan, 0.5)  # unknown: neither
    rates = pd.Series([0.1, 0.5, 0.9, None], dtype="float64")
    assert is_failing(rates, 0.5).tolist() == [False, True, True, False]
    assert is_working(rates, 0.5).tolist() == [True, False, False, False]
    from pyspark.sql import functions as F

    df = spark.createDataFrame(pd.DataFrame({"defect_rate": [0.1, 0.5, 0.9]}))
    assert [r.defect_rate for r in df.where(is_failing(F.col("defect_rate"), 0.5)).collect()] == [0.5, 0.9]
