"""Email the Airflow way (CONTRACTS.md): the connection `smtp_default` through the SMTP provider's
hook, else the embedded default, an outbox folder of .eml files under the local data folder; the
login link and the sending limits from Airflow variables, each with its default."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lifecycle.mail import Mailer, OutboxMailer, SmtpMailer
from lifecycle.run import NoticeSettings
from lifecycle_airflow.config import data_dir

SMTP_CONN_ID = "smtp_default"
DEFAULT_SENDER = "SMICE <contact@smice.com>"
LOGIN_URL_VARIABLE = "lifecycle_login_url"
PER_RUN_VARIABLE = "lifecycle_notices_per_run"
PER_MINUTE_VARIABLE = "lifecycle_notices_per_minute"
# A run sends notices only for an as-of this recent: a backfill's notice would be dated in the past,
# and its grace period, counted from that date, would be over before the smicer could read it.
NOTICE_LATENESS = timedelta(days=2)


def outbox_dir() -> Path:
    return data_dir() / "outbox"


def mailer_and_sender() -> tuple[Mailer, str]:
    """The SMTP mailer when `smtp_default` exists (sender: its `from_email` extra), else the outbox."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = Connection.get(SMTP_CONN_ID)
    except AirflowNotFoundException:
        return OutboxMailer(outbox_dir()), DEFAULT_SENDER
    return SmtpMailer(_smtp_client), connection.extra_dejson.get("from_email") or DEFAULT_SENDER


@contextmanager
def _smtp_client():
    """An smtplib client the SMTP provider's hook opens (host, port, TLS, login from the connection).

    The hook's own send_email_smtp sends an HTML part only and retries a failed send up to
    `retry_limit` times, which after a reply lost in transit would email the smicer twice: the
    core drives the hook's client itself, one transaction per notice."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=SMTP_CONN_ID) as hook:
        yield hook._smtp_client


def notice_settings(sender: str) -> NoticeSettings:
    from airflow.sdk import Variable

    defaults = NoticeSettings()
    return NoticeSettings(
        login_url=Variable.get(LOGIN_URL_VARIABLE, default=defaults.login_url),
        sender=sender,
        max_per_run=_whole_number(Variable.get(PER_RUN_VARIABLE, default=defaults.max_per_run), PER_RUN_VARIABLE),
        max_per_minute=_whole_number(
            Variable.get(PER_MINUTE_VARIABLE, default=defaults.max_per_minute), PER_MINUTE_VARIABLE
        ),
    )


def _whole_number(value: object, variable: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise ValueError(f"Airflow variable {variable}: {value!r} is not a positive whole number")
    return number


def notices_allowed(run_type: str, as_of: datetime) -> bool:
    """Backfills and runs for a date long past decide as any run, but send no notice."""
    return run_type != "backfill" and as_of >= datetime.now(UTC) - NOTICE_LATENESS
