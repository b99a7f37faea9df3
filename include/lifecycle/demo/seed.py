"""Synthetic, reproducible demo data for the reference application database.

Relative to `as_of`, every rule of the policy finds some work, each rule's due share of its table stays
under 20 % (so the volume safeguard does not block a demo of 200 smicers), and a few records are
deliberately invalid or held. Timestamps are written as naive UTC datetimes so every dialect stores the
same values.
"""

from __future__ import annotations

import random
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from sqlalchemy import Boolean, Connection, Date, DateTime, Engine, column, insert, literal, select, table
from sqlalchemy.types import TypeEngine

from lifecycle.appschema import APP_TABLES

CHUNK_SIZE = 1000
MINIMUM_SIZE = 20

LOCALE_WEIGHTS = {"fr": 70, "nl": 20, "en": 10}
FAKER_LOCALES = ("fr_FR", "nl_BE", "nl_NL", "en_GB")
RIGHTS_REQUEST_KINDS = (
    "access",
    "rectification",
    "restriction",
    "erasure",
    "objection",
    "portability",
    "withdraw_consent",
    "post_mortem",
)
MALFORMED_EMAILS = (None, "not-an-email", " Trailing@Example.ORG ")

# Ages in days, kept clear of the calendar boundaries of the policy's periods.
NOT_YET_3_MONTHS, PAST_3_MONTHS = 85, 95
NOT_YET_1_YEAR, PAST_1_YEAR = 360, 370
NOT_YET_2_YEARS, PAST_2_YEARS = 720, 740
NOT_YET_3_YEARS, PAST_3_YEARS = 1090, 1100
PAST_5_YEARS = 1840
OLDEST_EVENT = 540  # connection logs and browsing events go back about 18 months

OLD_EVENT_SHARE = 0.12
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 15_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/19.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 19_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 16; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Chrome/142.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0",
)
BROWSERS = ("Chrome 142", "Firefox 145", "Safari 19", "Edge 142", "Samsung Internet 29")
DESKTOP_OPERATING_SYSTEMS = ("Windows 11", "macOS 15", "Ubuntu 24.04")
MOBILE_OPERATING_SYSTEMS = ("iOS 19", "Android 16")
PAGES = ("/", "/missions", "/missions/{n}", "/account", "/account/payments", "/apply", "/faq", "/contact")
MISSION_REPORTS = {
    "fr": (
        "Accueil souriant, attente de {n} minutes, conseils pertinents.",
        "Magasin propre, caisse rapide.",
        "Vendeur peu disponible, {n} minutes avant d'être servi.",
    ),
    "nl": (
        "Vriendelijk onthaal, {n} minuten gewacht, goed advies.",
        "Winkel netjes, snelle kassa.",
        "Verkoper weinig beschikbaar, {n} minuten gewacht.",
    ),
    "en": (
        "Friendly welcome, waited {n} minutes, helpful advice.",
        "Clean store, quick checkout.",
        "Staff hard to find, waited {n} minutes to be served.",
    ),
}
CONTACT_MESSAGES = {
    "fr": (
        "Bonjour, comment devenir smicer ?",
        "Quand serai-je payé pour ma dernière mission ?",
        "Pouvez-vous me rappeler au sujet de vos offres ?",
    ),
    "nl": (
        "Hallo, hoe word ik smicer?",
        "Wanneer word ik betaald voor mijn laatste missie?",
        "Kunt u mij terugbellen over uw aanbod?",
    ),
    "en": (
        "Hello, how do I become a smicer?",
        "When will my last mission be paid?",
        "Could you call me back about your offer?",
    ),
}
REJECTION_REASONS = {
    "fr": ("Score insuffisant.", "Rapport de test incomplet."),
    "nl": ("Onvoldoende score.", "Testrapport onvolledig."),
    "en": ("Score too low.", "Incomplete test report."),
}
# Age of the test date by outcome; decisions follow the test by 1 to 4 days.
TEST_AGE_IN_DAYS = {
    "pending": (1, 30),
    "accepted": (5, 40),
    "accepted-undecided": (10, 60),
    "rejected-long-ago": (PAST_3_MONTHS + 5, 700),
    "rejected-long-ago-without-end": (PAST_3_MONTHS + 5, 700),
    "rejected-recently": (3, NOT_YET_3_MONTHS - 5),
    "rejected-recently-without-end": (3, NOT_YET_3_MONTHS - 5),
}
DUMMY_SCAN = b"%PDF-1.4\n% demo identity document, not a real scan\n"


def seed_demo(
    engine: Engine, as_of: datetime, *, size: int = 200, seed: int = 7, documents_dir: Path
) -> dict[str, int]:
    """Fill an empty application database with `size` smicers and proportional data; return row counts."""
    from faker import Faker

    if size < MINIMUM_SIZE:
        raise ValueError(f"size must be at least {MINIMUM_SIZE}")
    with engine.begin() as connection:
        _require_empty(connection)
        fakers = {name: Faker(name) for name in FAKER_LOCALES}
        for offset, fake in enumerate(fakers.values()):
            fake.seed_instance(seed + offset)
        demo = _DemoData(_naive_utc(as_of), size, random.Random(seed), fakers, Path(documents_dir))
        rows_by_table = demo.build()
        if connection.dialect.name == "postgresql":
            # Naive timestamps are read in the session time zone: make it UTC for this transaction.
            connection.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        demo.write_documents()
        for table_name in APP_TABLES:
            _insert_in_chunks(connection, table_name, rows_by_table[table_name])
    return {table_name: len(rows_by_table[table_name]) for table_name in APP_TABLES}


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _require_empty(connection: Connection) -> None:
    for table_name in APP_TABLES:
        if connection.execute(select(literal(1)).select_from(table(table_name)).limit(1)).first():
            raise ValueError(f"seed_demo needs an empty application database; table {table_name} has rows")


def _column_type(name: str) -> TypeEngine | None:
    # The schema's conventions: every *_at column is a TIMESTAMPTZ; these three are DATE; one BOOLEAN.
    if name.endswith("_at"):
        return DateTime()
    if name in ("test_date", "contract_start", "contract_end"):
        return Date()
    if name == "succeeded":
        return Boolean()
    return None


def _insert_in_chunks(connection: Connection, table_name: str, rows: list[dict]) -> None:
    if not rows:
        return
    target = table(table_name, *(column(name, _column_type(name)) for name in rows[0]))
    for start in range(0, len(rows), CHUNK_SIZE):
        connection.execute(insert(target), rows[start : start + CHUNK_SIZE])


def _numbered(rows: list[dict], sort_key: str) -> list[dict]:
    """Sequential ids from 1 in chronological order, as an application would have assigned them."""
    rows.sort(key=lambda row: row[sort_key])
    return [{"id": number, **row} for number, row in enumerate(rows, start=1)]


def _ascii_slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(character for character in ascii_text.lower() if character.isalnum())


def _work_email(first_name: str, last_name: str, company_name: str) -> str:
    return f"{_ascii_slug(first_name)}.{_ascii_slug(last_name)}@{_ascii_slug(company_name)[:20]}.com"


def _share(total: int, fraction: float, minimum: int = 1) -> int:
    return max(minimum, round(total * fraction))


def _at_day(day: date) -> datetime:
    return datetime.combine(day, time())


@dataclass
class _Smicer:
    kind: str  # active, new-unused, inactive, closed, closed-long-ago, closed-before-created
    faker_locale: str
    created_at: datetime
    last_login_at: datetime | None
    closed_at: datetime | None
    id: int = 0
    first_name: str = ""
    last_name: str = ""
    email: str | None = None

    @property
    def locale(self) -> str:
        return self.faker_locale[:2]


class _DemoData:
    def __init__(self, as_of: datetime, size: int, rng: random.Random, fakers: dict, documents_dir: Path):
        self.as_of = as_of
        self.size = size
        self.rng = rng
        self.fakers = fakers
        self.documents_dir = documents_dir
        self.documents: dict[Path, bytes] = {}

    def build(self) -> dict[str, list[dict]]:
        smicers = self._smicers()
        clients = self._clients()
        contacts = self._client_contacts(clients)
        prospects = self._prospects()
        rights_requests = self._rights_requests(smicers, prospects)
        return {
            "smicers": [self._smicer_row(smicer) for smicer in smicers],
            "connection_logs": self._connection_logs(smicers),
            "browsing_events": self._browsing_events(smicers),
            "clients": clients,
            "client_contacts": contacts,
            "missions": self._missions(smicers, clients),
            "prospects": prospects,
            "newsletter_subscriptions": self._newsletter_subscriptions(smicers, prospects, contacts),
            "contact_requests": self._contact_requests(),
            "test_applications": self._test_applications(smicers),
            "rights_requests": rights_requests,
            "identity_documents": self._identity_documents(rights_requests),
            "prospecting_objections": self._prospecting_objections(),
        }

    def write_documents(self) -> None:
        self.documents_dir.mkdir(parents=True, exist_ok=True)
        for path, content in self.documents.items():
            path.write_bytes(content)

    # --- time helpers -------------------------------------------------------------------------------

    def _days_ago(self, fewest: float, most: float) -> datetime:
        return self.as_of - timedelta(seconds=self.rng.randint(int(fewest * 86400), int(most * 86400)))

    def _between(self, start: datetime, end: datetime) -> datetime:
        seconds = max(0, int((end - start).total_seconds()))
        return start + timedelta(seconds=self.rng.randint(0, seconds))

    def _during_office_hours(self, day: date) -> datetime:
        return _at_day(day) + timedelta(hours=9, minutes=self.rng.randint(0, 480))

    def _recent_activity(self, created_at: datetime, latest: datetime) -> datetime:
        """Mostly within the last year; a small share up to 18 months back."""
        if self.rng.random() < OLD_EVENT_SHARE and created_at < self.as_of - timedelta(days=PAST_1_YEAR):
            start = max(created_at, self.as_of - timedelta(days=OLDEST_EVENT))
            return self._between(start, self.as_of - timedelta(days=PAST_1_YEAR))
        return self._between(max(created_at, self.as_of - timedelta(days=NOT_YET_1_YEAR)), latest)

    # --- people -------------------------------------------------------------------------------------

    def _faker_locale(self) -> str:
        locale = self.rng.choices(list(LOCALE_WEIGHTS), weights=list(LOCALE_WEIGHTS.values()))[0]
        if locale == "nl":
            return self.rng.choices(("nl_BE", "nl_NL"), weights=(7, 3))[0]
        return {"fr": "fr_FR", "en": "en_GB"}[locale]

    def _personal_email(self, first_name: str, last_name: str, suffix: int, faker_locale: str) -> str:
        domain = self.fakers[faker_locale].free_email_domain()
        return f"{_ascii_slug(first_name)}.{_ascii_slug(last_name)}{suffix}@{domain}"

    def _fresh_email(self) -> str:
        faker_locale = self._faker_locale()
        fake = self.fakers[faker_locale]
        suffix = self.rng.randint(1, 999)
        return self._personal_email(fake.first_name(), fake.last_name(), suffix, faker_locale)

    def _ip_address(self) -> str:
        if self.rng.random() < 0.15:
            return "2a01:" + ":".join(f"{self.rng.getrandbits(16):x}" for _ in range(7))
        return ".".join(str(self.rng.randint(1, 254)) for _ in range(4))

    # --- smicers and their activity -----------------------------------------------------------------

    def _smicers(self) -> list[_Smicer]:
        closed = _share(self.size, 0.05, minimum=4)
        kinds = (
            ["closed-before-created"]
            + ["closed-long-ago"] * (closed // 3)
            + ["closed"] * (closed - 1 - closed // 3)
            + ["inactive"] * _share(self.size, 0.08, minimum=len(MALFORMED_EMAILS) + 1)
            + ["new-unused"] * _share(self.size, 0.03)
        )
        kinds += ["active"] * (self.size - len(kinds))
        smicers = [self._smicer_of_kind(kind) for kind in kinds]
        smicers.sort(key=lambda smicer: smicer.created_at)
        for number, smicer in enumerate(smicers, start=1):
            smicer.id = number
        self._assign_identities(smicers)
        return smicers

    def _smicer_of_kind(self, kind: str) -> _Smicer:
        smicer = _Smicer(kind, self._faker_locale(), self.as_of, None, None)
        day = timedelta(days=1)
        if kind == "active":
            smicer.created_at = self._days_ago(30, 6 * 365)
            recent_enough = max(smicer.created_at, self.as_of - timedelta(days=NOT_YET_1_YEAR))
            smicer.last_login_at = self._between(recent_enough, self.as_of - timedelta(hours=1))
        elif kind == "new-unused":
            smicer.created_at = self._days_ago(1, NOT_YET_2_YEARS)
        elif kind == "inactive":
            smicer.created_at = self._days_ago(PAST_2_YEARS + 30, 8 * 365)
            if self.rng.random() < 0.7:
                smicer.last_login_at = self._between(smicer.created_at, self.as_of - PAST_2_YEARS * day)
        elif kind == "closed":
            smicer.created_at = self._days_ago(400, 2000)
            smicer.closed_at = self._days_ago(1, 300)
            smicer.last_login_at = self._between(smicer.created_at, smicer.closed_at)
        elif kind == "closed-long-ago":
            smicer.created_at = self._days_ago(PAST_5_YEARS + 400, PAST_5_YEARS + 1500)
            smicer.closed_at = self._between(smicer.created_at + 30 * day, self.as_of - PAST_5_YEARS * day)
            smicer.last_login_at = self._between(smicer.created_at, smicer.closed_at)
        else:  # closed-before-created: an application bug the policy calls invalid
            smicer.created_at = self._days_ago(200, 600)
            smicer.closed_at = smicer.created_at - 5 * day
        return smicer

    def _assign_identities(self, smicers: list[_Smicer]) -> None:
        """Names and unique emails; the oldest inactive accounts carry the missing or malformed emails."""
        for smicer in smicers:
            fake = self.fakers[smicer.faker_locale]
            smicer.first_name, smicer.last_name = fake.first_name(), fake.last_name()
            smicer.email = self._personal_email(smicer.first_name, smicer.last_name, smicer.id, smicer.faker_locale)
        oldest_inactive = [smicer for smicer in smicers if smicer.kind == "inactive"]
        for smicer, malformed in zip(oldest_inactive, MALFORMED_EMAILS):
            smicer.email = malformed

    def _smicer_row(self, smicer: _Smicer) -> dict:
        fake = self.fakers[smicer.faker_locale]
        return {
            "id": smicer.id,
            "email": smicer.email,
            "first_name": smicer.first_name,
            "last_name": smicer.last_name,
            "phone": fake.phone_number(),
            "postal_address": fake.address(),
            "delivery_address": fake.address() if self.rng.random() < 0.1 else None,
            "password_hash": f"pbkdf2_sha256$600000${self.rng.getrandbits(256):064x}",
            "iban": fake.iban(),
            "locale": smicer.locale,
            "created_at": smicer.created_at,
            "last_login_at": smicer.last_login_at,
            "closed_at": smicer.closed_at,
        }

    def _activity_times(
        self, smicer: _Smicer, active_count: tuple[int, int], dormant_count: tuple[int, int]
    ) -> list[datetime]:
        """Event times of a smicer, none after their last login; counts are inclusive ranges."""
        if smicer.last_login_at is None:
            return []
        if smicer.kind == "active":
            count = self.rng.randint(*active_count)
            return [self._recent_activity(smicer.created_at, smicer.last_login_at) for _ in range(count)]
        start = max(smicer.created_at, smicer.last_login_at - timedelta(days=200))
        return [self._between(start, smicer.last_login_at) for _ in range(self.rng.randint(*dormant_count))]

    def _connection_logs(self, smicers: list[_Smicer]) -> list[dict]:
        rows = []
        for smicer in smicers:
            if smicer.last_login_at:
                rows.append(self._connection_log(smicer.id, smicer.last_login_at, succeeded=True))
            for moment in self._activity_times(smicer, (2, 7), (0, 2)):
                rows.append(self._connection_log(smicer.id, moment, succeeded=self.rng.random() < 0.93))
        # Invalid: a connection dated after as-of (a clock gone wrong).
        some_active = next(smicer for smicer in smicers if smicer.kind == "active")
        rows.append(self._connection_log(some_active.id, self.as_of + timedelta(days=3), succeeded=False))
        return _numbered(rows, "connected_at")

    def _connection_log(self, smicer_id: int, connected_at: datetime, *, succeeded: bool) -> dict:
        return {
            "smicer_id": smicer_id,
            "connected_at": connected_at,
            "ip_address": self._ip_address(),
            "user_agent": self.rng.choice(USER_AGENTS),
            "succeeded": succeeded,
        }

    def _browsing_events(self, smicers: list[_Smicer]) -> list[dict]:
        rows = [
            self._browsing_event(smicer.id, moment)
            for smicer in smicers
            for moment in self._activity_times(smicer, (1, 5), (0, 2))
        ]
        visitors_since = self.as_of - timedelta(days=OLDEST_EVENT)
        rows += [
            self._browsing_event(None, self._recent_activity(visitors_since, self.as_of)) for _ in range(len(rows) // 3)
        ]
        return _numbered(rows, "occurred_at")

    def _browsing_event(self, smicer_id: int | None, occurred_at: datetime) -> dict:
        mobile = self.rng.random() < 0.5
        return {
            "smicer_id": smicer_id,
            "occurred_at": occurred_at,
            "ip_address": self._ip_address(),
            "page": self.rng.choice(PAGES).format(n=self.rng.randint(1, 5000)),
            "browser": self.rng.choice(BROWSERS),
            "os": self.rng.choice(MOBILE_OPERATING_SYSTEMS if mobile else DESKTOP_OPERATING_SYSTEMS),
            "maid": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) if mobile else None,
        }

    def _test_applications(self, smicers: list[_Smicer]) -> list[dict]:
        total = _share(self.size, 0.4, minimum=10)
        outcomes = (
            ["accepted"] * _share(total, 0.08)
            + ["accepted-undecided"]
            + ["rejected-long-ago"] * _share(total, 0.08)
            + ["rejected-long-ago-without-end"]
            + ["rejected-recently"] * _share(total, 0.2)
            + ["rejected-recently-without-end"]
        )
        outcomes += ["pending"] * (total - len(outcomes))
        active = [smicer for smicer in smicers if smicer.kind == "active"]
        return _numbered([self._test_application(outcome, active) for outcome in outcomes], "test_date")

    def _test_application(self, outcome: str, active: list[_Smicer]) -> dict:
        test_date = self._days_ago(*TEST_AGE_IN_DAYS[outcome]).date()
        smicer = self._applicant(active, test_date)
        test_ended_at = self._during_office_hours(test_date)
        decided_at = test_ended_at + timedelta(days=self.rng.randint(1, 4))
        if outcome == "pending":
            decided_at = None
            test_ended_at = test_ended_at if self.rng.random() < 0.8 else None
        elif outcome == "accepted-undecided":  # invalid: accepted without a decision date
            decided_at = None
        elif outcome.endswith("without-end"):
            test_ended_at = None
        decision = outcome.split("-")[0]
        return {
            "smicer_id": smicer.id,
            "test_date": test_date,
            "test_ended_at": test_ended_at,
            "answers": ",".join(self.rng.choice("abcd") for _ in range(10)) if test_ended_at else None,
            "score": self._score(decision) if test_ended_at else None,
            "decision": decision,
            "decided_at": min(decided_at, self.as_of) if decided_at else None,
            "rejection_reason": (self.rng.choice(REJECTION_REASONS[smicer.locale]) if decision == "rejected" else None),
        }

    def _score(self, decision: str) -> int:
        return self.rng.randint(65, 100) if decision == "accepted" else self.rng.randint(10, 64)

    def _applicant(self, active: list[_Smicer], test_date: date) -> _Smicer:
        for _ in range(10):
            smicer = self.rng.choice(active)
            if smicer.created_at.date() < test_date:
                return smicer
        return active[0]  # the oldest account

    # --- clients and missions -----------------------------------------------------------------------

    def _clients(self) -> list[dict]:
        total = _share(self.size, 0.1, minimum=8)
        contracts = ["ended-recently"] * _share(total, 0.1) + ["ended-long-ago"] * _share(total, 0.1) + ["ending-later"]
        contracts += ["running"] * (total - len(contracts))
        rows = [self._client(contract) for contract in contracts]
        # The oldest client's running contract covers every mission date.
        rows[-1]["contract_start"] = (self.as_of - timedelta(days=10 * 365)).date()
        return _numbered(rows, "contract_start")

    def _client(self, contract: str) -> dict:
        fake = self.fakers[self.rng.choice(("fr_FR", "fr_FR", "nl_BE"))]
        start_age, end_age = {
            "ended-recently": ((1100, 3000), (1, 200)),
            "ended-long-ago": ((1500, 3000), (400, 900)),
            "ending-later": ((365, 1800), (-400, -30)),
            "running": ((30, 3000), None),
        }[contract]
        return {
            "company_name": fake.company(),
            "contract_start": self._days_ago(*start_age).date(),
            "contract_end": self._days_ago(*end_age).date() if end_age else None,
        }

    def _client_contacts(self, clients: list[dict]) -> list[dict]:
        rows = []
        for client in clients:
            ended = client["contract_end"] is not None and client["contract_end"] <= self.as_of.date()
            if ended and client["contract_end"] < (self.as_of - timedelta(days=300)).date():
                continue  # contacts already erased by earlier runs
            for _ in range(1 if ended else self.rng.randint(1, 3)):
                rows.append(self._client_contact(client))
        return _numbered(rows, "last_contact_at")

    def _client_contact(self, client: dict) -> dict:
        fake = self.fakers[self.rng.choice(("fr_FR", "nl_BE"))]
        first_name, last_name = fake.first_name(), fake.last_name()
        contract_end = client["contract_end"]
        latest = min(_at_day(contract_end), self.as_of) if contract_end else self.as_of
        earliest = max(_at_day(client["contract_start"]), latest - timedelta(days=300))
        return {
            "client_id": client["id"],
            "first_name": first_name,
            "last_name": last_name,
            "email": _work_email(first_name, last_name, client["company_name"]),
            "phone": fake.phone_number(),
            "last_contact_at": self._between(earliest, latest),
        }

    def _missions(self, smicers: list[_Smicer], clients: list[dict]) -> list[dict]:
        rows = []
        for smicer in smicers:
            if smicer.last_login_at is None:
                continue
            if smicer.kind == "active":
                count, latest = self.rng.randint(0, 4), self.as_of - timedelta(days=1)
            else:
                fewest = 0 if smicer.kind == "inactive" else 1
                count, latest = self.rng.randint(fewest, 3), smicer.last_login_at
            earliest = max(smicer.created_at, latest - timedelta(days=3 * 365))
            rows += [self._mission(smicer, self._between(earliest, latest), clients) for _ in range(count)]
        return _numbered(rows, "visited_at")

    def _mission(self, smicer: _Smicer, visited_at: datetime, clients: list[dict]) -> dict:
        client = self._client_on(visited_at.date(), clients)
        paid_at = visited_at + timedelta(days=self.rng.randint(3, 30))
        report = self.rng.choice(MISSION_REPORTS[smicer.locale]).format(n=self.rng.randint(2, 25))
        return {
            "smicer_id": smicer.id,
            "client_id": client["id"],
            "store_name": f"{client['company_name']} {self.fakers[smicer.faker_locale].city()}"[:200],
            "visited_at": visited_at,
            "report": report,
            "reward_cents": self.rng.randrange(1500, 6001, 50),
            "paid_at": paid_at if paid_at <= self.as_of else None,
        }

    def _client_on(self, day: date, clients: list[dict]) -> dict:
        for _ in range(5):
            client = self.rng.choice(clients)
            contract_end = client["contract_end"]
            if client["contract_start"] <= day and (contract_end is None or day <= contract_end):
                return client
        return clients[0]  # the oldest client, whose contract is still running

    # --- prospects, newsletter, contact requests ----------------------------------------------------

    def _prospects(self) -> list[dict]:
        total = _share(self.size, 0.5, minimum=10)
        histories = (
            ["contacted-long-ago"] * _share(total, 0.05)
            + ["never-contacted-long-ago"] * _share(total, 0.05)
            + ["contacted-again"] * _share(total, 0.05)
            + ["contact-after-as-of"]
        )
        histories += ["recent"] * (total - len(histories))
        return _numbered([self._prospect(history) for history in histories], "created_at")

    def _prospect(self, history: str) -> dict:
        fake = self.fakers[self.rng.choice(("fr_FR", "fr_FR", "nl_BE", "nl_NL", "en_GB"))]
        first_name, last_name, company_name = fake.first_name(), fake.last_name(), fake.company()
        if history == "contact-after-as-of":  # invalid: activity later than as-of
            created_at = self._days_ago(10, 400)
            last_contact_at = self.as_of + timedelta(days=7)
        elif history == "recent":
            created_at = self._days_ago(1, NOT_YET_3_YEARS)
            last_contact_at = self._between(created_at, self.as_of) if self.rng.random() < 0.6 else None
        else:
            created_at = self._days_ago(PAST_3_YEARS + 100, 2500)
            last_contact_at = None
            if history == "contacted-long-ago":
                last_contact_at = self._between(created_at, self.as_of - timedelta(days=PAST_3_YEARS))
            elif history == "contacted-again":
                last_contact_at = self._days_ago(1, NOT_YET_3_YEARS)
        return {
            "company_name": company_name,
            "first_name": first_name,
            "last_name": last_name,
            "email": _work_email(first_name, last_name, company_name),
            "phone": fake.phone_number(),
            "created_at": created_at,
            "last_contact_at": last_contact_at,
        }

    def _newsletter_subscriptions(
        self, smicers: list[_Smicer], prospects: list[dict], contacts: list[dict]
    ) -> list[dict]:
        audiences = (
            [("smicer", smicer.email) for smicer in smicers if smicer.email not in MALFORMED_EMAILS]
            + [("prospect", prospect["email"]) for prospect in prospects]
            + [("client", contact["email"]) for contact in contacts]
        )
        total = _share(self.size, 0.5, minimum=10)
        histories = (
            ["withdrawn"] * _share(total, 0.05)
            + ["contacted-long-ago"] * _share(total, 0.04)
            + ["consented-long-ago"] * _share(total, 0.03)
        )
        histories += ["current"] * (total - len(histories))
        subscribers = self.rng.sample(audiences, total)
        rows = [
            self._subscription(history, audience, email) for history, (audience, email) in zip(histories, subscribers)
        ]
        return _numbered(rows, "consented_at")

    def _subscription(self, history: str, audience: str, email: str) -> dict:
        withdrawn_at = last_contact_at = None
        if history == "withdrawn":
            consented_at = self._days_ago(30, 1500)
            withdrawn_at = self._between(consented_at, self.as_of)
        elif history == "contacted-long-ago":
            consented_at = self._days_ago(PAST_3_YEARS + 100, 2500)
            last_contact_at = self._between(consented_at, self.as_of - timedelta(days=PAST_3_YEARS))
        elif history == "consented-long-ago":
            consented_at = self._days_ago(PAST_3_YEARS, 2500)
        else:
            consented_at = self._days_ago(1, 2500)
            if consented_at < self.as_of - timedelta(days=NOT_YET_3_YEARS) or self.rng.random() < 0.6:
                recent_enough = max(consented_at, self.as_of - timedelta(days=NOT_YET_3_YEARS))
                last_contact_at = self._between(recent_enough, self.as_of)
        return {
            "email": email,
            "audience": audience,
            "consented_at": consented_at,
            "withdrawn_at": withdrawn_at,
            "last_contact_at": last_contact_at,
        }

    def _contact_requests(self) -> list[dict]:
        total = _share(self.size, 0.25, minimum=10)
        histories = (
            ["unanswered-long-ago"] * _share(total, 0.06)
            + ["answered-long-ago"] * _share(total, 0.04)
            + ["answered-again"] * _share(total, 0.02)
        )
        histories += ["recent"] * (total - len(histories))
        return _numbered([self._contact_request(history) for history in histories], "received_at")

    def _contact_request(self, history: str) -> dict:
        faker_locale = self._faker_locale()
        fake = self.fakers[faker_locale]
        first_name, last_name = fake.first_name(), fake.last_name()
        received_at, last_contact_at = self._contact_request_times(history)
        email = self._personal_email(first_name, last_name, self.rng.randint(1, 99), faker_locale)
        return {
            "email": email if self.rng.random() < 0.95 else None,
            "full_name": f"{first_name} {last_name}",
            "message": self.rng.choice(CONTACT_MESSAGES[faker_locale[:2]]),
            "received_at": received_at,
            "last_contact_at": last_contact_at,
        }

    def _contact_request_times(self, history: str) -> tuple[datetime, datetime | None]:
        """received_at and last_contact_at."""
        if history == "unanswered-long-ago":
            return self._days_ago(PAST_3_YEARS, 2000), None
        if history == "answered-long-ago":
            return self._days_ago(PAST_3_YEARS + 100, 2500), self._days_ago(PAST_3_YEARS, PAST_3_YEARS + 90)
        if history == "answered-again":
            return self._days_ago(PAST_3_YEARS, 2000), self._days_ago(1, NOT_YET_3_YEARS)
        received_at = self._days_ago(1, NOT_YET_3_YEARS)
        if self.rng.random() < 0.5:
            return received_at, None
        return received_at, self._between(received_at, min(received_at + timedelta(days=30), self.as_of))

    def _prospecting_objections(self) -> list[dict]:
        total = _share(self.size, 0.1, minimum=5)
        old = _share(total, 0.1)
        rows = [
            {"email": self._fresh_email(), "objected_at": self._days_ago(*age)}
            for age in [(PAST_3_YEARS, 1800)] * old + [(1, NOT_YET_3_YEARS)] * (total - old)
        ]
        return _numbered(rows, "objected_at")

    # --- rights requests and identity documents -----------------------------------------------------

    def _rights_requests(self, smicers: list[_Smicer], prospects: list[dict]) -> list[dict]:
        total = _share(self.size, 0.2, minimum=16)
        states = (
            ["open-verified"] * _share(total, 0.1) + ["done"] * _share(total, 0.35) + ["refused"] * _share(total, 0.1)
        )
        states += ["open-unverified"] * (total - len(states))
        self.rng.shuffle(states)
        held = next(smicer for smicer in smicers if smicer.kind == "closed")
        emails = [smicer.email for smicer in smicers if smicer.email not in MALFORMED_EMAILS and smicer is not held] + [
            prospect["email"] for prospect in prospects
        ]
        rows = [
            self._rights_request(state, RIGHTS_REQUEST_KINDS[number % len(RIGHTS_REQUEST_KINDS)], emails)
            for number, state in enumerate(states)
        ]
        rows.append(self._restriction_holding(held))
        return _numbered(rows, "received_at")

    def _rights_request(self, state: str, kind: str, known_emails: list[str]) -> dict:
        if state.startswith("open") and kind == "restriction":
            kind = "access"  # the one open restriction is the hold built separately
        email = self.rng.choice(known_emails) if self.rng.random() < 0.85 else self._fresh_email()
        verified_at = closed_at = None
        if state.startswith("open"):
            received_at = self._days_ago(0.5, 25 if state == "open-unverified" else 40)
            if state == "open-verified":
                verified_at = self._between(received_at, self.as_of)
        else:
            received_at = self._days_ago(30, 700)
            if state == "done":
                verified_at = received_at + timedelta(days=self.rng.randint(1, 5))
            closed_at = received_at + timedelta(days=self.rng.randint(6, 28))
        return {
            "email": email,
            "kind": kind,
            "status": "open" if state.startswith("open") else state,
            "received_at": received_at,
            "identity_verified_at": verified_at,
            "closed_at": closed_at,
        }

    def _restriction_holding(self, smicer: _Smicer) -> dict:
        """The open restriction request of a closed smicer, email typed with other case and spaces."""
        received_at = self._days_ago(15, 25)
        return {
            "email": f"  {smicer.email.upper()} ",
            "kind": "restriction",
            "status": "open",
            "received_at": received_at,
            "identity_verified_at": received_at + timedelta(days=2),
            "closed_at": None,
        }

    def _identity_documents(self, rights_requests: list[dict]) -> list[dict]:
        """Scans awaiting verification, plus a few that verification or closure made due."""
        awaiting, settled, holds = [], [], []
        for request in rights_requests:
            if request["kind"] == "restriction" and request["status"] == "open":
                holds.append(request)
            elif request["identity_verified_at"] or request["closed_at"]:
                settled.append(request)
            else:
                awaiting.append(request)
        due = holds + self.rng.sample(settled, _share(len(awaiting), 0.12))
        rows = [self._identity_document(request) for request in awaiting + due]
        rows = _numbered(rows, "uploaded_at")
        for row in rows:
            path = (self.documents_dir / f"identity-document-{row['id']}.pdf").resolve()
            row["storage_uri"] = path.as_uri()
            self.documents[path] = DUMMY_SCAN
        return rows

    def _identity_document(self, request: dict) -> dict:
        latest = request["identity_verified_at"] or request["closed_at"] or self.as_of
        return {
            "rights_request_id": request["id"],
            "storage_uri": "",
            "uploaded_at": self._between(request["received_at"], latest),
        }
