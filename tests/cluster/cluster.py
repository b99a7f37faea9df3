"""A whole Airflow cluster on this machine for the end-to-end tests, started and stopped by scripts/cluster
in a folder of its own, with its own ports, PostgreSQL metadata database and Celery queue (so that it
shares nothing with another cluster on the same Redis and PostgreSQL servers); and what the tests look
at: each worker's task logs, and a worker's processes, to kill them as a machine's crash would.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import redis
from sqlalchemy import create_engine

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "scripts" / "cluster"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
SCRIPT_TIMEOUT = 300
_ATTEMPT_LOG = re.compile(r"(?:map_index=(\d+)/)?attempt=(\d+)\.log$")


@dataclass(frozen=True)
class Cluster:
    folder: Path
    url: str
    workers: int

    def client(self) -> httpx.Client:
        """A client of the api-server's REST API, signed in as admin."""
        response = httpx.post(f"{self.url}/auth/token", json={"username": "admin", "password": self.admin_password()})
        response.raise_for_status()
        token = response.json()["access_token"]
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def admin_password(self) -> str:
        return json.loads((self.folder / "control" / PASSWORDS_FILE).read_text())["admin"]

    def worker_home(self, worker: int) -> Path:
        return self.folder / f"worker-{worker}"

    def attempts(self, worker: int, dag_id: str, run_id: str, task_id: str) -> set[tuple[int, int]]:
        """(map_index, attempt) of every try of the task whose log lies in the worker's own log folder:
        the tries it ran (map_index -1 for a task that is not mapped)."""
        task_logs = self.worker_home(worker) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        tries = set()
        for log in task_logs.rglob("attempt=*.log"):
            map_index, attempt = _ATTEMPT_LOG.search(log.relative_to(task_logs).as_posix()).groups()
            tries.add((int(map_index) if map_index else -1, int(attempt)))
        return tries

    def kill_worker(self, worker: int) -> None:
        """SIGKILL every process of the worker, as if its machine died: the Celery worker, its pool, its
        log server and the task processes it started (those lead process groups of their own, so the
        whole session goes)."""
        session = int((self.folder / "run" / f"worker-{worker}.pid").read_text())
        members = [process for process in psutil.process_iter() if _session_of(process.pid) == session]
        for process in members:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(members, timeout=10)

    def output_tail(self, name: str, lines: int = 40) -> str:
        output = self.folder / "run" / f"{name}.out"
        text = output.read_text(errors="replace") if output.exists() else ""
        return f"--- {name}\n" + "\n".join(text.splitlines()[-lines:])


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


@contextmanager
def running_cluster(
    folder: Path,
    env: dict[str, str],
    *,
    postgres_url: str,
    database: str,
    redis_url: str,
    workers: int = 2,
    concurrency: int = 1,
) -> Iterator[Cluster]:
    """scripts/cluster start in `folder`, its metadata database `database` on the PostgreSQL server
    `postgres_url` (no database in it), its Celery queue on `redis_url`, and the connections, variables
    and Airflow settings of `env`; on exit, scripts/cluster stop, and the database and queue dropped."""
    # One block of ports: the triggerer's and each worker's log server, then the api-server.
    log_port = _free_ports(workers + 2)
    api_port = log_port + workers + 1
    queue = f"lifecycle-test-{secrets.token_hex(4)}"
    settings = {
        "CLUSTER_DIR": str(folder),
        "CLUSTER_API_PORT": str(api_port),
        "CLUSTER_LOG_PORT": str(log_port),
        "CLUSTER_POSTGRES": postgres_url,
        "CLUSTER_DB_NAME": database,
        "CLUSTER_REDIS_URL": redis_url,
        "CLUSTER_QUEUE": queue,
        "CLUSTER_WORKERS": str(workers),
        "CLUSTER_CONCURRENCY": str(concurrency),
    }
    cluster_env = {**_inherited_env(), **settings, **_quick_test_settings(), **env}
    cluster = Cluster(folder, f"http://127.0.0.1:{api_port}", workers)
    try:
        _run_script("start", cluster_env, cluster)
        yield cluster
    finally:
        _run_script("stop", cluster_env, cluster)
        _drop_database(postgres_url, database)
        _forget_queue(redis_url, queue)


def _drop_database(postgres_url: str, database: str) -> None:
    engine = create_engine(f"{postgres_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    engine.dispose()


def _forget_queue(redis_url: str, queue: str) -> None:
    """Drop what the broker keeps of the cluster's queue: its binding, and the messages of the tasks a
    killed worker never acknowledged (Celery's Redis transport: unacked[tag] = [message, exchange, queue])."""
    broker = redis.Redis.from_url(redis_url)
    for tag, message in broker.hgetall("unacked").items():
        if json.loads(message)[2] == queue:
            broker.hdel("unacked", tag)
            broker.zrem("unacked_index", tag)
    broker.delete(f"_kombu.binding.{queue}", queue)
    broker.close()


def _inherited_env() -> dict[str, str]:
    """This process's environment without its Airflow and lifecycle settings (the test session's own)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LIFECYCLE_"))}
    return {**inherited, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _quick_test_settings() -> dict[str, str]:
    return {
        # Runs are triggered by the tests only: unpausing a DAG must not start its nightly run.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # The DAG files are parsed once at start, not again every 30 s competing for the CPU.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_COLOR": "1",
    }


def _run_script(command: str, env: dict[str, str], cluster: Cluster) -> None:
    result = subprocess.run(
        [str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, cwd=PROJECT
    )
    if result.returncode != 0:
        names = [
            "api-server",
            "scheduler",
            "dag-processor",
            "triggerer",
            *(f"worker-{n}" for n in range(1, cluster.workers + 1)),
        ]
        outputs = "\n".join(cluster.output_tail(name) for name in names)
        raise RuntimeError(f"scripts/cluster {command} exited with {result.returncode}:\n{result.stderr}\n{outputs}")


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports on loopback."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count <= 65535 and all(_free(port) for port in range(first, first + count)):
            return first


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
