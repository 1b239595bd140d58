"""spark.map_groups / whole_groups: every group reaches `fn` whole, once, however the
Arrow batches cut it, and a group spanning many batches is copied once, not per batch."""
from __future__ import annotations

import sys

import pandas as pd

from selflearn.spark import session as spark_mod


def _frame(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [(k, i) for k in sorted(sizes) for i in range(sizes[k])]
    return pd.DataFrame(rows, columns=["user_id", "seq"])


def _batches(df: pd.DataFrame, size: int):
    return [df.iloc[i: i + size] for i in range(0, len(df), size)]


def _sizes_per_call(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby("user_id", as_index=False).agg(n=("seq", "size"), first=("seq", "min"))


def test_groups_cut_by_batches_arrive_whole_and_once():
    sizes = {"a": 3, "heavy": 1000, "m": 1, "n": 57, "z": 250}
    out = pd.concat(spark_mod.whole_groups(_batches(_frame(sizes), 10), ["user_id"], _sizes_per_call))
    assert out["user_id"].is_unique  # no group split over two calls
    assert dict(zip(out["user_id"], out["n"])) == sizes and (out["first"] == 0).all()


def test_a_group_over_many_batches_is_copied_once(monkeypatch):
    real = pd.concat
    copied = []

    def counting(objs, *a, **kw):
        objs = list(objs)
        # only whole_groups' own concatenations: pandas internals (groupby.agg) and other
        # threads of the test session may call pd.concat too
        if sys._getframe(1).f_code.co_name == "whole_groups":
            copied.append(sum(len(o) for o in objs))
        return real(objs, *a, **kw)

    monkeypatch.setattr(pd, "concat", counting)
    df = _frame({"heavy": 20_000, "z": 5})
    list(spark_mod.whole_groups(_batches(df, 100), ["user_id"], _sizes_per_call))
    # 200 batches of one group: one concatenation of its rows, not 200 growing ones
    assert sum(copied) <= 2 * len(df)


def test_map_groups_on_spark_with_tiny_arrow_batches(spark):
    sizes = {"a": 3, "heavy": 700, "m": 1, "n": 57}
    df = spark.createDataFrame(_frame(sizes).sample(frac=1.0, random_state=1))
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "16")

    def per_call(frame):  # defined here: pickled by value for the Python workers
        return frame.groupby("user_id", as_index=False).agg(n=("seq", "size"), first=("seq", "min"))

    try:
        out = spark_mod.map_groups(df, ["user_id"], ["seq"], per_call,
                                   "user_id string, n long, first long", partitions=2).toPandas()
    finally:
        spark.conf.set(key, before)
    assert out["user_id"].is_unique and dict(zip(out["user_id"], out["n"])) == sizes
