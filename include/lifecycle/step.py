"""A step of a rule as one unit: what it does, what it would do in a dry run, what it reports.
Each step's module defines its own (`STEPS`); lifecycle.pipeline names them in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    # (run, rule) -> the counts the step reports.
    act: Callable[..., dict]
    # (scratch selection of lifecycle.preview) -> the counts `act` would report; None: `act` itself
    # writes nothing in a dry run.
    would_do: Callable[..., dict] | None
    # The selection's stage once the step is done (lifecycle.select.Selection.record_stage); None: not recorded.
    stage: str | None
    # The report columns a dry run's report takes from what the step would do.
    dry_run_columns: tuple[str, ...] = ()
