"""The trigger forms of every lifecycle DAG, as Airflow's UI builds them from the DAGs' Params: every
field titled and described; marked required (Trigger disabled while it is empty) only where a request
needs it, every other field nullable; fixed sets as choices; the legal holds' form a section per
action; no text pointing at a file the user does not have. And the legal holds' own validation, which
refuses a request whose fields do not fit its action, naming the field."""

from __future__ import annotations

import json
from copy import copy

import pytest

from airflow_harness import dag_bag, run_dag, task_logs, task_states
from lifecycle.subject import KINDS
from tests.lifecycle_helpers import POLICY

pytestmark = pytest.mark.airflow

# The only fields a request cannot do without; the UI marks them required.
REQUIRED = {
    ("legal_holds", "action"),
    ("subject_request", "email"),
    ("subject_request", "kind"),
    ("erasure_replay", "since"),
    ("archive_restore", "tier"),
    ("archive_restore", "days"),
}
CANARY_EMAIL = "Zebulon.Quintessenza@Canary-Mail.example"
# The first lines of a task's log: Airflow's own few, then the task's.
FIRST_LINES = 12


@pytest.fixture(scope="module")
def dags(airflow_home) -> dict:
    bag = dag_bag()
    assert bag.import_errors == {}
    return bag.dags


@pytest.fixture(scope="module")
def fields(dags) -> dict[tuple[str, str], object]:
    """Every Param of every DAG, by (dag_id, name)."""
    return {(dag_id, name): dag.params.get_param(name) for dag_id, dag in dags.items() for name in dag.params}


@pytest.fixture(scope="module")
def holds_form(dags) -> dict:
    """What the legal holds' form sends when nothing is filled in."""
    params = dags["legal_holds"].params
    return {name: params.get_param(name).value for name in params}


def marked_required(param) -> bool:
    """As the UI decides: a field whose type does not admit null."""
    types = param.schema.get("type")
    return bool(types) and "null" not in (types if isinstance(types, list) else [types])


def test_every_field_has_a_title_and_a_description(fields):
    untitled = [key for key, param in fields.items() if not param.schema.get("title")]
    undescribed = [
        key for key, param in fields.items() if not (param.description or param.schema.get("description_md"))
    ]

    assert (untitled, undescribed) == ([], [])


def test_only_the_fields_a_request_needs_are_marked_required(fields):
    assert {key for key, param in fields.items() if marked_required(param)} == REQUIRED


def test_every_other_field_can_be_left_empty(fields):
    optional = {key: param for key, param in fields.items() if key not in REQUIRED}

    empty_by_default = {
        key: param.value
        for key, param in optional.items()
        if not isinstance(param.value, bool) and param.value is not None
    }
    assert empty_by_default == {}, "an optional field's default is None (a switch's, a boolean)"
    for key, param in optional.items():
        assert copy(param).resolve(None) is None, key  # the form sends an empty field as null


def test_no_field_defaults_to_an_empty_string(fields):
    assert [key for key, param in fields.items() if param.has_value and param.value == ""] == []


def test_fixed_sets_are_choices(fields):
    choices = {key: param.schema["enum"] for key, param in fields.items() if "enum" in param.schema}

    assert choices == {
        ("legal_holds", "action"): ["place", "lift", "list"],
        ("legal_holds", "table"): [None, *sorted(POLICY.tables)],
        ("subject_request", "kind"): list(KINDS),
        ("archive_restore", "tier"): ["Bulk", "Standard", "Expedited"],
    }


def test_the_legal_holds_form_has_a_section_per_action(dags):
    params = dags["legal_holds"].params
    sections = {name: params.get_param(name).schema.get("section") for name in params}

    assert sections == {
        "action": None,  # the form's first section, open
        "reason": None,
        "email": "Place a hold",
        "table": "Place a hold",
        "key": "Place a hold",
        "until": "Place a hold",
        "hold_id": "Lift a hold",
        "include_lifted": "List holds",
    }


def test_no_form_refers_to_policy_md(fields):
    texts = json.dumps([param.dump() for param in fields.values()])

    assert "POLICY.md" not in texts
    assert "(lifecycle/policy)" in texts  # the policy page the UI serves, linked instead


@pytest.mark.parametrize(
    ("request_fields", "refusal"),
    [
        ({"action": "place", "reason": "case 17"}, "parameters email, table and key: a hold needs an email"),
        (
            {"action": "place", "email": CANARY_EMAIL, "table": "prospects", "reason": "case 17"},
            "parameters email, table and key: a hold is by email or by table and key, not both",
        ),
        ({"action": "place", "table": "prospects", "reason": "case 17"}, "parameter key: required with a table"),
        ({"action": "place", "key": 42, "reason": "case 17"}, "parameter table: required with a key"),
        ({"action": "place", "email": CANARY_EMAIL, "reason": "  "}, "parameter reason: required to place a hold"),
        ({"action": "place", "email": CANARY_EMAIL, "reason": "case 17", "hold_id": 3}, "parameter hold_id: not used"),
        ({"action": "lift", "reason": "case closed"}, "parameter hold_id: required to lift a hold"),
        ({"action": "lift", "hold_id": 3, "email": CANARY_EMAIL}, "parameter email: not used by the action lift"),
        ({"action": "lift", "hold_id": 3, "include_lifted": True}, "parameter include_lifted: not used"),
        ({"action": "list", "hold_id": 3}, "parameter hold_id: not used by the action list"),
        ({"action": "list", "reason": "audit"}, "parameter reason: not used by the action list"),
        ({"action": "erase"}, "parameter action: one of place, lift, list"),
    ],
)
def test_the_legal_holds_refuse_fields_that_do_not_fit_the_action(holds_form, request_fields, refusal):
    from lifecycle_airflow.holds_dag import refusal as refusal_of

    refused = refusal_of(holds_form | request_fields)

    assert refused is not None and refused.startswith(refusal), refused
    assert "quintessenza" not in refused.lower()


@pytest.mark.parametrize(
    "request_fields",
    [
        {"action": "place", "email": CANARY_EMAIL, "reason": "case 17", "until": "2099-12-31"},
        {"action": "place", "table": "prospects", "key": 42, "reason": "case 17"},
        {"action": "lift", "hold_id": 3},
        {"action": "lift", "hold_id": 3, "reason": "case closed"},
        {"action": "list", "include_lifted": True},
        {"action": "list"},
    ],
)
def test_the_legal_holds_take_fields_that_fit_the_action(holds_form, request_fields):
    from lifecycle_airflow.holds_dag import refusal

    assert refusal(holds_form | request_fields) is None


def test_a_refused_hold_fails_its_run_and_the_first_lines_of_its_log_say_why(tmp_path, monkeypatch, airflow_home):
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))

    state, dag_run = run_dag("legal_holds", "2026-03-01", conf={"action": "lift", "reason": "case closed"}, retries=0)

    assert (state, task_states(dag_run)) == ("failed", {"hold": "failed"})
    first_lines = "".join(task_logs(dag_run)["hold"].splitlines(keepends=True)[:FIRST_LINES])
    assert "request refused: parameter hold_id: required to lift a hold" in first_lines, first_lines
    assert not (tmp_path / "app.db").exists(), "refused before the database is opened"
