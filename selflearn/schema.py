"""The contract's JSON Schemas (schemas/, shipped as selflearn.schemas) are the single
source; the Arrow and Spark schemas are derived from them here, never kept by hand."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import pyarrow as pa

TABLES = (
    "log", "truth", "turns", "rephrase_pairs", "rewrites", "training",
    "paraphrase_clusters", "quarantine", "rewrite_patterns",
)

REASON_CODES = (
    "unparseable", "bad_encoding", "missing_field", "bad_type", "bad_timestamp", "bad_locale",
    "empty_utterance", "utterance_too_long", "unknown_status", "duplicate_event_id",
    "user_rate_limited",
)


@lru_cache(maxsize=None)
def json_schema(table: str) -> dict[str, Any]:
    if table not in TABLES:
        raise KeyError(f"no schema named {table!r}; known: {', '.join(TABLES)}")
    text = resources.files("selflearn.schemas").joinpath(f"{table}.schema.json").read_text("utf-8")
    return json.loads(text)


def _types(prop: dict[str, Any]) -> tuple[str, bool]:
    t = prop.get("type", "string")
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        return non_null[0], "null" in t
    return t, False


def _arrow_type(prop: dict[str, Any]) -> pa.DataType:
    t, _ = _types(prop)
    if "x-arrow" in prop:
        return {"int8": pa.int8(), "int32": pa.int32(), "int64": pa.int64()}[prop["x-arrow"]]
    if t == "string":
        return pa.timestamp("us", tz="UTC") if prop.get("format") == "date-time" else pa.string()
    if t == "integer":
        return pa.int64()
    if t == "number":
        return pa.float64()
    if t == "boolean":
        return pa.bool_()
    if t == "array":
        return pa.list_(_arrow_type(prop["items"]))
    if t == "object":
        return pa.struct([pa.field(k, _arrow_type(v)) for k, v in prop["properties"].items()])
    raise ValueError(f"unsupported JSON Schema type {t!r}")


@lru_cache(maxsize=None)
def arrow_schema(table: str) -> pa.Schema:
    """Arrow schema of a contract table; fields outside `required` are nullable."""
    js = json_schema(table)
    required = set(js.get("required", ()))
    fields = []
    for name, prop in js["properties"].items():
        _, nullable = _types(prop)
        fields.append(pa.field(name, _arrow_type(prop), nullable=nullable or name not in required))
    return pa.schema(fields)


def spark_schema(table: str):
    """The Spark StructType of a contract table, converted from the Arrow schema."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_schema(table))


def required_fields(table: str) -> tuple[str, ...]:
    return tuple(json_schema(table).get("required", ()))
