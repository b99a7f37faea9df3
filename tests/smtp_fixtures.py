"""A real SMTP server on loopback for the tests (aiosmtpd), recording what it accepts and answering a
recipient, the sender or the message with the reply a test sets."""

from __future__ import annotations

import logging
import smtplib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller


@dataclass
class Received:
    recipients: list[str]
    message: EmailMessage


@dataclass
class RecordingHandler:
    received: list[Received] = field(default_factory=list)
    recipient_replies: dict[str, str] = field(default_factory=dict)  # address -> reply
    sender_reply: str | None = None
    data_reply: str | None = None

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.sender_reply:
            return self.sender_reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.recipient_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        self.received.append(Received(list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    handler: RecordingHandler
    port: int

    @property
    def recipients(self) -> list[str]:
        return [recipient for received in self.handler.received for recipient in received.recipients]

    @property
    def connection_uri(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?disable_ssl=true&disable_tls=true&timeout=5"

    def refuse(self, address: str, code: int) -> None:
        """Refuse a recipient, quoting the address as real servers do (it must go no further)."""
        self.handler.recipient_replies[address] = f"{code} <{address}>: Recipient address rejected"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    # The server stands for the outside world: its own log lists every command, addresses included.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = RecordingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield SmtpServer(handler, controller.port)
    controller.stop()


@contextmanager
def smtp_client(port: int, timeout: float = 5) -> Iterator[smtplib.SMTP]:
    client = smtplib.SMTP("127.0.0.1", port, timeout=timeout)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a mail server that times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        for connection, _ in accepted:
            connection.close()
        listener.close()
