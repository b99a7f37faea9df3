"""`airflow standalone` in a throwaway AIRFLOW_HOME, for the end-to-end tests, and a few calls of its REST API.

It runs the project's airflow.cfg with the project's dags/ and plugins/, its own SQLite metadata DB and
a free port; in its own process group, so that stopping it stops scheduler, dag-processor, api-server,
triggerer and every task they started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from airflow_harness import airflow_home_env
from smtp_fixtures import free_port

T = TypeVar("T")
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
FINISHED = {"success", "failed"}


@dataclass
class Standalone:
    home: Path
    url: str
    process: subprocess.Popen
    log: Path

    def admin_password(self) -> str:
        return json.loads((self.home / PASSWORDS_FILE).read_text())["admin"]

    def client(self) -> httpx.Client:
        """A client of the REST API, signed in as admin."""
        response = httpx.post(f"{self.url}/auth/token", json={"username": "admin", "password": self.admin_password()})
        response.raise_for_status()
        token = response.json()["access_token"]
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_standalone(home: Path, extra_env: dict[str, str], *, timeout: float = 180) -> Iterator[Standalone]:
    """Start `airflow standalone` in `home`, wait until every component is healthy, stop it on exit."""
    port = free_port()
    log = home / "standalone.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), "standalone"],
            env=standalone_env(home, port, extra_env),
            cwd=home,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    standalone = Standalone(home, f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_healthy(standalone, timeout)
        yield standalone
    finally:
        stop(process)


def standalone_env(home: Path, port: int, extra_env: dict[str, str]) -> dict[str, str]:
    """This process's environment without its Airflow and lifecycle settings, then the server's."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LIFECYCLE_"))}
    return {
        **inherited,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **airflow_home_env(home),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        # Workers reach the execution API, and the UI its assets, through the base URL.
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        # Runs are triggered by the tests only: unpausing a DAG must not start its nightly run.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # The DAG files are parsed once at start; no re-parse every 30 s competing for the CPU and SQLite.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_COLOR": "1",
        **extra_env,
    }


def stop(process: subprocess.Popen, grace_seconds: float = 30) -> None:
    """SIGTERM to the whole process group; SIGKILL to whatever of it is left after the grace period."""
    members = _group_members(process.pid)
    _signal_group(process.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace_seconds)
    if alive:
        _signal_group(process.pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
    process.wait()


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for candidate in psutil.process_iter():
        try:
            if os.getpgid(candidate.pid) == pgid and candidate.status() != psutil.STATUS_ZOMBIE:
                members.append(candidate)
        except (ProcessLookupError, psutil.Error):
            pass  # gone meanwhile
    return members


def _signal_group(pgid: int, signal_number: int) -> None:
    try:
        os.killpg(pgid, signal_number)
    except ProcessLookupError:
        pass


def _wait_until_healthy(standalone: Standalone, timeout: float) -> None:
    try:
        wait_for(lambda: _healthy(standalone), timeout=timeout, what="airflow standalone healthy")
    except TimeoutError as error:
        raise TimeoutError(f"{error}; its output ends:\n{standalone.log_tail()}") from None


def _healthy(standalone: Standalone) -> bool:
    if standalone.process.poll() is not None:
        raise RuntimeError(f"airflow standalone exited with {standalone.process.returncode}:\n{standalone.log_tail()}")
    try:
        health = httpx.get(f"{standalone.url}/api/v2/monitor/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False
    return all(component and component.get("status") == "healthy" for component in health.values())


def wait_for(check: Callable[[], T], *, timeout: float, what: str, interval: float = 1.0) -> T:
    """Call `check` until it returns something true; its last value after `timeout` seconds is an error."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still {result!r} after {timeout:.0f} s")
        time.sleep(interval)


def trigger(client: httpx.Client, dag_id: str, conf: dict[str, Any]) -> str:
    """Unpause the DAG and trigger a manual run (no logical date); its run id."""
    client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    response = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
    response.raise_for_status()
    return response.json()["dag_run_id"]


def run_state(client: httpx.Client, dag_id: str, run_id: str) -> str:
    response = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
    response.raise_for_status()
    return response.json()["state"]


def wait_for_run_end(client: httpx.Client, dag_id: str, run_id: str, *, timeout: float) -> str:
    """The run's final state, once it has one."""
    return wait_for(
        lambda: _final_state(client, dag_id, run_id), timeout=timeout, what=f"run {run_id} of {dag_id} finished"
    )


def _final_state(client: httpx.Client, dag_id: str, run_id: str) -> str | None:
    state = run_state(client, dag_id, run_id)
    return state if state in FINISHED else None


def task_states(client: httpx.Client, dag_id: str, run_id: str) -> dict[str, str | None]:
    response = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 200})
    response.raise_for_status()
    return {ti["task_id"]: ti["state"] for ti in response.json()["task_instances"]}
