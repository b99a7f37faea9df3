"""Alerts to the operators, at the address in the Airflow variable `lifecycle_alert_email`, through
the SMTP provider's notifier (connection `smtp_default`), or, with no such connection, left in the
local outbox: a lifecycle task failed, or a run waits for an approval. An alert names the DAG, the
task, the rule and the link to the task; never a record's data, nor an exception's text (read it in
the log)."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import make_msgid

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

log = logging.getLogger(__name__)


def alert_failure(context) -> None:
    """The tasks' failure callback: a new notifier each time, as rendering its templates changes it."""
    OperatorAlert(*FAILED)(context)


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
