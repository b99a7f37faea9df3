"""Lineage: the Assets each rule step declares, OpenLineage off by default, and a run with OpenLineage
on (file transport) whose events name, per task, the datasets it read and changed, and no personal data."""

from __future__ import annotations

import configparser
import json
from datetime import UTC, datetime

import pytest

from airflow_harness import PROJECT, airflow_cli, dag_bag
from lifecycle.appschema import create_app_schema
from lifecycle.archiving import archive_sources
from lifecycle.demo.seed import seed_demo
from lifecycle.store import make_engine
from lifecycle_airflow.lineage import archive_asset, dataset_of, step_lineage, table_asset
from tests.lifecycle_helpers import POLICY, add, exists

DAG_ID = "retention_account_services"
RULE_IDS = {rule.id for purpose in POLICY.purposes if purpose.dag_id == DAG_ID for rule in purpose.rules}
AS_OF = datetime(2026, 11, 25, tzinfo=UTC)
CANARIES = ("Zebulon", "Quintessenza", "zebulon.quintessenza@canary-pii.example", "+33 6 12 34 56 78")

BUNDLE = ("connection_logs", "browsing_events", "test_applications", "missions")
ARCHIVED_WITH_A_SMICER = ("smicers", "connection_logs", "browsing_events", "test_applications")
# What a smicer's decision reads: the smicer, the bundle, and the restriction requests that hold it.
SMICER_DECISION = ("smicers", *BUNDLE, "rights_requests")


def tables(*names: str) -> set[tuple[str, str]]:
    return {("table", name) for name in names}


def archives(*names: str) -> set[tuple[str, str]]:
    return {("archive", name) for name in names}


def smicer_rule(rule_id: str) -> dict[str, tuple[set, set]]:
    return {
        f"{rule_id}.select": (tables(*SMICER_DECISION), set()),
        f"{rule_id}.archive": (tables(*ARCHIVED_WITH_A_SMICER), archives(*ARCHIVED_WITH_A_SMICER)),
        f"{rule_id}.verify_archive": (archives(*ARCHIVED_WITH_A_SMICER), set()),
        f"{rule_id}.erase": (set(), tables("smicers", *BUNDLE)),
        f"{rule_id}.verify_erase": (tables("smicers", *BUNDLE), set()),
    }


def bundle_member_rule(rule_id: str, table: str) -> dict[str, tuple[set, set]]:
    return {
        f"{rule_id}.select": (tables(*SMICER_DECISION), set()),
        f"{rule_id}.erase": (set(), tables(table)),
        f"{rule_id}.verify_erase": (tables(table), set()),
    }


# (inputs, outputs) of each task of retention_account_services that names any; the others name none.
ACCOUNT_SERVICES = {
    **smicer_rule("account-closed"),
    **smicer_rule("account-inactive"),
    "account-inactive.notify": (tables("smicers"), set()),
    **bundle_member_rule("connection-logs", "connection_logs"),
    **bundle_member_rule("browsing-events", "browsing_events"),
}


def declared(assets) -> set[tuple[str, str]]:
    kinds = {"smice_app": "table", "lifecycle_archive": "archive"}
    return {(kinds[asset.name.split(".")[0]], asset.name.split(".", 1)[1]) for asset in assets}


@pytest.fixture(scope="module")
def bag(airflow_home):
    return dag_bag()


def test_each_task_declares_the_tables_and_archive_it_reads_and_changes(bag):
    dag = bag.get_dag(DAG_ID)

    found = {
        task.task_id: (declared(task.inlets), declared(task.outlets))
        for task in dag.tasks
        if task.inlets or task.outlets
    }

    assert found == ACCOUNT_SERVICES
    purge = bag.get_dag("retention_archive_expiry").get_task("archive-expiry.purge")
    assert (declared(purge.inlets), declared(purge.outlets)) == (set(), archives(*ARCHIVED_WITH_A_SMICER))
    contacts = bag.get_dag("retention_customers_prospects").get_task("client-contacts.select")
    assert declared(contacts.inlets) == tables("client_contacts", "clients", "rights_requests")


def test_the_archive_step_names_the_tables_the_archive_takes_rows_from():
    for rule in POLICY.rules():
        if rule.archives:
            outlets = step_lineage(POLICY, rule, "archive")["outlets"]
            assert declared(outlets) == archives(*(source.table for source in archive_sources(POLICY, rule)))


def test_assets_are_named_by_the_connection_and_the_variable_that_locate_them():
    assert (table_asset("smicers").name, table_asset("smicers").uri) == (
        "smice_app.smicers",
        "x-lifecycle-table://smice_app/smicers",
    )
    assert (archive_asset("smicers").name, archive_asset("smicers").uri) == (
        "lifecycle_archive.smicers",
        "x-lifecycle-archive://lifecycle_archive_uri/smicers",
    )


def test_datasets_are_named_as_openlineage_names_them_without_credentials():
    smicers, archive = table_asset("smicers"), archive_asset("smicers")

    assert dataset_of(smicers, "postgresql+psycopg2://app:secret@db.internal/smice", "file:///srv/archive") == (
        "postgres://db.internal:5432",
        "smice.public.smicers",
    )
    assert dataset_of(smicers, "mysql+pymysql://app:secret@maria:3307/smice?charset=utf8mb4", "") == (
        "mysql://maria:3307",
        "smice.smicers",
    )
    assert dataset_of(smicers, "sqlite:////srv/smice.db", "") == ("sqlite:///srv/smice.db", "smicers")
    assert dataset_of(archive, "", "s3://evidence-bucket/archive") == ("s3://evidence-bucket", "archive/smicers")
    assert dataset_of(archive, "", "file:///srv/archive/") == ("file", "/srv/archive/smicers")


def test_openlineage_is_off_by_default_and_on_for_the_retention_dags_only():
    from airflow.providers.openlineage import conf as openlineage_conf
    from airflow.providers.openlineage.utils.emission_policy import resolve_dag_emission_policy

    settings = configparser.ConfigParser()
    settings.read(PROJECT / "airflow.cfg")

    assert settings.getboolean("openlineage", "disabled") is True
    assert openlineage_conf.is_disabled()
    # Once enabled: the on-demand DAGs' run conf holds emails, and would be in every event.
    assert resolve_dag_emission_policy("retention_account_services").emit
    assert not resolve_dag_emission_policy("subject_request").emit
    assert not resolve_dag_emission_policy("legal_holds").emit


@pytest.fixture
def application(postgresql_session_database, tmp_path, monkeypatch, airflow_home):
    """A PostgreSQL application database, seeded, with a closed smicer's recognisable personal data."""
    postgresql_session_database.reset()
    url = postgresql_session_database.url
    engine = make_engine(url.render_as_string(hide_password=False))
    create_app_schema(engine)
    seed_demo(engine, AS_OF, size=60, seed=11, documents_dir=tmp_path / "documents")
    name, surname, email, phone = CANARIES
    person = {"first_name": name, "last_name": surname, "phone": phone}
    closed = datetime(2025, 2, 1)
    add(engine, "smicers", id=900001, email=email, created_at=datetime(2021, 1, 1), closed_at=closed, **person)
    add(engine, "connection_logs", smicer_id=900001, id=900002, connected_at=closed, user_agent=f"{name}'s phone")
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", url.set(drivername="postgresql").render_as_string(hide_password=False))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    yield engine
    engine.dispose()


@pytest.mark.airflow
def test_a_run_emits_per_task_the_datasets_it_touches_and_no_personal_data(application, tmp_path, monkeypatch):
    events_file = tmp_path / "openlineage.jsonl"
    monkeypatch.setenv("AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY", "0")  # a failing task fails the run at once
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "False")
    monkeypatch.setenv(
        "AIRFLOW__OPENLINEAGE__TRANSPORT",
        json.dumps({"type": "file", "log_file_path": str(events_file), "append": True}),
    )

    approved = json.dumps({"volume_approved": True})
    result = airflow_cli("dags", "test", DAG_ID, AS_OF.date().isoformat(), "-c", approved)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not exists(application, "smicers", 900001), "the smicer's data went through the run"
    text = events_file.read_text()
    named = _datasets_by_task(json.loads(line) for line in text.splitlines())
    location = {
        "table": lambda table: ("postgres://127.0.0.1:5432", f"{application.url.database}.public.{table}"),
        "archive": lambda table: ("file", f"{tmp_path}/data/archive/{table}"),
    }
    rule_steps = {task_id for task_id in named if task_id.split(".")[0] in RULE_IDS}
    expected = {
        task_id: tuple({location[kind](name) for kind, name in datasets} for datasets in lineage)
        for task_id, lineage in ACCOUNT_SERVICES.items()
    }

    assert set(expected) < rule_steps, "a START and a COMPLETE event for every step, even those naming nothing"
    assert {task_id: named[task_id] for task_id in rule_steps} == {
        task_id: expected.get(task_id, (set(), set())) for task_id in rule_steps
    }
    assert DAG_ID in named, "the run's own events"
    assert [canary for canary in CANARIES if canary.lower() in text.lower()] == []


def _datasets_by_task(events) -> dict[str, tuple[set, set]]:
    """(namespace, name) of the inputs and outputs each task's events name, by task id; the run's own
    events by the DAG id. Each task must have its START and COMPLETE."""
    named: dict[str, tuple[set, set]] = {}
    kinds: dict[str, set] = {}
    for event in events:
        task_id = event["job"]["name"].removeprefix(f"{DAG_ID}.")
        inputs, outputs = named.setdefault(task_id, (set(), set()))
        inputs |= {(dataset["namespace"], dataset["name"]) for dataset in event["inputs"]}
        outputs |= {(dataset["namespace"], dataset["name"]) for dataset in event["outputs"]}
        kinds.setdefault(task_id, set()).add(event["eventType"])
    assert all(found >= {"START", "COMPLETE"} for task_id, found in kinds.items() if task_id != DAG_ID), kinds
    return named
