"""What every step of a run shares: where it acts, for which instant, under which policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from lifecycle.mail import Mailer
from lifecycle.policy import Policy, Rule
from lifecycle.report_paths import run_report_dir
from lifecycle.store import LifecycleTables, lifecycle_tables

if TYPE_CHECKING:
    from lifecycle.stores.s3 import S3Options


@dataclass(frozen=True)
class NoticeSettings:
    """How a run sends reactivation notices: the login link, the sender, and its limits."""

    login_url: str = "https://smice.com/login"
    sender: str = "SMICE <contact@smice.com>"
    max_per_run: int = 500
    max_per_minute: int = 60


@dataclass
class RunContext:
    engine: Engine
    policy: Policy
    as_of: datetime
    dag_id: str
    run_id: str
    archive_uri: str
    reports_dir: Path
    volume_approved: bool = False
    # Decide and report only: nothing is written, archived, erased, sent or purged.
    dry_run: bool = False
    mailer: Mailer | None = None
    notices: NoticeSettings = field(default_factory=NoticeSettings)
    # A notice's grace must start when it reaches the smicer: a run acting for a past date sends none.
    notices_allowed: bool = True
    # How an s3:// archive is written and reached; None: the defaults and boto3's own credentials.
    s3_options: S3Options | None = None
    # A data subject's request: the trimmed, lower-cased address its rules' `subject` filters match.
    subject_email: str | None = field(default=None, repr=False)
    # Holds are read as they stand when the run executes, whatever its as-of.
    today: date = field(default_factory=lambda: datetime.now(UTC).date())

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must be an aware UTC instant")
        self.as_of = self.as_of.astimezone(UTC)

    @cached_property
    def tables(self) -> LifecycleTables:
        return lifecycle_tables(self.engine)

    @property
    def as_of_naive(self) -> datetime:
        return self.as_of.replace(tzinfo=None)

    @property
    def engine_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    def report_dir(self) -> Path:
        """Where this run's report and validation results are kept."""
        folder = run_report_dir(self.reports_dir, self.dag_id, self.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def artifact_path(self, rule: Rule, name: str) -> Path:
        path = self.report_dir() / rule.id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def now_utc_naive() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
