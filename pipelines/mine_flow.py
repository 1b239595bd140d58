"""The mining flow: one Prefect task per stage, in order. Thin on purpose: the stages
live in selflearn.run.runner / selflearn.spark.steps; this file only orders them and names them
for the Prefect UI. Without PREFECT_API_URL, Prefect runs it on a temporary local server.

Scheduled use (deploy/prefect.yaml): `input_path` may hold a `{date}` placeholder, e.g.
`/data/logs/dt={date}`; it becomes the `date` parameter, or, when that is not given,
the UTC day before the run's scheduled start (so a late or retried daily run still mines
the day it was scheduled for)."""
from __future__ import annotations

import datetime as dt
import logging
import re

from pipelines.quiet import quiet_prefect

quiet_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from selflearn.config import load_settings  # noqa: E402
from selflearn.run.runner import Run  # noqa: E402
from selflearn.run.stages import STAGES  # noqa: E402

# Stages that read the input or move the run into place touch storage that can fail
# transiently (a partition landing late, a network file system hiccup); both are safe to
# repeat: ingest overwrites its work dirs, publish resumes after a partial move.
STORAGE_STAGES = ("ingest", "publish")
DATE_PLACEHOLDER = "{date}"
ARTIFACT_KEY = "selflearn-run"


@task(cache_policy=NO_CACHE)
def run_stage(run: Run, name: str) -> dict:
    run.stage(name)
    return run.counts.get(name, {})


def resolve_input(input_path: str, date: str | None, scheduled: dt.datetime | None = None) -> str:
    """`input_path` with `{date}` replaced by `date` (YYYY-MM-DD), by default the UTC day
    before `scheduled` (now when None). A path without the placeholder is used as is."""
    if "{{" in input_path:
        raise ValueError(f"input_path still holds a deploy-time placeholder: {input_path} "
                         "(set the environment variable it names when running prefect deploy)")
    if DATE_PLACEHOLDER not in input_path:
        if date:
            raise ValueError(f"date={date} given but input_path has no {DATE_PLACEHOLDER} placeholder: {input_path}")
        return input_path
    if date is None:
        scheduled = scheduled or dt.datetime.now(dt.timezone.utc)
        day = scheduled.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)
    else:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(date)):
            raise ValueError(f"date must be YYYY-MM-DD, got {date!r}")
        day = dt.date.fromisoformat(date)
    return input_path.replace(DATE_PLACEHOLDER, day.isoformat())


def _scheduled_start() -> dt.datetime:
    from prefect.runtime import flow_run

    return flow_run.scheduled_start_time  # now, when the run was not scheduled


def _stage_logs_to_prefect() -> None:
    """Send the `selflearn` logger's records (stage progress, row counts) to the flow
    run's logs in the Prefect UI, as PREFECT_LOGGING_EXTRA_LOGGERS=selflearn would; this
    also works when the variable was not set before Prefect configured logging."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED

    if not PREFECT_LOGGING_TO_API_ENABLED.value():
        return
    logger = logging.getLogger("selflearn")
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(APILogHandler())
    if logger.level == logging.NOTSET:  # else root's WARNING would drop the stage lines
        logger.setLevel(logging.INFO)


def headline_markdown(run: Run, input_path: str) -> str:
    ingest = run.counts.get("ingest", {})
    rows = [
        ("run id", f"`{run.run_id}`"),
        ("input", f"`{input_path}`"),
        ("output dir", f"`{run.dirs.final}`"),
        ("rows in", ingest.get("rows_in")),
        ("rows accepted", ingest.get("rows_accepted")),
        ("rows quarantined", ingest.get("rows_quarantined")),
        ("rewrites emitted", run.counts.get("rewrites", {}).get("emitted")),
        ("training rows", run.counts.get("labels", {}).get("training_rows")),
        ("seconds per stage", ", ".join(f"{k} {v:.1f}" for k, v in run.timings.items())),
    ]
    return "# selflearn run\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


@flow(name="selflearn-mine", log_prints=True)
def mine(input_path: str, output_root: str, config_path: str | None = None, date: str | None = None,
         storage_retries: int = 3, retry_delay_s: float = 30.0, force_publish: bool = False) -> str:
    """Mine one interaction log into a published run under output_root; returns its dir.

    input_path may hold `{date}` (see the module doc); storage_retries and retry_delay_s
    set the retries of the ingest and publish tasks (exponential backoff from retry_delay_s).
    force_publish moves LATEST even when the publish gate fails."""
    from prefect.artifacts import create_markdown_artifact

    input_path = resolve_input(input_path, date, _scheduled_start() if DATE_PLACEHOLDER in input_path else None)
    _stage_logs_to_prefect()
    settings = load_settings(config_path)
    run = Run(input_path=input_path, output_root=output_root, settings=settings, force_publish=force_publish)
    run.start()
    try:
        for stage in STAGES:
            name = stage.name
            options = {"name": f"stage-{name}"}
            if name in STORAGE_STAGES and storage_retries > 0:
                options.update(retries=storage_retries, retry_jitter_factor=0.2,
                               retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s))
            run_stage.with_options(**options)(run, name)
    finally:
        run.finish()
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=headline_markdown(run, input_path),
                             description=f"selflearn run {run.run_id}")
    return str(run.dirs.final)
