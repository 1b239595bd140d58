"""The contract's JSON Schemas (schemas/, shipped as selflearn.schemas) are the single
source; the Arrow and Spark schemas are derived from them here, never kept by hand."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import pyarrow as pa

# Every table the project reads or writes has one file schemas/<name>.schema.json; its
# "x-selflearn" block says what kind of table it is ("input", "simulation", "published",
# "quarantine" or "work") and, for a published table stored below another folder, its path
# under the run folder. Adding a table is adding a file there: TABLES, PUBLISHED_TABLES and
# every column list below are read from the files, never kept by hand.
TABLES = tuple(sorted(
    f.name[: -len(".schema.json")]
    for f in resources.files("selflearn.schemas").iterdir()
    if f.name.endswith(".schema.json")
))

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


def table_kind(table: str) -> str:
    return json_schema(table).get("x-selflearn", {}).get("kind", "work")


def table_path(table: str) -> str:
    """Where a published table lives under a run folder (its name unless the schema says)."""
    return json_schema(table).get("x-selflearn", {}).get("path", table)


def columns(table: str) -> list[str]:
    """The table's columns in their published order."""
    return list(json_schema(table)["properties"])


def enum_values(table: str, column: str) -> tuple:
    """The allowed values of an enumerated column (evidence kinds, label sources, ...)."""
    return tuple(v for v in json_schema(table)["properties"][column]["enum"] if v is not None)


# Published tables by their path under the run folder (the manifest's checksum keys).
PUBLISHED_TABLES: dict[str, str] = {table_path(t): t for t in TABLES if table_kind(t) == "published"}


# The evidence kinds behind a rewrite: one enumeration, the rewrites schema's `evidence` enum.
EVIDENCE_KINDS = enum_values("rewrites", "evidence")
REPHRASE, PARAPHRASE, BOTH = "rephrase", "paraphrase", "both"
assert set(EVIDENCE_KINDS) == {REPHRASE, PARAPHRASE, BOTH}, EVIDENCE_KINDS


def evidence_kind(by_own_rephrases: bool, by_cluster_mate: bool) -> str:
    """`rephrase` where the source's own rephrase edges lead to the target, `paraphrase`
    where only a key inherited from a paraphrase-cluster mate does, `both` for both."""
    if by_own_rephrases and by_cluster_mate:
        return BOTH
    return REPHRASE if by_own_rephrases else PARAPHRASE
