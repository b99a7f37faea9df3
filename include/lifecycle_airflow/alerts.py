"""Failure alerts: any failed lifecycle task emails the address in the Airflow variable
`lifecycle_alert_email` through the SMTP provider's notifier (connection `smtp_default`), or, with
no such connection, leaves the message in the local outbox. The alert names the DAG, the task, the
rule and the log; never a record's data, nor the exception's text (read it in the log)."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import make_msgid

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from lifecycle.mail import OutboxMailer
from lifecycle_airflow.mail import SMTP_CONN_ID, mailer_and_sender, outbox_dir

ALERT_VARIABLE = "lifecycle_alert_email"
SUBJECT = "[lifecycle] {{ dag.dag_id }}: task {{ ti.task_id }} failed"
BODY = """<p>A task of the data-lifecycle pipeline failed.</p>
<ul>
<li>DAG: {{ dag.dag_id }}</li>
<li>run: {{ run_id }}</li>
<li>task: {{ ti.task_id }} (try {{ ti.try_number }})</li>
<li>rule: {{ ti.task_id.split('.')[0] if '.' in ti.task_id else 'none (a task of the whole run)' }}</li>
<li>log: <a href="{{ ti.log_url }}">{{ ti.log_url }}</a></li>
</ul>
<p>Nothing more is said here on purpose: the log and the run's report tell what happened.</p>"""

log = logging.getLogger(__name__)


def alert_failure(context) -> None:
    """The tasks' failure callback: a new notifier each time, as rendering its templates changes it."""
    FailureAlert()(context)


class FailureAlert(SmtpNotifier):
    def __init__(self):
        super().__init__(
            to="{{ var.value.get('" + ALERT_VARIABLE + "', '') }}",
            subject=SUBJECT,
            html_content=BODY,
            smtp_conn_id=SMTP_CONN_ID,
        )

    def notify(self, context) -> None:
        if not self.to.strip():
            log.warning("task failed; no alert sent: the Airflow variable %s names no address", ALERT_VARIABLE)
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
