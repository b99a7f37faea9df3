"""Step 3 of a rule in Airflow: above its volume ceiling the rule waits for an operator's answer
(human in the loop). Reject, or no answer in time, skips the rule's destructive steps for this run;
the other rules go on."""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator

from lifecycle_airflow import tasks
from lifecycle_airflow.alerts import APPROVAL_AWAITED, OperatorAlert

XCOM_RETURN_KEY = "return_value"
TIMEOUT_VARIABLE = "lifecycle_approval_timeout_minutes"
DEFAULT_TIMEOUT_MINUTES = 12 * 60
SAMPLE_SIZE = 20


class VolumeApproval(ApprovalOperator):
    """Asks only when the rule's candidates exceed its ceiling and the run is not approved for volume."""

    def __init__(self, *, rule_id: str, **kwargs):
        super().__init__(
            subject=f"Approve rule {rule_id} above its volume ceiling",
            defaults=self.REJECT,
            doc_md="Waits for an operator's approval when the rule's candidates exceed its volume ceiling.",
            **kwargs,
        )
        self.rule_id = rule_id

    def execute(self, context):
        from lifecycle.gating import staged_volume
        from lifecycle.pipeline import APPROVE, run_step
        from lifecycle.select import Selection

        run = tasks.run_context()
        rule = run.policy.rule(self.rule_id)
        selected = context["ti"].xcom_pull(task_ids=f"{rule.id}.select") or {}
        selection = None if run.dry_run else Selection.of(run, rule)
        volume = selection and staged_volume(selection)
        if volume is None or not volume.needs_approval(run.volume_approved):
            return run_step(run, rule, APPROVE, selected)
        self.response_timeout = approval_timeout()
        self.notifiers = [OperatorAlert(*APPROVAL_AWAITED)]
        self.subject = f"{rule.id}: {volume.candidates} records above the volume ceiling of {volume.limit}"
        self.body = approval_body(run, rule, volume, selected, selection.sample(SAMPLE_SIZE))
        return super().execute(context)

    def execute_complete(self, context, event):
        # Pushed first: on Reject the operator ends by skipping what follows, and returns nothing.
        context["ti"].xcom_push(key=XCOM_RETURN_KEY, value={"rule": self.rule_id, "approval": _approval(event)})
        super().execute_complete(context, event)


def _approval(event: dict) -> str:
    if "error" in event:
        return f"failed: {event.get('error_type', 'error')}"
    responder = (event.get("responded_by_user") or {}).get("name")
    if responder is None:
        return "rejected: no answer in time"
    approved = event["chosen_options"] == [ApprovalOperator.APPROVE]
    return f"{'approved' if approved else 'rejected'} by {responder}"


def approval_timeout() -> timedelta:
    from airflow.sdk import Variable

    minutes = Variable.get(TIMEOUT_VARIABLE, default=DEFAULT_TIMEOUT_MINUTES)
    try:
        return timedelta(minutes=float(minutes))
    except ValueError:
        raise ValueError(f"variable {TIMEOUT_VARIABLE}: {minutes!r} is not a number of minutes") from None


def approval_body(run, rule, volume, selected: dict, sample: list[int]) -> str:
    """What the operator decides on, in Markdown: counts and primary keys, no personal data."""
    share = f"{rule.volume_ceiling.share:.0%}"
    acts = "archives and erases" if rule.archives else "erases"
    if rule.action == "reactivate":
        acts = "erases the accounts whose notice went unanswered and emails the reactivation notices of"
    return "\n".join(
        [
            f"**Rule `{rule.id}`** of `{run.dag_id}`, as-of {run.as_of:%Y-%m-%d}, policy `{run.policy.version[:16]}`",
            "",
            "| | |",
            "|---|---:|",
            f"| candidates (records to act on, notices to send) | {volume.candidates} |",
            f"| ceiling: more than {rule.volume_ceiling.count} and more than {share} of the table | {volume.limit} |",
            f"| rows in `{rule.table}` | {volume.table_rows} |",
            f"| due / held / invalid | {selected.get('due', 0)} / {selected.get('held', 0)} / "
            f"{selected.get('invalid', 0)} |",
            "",
            f"First primary keys of `{rule.table}`: {', '.join(map(str, sample))}",
            "",
            f"**Approve**: the rule {acts} these records in this run. **Reject**, or no answer in time: "
            "the rule does nothing in this run; the other rules go on, and the next run asks again.",
        ]
    )
