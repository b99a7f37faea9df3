"""The Great Expectations gates, on rows read from real SQLite, PostgreSQL and MariaDB databases (see
conftest.db_url)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, create_engine, insert, text

from lifecycle.expectations import GateFailed, validate_frame

AS_OF = 1_764_028_800
DAY = 86_400
SEEDED_EMAIL = "zelda.quixote@example.org"
SEEDED_FRAGMENT = "zelda"  # no part of the seeded e-mail address may leak

CANDIDATES = [
    {"record_key": "P-1", "email": SEEDED_EMAIL, "anchor_epoch": AS_OF - 400 * DAY, "due_epoch": AS_OF - 35 * DAY},
    {
        "record_key": "P-2",
        "email": "olaf.umber@example.org",
        "anchor_epoch": AS_OF - 380 * DAY,
        "due_epoch": AS_OF - 15 * DAY,
    },
    {
        "record_key": "P-3",
        "email": "ines.vale@example.org",
        "anchor_epoch": AS_OF - 366 * DAY,
        "due_epoch": AS_OF - 1 * DAY,
    },
]
QUERY = "SELECT record_key, email, anchor_epoch, due_epoch, due_epoch AS due_copy FROM gate_candidates"
EMPTY_QUERY = f"{QUERY} WHERE due_epoch < 0"

PASSING = [
    {"type": "expect_column_values_to_be_unique", "column": "record_key"},
    {"type": "expect_column_values_to_not_be_null", "column": "anchor_epoch"},
    {"type": "expect_column_max_to_be_between", "column": "due_epoch", "max_value": AS_OF},
    {"type": "expect_column_values_to_be_between", "column": "due_epoch", "max_value": AS_OF},
    {"type": "expect_table_row_count_to_be_between", "max_value": 120},
    {"type": "expect_column_pair_values_to_be_equal", "column_A": "due_epoch", "column_B": "due_copy"},
    {
        "type": "expect_column_pair_values_a_to_be_greater_than_b",
        "column_A": "due_epoch",
        "column_B": "anchor_epoch",
        "or_equal": True,
    },
]

candidates_table = Table(
    "gate_candidates",
    MetaData(),
    Column("record_key", String(32), nullable=False),
    Column("email", String(255)),
    Column("anchor_epoch", BigInteger),
    Column("due_epoch", BigInteger),
)


def _insert(url: str, rows: list[dict]) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        candidates_table.create(connection, checkfirst=True)
        connection.execute(insert(candidates_table), rows)
    engine.dispose()


def _frame(url: str, query: str) -> pd.DataFrame:
    engine = create_engine(url)
    with engine.connect() as connection:
        frame = pd.read_sql(text(query), connection)
    engine.dispose()
    return frame


@pytest.fixture
def candidates_url(db_url: str) -> str:
    _insert(db_url, CANDIDATES)
    return db_url


def _assert_value_free(text_: str) -> None:
    assert SEEDED_FRAGMENT not in text_.lower()
    assert "partial_unexpected" not in text_
    assert "unexpected_list" not in text_
    assert "unexpected_index" not in text_


def test_passing_gate_returns_summary_and_writes_value_free_artifact(candidates_url, tmp_path):
    artifact = tmp_path / "gates" / "candidates.json"

    summary = validate_frame(
        _frame(candidates_url, QUERY), PASSING, gate="prospects/candidates", artifact_path=artifact
    )

    assert summary["gate"] == "prospects/candidates"
    assert summary["success"] is True
    assert summary["row_count"] == 3
    assert [check["expectation"] for check in summary["expectations"]] == [spec["type"] for spec in PASSING]
    assert all(check["success"] for check in summary["expectations"])
    unique = summary["expectations"][0]
    assert (unique["column"], unique["element_count"], unique["unexpected_count"]) == ("record_key", 3, 0)
    assert summary["expectations"][2]["observed_value"] == AS_OF - DAY
    written = artifact.read_text()
    _assert_value_free(written)
    assert json.loads(written)["success"] is True


def test_duplicate_key_fails_naming_expectation_column_and_counts_without_values(candidates_url, tmp_path):
    _insert(candidates_url, [CANDIDATES[0]])
    artifact = tmp_path / "candidates.json"
    expectations = [
        {"type": "expect_column_values_to_be_unique", "column": "record_key"},
        # These three fail on the e-mail column itself: GX would normally report the offending values.
        {"type": "expect_column_values_to_be_unique", "column": "email"},
        {"type": "expect_column_values_to_be_in_set", "column": "email", "value_set": ["nobody@example.org"]},
        {
            "type": "expect_column_most_common_value_to_be_in_set",
            "column": "email",
            "value_set": ["nobody@example.org"],
        },
    ]

    with pytest.raises(GateFailed) as raised:
        validate_frame(_frame(candidates_url, QUERY), expectations, gate="prospects/candidates", artifact_path=artifact)

    error = raised.value
    assert error.gate == "prospects/candidates"
    assert error.failures[0] == {
        "expectation": "expect_column_values_to_be_unique",
        "column": "record_key",
        "observed_value": None,
        "element_count": 4,
        "unexpected_count": 2,
        "error": None,
    }
    assert [failure["column"] for failure in error.failures] == ["record_key", "email", "email", "email"]
    message = str(error)
    assert "prospects/candidates" in message
    assert "expect_column_values_to_be_unique(record_key): unexpected_count=2, element_count=4" in message
    _assert_value_free(message)
    _assert_value_free(repr(error.failures))
    written = artifact.read_text()
    _assert_value_free(written)
    assert json.loads(written)["success"] is False


def test_row_count_ceiling_exceeded_fails(candidates_url):
    ceiling = [{"type": "expect_table_row_count_to_be_between", "min_value": 0, "max_value": 2}]

    with pytest.raises(GateFailed) as raised:
        validate_frame(_frame(candidates_url, QUERY), ceiling, gate="prospects/candidates", artifact_path=None)

    assert raised.value.failures[0]["observed_value"] == 3
    assert "expect_table_row_count_to_be_between: observed_value=3" in str(raised.value)


def test_empty_result_passes_column_expectations_and_row_count_bounds(candidates_url, tmp_path):
    expectations = [*PASSING, {"type": "expect_table_row_count_to_equal", "value": 0}]

    summary = validate_frame(
        _frame(candidates_url, EMPTY_QUERY),
        expectations,
        gate="prospects/candidates",
        artifact_path=tmp_path / "empty.json",
    )

    assert summary["success"] is True
    assert summary["row_count"] == 0
    column_max = summary["expectations"][2]
    assert column_max["passed_on_empty"] is True and column_max["observed_value"] is None


def test_empty_result_still_fails_a_row_count_floor(candidates_url):
    floor = [{"type": "expect_table_row_count_to_be_between", "min_value": 1}]

    with pytest.raises(GateFailed, match="observed_value=0"):
        validate_frame(_frame(candidates_url, EMPTY_QUERY), floor, gate="prospects/candidates", artifact_path=None)


def test_missing_column_fails_with_the_error(candidates_url):
    with pytest.raises(GateFailed, match=r"expect_column_values_to_not_be_null\(no_such_column\): error: "):
        validate_frame(
            _frame(candidates_url, QUERY),
            [{"type": "expect_column_values_to_not_be_null", "column": "no_such_column"}],
            gate="prospects/candidates",
            artifact_path=None,
        )


def test_unknown_expectation_type_is_a_value_error():
    with pytest.raises(ValueError, match="expect_nothing_at_all"):
        validate_frame(pd.DataFrame({"n": [1]}), [{"type": "expect_nothing_at_all"}], gate="g", artifact_path=None)


def test_validate_frame_passes_and_fails(tmp_path):
    batches = pd.DataFrame({"candidate_rows": [3, 5], "manifest_rows": [3, 5], "email": [SEEDED_EMAIL, "x@y.z"]})
    pair = [
        {"type": "expect_column_pair_values_to_be_equal", "column_A": "candidate_rows", "column_B": "manifest_rows"}
    ]

    summary = validate_frame(batches, pair, gate="prospects/archive", artifact_path=tmp_path / "ok.json")
    assert summary["success"] is True and summary["row_count"] == 2

    batches.loc[1, "manifest_rows"] = 4
    in_set = [{"type": "expect_column_values_to_be_in_set", "column": "email", "value_set": ["x@y.z"]}]
    with pytest.raises(GateFailed) as raised:
        validate_frame(batches, [*pair, *in_set], gate="prospects/archive", artifact_path=tmp_path / "bad.json")
    assert [(f["column"], f["unexpected_count"]) for f in raised.value.failures] == [
        ("candidate_rows,manifest_rows", 1),
        ("email", 1),
    ]
    _assert_value_free(str(raised.value))
    _assert_value_free((tmp_path / "bad.json").read_text())


def test_validate_frame_on_no_rows_passes():
    empty = pd.DataFrame({"due_epoch": pd.Series([], dtype="int64")})
    expectations = [
        {"type": "expect_column_max_to_be_between", "column": "due_epoch", "max_value": AS_OF},
        {"type": "expect_column_values_to_be_unique", "column": "due_epoch"},
    ]

    assert validate_frame(empty, expectations, gate="g", artifact_path=None)["success"] is True


def test_column_max_of_only_nulls_fails_when_rows_exist():
    nulls = pd.DataFrame({"due_epoch": pd.Series([None, None], dtype="float64")})

    with pytest.raises(GateFailed):
        validate_frame(
            nulls,
            [{"type": "expect_column_max_to_be_between", "column": "due_epoch", "max_value": AS_OF}],
            gate="g",
            artifact_path=None,
        )


def test_importing_gates_leaves_great_expectations_unloaded():
    include = Path(__file__).resolve().parents[1] / "include"
    probe = "import sys, lifecycle.expectations; print('great_expectations' in sys.modules)"

    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(include)}
    ).stdout.strip()

    assert loaded == "False"
