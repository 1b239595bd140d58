"""The driver reads the tables that grow with the log (turns/, rephrase_pairs/) batch by
batch for the manifest checksums and the report: results must not depend on batching
or on how the rows are split into files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.run.publish import content_checksum
from selflearn.run.report import BINS, _per_locale


def _write(rows: pd.DataFrame, folder, cuts: list[int], schema: pa.Schema) -> None:
    folder.mkdir()
    (folder / "_SUCCESS").write_text("")  # not data
    bounds = [0, *cuts, len(rows)]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        pq.write_table(pa.Table.from_pandas(rows.iloc[a:b], schema=schema, preserve_index=False), folder / f"part-{i:05d}.parquet")


def test_checksum_streams_whatever_the_batches_and_files(tmp_path):
    schema = pa.schema([("locale", pa.string()), ("text", pa.string()), ("n", pa.int64()), ("score", pa.float64())])
    rows = pd.DataFrame({
        "locale": ["en-US"] * 7, "text": [f"key {i}" for i in range(7)],
        # one null, late: read whole, the column is float; a batch without it must agree
        "n": pd.array([1, 2, 3, 4, 5, None, 7], dtype="Int64"),
        "score": [0.1234567, 0.5, 0.25, 1.0, 0.0, 0.75, 0.3333333],
    })
    one, three = tmp_path / "one", tmp_path / "three"
    _write(rows, one, [], schema)
    _write(rows, three, [2, 5], schema)
    whole = content_checksum(one, batch_rows=1000)
    assert content_checksum(one, batch_rows=2) == whole
    assert content_checksum(three, batch_rows=1) == whole == content_checksum(three)
    changed = tmp_path / "changed"
    _write(rows.assign(n=rows["n"].fillna(6)), changed, [], schema)
    assert content_checksum(changed) != whole  # the null is content
    reordered = tmp_path / "reordered"
    _write(rows.iloc[::-1], reordered, [], schema)
    assert content_checksum(reordered) != whole  # so is the defined order


def test_report_aggregates_turn_tables_batch_by_batch(tmp_path):
    rng = np.random.default_rng(0)
    n = 200_000  # more than one batch
    rows = pd.DataFrame({
        "locale": rng.choice(["en-US", "de-DE", "ja-JP"], n),
        "score": rng.random(n).round(4),
        "is_rephrase": rng.random(n) < 0.3,
    })
    rows.loc[:3, "score"] = [0.0, 1.0, 0.05, 0.5]  # bin edges
    schema = pa.schema([("locale", pa.string()), ("score", pa.float64()), ("is_rephrase", pa.bool_())])
    _write(rows, tmp_path / "pairs", [70_000, 150_000], schema)
    table, hist = _per_locale(tmp_path / "pairs", "score", "is_rephrase")
    expect = rows.groupby("locale").agg(rows=("score", "size"), sum=("score", "sum"), flagged=("is_rephrase", "sum"))
    assert table.index.tolist() == sorted(expect.index)
    assert table["rows"].tolist() == expect["rows"].tolist() and table["flagged"].tolist() == expect["flagged"].tolist()
    assert np.allclose(table["sum"], expect["sum"])
    assert hist.tolist() == np.histogram(rows["score"], BINS)[0].tolist() and hist.sum() == n
