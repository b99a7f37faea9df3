"""Everything a process writes, Airflow's logging included, sent to one file (the demo, the tests)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TextIO


@contextlib.contextmanager
def output_to(out: TextIO):
    """Send all this process writes to ``out``: sys.stdout/err, logging handlers, fds 1 and 2.

    Airflow's structlog loggers write to the sys.stdout of the moment (pytest turns their
    caching off) or, cached, to the original one, which the fd redirection catches.
    """
    handlers = dict.fromkeys(
        handler
        for logger in (logging.root, *logging.Logger.manager.loggerDict.values())
        for handler in getattr(logger, "handlers", ())
        if type(handler) is logging.StreamHandler
    )
    streams = (sys.stdout, sys.stderr)
    for stream in streams:
        stream.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    saved_streams = [handler.setStream(out) for handler in handlers]
    try:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            yield
    finally:
        for stream in (*streams, out):
            stream.flush()
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        for handler, stream in zip(handlers, saved_streams):
            handler.setStream(stream)
