"""Environment defaults that keep Prefect local, quiet and offline unless the operator
set otherwise (call before importing prefect)."""
import os

PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
}


def quiet_prefect() -> None:
    # Against a real server (an operator's, or a worker running a deployment) Prefect's
    # own defaults stand: INFO logs go to the API, where the UI shows them.
    if os.environ.get("PREFECT_API_URL") or os.environ.get("PREFECT__FLOW_RUN_ID"):
        return
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
