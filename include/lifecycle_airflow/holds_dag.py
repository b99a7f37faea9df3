"""The on-demand DAG `legal_holds`: an operator places, lifts or lists legal holds from the trigger
form (or `--conf`). Its one task does the action; a refused request fails it at once with the reason
and writes nothing. XCom gets hold ids, counts and listed rows, which never hold an address."""

from __future__ import annotations

import logging
from typing import NoReturn

from airflow.sdk import DAG, Param, task

from lifecycle_airflow import config, tasks
from lifecycle_airflow.factory import KEPT_BY_AIRFLOW, on_demand_dag

DAG_ID = "legal_holds"
ACTIONS = ("place", "lift", "list")
PLACE_SECTION, LIFT_SECTION, LIST_SECTION = "Place a hold", "Lift a hold", "List holds"
# The fields each action reads; a field of another action, given, refuses the request.
ACTION_FIELDS = {
    "place": ("reason", "email", "table", "key", "until"),
    "lift": ("reason", "hold_id"),
    "list": ("include_lifted",),
}
FIELDS = tuple(dict.fromkeys(name for fields in ACTION_FIELDS.values() for name in fields))
DOC = f"""# Legal holds

An operator's legal hold keeps records from every retention rule, and the archived batches holding
them from expiry, until it is lifted or its end date comes; the rules then act on the next run.

In the form, pick the **action**, then open its section (**{PLACE_SECTION}**, **{LIFT_SECTION}**,
**{LIST_SECTION}**); leave the fields of the other actions empty.

- **place**: `email` (every record carrying that address, trimmed and case-insensitive, and the bundle
  of the smicer with it) or `table` and `key` (that record, and its bundle); a `reason` (required, no
  personal data); `until` (optional: the day the hold ends; empty: until lifted).
- **lift**: `hold_id` (as listed), `reason` optional.
- **list**: the holds not lifted (`include_lifted`: all), an email hold named by a short SHA-256
  digest of its address, never by the address. The listing is the task's XCom and log.

A refused request (a missing or stray field, an invalid address, an unknown table) fails the run at
once; the first lines of its `hold` task's log say why, and nothing is written. {KEPT_BY_AIRFLOW}
For a hold by email, the command below leaves no address in Airflow.

The same from a shell: `python -m lifecycle.holds place|lift|list` (README, "Legal holds").
"""


def build_holds_dag() -> DAG:
    policy = tasks._policy(config.policy_path())
    with on_demand_dag(
        DAG_ID,
        "Place, lift or list an operator's legal holds",
        DOC,
        ["gdpr", "legal-hold"],
        _params(sorted(policy.tables)),
    ) as dag:
        hold()
    return dag


def _params(table_names: list[str]) -> dict[str, Param]:
    return {
        "action": Param(
            "list",
            type="string",
            enum=list(ACTIONS),
            values_display={"place": "Place a hold", "lift": "Lift a hold", "list": "List the holds"},
            title="Action",
            description=f"Then fill in its section below ({PLACE_SECTION}, {LIFT_SECTION} or {LIST_SECTION}); "
            "leave the other sections empty.",
        ),
        "reason": Param(
            None,
            type=["null", "string"],
            maxLength=2000,
            title="Reason",
            description="Placing a hold: required, e.g. a case number. Lifting: optional. It is printed in "
            f"every run report: no personal data (no name, no email address). {KEPT_BY_AIRFLOW}",
        ),
        "email": Param(
            None,
            type=["null", "string"],
            maxLength=320,
            title="Email address",
            description="Hold every record carrying this address (trimmed, case-insensitive) and the bundle of "
            f"the smicer with it; or leave it empty and give a table and a key. {KEPT_BY_AIRFLOW} To leave no "
            "address in Airflow, place email holds with the command python -m lifecycle.holds.",
            section=PLACE_SECTION,
        ),
        "table": Param(
            None,
            type=["null", "string"],
            enum=[None, *table_names],
            values_display={"null": "(none: a hold by email)"},
            title="Table",
            description="With a key: hold that one record of this table (and the bundle of its smicer).",
            section=PLACE_SECTION,
        ),
        "key": Param(
            None,
            type=["null", "integer"],
            title="Key",
            description="With a table: the record's key (its id in that table).",
            section=PLACE_SECTION,
        ),
        "until": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Until",
            description="Optional: the day the hold ends, after today. Empty: it holds until lifted.",
            section=PLACE_SECTION,
        ),
        "hold_id": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Hold id",
            description="The id of the hold to lift, as listed (action List the holds). The reason above is "
            "optional here.",
            section=LIFT_SECTION,
        ),
        "include_lifted": Param(
            False,
            type=["null", "boolean"],
            title="Include lifted holds",
            description="Also list the holds lifted or ended. The listing is the task's log and XCom; an email "
            "hold shows as a digest of its address, never the address.",
            section=LIST_SECTION,
        ),
    }


def refusal(params) -> str | None:
    """Why the parameters do not make a request of their action (naming the field), or None."""
    action = params.get("action")
    if action not in ACTION_FIELDS:
        return f"parameter action: one of {', '.join(ACTIONS)}"
    stray = [name for name in FIELDS if name not in ACTION_FIELDS[action] and _given(params, name)]
    if stray:
        return f"parameter {stray[0]}: not used by the action {action}; leave it empty"
    if action == "place":
        return _place_refusal(params)
    if action == "lift" and not _given(params, "hold_id"):
        return "parameter hold_id: required to lift a hold (its id, as listed)"
    return None


def _place_refusal(params) -> str | None:
    email, table, key = (_given(params, name) for name in ("email", "table", "key"))
    if email and (table or key):
        return "parameters email, table and key: a hold is by email or by table and key, not both"
    if not (email or table or key):
        return "parameters email, table and key: a hold needs an email, or a table and a key"
    if table and not key:
        return "parameter key: required with a table (the record's key)"
    if key and not table:
        return "parameter table: required with a key (the record's table)"
    if not _given(params, "reason"):
        return "parameter reason: required to place a hold (e.g. a case number; no personal data)"
    return None


def _given(params, name: str) -> bool:
    """Whether the field is filled in: the form sends an empty field as null, a switch left off as false."""
    value = params.get(name)
    if isinstance(value, str):
        return bool(value.strip())
    return value is not None and value is not False


@task(task_id="hold")
def hold(params=None, dag_run=None) -> dict:
    """The requested action; a refused request fails the task without retry."""
    from lifecycle.holds import HoldError

    refused = refusal(params)
    if refused:
        _refuse(refused)
    engine = tasks._engine(config.app_database_url())
    operator = dag_run.triggering_user_name or f"airflow run {dag_run.run_id}"
    try:
        return _ACTIONS[params["action"]](engine, params, operator)
    except HoldError as error:
        _refuse(str(error))


def _refuse(reason: str) -> NoReturn:
    """Fail the task without retry; the reason first in its log, not only after the traceback."""
    from airflow.sdk.exceptions import AirflowFailException

    message = f"request refused: {reason}"
    logging.getLogger(__name__).error(message)
    raise AirflowFailException(message) from None


def _place(engine, params, operator: str) -> dict:
    from lifecycle.holds import place_hold

    target = {name: params.get(name) for name in ("email", "table", "key")}
    policy = tasks._policy(config.policy_path())
    hold_id = place_hold(
        engine, policy, **target, reason=params.get("reason"), until=params.get("until"), placed_by=operator
    )
    print(f"legal hold {hold_id} placed")
    return {"placed": hold_id}


def _lift(engine, params, operator: str) -> dict:
    from lifecycle.holds import lift_hold

    lift_hold(engine, params.get("hold_id"), lifted_by=operator, reason=params.get("reason"))
    print(f"legal hold {params['hold_id']} lifted")
    return {"lifted": params["hold_id"]}


def _list(engine, params, _operator: str) -> dict:
    from lifecycle.holds import format_holds, list_holds

    rows = list_holds(engine, include_lifted=bool(params.get("include_lifted")))
    print(format_holds(rows))
    return {"count": len(rows), "holds": rows}


_ACTIONS = {"place": _place, "lift": _lift, "list": _list}
