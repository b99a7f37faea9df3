"""Runs at the same time on the same tables, on PostgreSQL: a backfill of several days of one DAG at
once, a manual run during the nightly one, a subject's erasure during the nightly runs, and runs
whose erase transactions meet on the same rows. Each case runs once with every run in its own
process, all started together, and once one run after another on an identical database; both end
with the same application rows, the same records erased and pseudonymised, the same evidence
archive (which records, until when, each in one verified batch), the same reactivation ledger and
suppression list; no audit event is written twice, no record is erased without a verified copy and
no notice is emailed twice.

What may differ is which run did what: the run ids in the audit trail, which batch holds a record,
each run's own counts and report, its skipped records' reasons. Two runs of one DAG cannot run at
the same time in one process (dag.test() runs one DAG run at a time), so these run what the DAG's
tasks run, the core's steps (lifecycle.pipeline.run_rule), in separate processes."""

from __future__ import annotations

import itertools
import json
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, insert, inspect, make_url, text

from lifecycle.appschema import create_app_schema
from lifecycle.demo.seed import seed_demo
from lifecycle.expectations import GateFailed
from lifecycle.mail import SmtpMailer
from lifecycle.pipeline import APPROVE, ARCHIVE, GATE, SELECT, VERIFY_ARCHIVE, run_rule, run_step, steps_for
from lifecycle.reporting import finish_run, start_run
from lifecycle.store import ensure_lifecycle_tables, lifecycle_tables, make_engine
from lifecycle.subject import ERASURE, Destinations, SubjectRequest, carry_out
from smtp_fixtures import smtp_client
from tests.lifecycle_helpers import POLICY, add, exists, fingerprint, make_run, utc

AS_OF = utc(2026, 3, 1)
DAY = timedelta(days=1)
DEMO_SIZE = 60
BACKFILL_DAYS = 4
SUPPRESSION_KEY = "concurrent-runs-suppression-key-0123456789"
WORKER = "concurrent-run"  # the runs' application_name in pg_stat_activity
WAIT_SECONDS = 120
RULES = {purpose.id: tuple(rule.id for rule in purpose.rules) for purpose in POLICY.purposes}
DAG_IDS = {purpose.id: purpose.dag_id for purpose in POLICY.purposes}


@dataclass(frozen=True)
class Job:
    """One run, doing what its DAG's tasks do: each rule's steps in policy order, or a subject's erasure."""

    run_id: str
    as_of: datetime
    dag_id: str
    rules: tuple[str, ...] = ()
    # A backfill's runs decide as any run but send no notice (lifecycle_airflow.mail_config).
    notices_allowed: bool = True
    subject: str | None = None
    request_id: int | None = None


def retention(purpose: str, run_id: str, as_of: datetime = AS_OF, **options) -> Job:
    return Job(run_id, as_of, DAG_IDS[purpose], RULES[purpose], **options)


@dataclass(frozen=True)
class Database:
    url: str
    engine: Engine


@pytest.fixture
def fresh_database(postgresql_session_database):
    """Makes an empty PostgreSQL database with the application's and the pipeline's tables, each call."""
    engines = []

    def fresh() -> Database:
        for engine in engines:
            engine.dispose()
        postgresql_session_database.reset()
        url = postgresql_session_database.url.render_as_string(hide_password=False)
        engine = make_engine(url)
        engines.append(engine)
        create_app_schema(engine)
        ensure_lifecycle_tables(engine)
        return Database(url, engine)

    yield fresh
    for engine in engines:
        engine.dispose()


# The cases.


def test_a_backfill_of_several_days_at_once_ends_as_the_days_run_one_after_another(fresh_database, workers, tmp_path):
    days = [AS_OF + day * DAY for day in range(BACKFILL_DAYS)]
    jobs = [
        retention("account_services", f"backfill__{as_of:%Y-%m-%d}", as_of, notices_allowed=False) for as_of in days
    ]

    def seed(engine, documents: Path) -> None:
        seed_demo(engine, AS_OF, size=DEMO_SIZE, documents_dir=documents)
        records = Records(engine)
        for day in range(BACKFILL_DAYS):
            records.due_from(AS_OF + day * DAY, f"day{day}")

    sequential, concurrent = both_ways(fresh_database, workers, tmp_path, seed, jobs)

    assert_same(concurrent, sequential)


def test_a_manual_run_during_the_nightly_one_emails_each_notice_once(fresh_database, workers, tmp_path, smtp_server):
    jobs = [retention("account_services", run_id) for run_id in ("scheduled__2026-03-01", "manual__2026-03-01")]

    def seed(engine, documents: Path) -> None:
        seed_demo(engine, AS_OF, size=DEMO_SIZE, documents_dir=documents)
        records = Records(engine)
        records.due_from(AS_OF, "boundary")
        records.notified(AS_OF - 40 * DAY, count=3)  # their grace period is over
        records.notified(AS_OF - 20 * DAY, count=1)

    sequential, concurrent = both_ways(fresh_database, workers, tmp_path, seed, jobs, smtp_server=smtp_server)

    assert_same(concurrent, sequential)
    emailed = sequential["emails"]
    assert emailed and all(count == 1 for count in emailed.values()), "each notice emailed once, by one of the runs"
    assert {"sent", "erased"} <= {state for _, _, _, state, _ in sequential["reactivation ledger"]}


def test_a_subject_erasure_during_the_nightly_runs_ends_as_one_after_the_other(fresh_database, workers, tmp_path):
    email = "subject.erased@example.org"
    jobs = [
        retention("account_services", "scheduled__account_services"),
        retention("customers_prospects", "scheduled__customers_prospects"),
        Job("manual__subject", AS_OF, "subject_request", subject=email, request_id=30_000_001),
    ]

    def seed(engine, documents: Path) -> None:
        seed_demo(engine, AS_OF, size=DEMO_SIZE, documents_dir=documents)
        records = Records(engine)
        records.due_from(AS_OF, "boundary")
        records.subject(email, request_id=30_000_001)

    sequential, concurrent = both_ways(fresh_database, workers, tmp_path, seed, jobs)

    assert_same(concurrent, sequential)
    assert sequential["suppressions"], "the subject's address is suppressed"


def test_erase_transactions_of_several_runs_meeting_on_the_same_rows_erase_each_once(fresh_database, workers, tmp_path):
    """The nightly run's account-closed erases a closed smicer's bundle while a manual run and a
    backfill's run erase the connection logs, the smicer's old log among them: all three wait on that
    row (a lock this test holds) and go on together once it is released."""
    jobs = [
        Job("scheduled__2026-03-01", AS_OF, DAG_IDS["account_services"], ("account-closed",)),
        Job("manual__2026-03-01", AS_OF, DAG_IDS["account_services"], ("connection-logs",)),
        Job(
            "backfill__2026-03-02",
            AS_OF + DAY,
            DAG_IDS["account_services"],
            ("connection-logs",),
            notices_allowed=False,
        ),
    ]
    shared_log = 20_000_001

    def seed(engine, documents: Path) -> None:
        records = Records(engine)
        closed = records.add("smicers", created_at=utc(2020, 1, 1), closed_at=AS_OF - 10 * DAY)
        assert records.add("connection_logs", smicer_id=closed, connected_at=AS_OF - 400 * DAY) == shared_log
        active = records.add("smicers", created_at=utc(2020, 1, 1), last_login_at=AS_OF - DAY)
        for _ in range(20):
            records.add("connection_logs", smicer_id=active, connected_at=AS_OF - 380 * DAY)

    sequential, concurrent = both_ways(fresh_database, workers, tmp_path, seed, jobs, collide_on=shared_log)

    assert_same(concurrent, sequential)
    assert ("connection_logs", shared_log, "erased") in sequential["erased and pseudonymised"]


def test_a_batch_no_run_can_verify_gives_its_records_back_to_the_next_run(fresh_database, tmp_path):
    """A batch a run wrote holds its records for whichever run verifies it, so the others leave them to
    it; one that fails verification (here, its manifest lost) is given up, and the next run archives its
    records again."""
    database = fresh_database()
    records = Records(database.engine)
    closed = records.add("smicers", created_at=utc(2020, 1, 1), closed_at=AS_OF - DAY)
    records.bundle(closed, AS_OF - 20 * DAY)
    rule = POLICY.rule("account-closed")
    first = make_run(database.engine, AS_OF, tmp_path, run_id="first")
    for step in (SELECT, GATE, APPROVE, ARCHIVE):
        run_step(first, rule, step)
    next((tmp_path / "archive" / "smicers").rglob("manifest.json")).unlink()
    with pytest.raises(GateFailed, match="account-closed/archive"):
        run_step(first, rule, VERIFY_ARCHIVE)

    second = make_run(database.engine, AS_OF + DAY, tmp_path, run_id="second")
    for step in steps_for(rule):
        run_step(second, rule, step)

    assert not exists(database.engine, "smicers", closed)
    assert_safe(database.engine, tmp_path / "archive", final_state(database.engine))


def test_runs_starting_together_on_a_database_never_run_before_create_the_pipelines_tables_once(
    postgresql_session_database, workers, tmp_path
):
    """The first backfill of a new deployment: each run's `prepare` creates the pipeline's tables."""
    postgresql_session_database.reset()
    url = postgresql_session_database.url.render_as_string(hide_password=False)
    engine = make_engine(url)
    create_app_schema(engine)

    in_processes(workers, tmp_path, create_tables, [(url,)] * BACKFILL_DAYS)

    tables = lifecycle_tables(engine)
    schema = inspect(engine)
    assert set(schema.get_table_names(tables.metadata.schema)) == {
        table.name for table in tables.metadata.sorted_tables
    }
    assert schema.get_view_names(tables.metadata.schema) == [tables.audit_trail.name]
    engine.dispose()


def create_tables(url: str, start) -> None:
    engine = make_engine(url)
    start.wait(WAIT_SECONDS)
    ensure_lifecycle_tables(engine)
    engine.dispose()


# Seeds: records due on a given day exactly, around the calendar boundaries of the policy's periods.


class Records:
    """Rows added to a database, numbered and addressed alike on every database seeded."""

    def __init__(self, engine):
        self.engine = engine
        self.ids = itertools.count(20_000_000)

    def add(self, table: str, **values) -> int:
        key = next(self.ids)
        if table in ("smicers", "rights_requests"):
            values.setdefault("email", f"{table}.{key}@example.org")
        return add(self.engine, table, id=key, **values)

    def due_from(self, day: datetime, label: str) -> None:
        """A connection log and a browsing event due from `day` on (one year old that instant) and ones
        due a second later; a smicer closed at that instant, with a bundle to archive, erase and
        pseudonymise; a smicer closed then whose email an open restriction holds."""
        active = self.add("smicers", created_at=utc(2020, 1, 1), last_login_at=day - 5 * DAY)
        for anchor in (day - 365 * DAY, day - 365 * DAY + timedelta(seconds=1)):
            self.add("connection_logs", smicer_id=active, connected_at=anchor)
            self.add("browsing_events", smicer_id=active, occurred_at=anchor)
        for held in (False, True):
            email = f"closed.{label}.{'held' if held else 'free'}@example.org"
            closed = self.add("smicers", email=email, created_at=utc(2020, 1, 1), closed_at=day)
            self.bundle(closed, day - 20 * DAY)
            if held:
                self.add("rights_requests", email=email, kind="restriction", status="open")

    def bundle(self, smicer: int, when: datetime) -> None:
        for _ in range(2):
            self.add("connection_logs", smicer_id=smicer, connected_at=when)
        self.add("browsing_events", smicer_id=smicer, occurred_at=when)
        self.add("test_applications", smicer_id=smicer, test_date=when.date(), decision="pending")
        self.add("missions", smicer_id=smicer, client_id=self.add("clients"), visited_at=when)

    def notified(self, notice_day: datetime, count: int) -> None:
        """Smicers inactive for more than two years, emailed their reactivation notice on `notice_day`."""
        ledger = lifecycle_tables(self.engine).reactivation_notices
        for _ in range(count):
            last_login = notice_day - 800 * DAY
            smicer = self.add("smicers", created_at=utc(2020, 1, 1), last_login_at=last_login)
            self.bundle(smicer, last_login)
            instants = {"inactive_since": last_login, "notice_as_of": notice_day, "recorded_at": notice_day}
            with self.engine.begin() as connection:
                connection.execute(
                    insert(ledger).values(
                        rule="account-inactive",
                        record_key=smicer,
                        cycle=1,
                        state="sent",
                        attempts=1,
                        dag_id=DAG_IDS["account_services"],
                        run_id="earlier",
                        sent_at=notice_day.replace(tzinfo=None),
                        **{name: instant.replace(tzinfo=None) for name, instant in instants.items()},
                    )
                )

    def subject(self, email: str, request_id: int) -> None:
        """An active smicer asking for erasure, also a prospect due for erasure and a newsletter subscriber."""
        smicer = self.add("smicers", email=email, created_at=utc(2021, 1, 1), last_login_at=AS_OF - DAY)
        self.bundle(smicer, AS_OF - 10 * DAY)
        self.add("prospects", email=email.upper(), created_at=utc(2019, 1, 1))
        self.add("newsletter_subscriptions", email=email, consented_at=AS_OF - 10 * DAY)
        add(self.engine, "rights_requests", id=request_id, email=email, kind="erasure", received_at=AS_OF - DAY)


# Running the jobs, one after another or all at once.


def both_ways(fresh_database, workers, tmp_path: Path, seed, jobs: list[Job], smtp_server=None, collide_on=None):
    """What the jobs leave run one after another in order, then all at once, each on a fresh database
    seeded alike; every run succeeds both ways and each way is safe on its own."""
    outcomes = []
    for label in ("sequential", "concurrent"):
        database = fresh_database()
        seed(database.engine, tmp_path / "documents")  # the same folder: the same stored files' locations
        folder = tmp_path / label
        folder.mkdir()
        port = smtp_server.port if smtp_server else None
        if label == "sequential":
            for job in jobs:
                run_job(database.url, str(folder), job, port)
        else:
            run_all_at_once(workers, database, folder, jobs, port, collide_on)
        outcome = final_state(database.engine)
        assert_safe(database.engine, folder / "archive", outcome)
        if smtp_server:
            outcome["emails"] = Counter(smtp_server.recipients)
            smtp_server.handler.received.clear()
        outcomes.append(outcome)
    return outcomes


def run_job(url: str, folder: str, job: Job, smtp_port: int | None, start=None) -> None:
    """One run in this process; with `start`, after every other run is ready to start too."""
    engine = make_engine(url)
    mailer = SmtpMailer(lambda: smtp_client(smtp_port)) if smtp_port else None
    run = make_run(
        engine,
        job.as_of,
        Path(folder),
        dag_id=job.dag_id,
        run_id=job.run_id,
        volume_approved=True,
        mailer=mailer,
        notices_allowed=job.notices_allowed,
        subject_email=job.subject,
    )
    if start is not None:
        start.wait(WAIT_SECONDS)
    if job.subject:
        request = SubjectRequest(job.subject, ERASURE, dry_run=False, request_id=job.request_id)
        answer = carry_out(run, request, Destinations(suppression_key=SUPPRESSION_KEY))
        assert answer["outcome"] == "done", answer
    else:
        rules = [POLICY.rule(rule_id) for rule_id in job.rules]
        start_run(run)
        for rule in rules:
            run_rule(run, rule)
        finish_run(run, rules)
    engine.dispose()


def run_all_at_once(workers, database: Database, folder: Path, jobs: list[Job], smtp_port, collide_on=None) -> None:
    """Every job in its own process, started together; with `collide_on`, a connection log this test
    holds locked until every run waits on a lock, its own or another run's."""
    url = make_url(database.url).update_query_dict({"application_name": WORKER}).render_as_string(hide_password=False)
    arguments = [(url, str(folder), job, smtp_port) for job in jobs]
    if collide_on is None:
        in_processes(workers, folder, run_job, arguments)
        return
    with database.engine.connect() as holder:
        holder.begin()
        holder.execute(text("SELECT 1 FROM connection_logs WHERE id = :key FOR UPDATE"), {"key": collide_on})

        def release_once_all_wait(processes) -> None:
            wait_for(lambda: waiting(database.engine) == len(jobs) or not all(p.is_alive() for p in processes))
            assert waiting(database.engine) == len(jobs), errors(folder) or "a run ended without waiting"
            holder.rollback()

        in_processes(workers, folder, run_job, arguments, release_once_all_wait)


def in_processes(workers, folder: Path, target, arguments: list[tuple], while_running=None) -> None:
    """target(*args, start) for each args, each in its own process, all starting together (`start`,
    a barrier, lets them go); `while_running(processes)` meanwhile. Each must succeed."""
    start = workers.Barrier(len(arguments))
    processes = [
        workers.Process(target=reporting_errors, args=(folder / f"{index}.error", target, *args, start))
        for index, args in enumerate(arguments)
    ]
    try:
        for process in processes:
            process.start()
        if while_running:
            while_running(processes)
        for process in processes:
            process.join(WAIT_SECONDS)
    finally:
        for process in processes:  # one a failed assertion left running
            process.kill()
            process.join()
    assert [process.exitcode for process in processes] == [0] * len(processes), errors(folder)


def reporting_errors(error_path: Path, target, *args) -> None:
    try:
        target(*args)
    except BaseException:
        error_path.write_text(traceback.format_exc())
        raise


def waiting(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT COUNT(*) FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database() AND wait_event_type = 'Lock'"
            ),
            {"name": WORKER},
        ).scalar_one()


def wait_for(condition) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the runs"
        time.sleep(0.01)


def errors(folder: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(folder.glob("*.error")))


# What the runs leave, and what must hold whoever did what.


def final_state(engine) -> dict:
    """What the runs together leave, without saying which run did what."""
    application = {name: digest for name, digest in fingerprint(engine).items() if not name.startswith("lifecycle.")}
    return {
        "application rows": application,
        "erased and pseudonymised": set(
            rows(
                engine,
                "SELECT table_name, record_key, action FROM lifecycle.audit_trail"
                " WHERE action IN ('erased', 'pseudonymised')",
            )
        ),
        "archived": set(
            rows(
                engine,
                "SELECT ar.table_name, ar.record_key, ab.retain_until FROM lifecycle.archived_records ar"
                " JOIN lifecycle.archive_batches ab ON ab.batch_key = ar.batch_key WHERE ab.verified_at IS NOT NULL",
            )
        ),
        "reactivation ledger": set(
            rows(engine, "SELECT rule, record_key, cycle, state, notice_as_of FROM lifecycle.reactivation_notices")
        ),
        "suppressions": set(rows(engine, "SELECT digest, reason FROM lifecycle.suppressions")),
    }


def assert_same(concurrent: dict, sequential: dict) -> None:
    assert concurrent.keys() == sequential.keys()
    for name, expected in sequential.items():
        found = concurrent[name]
        if isinstance(expected, set):
            only = sorted(found - expected)[:10], sorted(expected - found)[:10]
            assert found == expected, f"{name}: at once only {only[0]}; one after another only {only[1]}"
        elif name == "application rows":
            differing = sorted(
                table for table in expected.keys() | found.keys() if found.get(table) != expected.get(table)
            )
            assert found == expected, f"application tables ending otherwise: {differing}"
        else:
            assert found == expected, name


def assert_safe(engine, archive: Path, outcome: dict) -> None:
    """No audit event twice; every batch recorded, verified and holding exactly the records its index
    names, no record in two batches; every erased record the archive holds has a verified copy."""
    twice = rows(
        engine,
        "SELECT action, table_name, record_key FROM lifecycle.audit_trail WHERE record_key IS NOT NULL"
        " GROUP BY action, table_name, record_key HAVING COUNT(*) > 1",
    )
    assert not twice, f"audit events written twice: {sorted(twice)[:5]}"
    batches = dict(rows(engine, "SELECT batch_key, verified_at IS NOT NULL FROM lifecycle.archive_batches"))
    assert all(batches.values()), (
        f"batches never verified: {[key for key, verified in batches.items() if not verified]}"
    )
    manifests = {
        str(path.parent.relative_to(archive)): json.loads(path.read_text()) for path in archive.rglob("manifest.json")
    }
    assert set(manifests) == set(batches), "every batch written is recorded, and only those"
    held = Counter((m["table"], key, batch) for batch, m in manifests.items() for key in batch_keys(archive, m))
    assert all(count == 1 for count in held.values()), "no record twice in a batch"
    in_archive = {(table, key): batch for table, key, batch in held}
    assert len(in_archive) == len(held), "no record in two batches"
    index = rows(engine, "SELECT table_name, record_key, batch_key FROM lifecycle.archived_records")
    indexed = {(table, key): batch for table, key, batch in index}
    assert indexed == in_archive, "the index names the batch holding each record"
    archived = {(table, key) for table, key, _ in outcome["archived"]}
    erased = {(table, key) for table, key, action in outcome["erased and pseudonymised"] if action == "erased"}
    assert set(indexed) == archived, "every archived record in a verified batch"
    assert erased & archived, "the case erases archived records"
    uncopied = rows(engine, ERASED_WITHOUT_A_VERIFIED_COPY)
    assert not uncopied, f"erased without a verified archive copy: {sorted(uncopied)[:5]}"


# The records erased by a rule that archives them (their candidate has a retain_until) without a copy
# in a verified batch.
ERASED_WITHOUT_A_VERIFIED_COPY = """
SELECT t.table_name, t.record_key
  FROM lifecycle.audit_trail t
  JOIN lifecycle.selections s ON s.dag_id = t.dag_id AND s.run_id = t.run_id AND s.rule = t.rule
  JOIN lifecycle.candidates c ON c.selection_id = s.id AND c.record_key = t.record_key
 WHERE t.action = 'erased' AND t.table_name = s.table_name AND c.retain_until IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM lifecycle.archived_records ar
                     JOIN lifecycle.archive_batches ab ON ab.batch_key = ar.batch_key
                    WHERE ar.table_name = t.table_name AND ar.record_key = t.record_key AND ab.verified_at IS NOT NULL)
"""


def batch_keys(archive: Path, manifest: dict) -> list[int]:
    keys = []
    for part in manifest["files"]:
        keys += pq.read_table(archive / part["key"], columns=[manifest["key_column"]]).column(0).to_pylist()
    return keys


def rows(engine, sql: str) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql))]
