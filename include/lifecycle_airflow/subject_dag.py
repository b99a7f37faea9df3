"""The on-demand DAG `subject_request`: a data subject's request (access, portability, erasure,
objection, withdrawal of consent, restriction, its lift), from the trigger form, the REST API or
`--conf`. `check` refuses a malformed request before any work; `carry_out` does it (lifecycle.subject);
`report` writes the run's report (whatever happened) with the answer and, for an erasure, its
deletion certificate. XCom and the report never hold the address."""

from __future__ import annotations

import logging

from airflow.sdk import DAG, Param, chain, task

from lifecycle.subject import KINDS
from lifecycle_airflow import config, tasks
from lifecycle_airflow.factory import KEPT_BY_AIRFLOW, on_demand_dag

DAG_ID = "subject_request"
KIND_LABELS = {
    "access": "access: a copy of every record of the address",
    "portability": "portability: the same package, machine-readable",
    "erasure": "erasure: archive the smicer bundle as evidence, erase the rest",
    "objection": "objection to prospecting: erase prospects and newsletters, record the objection",
    "withdraw_consent": "withdraw consent: end the address's newsletter subscriptions",
    "restriction": "restriction: hold every record of the address until lifted",
    "lift_restriction": "lift restriction: end the restriction's hold",
}

DOC = """# Rights of the data subject

An operator holding a verified request acts on it here. Records are found by **email address**
(trimmed, case-insensitive) in every table of the policy that carries one, with the bundle of the
smicer holding that address (connection logs, browsing events, test applications, missions).

- **access**, **portability**: writes the subject's package under the variable
  `lifecycle_export_uri` (a local folder by default, or `s3://bucket/prefix` through `aws_default`):
  one `<table>.json` and `<table>.csv` per table and a README in the subject's language saying what
  each table is for, on which legal basis and how long it is kept. The package is the only place the
  data goes; the report says where it is.
- **erasure**: the smicer's bundle is archived as evidence (kept 5 years from today) and erased,
  missions pseudonymised (the link to the smicer removed); every other record of the address erased,
  except `rights_requests` (kept to track the requests) and `prospecting_objections` (kept 3 years).
  Records under a restriction or a legal hold are kept, and the answer names the hold. The report is
  the **deletion certificate**: per table what was erased, pseudonymised or kept and why, and the
  archive batches; no personal data.
- **objection**: erases the address's `prospects` and `newsletter_subscriptions` and records a
  `prospecting_objections` row dated today.
- **withdraw_consent**: dates the withdrawal (today) on the address's newsletter subscriptions; the
  nightly `newsletter` rule then erases them.
- **restriction**: opens a `rights_requests` restriction row (or takes the one `request_id` names):
  every nightly rule keeps the address's records, and sends it no reactivation email, until lifted.
- **lift_restriction**: closes every open restriction request of the address (`done`, today); legal
  holds stay. The next nightly runs act as usual.

**Dry run**: the form's `dry_run` is on: the run only reports what the request would do, changing
nothing, until it is switched off. From `--conf` or the REST API, a request without `dry_run` is a
dry run for an erasure and carried out for the other kinds.
**`request_id`**: the `rights_requests` row the run serves (of the same address and kind, open). It
is closed (`done`) when the request is carried out, and left open, the report saying why, when a
hold refuses it. An erasure or objection adds a keyed hash of the address to the suppression list
(the key: connection `lifecycle_suppression` or variable `lifecycle_suppression_key`).

A malformed address, an unknown kind or a request row that does not match fails the run at its
`check` task, whose log says why in its first lines; nothing is changed. The address never appears
in logs, XCom or the report; Airflow itself keeps it with the run's parameters (its metadata database,
the run's details page), also for a refused request, until the run is deleted.
"""


def build_subject_dag() -> DAG:
    with on_demand_dag(DAG_ID, "Act on a data subject's request", DOC, ["gdpr", "rights"], _params()) as dag:
        checked = check()
        written = report()
        chain(checked, carry_out(), written)
        # The report is written whatever happened; the run's state is the request's.
        written.as_teardown()
    return dag


def _params() -> dict[str, Param]:
    return {
        "email": Param(
            type="string",
            title="Email address",
            description="The data subject's address, as verified (case and surrounding spaces do not matter). "
            f"The run's logs, XCom and report never show it. {KEPT_BY_AIRFLOW}",
            minLength=1,
            maxLength=320,
        ),
        "kind": Param(
            type="string",
            title="Kind of request",
            description="What the data subject asks for.",
            enum=list(KINDS),
            values_display=KIND_LABELS,
        ),
        "dry_run": Param(
            True,
            type=["null", "boolean"],
            title="Dry run",
            description="On: only report what the request would do, changing nothing. Switch it off to carry "
            "the request out. (From --conf or the REST API, leaving it out or null means a dry run for an erasure "
            "only.)",
        ),
        "request_id": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Rights request id",
            description="Optional: the rights_requests row this run serves; closed when the request is carried out.",
        ),
    }


@task(task_id="check", retries=0)
def check(params=None) -> dict:
    """The request refused before any work when malformed or not matching its rights_requests row."""
    from lifecycle.subject import check_request_row

    run, request = _subject_run(params)
    tasks.prepare_tables(run)
    _refusing(check_request_row, run, request)
    print(f"subject request checked: {request.summary()}")
    return request.summary()


@task(task_id="carry_out")
def carry_out(params=None) -> dict:
    """The request carried out (or, in a dry run, what it would do); the answer, without the address."""
    from lifecycle.subject import Destinations
    from lifecycle.subject import carry_out as carry_out_request

    run, request = _subject_run(params)
    uri = config.export_uri()
    destinations = Destinations(uri, config.archive_s3_options(uri), config.suppression_key())
    answer = _refusing(carry_out_request, run, request, destinations)
    print(
        f"subject request {request.kind}: {answer['outcome']}" + (f" ({answer['reason']})" if answer["reason"] else "")
    )
    return answer


@task(task_id="report", retries=1)
def report(params=None, ti=None) -> dict:
    """The run's report: the answer, or why the request was not carried out."""
    from lifecycle.subject_report import write_report

    run = tasks.run_context()
    answer = ti.xcom_pull(task_ids="carry_out")
    states = ti.get_task_states(dag_id=run.dag_id, run_ids=[run.run_id]).get(run.run_id, {})
    failed = next((task_id for task_id in ("check", "carry_out") if states.get(task_id) == "failed"), None)
    return write_report(run, answer, failed)


def _subject_run(params):
    """The run and its request. The form always sends `dry_run` (on by default); a conf that leaves it
    out gets the contract's default: a dry run for an erasure only."""
    from dataclasses import replace

    from airflow.sdk import get_current_context

    from lifecycle.subject import SubjectRequest

    given = dict(params)
    if "dry_run" not in (get_current_context()["dag_run"].conf or {}):
        given["dry_run"] = None
    request = _refusing(SubjectRequest.from_params, given)
    return replace(tasks.run_context(), dry_run=request.dry_run, subject_email=request.email), request


def _refusing(action, *args):
    """The action; a refused request fails the task at once, without retry, with the reason."""
    from airflow.sdk.exceptions import AirflowFailException

    from lifecycle.erasing import ErasureRefused
    from lifecycle.expectations import GateFailed
    from lifecycle.stores import ArchiveError
    from lifecycle.subject import RequestRefused
    from lifecycle.suppression import SuppressionKeyMissing

    try:
        return action(*args)
    except (RequestRefused, SuppressionKeyMissing, GateFailed, ErasureRefused, ArchiveError) as error:
        message = f"request refused: {error}"
        # First in the task's log, not only after the traceback.
        logging.getLogger(__name__).error(message)
        raise AirflowFailException(message) from None
