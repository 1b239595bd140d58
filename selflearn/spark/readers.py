"""Reading the interaction log into Spark (contract section 1): file discovery, raw
records, and `ingest`, which validates rows (`ingest.validate_rows`, pandas, via
mapInPandas) and then applies the two cross-row rules with window functions.

Every input row becomes one raw record `(raw, source, order, type_errors)`:

* `raw`: the JSON text of the row. JSONL: the line as read (decoded as UTF-8 with U+FFFD
  replacement, so broken bytes end up `bad_encoding`). Parquet:
  `to_json(struct(<contract columns the file has>))` with timestamps as ISO-8601 strings
  (`...ss.SSSSSSZ`); extra columns and hive partition columns are never read into it.
* `source`: `path:N`. JSONL: N is the 1-based line number (as editors and `sed -n Np`
  count). Parquet: N is the 0-based row index within the file (as `pyarrow`'s
  `table.slice(N, 1)`), taken from Spark's `_metadata.row_index`: a true per-file row
  number, computed while scanning, without collecting or shuffling data.
* `order`: global input order, `file_index * 2**40 + N`, files sorted by path.
* `type_errors`: parquet only: the contract columns of the row's file whose physical type
  is wrong for the contract (comma-separated, null when none); their non-null values make
  the row `bad_type` (`bad_timestamp` for `ts`).

Blank JSONL lines (JSON whitespace only: space, tab, CR, LF) are not rows and are skipped,
like empty (0-byte) files of either format. Files are read under their own names: glob
characters are escaped for Hadoop, a JSONL file with ':' in its path (which Hadoop cannot
open) is read by Python, and a parquet one is refused with one line; symlinked
directories are followed. pandas' TIMESTAMP(NANOS) `ts` is read as microseconds. A string
field of the contract that parquet files leave out and their hive path holds
(`locale=en-US/`, as Spark's partitionBy writes it) is taken from the path. Gzip files are
read with Python's zlib (`_python_records`): a
truncated or corrupt stream keeps every line before the damage and adds one
`unparseable` row where it broke; a `.gz` file that is not gzip at all fails the run.
Parquet files are grouped by the types of their contract columns (read from each footer
with pyarrow on the driver), so a file missing a column is never read as nulls: its rows
lack the field and are quarantined `missing_field`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from selflearn.config import Settings
from selflearn.schema import arrow_schema, required_fields

FILE_BITS = 40
# Contract fields a hive path may hold (strings: a path holds text); see _read_parquet.
_PATH_FIELDS = tuple(f.name for f in arrow_schema("log") if str(f.type) == "string")
_HIDDEN = (".", "_")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
_TS_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"
_NTZ_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSS"


class InputError(Exception):
    """An input that cannot be a log at all; the message is one line for the CLI."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _kind_of(name: str) -> str | None:
    low = name.lower()
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    return None


def list_input_files(path: str | os.PathLike) -> tuple[str, list[str]]:
    """(kind, files): kind "parquet" or "jsonl"; files absolute and sorted. A directory is
    walked recursively (hive partitions allowed); names starting with "." or "_"
    (`_SUCCESS`, `.crc`, `_temporary/`) are skipped."""
    p = os.path.abspath(os.fspath(path))
    if not os.path.exists(p):
        raise InputError(f"input not found: {path}")
    if os.path.isfile(p):
        candidates = [p]
    elif os.path.isdir(p):
        candidates = []
        seen = {os.path.realpath(p)}
        # Symlinked partitions (dt=... -> elsewhere) are read like real ones; a link back
        # into a folder already walked is not walked twice.
        for root, dirs, names in os.walk(p, followlinks=True):
            keep = []
            for d in sorted(d for d in dirs if not d.startswith(_HIDDEN)):
                real = os.path.realpath(os.path.join(root, d))
                if real not in seen:
                    seen.add(real)
                    keep.append(d)
            dirs[:] = keep
            candidates += [os.path.join(root, n) for n in names
                           if not n.startswith(_HIDDEN) and not n.endswith(".crc")]
    else:
        raise InputError(f"input is neither a file nor a directory: {path}")
    kinds: dict[str, list[str]] = {}
    for f in sorted(candidates):
        kind = _kind_of(os.path.basename(f))
        if kind is None:
            raise InputError(f"unknown input format (expected .parquet, .jsonl, .jsonl.gz or "
                             f".json): {f}")
        if not os.access(f, os.R_OK):
            raise InputError(f"input file not readable: {f}")
        if kind == "jsonl" and f.lower().endswith(".gz") and os.path.getsize(f) > 0:
            with open(f, "rb") as fh:
                if fh.read(2) != b"\x1f\x8b":  # damage comes later; this was never gzip
                    raise InputError(f"not a gzip file: {f}")
        kinds.setdefault(kind, []).append(f)
    if not kinds:
        raise InputError(f"no input files under {path}")
    if len(kinds) > 1:
        raise InputError(f"mixed input formats under {path}: " + ", ".join(sorted(kinds)))
    kind, files = next(iter(kinds.items()))
    return kind, files


_GLOB = str.maketrans({c: "\\" + c for c in "[]{}*?\\"})


def spark_path(path: str) -> str:
    """A local path as Spark must be given it to read that one file: Hadoop reads '[', ']',
    '{', '}', '*', '?' and '\\' as a glob ("log[1].jsonl" would read "log1.jsonl"), so they
    are escaped."""
    return path.translate(_GLOB)


def hadoop_unreadable(path: str) -> bool:
    """Whether Hadoop cannot open the path at all: a ':' in a name (HADOOP-3257, "Relative
    path in absolute URI"), as in log-2026-11-20T10:00:00.jsonl."""
    return ":" in path


def read_raw(spark, path: str | os.PathLike):
    """DataFrame[raw string, source string, order long, type_errors string] of every input
    row (see the module docstring)."""
    kind, files = list_input_files(path)
    if kind == "jsonl":
        return _read_jsonl(spark, files)
    return _read_parquet(spark, files)


def _raw_schema():
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    return StructType([StructField("raw", StringType()), StructField("source", StringType()),
                       StructField("order", LongType()), StructField("type_errors", StringType())])


def _read_jsonl(spark, files: list[str]):
    sc = spark.sparkContext
    rdds = []
    for i, f in enumerate(files):
        if os.path.getsize(f) == 0:
            continue
        base = i << FILE_BITS

        def records(pair, f=f, base=base):
            line, n = pair
            return (line, f"{f}:{n + 1}", base + n + 1, None)

        if f.lower().endswith(".gz") or hadoop_unreadable(f):
            # Python's zlib, not Hadoop's codec: a truncated or corrupt stream ends the file
            # (with an unparseable row where it broke) instead of failing the whole job. A
            # plain file Hadoop cannot open (a ':' in its name) is read by Python too.
            rdds.append(sc.parallelize([(f, base)], 1).flatMap(_python_records))
            continue
        rdds.append(sc.textFile(spark_path(f)).zipWithIndex()
                    .filter(lambda pair: not _blank(pair[0])).map(records))
    if not rdds:
        return spark.createDataFrame([], _raw_schema())
    return spark.createDataFrame(sc.union(rdds) if len(rdds) > 1 else rdds[0], _raw_schema())


def _blank(line: str) -> bool:
    """A line of JSON whitespace only (space, tab, CR, LF) is no row. Other characters
    str.strip() would take (U+00A0, U+2028, U+001E) are text: such a line is a row, and
    validation quarantines it `unparseable`."""
    return not line.strip(" \t\r\n")


def _inflate(d, data: bytes, out: list):
    """Feed gzip bytes to decompressor `d`, starting a new one for each next member;
    returns the decompressor now in use."""
    import zlib

    while data:
        if d.eof:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out.append(d.decompress(data))
        data = d.unused_data if d.eof else b""
    return d


def _python_records(file_and_base: tuple[str, int]):
    """Raw records of one gzip JSONL file (or of a plain one whose name does not end in .gz,
    read as it is), numbered as Hadoop's text reader numbers lines
    (split at LF, CRLF or CR; a leading UTF-8 BOM dropped; UTF-8 decoded with U+FFFD for
    broken bytes; blank lines skipped). Concatenated gzip members are read in turn. When
    the stream is cut short or corrupt, what was decoded after the last line end becomes
    one last record -- possibly empty -- that validation quarantines `unparseable`, so the
    damage is on record and every readable line before it is kept."""
    import zlib

    path, base = file_and_base
    n = 0

    def record(text: str):
        return (text, f"{path}:{n + 1}", base + n + 1, None)

    pending = b""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    broken = False
    with open(path, "rb") as fh:
        plain = not path.lower().endswith(".gz")
        while not broken:
            chunk = fh.read(1 << 16)
            if not chunk:
                break
            out: list[bytes] = []
            saved = d.copy()
            try:
                if plain:
                    out.append(chunk)
                else:
                    d = _inflate(d, chunk, out)
            except zlib.error:
                # zlib drops the output of the failing call: replay the chunk a byte at a
                # time to keep everything decoded before the damage
                broken, out, d = True, [], saved
                try:
                    for i in range(len(chunk)):
                        d = _inflate(d, chunk[i:i + 1], out)
                except zlib.error:
                    pass
            pending += b"".join(out)
            lines = pending.splitlines(keepends=True)
            # the last piece may be incomplete: no line end yet, or a CR whose LF comes next
            pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
            for line in lines:
                if n == 0 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                if not _blank(text):
                    yield record(text)
                n += 1
    broken = broken or (not plain and not d.eof)
    if n == 0 and pending.startswith(b"\xef\xbb\xbf"):
        pending = pending[3:]
    tail = pending.rstrip(b"\r\n").decode("utf-8", "replace")
    if broken or not _blank(tail):
        yield record(tail)  # the cut line (or, cut at a line end, an empty marker)


def _compatible(name: str, dtype) -> bool:
    """Whether a Spark column type can hold the contract field `name`."""
    from pyspark.sql import types as T

    integral = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
    if name == "ts":
        return isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.StringType))
    if name in ("asr_confidence", "nlu_confidence"):
        return isinstance(dtype, integral + (T.FloatType, T.DoubleType, T.DecimalType))
    if name in ("feedback", "dwell_ms"):
        return isinstance(dtype, integral)
    if name == "barge_in":
        return isinstance(dtype, T.BooleanType)
    if name == "nlu_slots":
        return isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StructType)
    return isinstance(dtype, T.StringType)


def _parquet_groups(files: list[str]) -> dict[tuple, list[tuple[int, str]]]:
    """Files grouped by their contract columns' types, read from footers only (bounded
    work on the driver). Raises InputError for a file that is unreadable or cannot be a log."""
    import pyarrow.parquet as pq

    log_cols = arrow_schema("log").names
    required = set(required_fields("log"))
    groups: dict[tuple, list[tuple[int, str]]] = {}
    for i, f in enumerate(files):
        if os.path.getsize(f) == 0:  # no footer, no rows: like an empty JSONL file
            continue
        if hadoop_unreadable(f):
            raise InputError(f"Spark cannot read a parquet file with ':' in its path (Hadoop reads it as "
                             f"a URI scheme); rename it or write the log as JSONL: {f}")
        try:
            schema = pq.read_schema(f)
        except Exception as exc:  # noqa: BLE001 - any footer failure means unreadable
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise InputError(f"cannot read parquet file {f}: {reason}") from None
        names = set(schema.names)
        folded: dict[str, list[str]] = {}
        for name in schema.names:
            folded.setdefault(name.casefold(), []).append(name)
        clash = sorted(n for c in log_cols for n in folded.get(c.casefold(), []) if len(folded[c.casefold()]) > 1)
        if clash:
            raise InputError(f"parquet file has columns Spark cannot tell apart ({', '.join(clash)}: Spark reads "
                             f"column names case-insensitively); drop or rename the extra one: {f}")
        if not names & required:
            raise InputError(f"parquet file cannot be a log (none of the required columns "
                             f"{', '.join(sorted(required))}): {f}")
        key = tuple((c, str(schema.field(c).type)) for c in log_cols if c in names)
        groups.setdefault(key, []).append((i, f))
    return groups


def check_input(path: str | os.PathLike) -> tuple[str, list[str]]:
    """Fail fast, before Spark starts, on input that cannot be a log at all."""
    kind, files = list_input_files(path)
    if kind == "parquet":
        _parquet_groups(files)
    return kind, files


def hive_values(path: str) -> dict[str, str]:
    """{key: value} of the path's hive directories (`dt=2026-11-24`, `locale=en-US`), the
    value unescaped as Spark's partitionBy escapes it."""
    from urllib.parse import unquote

    out = {}
    for part in path.split(os.sep)[:-1]:
        key, sep, value = part.partition("=")
        if sep and key and value and value != "__HIVE_DEFAULT_PARTITION__":  # Spark's name for null
            out[key] = unquote(value)
    return out


def _read_parquet(spark, files: list[str]):
    from pyspark.sql import functions as F

    groups = _parquet_groups(files)
    if not groups:  # every file empty
        return spark.createDataFrame([], _raw_schema())
    parts = []
    if any(dict(key).get("ts", "").startswith("timestamp[ns") for key in groups):
        # pandas writes datetimes as TIMESTAMP(NANOS), which Spark refuses to read: read them
        # as the int64 nanoseconds they are and make microseconds of them below.
        spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    for key, members in groups.items():
        cols = [c for c, _ in key]
        group_files = [f for _, f in members]
        try:
            df = spark.read.parquet(*map(spark_path, group_files))
        except Exception as exc:  # noqa: BLE001
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise InputError(f"cannot read parquet files {group_files[0]} ...: {reason}") from None
        if dict(key).get("ts", "").startswith("timestamp[ns"):
            df = df.withColumn("ts", F.expr("timestamp_micros(ts div 1000)"))
        wrong = ",".join(c for c in cols if not _compatible(c, df.schema[c].dataType))
        # A string field of the contract that the files leave out and their hive path holds
        # (locale=en-US/part-0.parquet, as Spark's partitionBy writes it) comes from the path.
        hive = {f: hive_values(f) for f in group_files}
        from_path = [c for c in _PATH_FIELDS if c not in cols and any(c in h for h in hive.values())]
        files_df = spark.createDataFrame([(f, i << FILE_BITS, *[hive[f].get(c) for c in from_path])
                                          for i, f in members],
                                         ", ".join(["_path string", "_base long"] + [f"`_hive_{c}` string" for c in from_path]))
        # _metadata.file_path is a URI (file:/a%20b/...): back to the plain local path.
        local = F.url_decode(F.regexp_replace(
            F.regexp_replace(F.col("_metadata.file_path"), r"^file:(//)?", ""), r"\+", "%2B"))
        fields = [F.col(f"`{c}`") for c in cols] + [F.col(f"`_hive_{c}`").alias(c) for c in from_path]
        raw = F.to_json(F.struct(*fields), {"timestampFormat": _TS_FORMAT, "timestampNTZFormat": _NTZ_FORMAT})
        part = (df.select(*[F.col(f"`{c}`") for c in cols], local.alias("_path"),
                          F.col("_metadata.row_index").alias("_row"))
                .join(F.broadcast(files_df), "_path", "left")
                .select(raw.alias("raw"), "_path", "_row", "_base")
                .select("raw",
                        F.concat(F.col("_path"), F.lit(":"), F.col("_row").cast("string"))
                        .alias("source"),
                        (F.col("_base") + F.col("_row")).cast("long").alias("order"),
                        F.lit(wrong or None).cast("string").alias("type_errors")))
        parts.append(part)
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


@dataclass
class IngestResult:
    """`accepted`: the log columns typed (contract schema) plus `order`; `quarantine`: raw,
    reason, source; `annotated`: every input row with its reason (None = accepted). Counts
    come from one Spark aggregation (no rows collected), computed on first access."""

    annotated: Any
    _counts: dict | None = field(default=None, repr=False)

    @property
    def accepted(self):
        from pyspark.sql import functions as F

        cols = list(arrow_schema("log").names) + ["order"]
        return self.annotated.where(F.col("reason").isNull()).select(*cols)

    @property
    def quarantine(self):
        from pyspark.sql import functions as F

        return self.annotated.where(F.col("reason").isNotNull()).select("raw", "reason", "source")

    def counts(self) -> dict:
        """{rows_in, rows_accepted, rows_quarantined, by_reason: {code: n}}."""
        if self._counts is None:
            rows = self.annotated.groupBy("reason").count().collect()  # <= 12 rows
            by_reason = {r["reason"]: int(r["count"]) for r in rows if r["reason"] is not None}
            accepted = sum(int(r["count"]) for r in rows if r["reason"] is None)
            quarantined = sum(by_reason.values())
            self._counts = {"rows_in": accepted + quarantined, "rows_accepted": accepted,
                            "rows_quarantined": quarantined,
                            "by_reason": dict(sorted(by_reason.items()))}
        return self._counts

    @property
    def rows_in(self) -> int:
        return self.counts()["rows_in"]

    @property
    def rows_accepted(self) -> int:
        return self.counts()["rows_accepted"]

    @property
    def rows_quarantined(self) -> int:
        return self.counts()["rows_quarantined"]

    @property
    def by_reason(self) -> dict:
        return self.counts()["by_reason"]

    def unpersist(self) -> None:
        self.annotated.unpersist()


def ingest(spark, path: str | os.PathLike, settings: Settings, now: Any = None,
           persist: bool = True) -> IngestResult:
    """Read, validate and de-duplicate the log at `path`.

    Row rules come from `ingest.validate_rows`; then, among rows still valid:
    `duplicate_event_id` (per event_id the first by ts, then input order, is kept) and
    `user_rate_limited` (per user_id and UTC day, turns beyond
    `settings.max_turns_per_user_day` in ts/order order). `now` bounds timestamps
    (default: the current time, fixed once for the run). The annotated DataFrame is
    persisted (memory and disk) unless `persist=False`, so validation runs once."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from selflearn.spark.ingest import output_schema, validate_batches

    now = now if now is not None else datetime.now(timezone.utc)
    raw = read_raw(spark, path)

    def _validate(batches, settings=settings, now=now):
        return validate_batches(batches, settings, now)

    df = raw.mapInPandas(_validate, output_schema())
    reason = F.col("reason")

    valid = reason.isNull()
    by_event = Window.partitionBy(valid, F.col("event_id"), F.when(~valid, F.col("order"))) \
        .orderBy("ts", "order")
    df = df.withColumn("reason", F.when(valid & (F.row_number().over(by_event) > 1),
                                        F.lit("duplicate_event_id")).otherwise(reason))

    valid = F.col("reason").isNull()
    day = F.floor(F.unix_micros(F.col("ts")) / F.lit(86_400_000_000))
    by_user_day = Window.partitionBy(valid, F.col("user_id"), day,
                                     F.when(~valid, F.col("order"))).orderBy("ts", "order")
    limit = int(settings.max_turns_per_user_day)
    df = df.withColumn("reason", F.when(valid & (F.row_number().over(by_user_day) > limit),
                                        F.lit("user_rate_limited")).otherwise(F.col("reason")))
    if persist:
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
    return IngestResult(df)
