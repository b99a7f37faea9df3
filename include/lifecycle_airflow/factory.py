"""One DAG per processing purpose of the policy, each rule a task group of its steps:
prepare -> [rule: select -> gate -> approve -> archive -> verify -> erase -> verify erase]... -> report."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, CronTriggerTimetable, Param, TaskGroup, TriggerRule, chain, task

from lifecycle.pipeline import APPROVE, SHARED_BY_KEY_RANGE, steps_for
from lifecycle.policy import Policy, Purpose
from lifecycle.policy_doc import SUMMARY, rule_summary_markdown, ui_link
from lifecycle_airflow import tasks
from lifecycle_airflow.alerts import alert_failure
from lifecycle_airflow.approval import VolumeApproval
from lifecycle_airflow.lineage import step_lineage

NIGHTLY = CronTriggerTimetable("0 0 * * *", timezone="UTC")
# The retry delay is Airflow's [core] default_task_retry_delay (300 s unless configured).
DEFAULT_ARGS = {
    "owner": "data-protection",
    "retries": 2,
    "on_failure_callback": alert_failure,
}


START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
# What a trigger form's description says of the personal data typed into it: no task can scrub it.
KEPT_BY_AIRFLOW = (
    "Airflow keeps what this form sends with the run's parameters (in its metadata database, shown on the "
    "run's details page), also when the request is refused, until the run is deleted."
)


def on_demand_dag(dag_id: str, description: str, doc_md: str, tags: list[str], params: dict) -> DAG:
    """A DAG an operator triggers from its form (no schedule), with the lifecycle tasks' defaults."""
    return DAG(
        dag_id=dag_id,
        description=description,
        doc_md=doc_md,
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        default_args=DEFAULT_ARGS,
        tags=tags,
        params=params,
    )


def build_dags(policy: Policy) -> dict[str, DAG]:
    return {purpose.dag_id: build_dag(policy, purpose) for purpose in policy.purposes}


def build_dag(policy: Policy, purpose: Purpose) -> DAG:
    with DAG(
        dag_id=purpose.dag_id,
        description=purpose.title,
        doc_md=purpose_doc(policy, purpose),
        schedule=NIGHTLY,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["gdpr", "retention", purpose.id],
        params={
            "dry_run": Param(
                False,
                type=["null", "boolean"],
                title="Dry run",
                description="On: every step decides and reports what it would do, and nothing is changed, sent, "
                "archived or purged; the run's report is marked DRY RUN.",
            ),
            "volume_approved": Param(
                False,
                type=["null", "boolean"],
                title="Volume approved",
                # Markdown, for the link: the UI shows description_md only when there is no description.
                description_md="On: act even when a rule's candidates exceed its volume ceiling (see the "
                "[policy](lifecycle/policy)), without waiting at its `approve` task for an operator.",
            ),
        },
    ) as dag:
        prepare = task(task_id="prepare", retries=1)(tasks.prepare_run)()
        report = task(task_id="report", retries=1)(tasks.report_run)(purpose.id)
        outcome = task(task_id="outcome", trigger_rule=TriggerRule.NONE_FAILED)(tasks.rules_succeeded)()
        # Rules run one after the other, in policy order, each deciding on what the one before left;
        # a rule that fails stops only itself (and every rule still needs `prepare` to have succeeded).
        previous_rule_end = prepare
        for rule in purpose.rules:
            after_another_rule = previous_rule_end is not prepare
            with TaskGroup(group_id=rule.id, tooltip=f"{rule.action} {rule.table or 'archive'}"):
                steps, key_ranges = [], None
                for i, step in enumerate(steps_for(rule)):
                    if step in SHARED_BY_KEY_RANGE and key_ranges is None:
                        # Right before the first of them: what the archive and erase tasks are mapped over.
                        key_ranges = task(task_id="key_ranges")(tasks.key_ranges)(rule.id)
                        steps.append(key_ranges)
                    shared = key_ranges if step in SHARED_BY_KEY_RANGE else None
                    first = after_another_rule and i == 0
                    lineage = step_lineage(policy, rule, step)
                    steps.append(
                        _step_task(rule.id, step, after_another_rule=first, key_ranges=shared, lineage=lineage)
                    )
            chain(previous_rule_end, *steps, [report, outcome])
            previous_rule_end = steps[-1]
        # The report is written whatever happened; `outcome` fails the run when any rule failed (a rule
        # whose approval was refused is skipped, not failed).
        report.as_teardown(setups=prepare)
    return dag


def _step_task(rule_id: str, step_name: str, *, after_another_rule: bool, key_ranges=None, lineage: dict):
    if step_name == APPROVE:
        return VolumeApproval(task_id=step_name, rule_id=rule_id)
    options = {
        "task_id": step_name,
        "trigger_rule": TriggerRule.ALL_DONE if after_another_rule else TriggerRule.ALL_SUCCESS,
        **lineage,  # its inlets and outlets
    }
    if key_ranges is None:
        return task(**options)(tasks.run_rule_step)(rule_id, step_name)
    # One task instance per key range, named by it in the UI.
    shared = task(**options, map_index_template="{{ " + tasks.KEY_RANGE_LABEL + " }}")(tasks.run_rule_step)
    return shared.partial(rule_id=rule_id, step_name=step_name).expand(key_range=key_ranges)


def purpose_doc(policy: Policy, purpose: Purpose) -> str:
    lines = [
        f"# {purpose.title}",
        "",
        f"**Legal basis:** {purpose.legal_basis}  ",
        f"**Seed reference:** {purpose.seed_reference} of `{policy.seed}`  ",
        f"**Policy:** {policy.name}, version `{policy.version[:16]}` "
        f"([this purpose in the policy's documentation]({ui_link(purpose.id)}); each rule links to its section)",
        "",
        "The run's logical date (UTC) is the as-of of every decision. Parameter `dry_run` decides and "
        "reports without changing anything; above a rule's volume ceiling the run waits at the rule's "
        "`approve` task for an operator (Required actions), unless `volume_approved` is set.",
        "",
        "| rule | " + " | ".join(SUMMARY) + " |",
        "|---" * (1 + len(SUMMARY)) + "|",
    ]
    for rule in purpose.rules:
        cells = (f"[`{rule.id}`]({ui_link(rule.id)})", *rule_summary_markdown(rule))
        lines.append("| " + " | ".join(cells) + " |")
    choices = [
        f"- [`{rule.id}`]({ui_link(rule.id)}): {rule.choice} ([choice]({ui_link('choices')}))"
        for rule in purpose.rules
        if rule.choice
    ]
    return "\n".join(lines + ([""] + choices if choices else [])) + "\n"
