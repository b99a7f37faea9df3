"""Pytest plugin: a throwaway Airflow home and SQLite metadata DB for the whole test session.

Load it from tests/conftest.py, before anything imports Airflow:
``pytest_plugins = ["airflow_fixtures"]``. Airflow reads its configuration once, at import,
so the environment is set in ``pytest_configure``; the ``airflow_home`` fixture creates the
metadata DB's tables (``airflow db migrate``) the first time a test asks for it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from airflow_harness import airflow_home_env

_HOME = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    if "airflow" in sys.modules:
        raise pytest.UsageError("airflow_fixtures must be loaded before anything imports airflow")
    home = config.stash[_HOME] = Path(tempfile.mkdtemp(prefix="airflow-home-"))
    os.environ.update(
        {
            **airflow_home_env(home),
            "NO_COLOR": "1",  # plain text logs, whatever the terminal
            # An approval nobody answers times out at once (airflow_harness.run_dag): a run never hangs.
            "AIRFLOW_VAR_LIFECYCLE_APPROVAL_TIMEOUT_MINUTES": "0.02",
        }
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HOME in config.stash:
        shutil.rmtree(config.stash[_HOME], ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_home(pytestconfig: pytest.Config) -> Path:
    """The session's AIRFLOW_HOME, its metadata DB migrated; logs go to its logs/ folder."""
    from airflow.utils.db import upgradedb

    upgradedb()
    return pytestconfig.stash[_HOME]
