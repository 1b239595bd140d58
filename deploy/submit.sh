#!/usr/bin/env bash
# Submit one selflearn mining run to a Spark cluster, shipping what deploy/package.py
# built in dist/ (see docs/spark-submit.md).
#
#   deploy/submit.sh --master URL --input PATH --output ROOT [--config FILE] [-- SPARK_SUBMIT_ARGS...]
#   deploy/submit.sh --master URL --probe [-- SPARK_SUBMIT_ARGS...]   # check the setup, no run
#
# Environment:
#   SELFLEARN_DIST             the dist folder (default: dist/ beside this folder)
#   SELFLEARN_SHIP             pyfiles (default): the project zip via --py-files, the cluster's
#                              Python provides the native stack;
#                              archive: the packed venv dist/selflearn-env.tar.gz via --archives
#   SELFLEARN_EXECUTOR_PYTHON  pyfiles: the Python on the executors (default: python3)
#   SELFLEARN_DRIVER_PYTHON    the driver's Python (client mode); default: the executors'
#                              Python for pyfiles, python3 (with selflearn installed) for archive
#   SPARK_SUBMIT or SPARK_HOME which spark-submit to run (default: spark-submit on PATH)
# Arguments after -- go to spark-submit as they are (--driver-memory, --executor-memory,
# --conf ...).
set -euo pipefail

usage() { sed -n '5,6p' "$0" | sed 's/^# *//'; }

here=$(cd "$(dirname "$0")" && pwd)
dist=${SELFLEARN_DIST:-$here/../dist}
ship=${SELFLEARN_SHIP:-pyfiles}
master="" input="" output="" config="" probe=""
while [ $# -gt 0 ]; do
    case "$1" in
        --master) master=${2:?}; shift 2 ;;
        --input) input=${2:?}; shift 2 ;;
        --output) output=${2:?}; shift 2 ;;
        --config) config=${2:?}; shift 2 ;;
        --probe) probe=1; shift ;;
        --) shift; break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "submit.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$master" ] || { [ -z "$probe" ] && { [ -z "$input" ] || [ -z "$output" ]; }; }; then
    echo "submit.sh: --master, and --input and --output (or --probe), are required" >&2; exit 2
fi
dist=$(cd "$dist" 2>/dev/null && pwd) || { echo "submit.sh: no dist folder: run deploy/package.py first" >&2; exit 2; }
app=$dist/batch.py
[ -f "$app" ] || { echo "submit.sh: $app missing: run deploy/package.py first" >&2; exit 2; }

submit=${SPARK_SUBMIT:-}
if [ -z "$submit" ]; then
    if [ -n "${SPARK_HOME:-}" ]; then submit=$SPARK_HOME/bin/spark-submit; else submit=spark-submit; fi
fi

args=(
    --master "$master" --deploy-mode client --name selflearn-mine
    # The driver JVM starts before any Python: its log settings must come from here.
    --driver-java-options "-Dlog4j2.configurationFile=file:$dist/log4j2.properties"
    # The model loads from the bundled package; executors must never try the hub.
    --conf spark.executorEnv.HF_HUB_OFFLINE=1
    --conf spark.executorEnv.TRANSFORMERS_OFFLINE=1
    --conf spark.executorEnv.TOKENIZERS_PARALLELISM=false
    --conf spark.ui.showConsoleProgress=false
)
case "$ship" in
    pyfiles)
        zips=("$dist"/selflearn-*-pyfiles.zip)
        if [ ${#zips[@]} -ne 1 ] || [ ! -f "${zips[0]}" ]; then
            echo "submit.sh: expected one selflearn-*-pyfiles.zip in $dist" >&2; exit 2
        fi
        executor_python=${SELFLEARN_EXECUTOR_PYTHON:-python3}
        args+=(--py-files "${zips[0]}"
               --conf "spark.pyspark.python=$executor_python"
               --conf "spark.pyspark.driver.python=${SELFLEARN_DRIVER_PYTHON:-$executor_python}")
        ;;
    archive)
        [ -f "$dist/selflearn-env.tar.gz" ] || { echo "submit.sh: $dist/selflearn-env.tar.gz missing: deploy/package.py --venv-pack" >&2; exit 2; }
        # Executors unpack the archive into ./environment in their working directory.
        args+=(--archives "$dist/selflearn-env.tar.gz#environment"
               --conf spark.pyspark.python=./environment/bin/python
               --conf "spark.pyspark.driver.python=${SELFLEARN_DRIVER_PYTHON:-python3}")
        ;;
    *) echo "submit.sh: SELFLEARN_SHIP must be pyfiles or archive, got '$ship'" >&2; exit 2 ;;
esac

if [ -n "$probe" ]; then
    app_args=(--probe)
else
    app_args=(--input "$input" --output "$output")
fi
[ -n "$config" ] && app_args+=(--config "$config")
exec "$submit" "${args[@]}" "$@" "$app" "${app_args[@]}"
