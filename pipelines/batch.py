"""The spark-submit application: one mining run, every stage in order, without Prefect.

    spark-submit [--master ...] --py-files selflearn-<v>-pyfiles.zip batch.py \\
        --input PATH --output ROOT [--config FILE]
    spark-submit ... batch.py --probe     # where the code runs, as JSON; no run

(deploy/submit.sh builds that command.) The session comes from spark-submit: its master
and resources stand, whatever `spark_master` the config holds. The manifest gets a
`runtime` section saying where the code ran from: the driver's and each executor's Python
and the file `selflearn` was imported from, so an operator (and the cluster test) can see
that the shipped package, not some other install, did the work.

Exits 0 and prints the run directory; on failure one line on stderr and exit 2
(SELFLEARN_DEBUG=1 for the traceback), like the `selflearn` command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator


def where_code_runs() -> dict[str, str]:
    """The interpreter and the files the project and a shipped dependency came from."""
    import networkx

    import selflearn
    from selflearn.schema import arrow_schema

    arrow_schema("turns")  # package data must load wherever the package came from
    return {
        "python": sys.executable,
        "selflearn": selflearn.__file__ or "",
        "networkx": networkx.__file__ or "",
        "cwd": os.getcwd(),
    }


def _probe_partition(batches: Iterator) -> Iterator:
    import pandas as pd

    for _ in batches:
        yield pd.DataFrame([where_code_runs()])


def executor_probe(spark) -> list[dict[str, str]]:
    """where_code_runs() as seen by Python workers on the executors: one tiny task per
    default-parallelism slot, distinct answers only (a handful of rows to the driver)."""
    n = spark.sparkContext.defaultParallelism
    schema = "python string, selflearn string, networkx string, cwd string"
    rows = spark.range(0, n, 1, n).mapInPandas(_probe_partition, schema).distinct().collect()
    return sorted((r.asDict() for r in rows), key=lambda r: (r["cwd"], r["selflearn"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batch.py", description="one selflearn mining run under spark-submit")
    p.add_argument("--input", help="parquet file/dir or JSON Lines")
    p.add_argument("--output", help="output ROOT (on a filesystem the driver and executors share)")
    p.add_argument("--config", help="YAML settings file (spark_master is ignored: spark-submit's --master stands)")
    p.add_argument("--probe", action="store_true",
                   help="only print (JSON) which Python and which selflearn the driver and executors use, then exit")
    args = p.parse_args(argv)
    if not args.probe and not (args.input and args.output):
        p.error("--input and --output are required (or --probe)")
    try:
        from selflearn.cli import progress_logging
        from selflearn.config import load_settings
        from selflearn.spark.readers import check_input
        from selflearn.run.runner import Run, run_all
        from selflearn.spark.session import SUBMIT

        settings = load_settings(args.config, spark_master=SUBMIT)
        if args.probe:
            from selflearn.spark.session import get_spark

            spark = get_spark(settings, app_name="selflearn-probe")
            print(json.dumps({"spark_master": spark.sparkContext.master, "driver": where_code_runs(),
                              "executors": executor_probe(spark)}))
            return 0
        check_input(args.input)
        progress_logging()

        run = Run(input_path=args.input, output_root=args.output, settings=settings)
        run.runtime = {
            "spark_master": run.spark.sparkContext.master,
            "driver": where_code_runs(),
            "executors": executor_probe(run.spark),
        }
        print(f"selflearn batch: master {run.runtime['spark_master']}; executors run {run.runtime['executors']}", file=sys.stderr)
        final = run_all(run)
        print(final)
        return 0
    except KeyboardInterrupt:
        print("selflearn batch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, like the CLI
        if os.environ.get("SELFLEARN_DEBUG"):
            raise
        print(f"selflearn batch: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the copy inside the shipped package: the functions Spark pickles for executors then
    # refer to pipelines.batch, which executors import from the same zip.
    from pipelines.batch import main as shipped_main

    sys.exit(shipped_main())
