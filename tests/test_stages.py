"""The stage registry (selflearn/run/stages.py): each stage declares what it reads and
writes, the declarations form a pipeline (nothing is read before a stage writes it), and
the run context refuses a table a stage did not declare."""
import pytest

from selflearn.config import Settings
from selflearn.run.runner import Run, UndeclaredTable
from selflearn.run.stages import INPUTS, PUBLISHED, STAGE_NAMES, STAGES, VIRTUAL, WORK_TABLES, Stage
from selflearn.schema import PUBLISHED_TABLES


def test_every_table_is_written_before_it_is_read():
    written = set(INPUTS)
    for st in STAGES:
        for table in st.reads:
            if table == "evidence":  # the state's days plus this run's pending ones
                assert "pending_state" in written, st.name
                continue
            assert table in written, f"stage {st.name} reads {table!r} before any stage writes it"
        written |= set(st.writes)


def test_every_published_table_has_one_writer_and_every_table_a_place():
    writers = {}
    for st in STAGES:
        for table in st.writes:
            assert table not in writers, f"{table} written by {writers[table]} and {st.name}"
            writers[table] = st.name
            assert table in WORK_TABLES or table in PUBLISHED, table
    # what the manifest checksums (schemas/) is what the stages write
    assert {t.split("/")[0] for t in PUBLISHED_TABLES} <= set(writers)
    assert not set(VIRTUAL) & set(writers)
    assert STAGE_NAMES[0] == "ingest" and STAGE_NAMES[-1] == "publish" and len(set(STAGE_NAMES)) == len(STAGES)


def test_a_stage_cannot_touch_a_table_it_does_not_declare(tmp_path):
    run = Run(input_path="x", output_root=str(tmp_path), settings=Settings())
    seen = {}

    def body(run):
        seen["declared"] = run.path("key_stats")
        run.path("vectors")  # not declared below

    with pytest.raises(UndeclaredTable, match="vectors"):
        run.stage(Stage("probe", reads=("key_stats",), writes=(), run=body))
    assert seen["declared"] == run.dirs.work / "key_stats"
    # outside a stage (an executor, a test) every known table resolves; an unknown one does not
    assert run.path("vectors") == run.dirs.work / "vectors"
    with pytest.raises(UndeclaredTable):
        run.path("no_such_table")


def test_stats_a_stage_returns_are_the_manifest_counts(tmp_path):
    run = Run(input_path="x", output_root=str(tmp_path), settings=Settings(progress_heartbeat_s=0))
    run.stage(Stage("probe", (), (), lambda run: {"rows": 3}))
    assert run.counts["probe"] == {"rows": 3} and run.timings["probe"] >= 0
