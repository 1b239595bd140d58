"""The mining flow: one Prefect task per stage, in order. Thin on purpose: the stages
live in selflearn.runner / selflearn.steps; this file only orders them and names them
for the Prefect UI. Without PREFECT_API_URL, Prefect runs it on a temporary local server."""
from __future__ import annotations

from pipelines.quiet import quiet_prefect

quiet_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from selflearn.config import load_settings  # noqa: E402
from selflearn.runner import STAGES, Run  # noqa: E402


@task(cache_policy=NO_CACHE)
def run_stage(run: Run, name: str) -> dict:
    run.stage(name)
    return run.counts.get(name, {})


@flow(name="selflearn-mine", log_prints=True)
def mine(input_path: str, output_root: str, config_path: str | None = None, force_publish: bool = False) -> str:
    """Mine one interaction log into a published run under output_root; returns its dir.
    force_publish moves LATEST even when the publish gate fails."""
    settings = load_settings(config_path)
    run = Run(input_path=input_path, output_root=output_root, settings=settings, force_publish=force_publish)
    run.start()
    try:
        for name in STAGES:
            run_stage.with_options(name=f"stage-{name}")(run, name)
    finally:
        run.finish()
    return str(run.dirs.final)
