"""Data-quality gates that stand in front of every destructive step.

A gate runs a list of Great Expectations (GX Core 1.x) expectations, given as plain
dicts, against a small pandas DataFrame: a summary the database computed (counts, extremes).
It returns a small summary when every expectation holds and raises GateFailed otherwise.
Neither the summary, the exception nor the JSON artifact ever carries a row value: only
expectation types, column names and counts.

great_expectations is imported lazily (it takes seconds) so that DAG parsing stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import pandas

# BASIC gives the counts; a partial list of zero keeps GX from fetching unexpected values.
_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}
_COUNT_KEYS = (
    "element_count",
    "unexpected_count",
    "missing_count",
    "unexpected_percent",
    "missing_percent",
    "unexpected_percent_total",
    "unexpected_percent_nonmissing",
)
_INDEX_META = "gate_index"
_ROW_PROBE_META = "gate_row_probe"
_MAX_ERROR_CHARS = 300
# Drivers quote the offending value in errors (PostgreSQL: invalid input syntax for type bigint: "...").
_QUOTED_TEXT = re.compile(r"'[^']*'|\"[^\"]*\"")

_lock = threading.Lock()
_gx_state: _GxState | None = None


class GateFailed(Exception):
    """A gate found data that must not reach the destructive step behind it."""

    def __init__(self, gate: str, failures: list[dict]):
        # Both go to Exception so that the exception survives pickling between processes.
        super().__init__(gate, failures)
        self.gate = gate
        self.failures = failures

    def __str__(self) -> str:
        return f"gate {self.gate} failed: " + "; ".join(_describe(failure) for failure in self.failures)


def validate_frame(
    frame: pandas.DataFrame,
    expectations: list[dict],
    *,
    gate: str,
    artifact_path: Path | None = None,
) -> dict:
    """Run the expectations on a small pandas DataFrame (e.g. a per-batch summary)."""
    suite = _suite(expectations)
    with _gx_session() as state:
        batch = state.frame_batches.get_batch(batch_parameters={"dataframe": frame})
        validation = batch.validate(suite, result_format=_RESULT_FORMAT)
    return _judge(gate, expectations, validation.to_json_dict(), artifact_path)


@dataclass
class _GxState:
    """One ephemeral GX context per process and what is reused across gates."""

    pid: int
    context: Any
    frame_batches: Any


@contextmanager
def _gx_session() -> Iterator[_GxState]:
    # A GX context is not thread-safe, so gates of one process run one at a time.
    gx_logger = logging.getLogger("great_expectations")
    with _lock:
        previous_level = gx_logger.level
        gx_logger.setLevel(logging.WARNING)
        try:
            yield _current_state()
        finally:
            gx_logger.setLevel(previous_level)


def _current_state() -> _GxState:
    global _gx_state
    # A forked child gets a context of its own.
    if _gx_state is None or _gx_state.pid != os.getpid():
        _gx_state = _new_state()
    return _gx_state


def _new_state() -> _GxState:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    frames = context.data_sources.add_pandas("gate-frames").add_dataframe_asset("frame")
    return _GxState(
        pid=os.getpid(),
        context=context,
        frame_batches=frames.add_batch_definition_whole_dataframe("whole"),
    )


def _suite(expectations: list[dict]) -> Any:
    import great_expectations as gx

    # The probe's row count tells an empty result apart from a failed aggregate.
    row_probe = gx.expectations.ExpectTableRowCountToBeBetween(min_value=0, meta={_ROW_PROBE_META: True})
    gates = [_expectation(spec, index) for index, spec in enumerate(expectations)]
    return gx.ExpectationSuite(name="gate", expectations=[*gates, row_probe])


def _expectation(spec: dict, index: int) -> Any:
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.registry import get_expectation_impl

    kwargs = dict(spec)
    expectation_type = kwargs.pop("type", None)
    try:
        expectation_class = get_expectation_impl(expectation_type)
    except ExpectationNotFoundError:
        raise ValueError(f"unknown expectation type {expectation_type!r}") from None
    # GX reorders results, so each one carries its position in the caller's list.
    kwargs["meta"] = {**kwargs.get("meta", {}), _INDEX_META: index}
    return expectation_class(**kwargs)


def _judge(gate: str, expectations: list[dict], validation: dict, artifact_path: Path | None) -> dict:
    results = [_sanitised(result) for result in validation["results"]]
    probe = next(r for r in results if r["expectation_config"]["meta"].get(_ROW_PROBE_META))
    gate_results = sorted(
        (r for r in results if _INDEX_META in r["expectation_config"]["meta"]),
        key=lambda r: r["expectation_config"]["meta"][_INDEX_META],
    )
    if len(gate_results) != len(expectations):
        raise RuntimeError(f"gate {gate}: GX returned {len(gate_results)} of {len(expectations)} results")

    row_count = probe["result"].get("observed_value")
    checks = [_check(result, row_count) for result in gate_results]
    summary = {
        "gate": gate,
        "success": all(check["success"] for check in checks),
        "row_count": row_count,
        "expectations": checks,
    }
    if artifact_path is not None:
        _write_artifact(artifact_path, summary, {**validation, "results": results})
    failures = [_failure(check) for check in checks if not check["success"]]
    if failures:
        raise GateFailed(gate, failures)
    return summary


def _sanitised(result: dict) -> dict:
    """The GX result with counts only: no unexpected values, indexes, rows or tracebacks."""
    raw = result["result"]
    counts = {key: _whole_if_count(key, raw[key]) for key in _COUNT_KEYS if key in raw}
    observed = raw.get("observed_value")
    # Only a number may stand: a text or list observation (e.g. distinct values) is row data.
    if isinstance(observed, Real) or ("observed_value" in raw and observed is None):
        counts["observed_value"] = observed
    error = _error_message(result["exception_info"])
    return {
        **result,
        "result": counts,
        "exception_info": {"raised_exception": error is not None, "exception_message": error},
    }


def _whole_if_count(key: str, value: Any) -> Any:
    # Some drivers (PyMySQL) return counts as DECIMAL, which GX turns into floats.
    return int(value) if key.endswith("_count") and value is not None else value


def _error_message(exception_info: dict) -> str | None:
    # GX gives either one flat record or one record per failed metric.
    records = [exception_info] if "exception_message" in exception_info else exception_info.values()
    messages = [record["exception_message"] for record in records if record.get("exception_message")]
    if not messages:
        return None
    first_line = messages[0].strip().splitlines()[0]
    return _QUOTED_TEXT.sub("'...'", first_line)[:_MAX_ERROR_CHARS]


def _check(result: dict, row_count: int | None) -> dict:
    counts = result["result"]
    error = result["exception_info"]["exception_message"]
    # On zero rows an aggregate such as a column max is NULL and GX fails it; there is
    # nothing to check, so it passes.
    empty_pass = (
        not result["success"]
        and row_count == 0
        and error is None
        and "observed_value" in counts
        and counts["observed_value"] is None
    )
    return {
        "expectation": result["expectation_config"]["type"],
        "column": _column_label(result["expectation_config"]["kwargs"]),
        "success": result["success"] or empty_pass,
        "passed_on_empty": empty_pass,
        "observed_value": counts.get("observed_value"),
        "element_count": counts.get("element_count"),
        "unexpected_count": counts.get("unexpected_count"),
        "error": error,
    }


def _column_label(kwargs: dict) -> str | None:
    if "column" in kwargs:
        return kwargs["column"]
    if "column_A" in kwargs:
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    if "column_list" in kwargs:
        return ",".join(kwargs["column_list"])
    return None


def _failure(check: dict) -> dict:
    return {key: value for key, value in check.items() if key not in ("success", "passed_on_empty")}


def _describe(failure: dict) -> str:
    column = f"({failure['column']})" if failure["column"] else ""
    details = [
        f"{key}={failure[key]}"
        for key in ("observed_value", "unexpected_count", "element_count")
        if failure[key] is not None
    ]
    if failure["error"]:
        details.append(f"error: {failure['error']}")
    return f"{failure['expectation']}{column}: " + (", ".join(details) or "failed")


def _write_artifact(path: Path, summary: dict, validation: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**summary, "validation_result": validation}, indent=2))
