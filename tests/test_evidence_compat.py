"""Evidence written before `graph_score` existed (state/ of an earlier version) still reads:
the column comes back as the rule of that version, the pair's score where it was a rephrase,
so the days a ROOT already holds keep supporting the rewrites they supported. Real local
Spark over real parquet."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from selflearn.run.state import EVIDENCE_COLUMNS, State


def test_evidence_without_graph_score_reads_as_its_rephrase_decision(spark, tmp_path):
    from selflearn.spark.incremental import _EVIDENCE_ARROW, read_evidence

    state = State(tmp_path / "state")
    old_columns = [f for f in _EVIDENCE_ARROW if f.name != "graph_score"]
    assert len(old_columns) == len(EVIDENCE_COLUMNS) - 2  # less day (the directory) and graph_score
    rows = {f.name: [None] * 3 for f in old_columns}
    rows.update(eid=["e1", "e2", "e3"], user_id=["u"] * 3, locale=["en-US"] * 3, text=["a", "b", "c"],
                pair_score=[0.9, 0.2, None], is_rephrase=[True, False, False])
    d = state.path("evidence/v1/day=2026-11-01")
    d.mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=pa.schema(old_columns)), d / "part-00000.parquet")
    got = read_evidence(spark, state, {"days": {"2026-11-01": "evidence/v1/day=2026-11-01"}}).toPandas()
    by_eid = got.set_index("eid")["graph_score"].to_dict()
    assert by_eid["e1"] == 0.9 and all(pd.isna(by_eid[e]) for e in ("e2", "e3"))
