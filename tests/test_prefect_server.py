"""The daily deployment as an operator runs it, against a real Prefect server.

Starts `prefect server start` on a free loopback port (temporary PREFECT_HOME), creates
the process work pool, deploys deploy/prefect.yaml from the repository root, starts a
worker and triggers `prefect deployment run` for one day of a simulated log whose
partition lands late: the ingest task fails, retries with backoff, and the run completes
once the partition is there. Then checks, through the server's API, the run state, the
schedule, the stage logs and the markdown artifact, and on disk the published run.
Every process runs in its own process group and is stopped in the fixture's teardown,
worker before server."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "selflearn"
DEPLOYMENT = "selflearn-mine/daily"
RETRY_DELAY_S = 5  # first retry; then 10, 20: slack for seeing the first failure

pytestmark = pytest.mark.heavy  # second tier (make test-full): runs whole pipelines or servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen, first=signal.SIGTERM, grace: float = 20) -> None:
    """Signal the process group, then kill it if it has not exited within `grace`."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, first)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (the flow run, Spark's JVM)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below `pid`, read from /proc: the flow run the
    worker started may sit in a session of its own, out of reach of the worker's group."""
    children: dict[int, list[tuple[int, str]]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append((int(d.name), fields[19]))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _kill_if_same(pid: int, started: str) -> None:
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == started:  # not a reused pid
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass


class Server:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # no harness leftovers
        env.update(
            PREFECT_HOME=str(tmp / "prefect-home"),
            PREFECT_API_URL=self.api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",
            # The scheduler and the task-run recorder are what the test reads; the other
            # services only add writers to the SQLite file ("database is locked" under load).
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
            **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in (
                "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "REPOSSESSOR", "TRIGGERS", "CANCELLATION_CLEANUP",
                "DB_VACUUM", "EVENT_PERSISTER", "CLEANUP_RECONCILER")},
            PREFECT_SERVER_DATABASE_TIMEOUT="60",
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_CLI_COLORS="false",
            PREFECT_CLI_WRAP_LINES="false",
            # Spark's Python workers import this checkout's code (it may not be the editable install's).
            PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen([PREFECT, *args], cwd=REPO, env=env or self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, env: dict | None = None, timeout: float = 180) -> str:
        done = subprocess.run([PREFECT, *args], cwd=REPO, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def request(self, method: str, path: str, body: dict | None = None):
        """One API call; a loaded machine can stall the server's SQLite for seconds, so
        transport errors are retried a few times before they fail the test."""
        import httpx

        for attempt in range(4):
            try:
                r = httpx.request(method, self.api + path, json=body, timeout=60)
                r.raise_for_status()
                return r.json() if r.content else None
            except httpx.TransportError:
                if attempt == 3:
                    raise
                time.sleep(2)

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: dict):
        return self.request("POST", path, body)

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(self.api + "/health", timeout=5).json() is True
        except Exception:
            return False

    def log_of(self, name: str) -> str:
        p = self.tmp / f"{name}.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("prefect-server"))
    proc = srv.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(srv.port),
                     "--analytics-off", "--no-ui")
    try:
        _wait("the Prefect server's /api/health", lambda: srv.healthy() or (proc.poll() is not None and
              pytest.fail("prefect server exited:\n" + srv.log_of("server"))), timeout=120)
        yield srv
    finally:
        # Workers (and anything else) first: a flow process outliving the server hangs on the API.
        for p in reversed(srv.procs[1:]):
            below = _descendants(p.pid)
            _stop(p, signal.SIGINT)
            for pid, started in below:
                _kill_if_same(pid, started)
        below = _descendants(proc.pid)
        _stop(proc, signal.SIGTERM)
        for pid, started in below:
            _kill_if_same(pid, started)


@pytest.fixture(scope="module")
def daily_run(server, tmp_path_factory):
    from selflearn.simulate import simulate

    base = tmp_path_factory.mktemp("daily")
    simulate(str(base / "sim"), users=300, locales=["en-US"], seed=3)  # enough users for a day to pass the min_users floors
    days = sorted(p.name.split("=", 1)[1] for p in (base / "sim" / "log").glob("dt=*"))
    day = days[len(days) // 2]
    partition = base / "sim" / "log" / f"dt={day}"
    late = base / "late"
    late.mkdir()
    shutil.move(str(partition), str(late / partition.name))  # lands only after the first attempt failed
    cfg = base / "settings.yaml"
    cfg.write_text("spark_master: local[2]\nspark_shuffle_partitions: 4\n")
    root = base / "root"
    template = str(base / "sim" / "log" / "dt={date}")

    server.cli("work-pool", "create", POOL, "--type", "process")
    # As an operator deploys: from the repository root, paths filled from the environment.
    server.cli("--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", "--all",
               env={**server.env, "SELFLEARN_INPUT": template, "SELFLEARN_ROOT": str(root)})
    deployment = server.get(f"/deployments/name/{DEPLOYMENT}")
    server.spawn("worker", "worker", "start", "--pool", POOL, "--limit", "1")
    out = server.cli("deployment", "run", DEPLOYMENT, "--param", f"date={day}", "--param", f"config_path={cfg}",
                     "--param", f"retry_delay_s={RETRY_DELAY_S}")
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, out
    run_id = match.group(1)

    def ingest_awaits_retry():
        trs = server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        state = server.get(f"/flow_runs/{run_id}")["state"]
        if state["type"] in ("FAILED", "CRASHED", "CANCELLED"):
            pytest.fail(f"flow run {state['type']} before ingest retried:\n" + server.log_of("worker"))
        return any(t["name"].startswith("stage-ingest") and t["state"] and t["state"]["name"] == "AwaitingRetry"
                   for t in trs)

    _wait("the ingest task to fail on the missing partition and await its retry", ingest_awaits_retry, timeout=240)
    shutil.move(str(late / partition.name), str(partition))

    def finished():
        state = server.get(f"/flow_runs/{run_id}")["state"]
        return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    state = _wait("the flow run to finish", finished, timeout=600, every=1)
    return dict(server=server, run_id=run_id, state=state, deployment=deployment, root=root, day=day,
                partition=partition, template=template)


def test_deployed_daily_run_completes_and_publishes(daily_run):
    srv, root = daily_run["server"], daily_run["root"]
    assert daily_run["state"]["type"] == "COMPLETED", srv.log_of("worker")
    run_dir = root / "runs" / (root / "LATEST").read_text().strip()
    assert (run_dir / "_SUCCESS").is_file()
    for table in ("turns", "rephrase_pairs", "paraphrase_clusters", "rewrites", "training", "rewrite_graph"):
        assert any((run_dir / table).rglob("*.parquet")), table
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # The template was filled with the run's date: exactly that partition was mined.
    assert manifest["input"]["path"] == str(daily_run["partition"])
    assert manifest["rows_in"] > 0 and manifest["config"]["spark_master"] == "local[2]"


def test_ingest_retried_after_the_partition_landed(daily_run):
    srv = daily_run["server"]
    trs = srv.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [daily_run["run_id"]]}}})
    ingest = [t for t in trs if t["name"].startswith("stage-ingest")]
    assert len(ingest) == 1 and ingest[0]["run_count"] >= 2 and ingest[0]["state"]["type"] == "COMPLETED"
    publish = [t for t in trs if t["name"].startswith("stage-publish")]
    assert publish[0]["empirical_policy"]["retries"] == 3


def test_stage_logs_reach_the_flow_run(daily_run):
    srv = daily_run["server"]
    # run logs reach the API in batches after the run ends: a loaded machine may lag
    deadline = time.monotonic() + 90
    while True:
        logs = srv.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [daily_run["run_id"]]}}, "limit": 200})
        selflearn = [entry["message"] for entry in logs if entry["name"] == "selflearn"]
        if any(m.startswith("[publish] done") for m in selflearn) or time.monotonic() > deadline:
            break
        time.sleep(3)
    manifest = json.loads((daily_run["root"] / "runs" / (daily_run["root"] / "LATEST").read_text().strip()
                           / "manifest.json").read_text())
    assert f"[ingest] {manifest['rows_in']} rows in, {manifest['rows_accepted']} accepted, " \
           f"{manifest['rows_quarantined']} quarantined, {manifest['rows_forgotten']} of forgotten users" in selflearn
    assert sum(m.startswith("[publish] done") for m in selflearn) == 1  # once: one handler, not two
    assert any("input not found" in entry["message"] for entry in logs)  # the first ingest attempt


def test_headline_artifact(daily_run):
    srv, root = daily_run["server"], daily_run["root"]
    arts = srv.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [daily_run["run_id"]]}}})
    assert [a["key"] for a in arts] == ["selflearn-run"] and arts[0]["type"] == "markdown"
    md = arts[0]["data"]
    run_id = (root / "LATEST").read_text().strip()
    manifest = json.loads((root / "runs" / run_id / "manifest.json").read_text())
    assert f"| run id | `{run_id}` |" in md
    assert f"| output dir | `{root / 'runs' / run_id}` |" in md
    assert f"| rows in | {manifest['rows_in']} |" in md
    assert f"| rows quarantined | {manifest['rows_quarantined']} |" in md
    assert f"| rewrites emitted | {manifest['counts']['rewrites']['emitted']} |" in md
    assert f"| training rows | {manifest['counts']['labels']['training_rows']} |" in md


def test_deployment_is_scheduled_daily_in_utc(daily_run):
    srv, dep = daily_run["server"], daily_run["deployment"]
    [sched] = dep["schedules"]
    assert sched["active"] and sched["schedule"]["cron"] == "30 2 * * *" and sched["schedule"]["timezone"] == "UTC"
    assert dep["parameters"]["input_path"] == daily_run["template"] and dep["parameters"]["date"] is None
    assert dep["work_pool_name"] == POOL and dep["entrypoint"] == "pipelines/mine_flow.py:mine"
    assert dep["global_concurrency_limit"]["limit"] == 1
    # The server's scheduler turned the cron into upcoming runs at 02:30 UTC.
    upcoming = _wait("scheduled runs", lambda: srv.post("/flow_runs/filter", {
        "deployments": {"id": {"any_": [dep["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}),
        timeout=60)
    assert all(r["expected_start_time"][11:19] == "02:30:00" for r in upcoming)


def test_a_trainer_reads_the_latest_training_set(daily_run):
    """The snippets of the README's "Reading the outputs from a trainer": pandas, pyarrow,
    polars and Hugging Face datasets."""
    import pandas as pd
    import pyarrow.dataset as ds

    root = daily_run["root"]
    training = root / "runs" / (root / "LATEST").read_text().strip() / "training"
    manifest = json.loads((training.parent / "manifest.json").read_text())
    df = pd.read_parquet(training)
    table = ds.dataset(training, format="parquet").to_table(filter=ds.field("split") == "train")
    assert list(df.columns) == ["locale", "text", "intent", "domain", "slots", "weight", "label_source", "split"]
    assert len(df) == manifest["counts"]["labels"]["training_rows"] > 0
    assert table.num_rows == int((df["split"] == "train").sum())
    assert all(isinstance(s["name"], str) for slots in df["slots"] for s in slots)

    import polars as pl
    from datasets import load_dataset

    pl_df = pl.read_parquet(str(training / "*.parquet"))
    assert pl_df.columns == list(df.columns) and pl_df.height == len(df)
    assert sorted(pl_df["text"].to_list()) == sorted(df["text"].tolist())
    hf = load_dataset("parquet", data_files=str(training / "*.parquet"), split="train",
                      cache_dir=str(root.parent / "hf-cache"))
    assert hf.num_rows == len(df) and hf.column_names == list(df.columns)
    assert sorted(hf["intent"]) == sorted(df["intent"].tolist())
    assert hf.filter(lambda r: r["split"] == "train").num_rows == table.num_rows
