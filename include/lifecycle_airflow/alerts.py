"""Alerts to the operators, at the address in the Airflow variable `lifecycle_alert_email`, through
the SMTP provider's notifier (connection `smtp_default`), or, with no such connection, left in the
local outbox: a lifecycle task failed, a run waits for an approval, or a run's report lists requests
of data subjects past their answer deadline. An alert names the DAG, the task, the rule and the link
to the task, or the overdue requests by id; never a record's data, nor an exception's text (read it
in the log)."""

from __future__ import annotations

import json
import logging
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from lifecycle.mail import OutboxMailer
from lifecycle_airflow.mail_config import SMTP_CONN_ID, mailer_and_sender, outbox_dir

ALERT_VARIABLE = "lifecycle_alert_email"
TASK_DETAILS = """<ul>
<li>DAG: {{ dag.dag_id }}</li>
<li>run: {{ run_id }}</li>
<li>task: {{ ti.task_id }} (try {{ ti.try_number }})</li>
<li>rule: {{ ti.task_id.split('.')[0] if '.' in ti.task_id else 'none (a task of the whole run)' }}</li>
<li>log: <a href="{{ ti.log_url }}">{{ ti.log_url }}</a></li>
</ul>"""
FAILED = (
    "[lifecycle] {{ dag.dag_id }}: task {{ ti.task_id }} failed",
    "<p>A task of the data-lifecycle pipeline failed.</p>"
    + TASK_DETAILS
    + "<p>Nothing more is said here on purpose: the log and the run's report tell what happened.</p>",
)
APPROVAL_AWAITED = (
    "[lifecycle] {{ dag.dag_id }}: {{ ti.task_id }} waits for your approval",
    "<p>A rule's candidates exceed its volume ceiling: the run waits for an operator's answer under "
    "<b>Required Actions</b> in the Airflow UI. No answer in time is a rejection.</p>" + TASK_DETAILS,
)
# Rendered with the run's context and `overdue_requests`, the report's overdue entries (lifecycle.deadlines).
OVERDUE_REQUESTS = (
    "[lifecycle] {{ dag.dag_id }}: {{ overdue_requests | length }} request(s) past their answer deadline",
    "<p>Requests of data subjects are past their answer deadline (GDPR art. 12(3): one month from "
    "receipt). Answer them, then close them in the application.</p>"
    "<ul><li>DAG: {{ dag.dag_id }}</li><li>run: {{ run_id }}</li></ul>"
    "<table><thead><tr><th>request id</th><th>kind</th><th>received</th><th>age (days)</th>"
    "<th>deadline</th></tr></thead><tbody>"
    "{% for r in overdue_requests %}<tr><td>{{ r.id | e }}</td><td>{{ r.kind | e }}</td>"
    "<td>{{ r.received | e }}</td><td>{{ r.age_days | e }}</td><td>{{ r.deadline | e }}</td></tr>{% endfor %}"
    "</tbody></table><p>The run's report lists every open request, the ones due soon too.</p>",
)
# Beside the run's report: the overdue alert of the run was sent (or is being sent).
OVERDUE_ALERT_MARK = "overdue_alert.sent"

log = logging.getLogger(__name__)


def alert_failure(context) -> None:
    """The tasks' failure callback: a new notifier each time, as rendering its templates changes it."""
    OperatorAlert(*FAILED)(context)


def alert_overdue_requests(context, report_dir: Path) -> bool:
    """Email the operators the overdue requests the run's report (report.json in `report_dir`) lists,
    once per run; True when this call sent it.

    The mark beside the report is claimed before sending and given back when sending fails: a
    retried or cleared report task sends no second alert, and a send that failed is tried again
    by the retry. A worker lost between the claim and the send loses this run's alert; the
    next night's run sends its own, the requests still being overdue."""
    from lifecycle.deadlines import overdue_requests

    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    overdue = overdue_requests(report.get("answer_deadlines") or {})
    if not overdue:
        return False
    mark = report_dir / OVERDUE_ALERT_MARK
    # Attempts of one task never run at once: looking before claiming cannot race.
    if mark.exists():
        log.info("the overdue alert of this run was sent already: not again")
        return False
    mark.write_text("", encoding="utf-8")
    try:
        OperatorAlert(*OVERDUE_REQUESTS)({**context, "overdue_requests": overdue})
    except BaseException:
        mark.unlink()
        raise
    return True


class OperatorAlert(SmtpNotifier):
    def __init__(self, subject: str, html_content: str):
        super().__init__(
            to="{{ var.value.get('" + ALERT_VARIABLE + "', '') }}",
            subject=subject,
            html_content=html_content,
            smtp_conn_id=SMTP_CONN_ID,
        )

    def notify(self, context) -> None:
        if not self.to.strip():
            log.warning("no alert sent (%s): the Airflow variable %s names no address", self.subject, ALERT_VARIABLE)
            return
        mailer, self.from_email = mailer_and_sender()
        if isinstance(mailer, OutboxMailer):
            _to_outbox(self.from_email, self.to, self.subject, self.html_content)
        else:
            super().notify(context)


def _to_outbox(sender: str, to: str, subject: str, html: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = make_msgid(domain="lifecycle.alerts")
    message.set_content(html, subtype="html")
    outbox = OutboxMailer(outbox_dir() / "alerts")
    with outbox.session() as session:
        session.send(message, to, handing_over=lambda: None)
