"""Task callables: each builds the run's context from Airflow's and calls one core step.
They return counts only (XCom); records are named by table and key in the report, never here."""

from __future__ import annotations

from functools import cache

from lifecycle_airflow import config

# What a shared step's task instance is called in the UI (its map_index_template).
KEY_RANGE_LABEL = "key_range_label"


@cache
def _policy(path: str | None):
    from lifecycle.policy import load_policy

    return load_policy(path)


@cache
def _engine(url: str):
    from lifecycle.store import make_engine

    return make_engine(url)


def run_context():
    from airflow.sdk import get_current_context

    from lifecycle.run import RunContext

    context = get_current_context()
    dag_run = context["dag_run"]
    as_of = context.get("logical_date") or dag_run.run_after
    archive_uri = config.archive_uri()
    return RunContext(
        engine=_engine(config.app_database_url()),
        policy=_policy(config.policy_path()),
        as_of=as_of,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        archive_uri=archive_uri,
        reports_dir=config.reports_dir(),
        volume_approved=bool(context["params"].get("volume_approved", False)),
        dry_run=bool(context["params"].get("dry_run", False)),
        s3_options=config.archive_s3_options(archive_uri),
    )


def prepare_run() -> dict:
    """Check the policy against the live database, create the pipeline's tables, open the run."""
    from lifecycle.reporting import start_run

    run = run_context()
    prepare_tables(run)
    start_run(run)
    return {"as_of": run.as_of.isoformat(), "policy_version": run.policy.version, "dry_run": run.dry_run}


def prepare_tables(run) -> None:
    """Check the policy against the live database and create the pipeline's tables where missing."""
    from sqlalchemy.exc import OperationalError

    from lifecycle.policy import validate_against_database
    from lifecycle.store import ensure_lifecycle_tables

    try:
        validate_against_database(run.policy, run.engine)
        ensure_lifecycle_tables(run.engine)
    except OperationalError as error:
        raise RuntimeError(
            f"application database {run.engine.url.render_as_string(hide_password=True)} unreachable: "
            f"{type(error.orig).__name__}"
        ) from None


def run_rule_step(rule_id: str, step_name: str, key_range: list | None = None) -> dict:
    """One step of one rule (of a step shared by several tasks, the share `key_range`). A failed gate
    or a refused erasure fails the task without retry."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    from lifecycle.erasing import ErasureRefused
    from lifecycle.expectations import GateFailed
    from lifecycle.pipeline import NOTIFY, run_step, steps_for
    from lifecycle.select import KeyRange
    from lifecycle.stores import ArchiveError

    run = run_context()
    rule = run.policy.rule(rule_id)
    if step_name not in steps_for(rule):
        raise ValueError(f"rule {rule_id} has no step {step_name!r}; its steps: {steps_for(rule)}")
    if step_name == NOTIFY:
        run = _with_mail(run)
    selected = _selected(rule) if run.dry_run else None
    share = None if key_range is None else KeyRange.of(key_range)
    if share is not None:
        get_current_context()[KEY_RANGE_LABEL] = share.label
    try:
        return run_step(run, rule, step_name, selected, share)
    except (GateFailed, ErasureRefused, ArchiveError) as error:
        raise AirflowFailException(str(error)) from None


def key_ranges(rule_id: str) -> list[list]:
    """The key ranges the rule's archive and erase tasks are mapped over, as [key_from, key_to]: at
    most `rows_per_task` due records each; a dry run's, everything in one."""
    from lifecycle.select import EVERY_KEY, Selection

    run = run_context()
    if run.dry_run:
        return [EVERY_KEY.bounds()]
    shares = Selection.of(run, run.policy.rule(rule_id)).task_ranges(config.rows_per_task())
    return [share.bounds() for share in shares]


def _selected(rule) -> dict | None:
    """What the run's select step found for the rule: a dry run's later steps report from it."""
    from airflow.sdk import get_current_context

    return get_current_context()["ti"].xcom_pull(task_ids=f"{rule.id}.select")


def _with_mail(run):
    """The run with what sending notices needs: the mailer, its settings, and whether it may send."""
    from dataclasses import replace

    from airflow.sdk import get_current_context

    from lifecycle_airflow.mail_config import mailer_and_sender, notice_settings, notices_allowed

    mailer, sender = mailer_and_sender()
    run_type = get_current_context()["dag_run"].run_type
    return replace(
        run, mailer=mailer, notices=notice_settings(sender), notices_allowed=notices_allowed(run_type, run.as_of)
    )


def report_run(purpose_id: str) -> dict:
    """The run's report, written whatever happened to its rules (a teardown of the run); when it
    lists requests past their answer deadline, the operators are alerted (not by a dry run)."""
    from airflow.sdk import get_current_context

    from lifecycle.pipeline import steps_for
    from lifecycle.reporting import finish_run
    from lifecycle_airflow.alerts import alert_overdue_requests

    run = run_context()
    purpose = next(p for p in run.policy.purposes if p.id == purpose_id)
    task_instance = get_current_context()["ti"]
    states = task_instance.get_task_states(dag_id=run.dag_id, run_ids=[run.run_id]).get(run.run_id, {})
    results, failed = {}, {}
    for rule in purpose.rules:
        task_ids = {step: f"{rule.id}.{step}" for step in steps_for(rule)}
        results[rule.id] = {
            name: _step_result(task_instance.xcom_pull(task_ids=task_id)) for name, task_id in task_ids.items()
        }
        failed_step = next((name for name, task_id in task_ids.items() if _failed(states, task_id)), None)
        if failed_step:
            failed[rule.id] = failed_step
    summary = finish_run(run, list(purpose.rules), results, failed)
    if summary.get("answer_deadlines", {}).get("overdue") and not run.dry_run:
        alert_overdue_requests(get_current_context(), run.report_dir())
    return summary


def _step_result(pulled) -> dict:
    """A step's counts; a step shared by several tasks: the sum of theirs."""
    if pulled is None or isinstance(pulled, dict):
        return pulled or {}
    merged: dict = {}
    for counts in filter(None, pulled):
        for name, value in counts.items():
            merged[name] = merged.get(name, 0) + value if isinstance(value, int) else value
    return merged


def _failed(states: dict[str, str], task_id: str) -> bool:
    """Whether the task failed; a mapped task's instances are listed as `<task_id>_<map_index>`."""
    return any(
        state == "failed" and (key == task_id or (key.startswith(f"{task_id}_") and key[len(task_id) + 1 :].isdigit()))
        for key, state in states.items()
    )


def rules_succeeded() -> dict:
    """Runs only when every step of every rule succeeded: a rule that failed fails the run."""
    return {"rules": "all succeeded"}


def restore_evidence(params):
    """One poke of `archive_restore`: ask S3 to restore what is still cold, copy what is readable.
    Done when every requested batch is copied; XCom gets batch keys and states only."""
    from airflow.sdk import PokeReturnValue
    from airflow.sdk.exceptions import AirflowFailException

    from lifecycle.restore import restore_batches
    from lifecycle.stores import open_archive_store

    try:
        requested = _restore_request(params)
        destination = _restore_destination(params)
    except ValueError as error:
        raise AirflowFailException(str(error)) from None
    uri = config.archive_uri()
    store = open_archive_store(uri, config.archive_s3_options(uri))
    outcomes = restore_batches(store, requested, destination, tier=params["tier"], days=params["days"])
    return PokeReturnValue(
        is_done=all(outcome.copied for outcome in outcomes),
        xcom_value={outcome.batch_key: outcome.state for outcome in outcomes},
    )


def _restore_request(params) -> dict[str, list[int] | None]:
    from lifecycle.restore import subject_batches

    batch_key, email = (params.get("batch_key") or "").strip(), (params.get("email") or "").strip()
    if bool(batch_key) == bool(email):
        raise ValueError("give either batch_key or email, not both and not neither")
    if batch_key:
        return {batch_key: None}
    return subject_batches(_engine(config.app_database_url()), email)


def _restore_destination(params):
    from lifecycle.restore import local_folder

    destination = (params.get("destination") or "").strip()
    return local_folder(destination) if destination else config.data_dir() / "restored"
