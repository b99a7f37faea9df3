"""A named lock across processes that dies with its holder: a session lock of PostgreSQL or MariaDB
(released when the connection closes), a file lock beside a SQLite database (released by the OS)."""

from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine

from lifecycle.sql import statement


@contextmanager
def exclusive(engine: Engine, name: str, wait_seconds: float = 10) -> Iterator[bool]:
    """Yield True while holding the lock `name`, or False when another process still holds it after
    `wait_seconds` (time enough for the server to notice a holder that just died)."""
    if engine.dialect.name == "sqlite":
        with Path(f"{engine.url.database}.{name}.lock").open("a") as handle:
            held = _first_success(lambda: _flock(handle), wait_seconds)
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        return
    params = {"name": name, "key": int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        take = statement(engine, TRY_LOCK)
        held = _first_success(lambda: connection.execute(take, params).scalar() == 1, wait_seconds)
        try:
            yield held
        finally:
            if held:
                connection.execute(statement(engine, RELEASE_LOCK), params)


def _flock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _first_success(attempt: Callable[[], bool], wait_seconds: float) -> bool:
    deadline = time.monotonic() + wait_seconds
    while not attempt():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

TRY_LOCK = """\
{# Take a named lock for this session if it is free; the database releases it when the session ends. #}
{% if dialect == 'postgresql' %}
SELECT pg_try_advisory_lock(:key)
{% else %}
SELECT GET_LOCK(:name, 0)
{% endif %}
"""

RELEASE_LOCK = """\
{% if dialect == 'postgresql' %}
SELECT pg_advisory_unlock(:key)
{% else %}
SELECT RELEASE_LOCK(:name)
{% endif %}
"""
