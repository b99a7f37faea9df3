"""Mailers: how a notice leaves the pipeline. The core sends through this interface only, so it
never imports Airflow; the Airflow layer opens the SMTP client with the SMTP provider's hook.

A mailer tells exactly how a send ended: delivered, refused for this recipient (for good or for
now), refused for the whole run, or left in doubt. None of its exceptions carries an address or a
server's reply text (which often quotes the address): only SMTP codes and exception types."""

from __future__ import annotations

import os
import re
import smtplib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Protocol


class RecipientRefused(Exception):
    """The server refused this recipient for good (5xx): the notice is undeliverable."""


class RecipientDeferred(Exception):
    """The server refused this recipient for now (4xx): nothing is recorded, tried again next run."""


class MailServerUnavailable(Exception):
    """Nothing can be sent in this run: connection refused or lost, timeout, sender or message refused."""


class DeliveryUncertain(Exception):
    """The connection broke while the message was being handed over: it may have been delivered."""


class MailSession(Protocol):
    def send(self, message: EmailMessage, recipient: str, handing_over: Callable[[], None]) -> None:
        """Send one message; call `handing_over` just before the step that cannot be taken back."""


class Mailer(Protocol):
    channel: str  # recorded with each notice: a pending notice is settled by the channel it took

    def session(self) -> AbstractContextManager[MailSession]:
        """A session for one run's sends; raises MailServerUnavailable when none can be opened."""

    def delivered(self, message_id: str) -> bool | None:
        """Whether a message handed over by a process that died was delivered; None: cannot tell."""


def valid_address(raw: object) -> str | None:
    """The trimmed address when valid (docs/policy.md choices: one @, a local part, a dotted domain, no white space)."""
    if not isinstance(raw, str):
        return None
    address = raw.strip()
    local, at, domain = address.partition("@")
    if not at or not local or "@" in domain or "." not in domain or re.search(r"\s", address):
        return None
    return address


class OutboxMailer:
    """The embedded default: each message an .eml file in a local folder, named by its Message-ID."""

    channel = "outbox"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path_of(self, message_id: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9@._-]", "_", message_id.strip("<>")) + ".eml")

    @contextmanager
    def session(self) -> Iterator[OutboxMailer]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MailServerUnavailable(f"outbox folder cannot be created ({type(error).__name__})") from None
        # One sender at a time (notifying.py): a draft left here is a dead try's, never delivered.
        for draft in self.folder.glob("*.partial"):
            draft.unlink(missing_ok=True)
        yield self

    def send(self, message: EmailMessage, recipient: str, handing_over: Callable[[], None]) -> None:
        target = self.path_of(message["Message-ID"])
        with tempfile.NamedTemporaryFile("wb", dir=self.folder, suffix=".partial", delete=False) as draft:
            draft.write(message.as_bytes(policy=email_policy.SMTP))
        handing_over()
        # The rename is atomic: the outbox holds the whole message or nothing.
        os.replace(draft.name, target)

    def delivered(self, message_id: str) -> bool:
        return self.path_of(message_id).exists()


class SmtpMailer:
    """Sends through an smtplib client that `connect` opens (and closes) for each session."""

    channel = "smtp"

    def __init__(self, connect: Callable[[], AbstractContextManager[smtplib.SMTP]]):
        self.connect = connect

    @contextmanager
    def session(self) -> Iterator[_SmtpSession]:
        try:
            opened = self.connect()
            client = opened.__enter__()
        except Exception as error:  # whatever stops the client from opening, nothing can be sent
            raise MailServerUnavailable(f"mail server unavailable ({_describe(error)})") from None
        try:
            session = _SmtpSession(client)
            session.greet()
            yield session
        finally:
            _quietly(client.quit)
            opened.__exit__(None, None, None)

    def delivered(self, message_id: str) -> None:
        return None


class _SmtpSession:
    """One SMTP transaction per message: MAIL, RCPT, then DATA, each reply judged by its code."""

    def __init__(self, client: smtplib.SMTP):
        self.client = client

    def greet(self) -> None:
        try:
            self.client.ehlo_or_helo_if_needed()
        except (OSError, smtplib.SMTPException) as error:
            raise MailServerUnavailable(f"mail server unavailable ({_describe(error)})") from None

    def send(self, message: EmailMessage, recipient: str, handing_over: Callable[[], None]) -> None:
        if not recipient.isascii():  # smtplib cannot carry it (no SMTPUTF8): as final as a 5xx
            raise RecipientRefused("recipient address not ASCII")
        code = self._reply_code(self.client.mail, _envelope_address(message["From"]))
        if code != 250:
            self._reset()
            raise MailServerUnavailable(f"sender refused (SMTP {code})")
        code = self._reply_code(self.client.rcpt, recipient)
        if code not in (250, 251):
            self._reset()
            if 500 <= code < 600:
                raise RecipientRefused(f"recipient refused (SMTP {code})")
            raise RecipientDeferred(f"recipient deferred (SMTP {code})")
        handing_over()
        try:
            code, _reply = self.client.data(message.as_bytes(policy=email_policy.SMTP))
        except smtplib.SMTPDataError as error:  # DATA itself refused: the message never left
            code = error.smtp_code
        except (OSError, smtplib.SMTPException) as error:
            raise DeliveryUncertain(f"connection lost during DATA ({_describe(error)})") from None
        if code != 250:
            # The server answered: it did not take the message.
            self._reset()
            raise MailServerUnavailable(f"message refused (SMTP {code})")

    def _reply_code(self, command: Callable[[str], tuple[int, bytes]], argument: str) -> int:
        try:
            code, _reply = command(argument)
        except (OSError, smtplib.SMTPException) as error:
            raise MailServerUnavailable(f"mail server unavailable ({_describe(error)})") from None
        return code

    def _reset(self) -> None:
        _quietly(self.client.rset)


def _envelope_address(header: str) -> str:
    return parseaddr(header)[1]


def _describe(error: BaseException) -> str:
    """An exception named by its type, SMTP code and cause, never by its text (it may quote an address)."""
    described = type(error).__name__
    if getattr(error, "smtp_code", None):
        described += f", SMTP {error.smtp_code}"
    cause = error.__cause__ or error.__context__
    if isinstance(cause, OSError):  # smtplib reports a timeout as a disconnection
        described += f" after {type(cause).__name__}"
    return described


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except (OSError, smtplib.SMTPException):
        pass
