"""The on-demand DAG `legal_holds`: an operator places, lifts or lists legal holds from the trigger
form (or `--conf`). Its one task does the action; a refused request fails it at once with the reason
and writes nothing. XCom gets hold ids, counts and listed rows, which never hold an address."""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from lifecycle_airflow import config, tasks
from lifecycle_airflow.factory import on_demand_dag

DAG_ID = "legal_holds"
ACTIONS = ("place", "lift", "list")

DOC = """# Legal holds

An operator's legal hold keeps records from every retention rule, and the archived batches holding
them from expiry, until it is lifted or its end date comes; the rules then act on the next run.

- **place**: `email` (every record carrying that address, trimmed and case-insensitive, and the bundle
  of the smicer with it) or `table` and `key` (that record, and its bundle); a `reason` (required, no
  personal data); `until` (optional: the day the hold ends; empty: until lifted).
- **lift**: `hold_id` (as listed), `reason` optional.
- **list**: the holds not lifted (`include_lifted`: all), an email hold named by a short SHA-256
  digest of its address, never by the address. The listing is the task's XCom and log.

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
        "action": Param("list", enum=list(ACTIONS), description="Place a hold, lift one, or list them."),
        "email": Param("", type="string", description="place: the address to hold (or table and key)."),
        "table": Param("", enum=["", *table_names], description="place: the table of the one record to hold."),
        "key": Param(None, type=["null", "integer"], description="place: that record's key."),
        "reason": Param("", type="string", description="place: why (required, no personal data); lift: why."),
        "until": Param(
            None, type=["null", "string"], format="date", description="place: the day it ends (empty: when lifted)."
        ),
        "hold_id": Param(None, type=["null", "integer"], minimum=1, description="lift: the hold's id, as listed."),
        "include_lifted": Param(False, type="boolean", description="list: lifted holds too."),
    }


@task(task_id="hold")
def hold(params=None, dag_run=None) -> dict:
    """The requested action; a refused request fails the task without retry."""
    from airflow.sdk.exceptions import AirflowFailException

    from lifecycle.holds import HoldError

    engine = tasks._engine(config.app_database_url())
    operator = dag_run.triggering_user_name or f"airflow run {dag_run.run_id}"
    try:
        return _ACTIONS[params["action"]](engine, params, operator)
    except HoldError as error:
        raise AirflowFailException(str(error)) from None


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
