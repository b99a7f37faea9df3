"""Answer deadlines of rights requests (GDPR art. 12(3), lifecycle.deadlines): the open requests listed
by id with their age and deadline as of the run, due soon and overdue flagged, restrictions apart,
closed ones left out, on every database; the policy section's errors; and, through Airflow, the
nightly run's report and the operators' alert, sent once per run and naming no address."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import yaml

from airflow_harness import airflow_cli, run_dag, task_states, xcoms
from lifecycle.appschema import create_app_schema
from lifecycle.deadlines import DUE_SOON, OVERDUE, UNDATED, answer_deadlines
from lifecycle.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy, validate_against_database
from lifecycle.report_html import render_html
from lifecycle.store import make_engine
from tests.lifecycle_helpers import POLICY, add, make_run, run_rules, utc

SPEC = next(purpose.answer_deadlines for purpose in POLICY.purposes if purpose.id == "rights_requests")
RIGHTS_RULES = [rule.id for rule in next(p for p in POLICY.purposes if p.id == "rights_requests").rules]
# 31 August 2026: a month back is 31 July, the days around it fall in a 31-day month.
AS_OF = utc(2026, 8, 31)
ALERT_ADDRESS = "dpo-alerts@smice.example"
CANARY_MARK = "quintessenza"


def canary(request_id: int) -> str:
    return f"zebulon.{CANARY_MARK}.{request_id}@canary-pii.example"


def request(engine, key: int, received: datetime, kind: str = "access", status: str = "open") -> None:
    add(engine, "rights_requests", id=key, email=canary(key), kind=kind, status=status, received_at=received)


def seed_requests(engine) -> None:
    """Open requests 25, 26, 30, 31 and 32 days old as of AS_OF; a restriction in force; closed ones;
    one received after the as-of (a run for a past date does not see it)."""
    request(engine, 1, datetime(2026, 8, 6, 9, 30))
    request(engine, 2, datetime(2026, 8, 5, 0, 0), kind="erasure")
    request(engine, 3, datetime(2026, 8, 1, 12, 0), kind="portability")
    request(engine, 4, datetime(2026, 7, 31, 23, 59, 59))
    request(engine, 5, datetime(2026, 7, 30, 8, 15), kind="objection")
    request(engine, 6, datetime(2026, 1, 15, 10, 0), kind="restriction")
    request(engine, 7, datetime(2026, 5, 1), status="done")
    request(engine, 8, datetime(2026, 5, 2), kind="erasure", status="refused")
    request(engine, 9, datetime(2026, 5, 3), kind="restriction", status="done")
    request(engine, 10, datetime(2026, 8, 31, 0, 0, 1))


LISTED = ("id", "kind", "received", "age_days", "deadline", "days_left", "flag")
EXPECTED_REQUESTS = [
    dict(zip(LISTED, row, strict=True))
    for row in [
        (5, "objection", "2026-07-30", 32, "2026-08-30", -1, OVERDUE),
        (4, "access", "2026-07-31", 31, "2026-08-31", 0, DUE_SOON),
        (3, "portability", "2026-08-01", 30, "2026-09-01", 1, DUE_SOON),
        (2, "erasure", "2026-08-05", 26, "2026-09-05", 5, DUE_SOON),
        (1, "access", "2026-08-06", 25, "2026-09-06", 6, None),
    ]
]


def test_open_requests_are_listed_with_age_deadline_and_flag_restrictions_apart(engine, tmp_path):
    seed_requests(engine)

    section = answer_deadlines(make_run(engine, AS_OF, tmp_path), SPEC)

    assert section["requests"] == EXPECTED_REQUESTS
    assert section["restrictions_in_force"] == [
        {"id": 6, "kind": "restriction", "received": "2026-01-15", "age_days": 228}
    ]
    assert {k: section[k] for k in ("as_of", "open", "due_soon", "overdue", "undated")} == {
        "as_of": "2026-08-31",
        "open": 5,
        "due_soon": 3,
        "overdue": 1,
        "undated": 0,
    }


@pytest.mark.parametrize(
    ("received", "as_of", "deadline", "flag"),
    [
        (datetime(2026, 1, 31, 18, 0), utc(2026, 2, 28), "2026-02-28", DUE_SOON),
        (datetime(2026, 1, 31, 18, 0), utc(2026, 2, 28, 23, 59), "2026-02-28", DUE_SOON),
        (datetime(2026, 1, 31, 18, 0), utc(2026, 3, 1), "2026-02-28", OVERDUE),
        (datetime(2026, 1, 29, 0, 0), utc(2026, 3, 1), "2026-02-28", OVERDUE),
        (datetime(2024, 1, 31, 18, 0), utc(2024, 2, 29), "2024-02-29", DUE_SOON),
        (datetime(2024, 1, 31, 18, 0), utc(2024, 3, 1), "2024-02-29", OVERDUE),
        (datetime(2026, 1, 31, 18, 0), utc(2026, 2, 22), "2026-02-28", None),
        (datetime(2026, 1, 31, 18, 0), utc(2026, 2, 23), "2026-02-28", DUE_SOON),
    ],
)
def test_a_deadline_clips_at_month_end(engine, tmp_path, received, as_of, deadline, flag):
    request(engine, 1, received)

    [listed] = answer_deadlines(make_run(engine, as_of, tmp_path), SPEC)["requests"]

    assert (listed["deadline"], listed["flag"]) == (deadline, flag)


def test_a_received_date_sqlite_cannot_read_is_listed_as_such(sqlite_engine, tmp_path):
    request(sqlite_engine, 1, datetime(2026, 8, 1))
    with sqlite_engine.begin() as connection:
        connection.exec_driver_sql("UPDATE rights_requests SET received_at = 'last tuesday' WHERE id = 1")

    section = answer_deadlines(make_run(sqlite_engine, AS_OF, tmp_path), SPEC)

    assert section["requests"] == [dict(zip(LISTED, (1, "access", None, None, None, None, UNDATED), strict=True))]
    assert (section["undated"], section["overdue"]) == (1, 0)


def test_the_run_report_lists_and_flags_them_and_names_no_address(sqlite_engine, tmp_path):
    seed_requests(sqlite_engine)

    summary = run_rules(sqlite_engine, AS_OF, tmp_path, RIGHTS_RULES)

    assert summary["answer_deadlines"] == {"open": 5, "due_soon": 3, "overdue": 1, "undated": 0}
    folder = tmp_path / "reports" / "test_dag"
    report = json.loads(next(folder.glob("*/report.json")).read_text())
    assert report["answer_deadlines"]["requests"] == EXPECTED_REQUESTS
    markdown = next(folder.glob("*/report.md")).read_text()
    assert "| 5 | objection | 2026-07-30 | 32 | 2026-08-30 | -1 | overdue |" in markdown
    assert "| 1 | access | 2026-08-06 | 25 | 2026-09-06 | 6 |  |" in markdown
    assert "5 awaiting an answer, 3 due soon, 1 overdue; 1 restrictions in force." in markdown
    assert "### Restrictions in force" in markdown and "| 6 | restriction | 2026-01-15 | 228 |" in markdown
    html = next(folder.glob("*/report.html")).read_text()
    assert '<td class="overdue">overdue</td>' in html and html.count('<td class="due-soon">due soon</td>') == 3
    everything = json.dumps(report) + markdown + html
    assert CANARY_MARK not in everything and "@" not in json.dumps(report["answer_deadlines"])


def test_the_html_section_escapes_what_the_database_holds():
    hostile = '<script>alert("x")</script>'
    listed = dict(zip(LISTED, (hostile, hostile, "2026-08-01", 30, "2026-09-01", 1, DUE_SOON), strict=True))
    section = {"table": "rights_requests", "open": 1, "due_soon": 1, "overdue": 0, "undated": 0}
    section |= {"requests": [listed], "restrictions_in_force": [{"id": 6, "kind": hostile}]}

    html = render_html({"dag_id": "retention_rights_requests", "rules": [], "answer_deadlines": section})

    assert "<script>" not in html and html.count("&lt;script&gt;") == 3
    assert '<td class="due-soon">due soon</td>' in html


def test_a_purpose_without_the_section_reports_none(sqlite_engine, tmp_path):
    seed_requests(sqlite_engine)

    summary = run_rules(sqlite_engine, AS_OF, tmp_path, ["prospects"])

    assert "answer_deadlines" not in summary
    report = json.loads(next((tmp_path / "reports").rglob("report.json")).read_text())
    assert "answer_deadlines" not in report


# The policy section


def _broken(tmp_path, change) -> str:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    change(next(p for p in data["purposes"] if p["id"] == "rights_requests")["answer_deadlines"])
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_shipped_policy_gives_rights_requests_one_month_and_no_other_purpose_a_section():
    assert (SPEC.table, SPEC.key, SPEC.received, SPEC.status_column, SPEC.open_value, SPEC.kind) == (
        "rights_requests",
        "id",
        "received_at",
        "status",
        "open",
        "kind",
    )
    assert (SPEC.answer_within_text, SPEC.warn_before_text, SPEC.standing_kinds) == ("P1M", "P5D", ("restriction",))
    assert [p.id for p in POLICY.purposes if p.answer_deadlines] == ["rights_requests"]


def test_without_standing_kinds_every_open_request_has_a_deadline(tmp_path):
    policy = load_policy(_broken(tmp_path, lambda s: s.pop("standing_kinds")))

    assert next(p for p in policy.purposes if p.answer_deadlines).answer_deadlines.standing_kinds == ()


FIELD = "purpose 'rights_requests': field 'answer_deadlines"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(table="rights_requestz"), f"{FIELD}.table': 'rights_requestz' is not a table"),
        (lambda s: s.pop("received"), f"{FIELD}.received': missing"),
        (lambda s: s.update(received="received_at; DROP TABLE x"), f"{FIELD}.received': .* not a plain SQL"),
        (lambda s: s.update(status="open"), f"{FIELD}.status': 'open': expected"),
        (lambda s: s.update(status={"column": "status"}), f"{FIELD}.status'"),
        (lambda s: s.update(kind=["kind"]), f"{FIELD}.kind'"),
        (lambda s: s.update(answer_within="one month"), f"{FIELD}.answer_within': not an ISO 8601 period"),
        (
            lambda s: s.update(answer_within="P0D", warn_before="P0D"),
            f"{FIELD}.answer_within': must be a period longer than zero",
        ),
        (lambda s: s.update(warn_before="P1M"), f"{FIELD}.warn_before': must be shorter than answer_within"),
        (lambda s: s.update(standing_kinds="restriction"), f"{FIELD}.standing_kinds': 'restriction' is not a list"),
        (lambda s: s.update(standing_kinds=[None]), f"{FIELD}.standing_kinds': None is not a value"),
        (lambda s: s.update(deadline="P1M"), f"{FIELD}.deadline': unknown field"),
    ],
)
def test_a_broken_section_names_the_purpose_and_the_field(tmp_path, change, message):
    with pytest.raises(PolicyError, match=message):
        load_policy(_broken(tmp_path, change))


def test_the_section_is_checked_against_the_live_database(db_url, tmp_path):
    engine = make_engine(db_url)
    create_app_schema(engine)
    validate_against_database(POLICY, engine)
    for name, column in (("received", "received_on"), ("kind", "request_kind")):
        renamed = load_policy(_broken(tmp_path, lambda s, name=name, column=column: s.update({name: column})))
        with pytest.raises(PolicyError, match=rf"{FIELD}.{name}': column rights_requests.{column} not in the database"):
            validate_against_database(renamed, engine)
    renamed = load_policy(_broken(tmp_path, lambda s: s.update(status={"column": "state", "open": "open"})))
    with pytest.raises(PolicyError, match=rf"{FIELD}.status.column': column rights_requests.state not in"):
        validate_against_database(renamed, engine)
    engine.dispose()


# Through Airflow


@pytest.fixture
def application(tmp_path, monkeypatch, airflow_home, smtp_server):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(url)
    create_app_schema(engine)
    seed_requests(engine)
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", url)
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_server.connection_uri)
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_ALERT_EMAIL", ALERT_ADDRESS)
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    yield engine
    engine.dispose()


def test_the_nightly_run_reports_the_deadlines_and_alerts_once_naming_ids_only(application, smtp_server, tmp_path):
    state, dag_run = run_dag("retention_rights_requests", AS_OF, retries=0)

    assert state == "success", task_states(dag_run)
    [report_file] = (tmp_path / "data" / "reports" / "retention_rights_requests").glob("*/report.json")
    report = json.loads(report_file.read_text())
    assert report["answer_deadlines"]["requests"] == EXPECTED_REQUESTS
    assert [r["id"] for r in report["answer_deadlines"]["restrictions_in_force"]] == [6]
    assert xcoms(dag_run)["report"]["return_value"]["answer_deadlines"]["overdue"] == 1

    [alert] = [r.message for r in smtp_server.handler.received if r.recipients == [ALERT_ADDRESS]]
    assert alert["Subject"] == "[lifecycle] retention_rights_requests: 1 request(s) past their answer deadline"
    body = alert.get_body(("html",)).get_content()
    assert f"<li>run: {dag_run.run_id}</li>" in body
    assert "<tr><td>5</td><td>objection</td><td>2026-07-30</td><td>32</td><td>2026-08-30</td></tr>" in body
    assert "<td>4</td>" not in body, "due soon is in the report, not in the alert"
    assert CANARY_MARK not in alert.as_string() and CANARY_MARK not in json.dumps(xcoms(dag_run), default=str)

    # The report task run again in the same run (a retry, a cleared task) rewrites the report, not the alert.
    again = airflow_cli("tasks", "test", "retention_rights_requests", "report", dag_run.run_id)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(smtp_server.handler.received) == 1
    assert "the overdue alert of this run was sent already" in again.stdout + again.stderr


def test_a_dry_run_reports_the_deadlines_and_alerts_no_one(application, smtp_server, tmp_path):
    state, _ = run_dag("retention_rights_requests", AS_OF, {"dry_run": True}, retries=0)

    assert state == "success"
    [report_file] = (tmp_path / "data" / "reports" / "retention_rights_requests").glob("*/report.json")
    assert json.loads(report_file.read_text())["answer_deadlines"]["overdue"] == 1
    assert smtp_server.handler.received == []
