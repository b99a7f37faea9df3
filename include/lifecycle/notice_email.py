"""The reactivation email, rendered from the repository's templates in the smicer's language:
include/templates/<template>/<language>.subject, .txt (plain text) and .html."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from functools import cache
from pathlib import Path

from lifecycle.policy import NoticeSpec

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"


@dataclass(frozen=True)
class NoticeText:
    subject: str
    text: str
    html: str


def notice_language(spec: NoticeSpec, locale: object) -> str:
    """The smicer's language when the notice has templates for it (fr-BE, FR, fr_FR all read fr), else the first."""
    language = str(locale or "").strip().lower()[:2]
    return language if language in spec.languages else spec.languages[0]


def render_notice(
    spec: NoticeSpec, language: str, first_name: object, erasure_date: date, login_url: str
) -> NoticeText:
    """The three parts of the email; the first name is the only personal data they receive."""
    from babel.dates import format_date

    context = {
        "first_name": str(first_name).strip() if first_name else "",
        "erasure_date": format_date(erasure_date, "d MMMM y", locale=language),
        "login_url": login_url,
        "contact": spec.contact,
    }
    environment = _environment()
    parts = {
        kind: environment.get_template(f"{spec.template}/{language}.{kind}").render(context)
        for kind in ("subject", "txt", "html")
    }
    return NoticeText(" ".join(parts["subject"].split()), parts["txt"], parts["html"])


def notice_message(text: NoticeText, *, sender: str, recipient: str, message_id: str, language: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = text.subject
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    # Quoted-printable keeps every line 7-bit, whatever the server's 8BITMIME support.
    message.set_content(text.text, cte="quoted-printable")
    message.add_alternative(text.html, subtype="html", cte="quoted-printable")
    message["Content-Language"] = language  # after the content: setting it clears Content-* headers
    return message


def new_message_id(sender: str) -> str:
    """A Message-ID chosen before sending, random: it says nothing of the recipient."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    return f"<reactivation.{uuid.uuid4().hex}@{domain}>"


@cache
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
