"""The evidence archive on S3, against moto's server on loopback: archive, verify and erase through
the core steps; each object's storage class, encryption, checksum and lock; damaged parts, a bucket
outside the EU/EEA and failing endpoints stopping the erase; expiry; restore; the bucket check."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, date, datetime

import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from dateutil.relativedelta import relativedelta

from lifecycle import restore
from lifecycle.appschema import create_app_schema
from lifecycle.erasing import ErasureRefused
from lifecycle.expectations import GateFailed
from lifecycle.pipeline import ARCHIVE, ERASE, GATE, PURGE, SELECT, VERIFY_ARCHIVE, run_step
from lifecycle.store import ensure_lifecycle_tables, make_engine
from lifecycle.stores import ArchiveError, bucket_check, open_archive_store, sha256_of_file
from lifecycle.stores.s3 import S3ArchiveStore
from s3_fixtures import CREDENTIALS, REGION, free_port, new_bucket, plain_client, s3_options
from tests.lifecycle_helpers import POLICY, add, exists, make_run, run_rules, scalar

TODAY = datetime.now(UTC).date()
# Closed a month ago: archived today with retain_until a month short of five years ahead, so locked.
CLOSED_AT = datetime.combine(TODAY - relativedelta(months=1), datetime.min.time())
AS_OF = datetime.combine(TODAY, datetime.min.time(), tzinfo=UTC)
RETAIN_UNTIL = (CLOSED_AT + relativedelta(years=5)).date()
PREFIX = "evidence"


@pytest.fixture
def engine(sqlite_engine):
    """SQLite only: the archive's side is what these tests are about (the first one also runs on PostgreSQL)."""
    return sqlite_engine


def closed_smicer(engine, closed_at: datetime = CLOSED_AT, email: str | None = None) -> int:
    """A closed smicer with one connection log: two batches (smicers, connection_logs) when archived."""
    smicer = add(
        engine,
        "smicers",
        created_at=closed_at - relativedelta(years=3),
        last_login_at=closed_at - relativedelta(days=2),
        closed_at=closed_at,
        **({"email": email} if email else {}),
    )
    add(engine, "connection_logs", smicer_id=smicer, connected_at=closed_at - relativedelta(days=2))
    return smicer


def archive_to(engine, tmp_path, bucket: str, options, as_of: datetime = AS_OF, **kwargs) -> dict:
    return run_rules(
        engine, as_of, tmp_path, ["account-closed"], archive_uri=f"s3://{bucket}/{PREFIX}", s3_options=options, **kwargs
    )


def manifests(s3, bucket: str) -> dict[str, dict]:
    """Each batch's manifest, by batch key."""
    found = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/").get("Contents", []):
        if item["Key"].endswith("/manifest.json"):
            batch_key = item["Key"][len(PREFIX) + 1 : -len("/manifest.json")]
            found[batch_key] = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    return found


def head(s3, bucket: str, key: str) -> dict:
    return s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{key}", ChecksumMode="ENABLED")


def midnight_utc(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def locked_until(head_response: dict) -> datetime | None:
    until = head_response.get("ObjectLockRetainUntilDate")
    return until.astimezone(UTC) if until else None


def versions_under(s3, bucket: str, batch_key: str) -> list[str]:
    listing = s3.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/{batch_key}/")
    return [v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])]


# Archive, verify, erase


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_a_bundle_is_archived_cold_encrypted_checksummed_and_locked_then_erased(
    db_url, s3, locked_bucket, moto_endpoint, tmp_path
):
    engine = make_engine(db_url)
    create_app_schema(engine)
    ensure_lifecycle_tables(engine)
    smicer = closed_smicer(engine)

    summary = archive_to(engine, tmp_path, locked_bucket, s3_options(moto_endpoint))

    outcome = summary["rules"]["account-closed"]
    assert (outcome["archived"], outcome["erased"], outcome["erased_with_bundle"]) == (2, 1, 1)
    assert not exists(engine, "smicers", smicer)
    batches = manifests(s3, locked_bucket)
    assert {m["table"] for m in batches.values()} == {"smicers", "connection_logs"}
    for batch_key, manifest in batches.items():
        assert manifest["retain_until"] == RETAIN_UNTIL.isoformat()
        manifest_head = head(s3, locked_bucket, f"{batch_key}/manifest.json")
        assert manifest_head.get("StorageClass", "STANDARD") == "STANDARD"
        assert manifest_head["ServerSideEncryption"] == "AES256"
        assert locked_until(manifest_head) == midnight_utc(RETAIN_UNTIL)
        for part in manifest["files"]:
            stored = head(s3, locked_bucket, part["key"])
            assert stored["StorageClass"] == "DEEP_ARCHIVE"
            assert stored["ServerSideEncryption"] == "AES256"
            assert stored["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(part["sha256"])).decode()
            assert stored["ContentLength"] == part["bytes"]
            assert stored["ObjectLockMode"] == "COMPLIANCE"
            assert locked_until(stored) == midnight_utc(RETAIN_UNTIL)
            with pytest.raises(ClientError, match="InvalidObjectState"):
                s3.get_object(Bucket=locked_bucket, Key=f"{PREFIX}/{part['key']}")
    uris = scalar(
        engine,
        "SELECT MIN(uri) FROM "
        + ("lifecycle.archive_batches" if engine.dialect.name == "postgresql" else "lifecycle_archive_batches"),
    )
    assert uris.startswith(f"s3://{locked_bucket}/{PREFIX}/")
    engine.dispose()


def test_kms_encryption_and_the_configured_storage_class(engine, s3, locked_bucket, moto_endpoint, tmp_path):
    key_id = "arn:aws:kms:eu-west-3:111122223333:key/archive"
    closed_smicer(engine)
    options = s3_options(moto_endpoint, storage_class="GLACIER_IR", encryption="aws:kms", kms_key_id=key_id)

    archive_to(engine, tmp_path, locked_bucket, options)

    for manifest in manifests(s3, locked_bucket).values():
        stored = head(s3, locked_bucket, manifest["files"][0]["key"])
        assert (stored["StorageClass"], stored["ServerSideEncryption"], stored["SSEKMSKeyId"]) == (
            "GLACIER_IR",
            "aws:kms",
            key_id,
        )


def test_a_large_part_goes_up_in_chunks_each_checked_by_s3(
    engine, s3, locked_bucket, moto_endpoint, tmp_path, monkeypatch
):
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 1)  # S3's is 5 MiB; a test part is a few KiB
    smicer = closed_smicer(engine)
    options = s3_options(moto_endpoint, multipart_threshold=1, multipart_chunk_size=1024)

    archive_to(engine, tmp_path, locked_bucket, options)

    assert not exists(engine, "smicers", smicer)
    for manifest in manifests(s3, locked_bucket).values():
        for part in manifest["files"]:
            chunks = -(-part["bytes"] // 1024)
            assert chunks > 1 and part["s3_checksum_sha256"].endswith(f"-{chunks}")
            stored = head(s3, locked_bucket, part["key"])
            assert stored["ChecksumSHA256"].split("-")[0] == part["s3_checksum_sha256"].split("-")[0]
            assert (stored["StorageClass"], stored["ServerSideEncryption"]) == ("DEEP_ARCHIVE", "AES256")
            assert locked_until(stored) == midnight_utc(RETAIN_UNTIL)


def archived_not_yet_verified(engine, tmp_path, bucket, endpoint):
    """A run of account-closed stopped after its archive step."""
    run = make_run(engine, AS_OF, tmp_path, archive_uri=f"s3://{bucket}/{PREFIX}", s3_options=s3_options(endpoint))
    rule = POLICY.rule("account-closed")
    for step in (SELECT, GATE, ARCHIVE):
        run_step(run, rule, step)
    return run, rule


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_a_corrupted_or_missing_part_stops_the_erase(engine, s3, locked_bucket, moto_endpoint, tmp_path, damage):
    smicer = closed_smicer(engine)
    run, rule = archived_not_yet_verified(engine, tmp_path, locked_bucket, moto_endpoint)
    part = next(m for m in manifests(s3, locked_bucket).values() if m["table"] == "smicers")["files"][0]["key"]
    if damage == "corrupted":
        s3.put_object(Bucket=locked_bucket, Key=f"{PREFIX}/{part}", Body=b"not the archived rows")
    else:
        s3.delete_object(Bucket=locked_bucket, Key=f"{PREFIX}/{part}")

    with pytest.raises(GateFailed, match="parts_match"):
        run_step(run, rule, VERIFY_ARCHIVE)
    with pytest.raises(ErasureRefused, match="no verified archive copy"):
        run_step(run, rule, ERASE)
    assert exists(engine, "smicers", smicer)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-2"])
def test_a_bucket_outside_the_eea_is_refused_unless_allowed(engine, moto_endpoint, tmp_path, region):
    bucket = new_bucket(plain_client(moto_endpoint, region=region), region=region)
    smicer = closed_smicer(engine, email="zebulon@canary-pii.example")

    with pytest.raises(ArchiveError, match=f"bucket {bucket} is in region {region}, outside the EU/EEA") as refusal:
        archive_to(engine, tmp_path, bucket, s3_options(moto_endpoint))

    assert "zebulon" not in str(refusal.value)
    assert exists(engine, "smicers", smicer)
    assert plain_client(moto_endpoint).list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    allowed = archive_to(engine, tmp_path, bucket, s3_options(moto_endpoint, allow_outside_eea=True), run_id="allowed")
    assert allowed["rules"]["account-closed"]["erased"] == 1


# Faults: fail closed, erase nothing


def test_an_unreachable_endpoint_fails_closed(engine, tmp_path):
    smicer = closed_smicer(engine)

    with pytest.raises(ArchiveError, match="cannot reach bucket evidence-down under s3://evidence-down/evidence"):
        archive_to(engine, tmp_path, "evidence-down", s3_options(f"http://127.0.0.1:{free_port()}"))

    assert exists(engine, "smicers", smicer)


@pytest.mark.parametrize(
    ("status", "code", "requests"),
    [(503, "SlowDown", 2), (500, "InternalError", 2), (403, "InvalidAccessKeyId", 1)],
    ids=["throttled", "server-error", "wrong-credentials"],
)
def test_server_errors_throttling_and_wrong_credentials_are_retried_within_bounds_then_fail_closed(
    engine, tmp_path, failing_endpoint, status, code, requests
):
    failing_endpoint.status, failing_endpoint.code = status, code
    smicer = closed_smicer(engine, email="zebulon@canary-pii.example")

    with pytest.raises(ArchiveError, match=rf"{code} \(HTTP {status}\)") as failure:
        archive_to(engine, tmp_path, "evidence-failing", s3_options(failing_endpoint.url))

    assert len(failing_endpoint.requests) == requests, "max_attempts=2: one retry for 5xx and throttling, none for 403"
    assert "zebulon" not in str(failure.value)
    assert exists(engine, "smicers", smicer)


def test_an_endpoint_failing_during_verification_leaves_everything_in_place(
    engine, locked_bucket, moto_endpoint, failing_endpoint, tmp_path
):
    smicer = closed_smicer(engine)
    run, rule = archived_not_yet_verified(engine, tmp_path, locked_bucket, moto_endpoint)

    with pytest.raises(ArchiveError, match=r"SlowDown \(HTTP 503\)"):
        run_step(dataclasses.replace(run, s3_options=s3_options(failing_endpoint.url)), rule, VERIFY_ARCHIVE)
    with pytest.raises(ErasureRefused):
        run_step(run, rule, ERASE)
    assert exists(engine, "smicers", smicer)


# Expiry


def test_expiry_purges_exactly_the_due_batches_every_version_and_goes_on_past_a_locked_one(
    engine, s3, locked_bucket, moto_endpoint, tmp_path
):
    options = s3_options(moto_endpoint)
    expired_at = datetime.combine(TODAY - relativedelta(years=6), datetime.min.time())
    closed_smicer(engine, closed_at=expired_at)
    archive_to(
        engine,
        tmp_path,
        locked_bucket,
        options,
        as_of=midnight_utc(expired_at.date()) + relativedelta(days=1),
        run_id="long-ago",
    )
    closed_smicer(engine)  # retain_until RETAIN_UNTIL, locked until then
    closed_smicer(engine, closed_at=CLOSED_AT + relativedelta(days=10))  # retain_until ten days later
    archive_to(engine, tmp_path, locked_bucket, options, run_id="today")
    batches = manifests(s3, locked_bucket)
    by_retain_until = {
        until: sorted(k for k, m in batches.items() if m["retain_until"] == until)
        for until in {m["retain_until"] for m in batches.values()}
    }
    expired, locked, kept = (by_retain_until[until] for until in sorted(by_retain_until))
    part = batches[expired[0]]["files"][0]["key"]
    s3.put_object(Bucket=locked_bucket, Key=f"{PREFIX}/{part}", Body=b"a later version of the part")

    run = make_run(
        engine,
        midnight_utc(RETAIN_UNTIL + relativedelta(days=1)),
        tmp_path,
        run_id="expiry",
        archive_uri=f"s3://{locked_bucket}/{PREFIX}",
        s3_options=options,
    )
    counts = run_step(run, POLICY.rule("archive-expiry"), PURGE)

    assert (counts["purged"], counts["purge_failed"], counts["kept"]) == (2, 2, 2)
    assert sorted(counts["purge_failed_batches"]) == locked
    assert all(versions_under(s3, locked_bucket, key) == [] for key in expired)
    for key in locked:
        assert f"{PREFIX}/{key}/manifest.json" in versions_under(s3, locked_bucket, key), "the manifest stays"
    assert set(manifests(s3, locked_bucket)) == set(locked) | set(kept)
    purged = scalar(engine, "SELECT COUNT(*) FROM lifecycle_archive_batches WHERE purged_at IS NOT NULL")
    assert purged == 2


# Restore


def test_restore_a_batch_then_one_persons_records(engine, s3, locked_bucket, moto_endpoint, tmp_path):
    alice = closed_smicer(engine, email="alice@example.org")
    bob = closed_smicer(engine, email="bob@example.org")
    options = s3_options(moto_endpoint)
    archive_to(engine, tmp_path, locked_bucket, options)
    batches = manifests(s3, locked_bucket)
    smicers_batch = next(key for key, m in batches.items() if m["table"] == "smicers")
    store = open_archive_store(f"s3://{locked_bucket}/{PREFIX}", options)

    first = restore.restore_batches(store, {smicers_batch: None}, tmp_path / "whole", tier="Bulk", days=1)

    assert (first[0].state, first[0].restores_started, first[0].records) == ("copied", 1, 2)
    part = batches[smicers_batch]["files"][0]
    assert "ongoing-request" in head(s3, locked_bucket, part["key"])["Restore"]
    copied = tmp_path / "whole" / smicers_batch / "part-00000.parquet"
    assert sha256_of_file(copied) == part["sha256"]
    assert sorted(pq.read_table(copied)["id"].to_pylist()) == sorted([alice, bob])

    requested = restore.subject_batches(engine, "  Alice@Example.ORG ")
    assert set(requested) == set(batches)
    second = restore.restore_batches(store, requested, tmp_path / "alice", tier="Standard", days=1)

    assert {(o.batch_key, o.restores_started) for o in second} == {(smicers_batch, 0)} | {
        (key, 1) for key in batches if key != smicers_batch
    }
    rows = pq.read_table(tmp_path / "alice" / smicers_batch / "records.parquet")
    assert rows["id"].to_pylist() == [alice]
    summary = json.loads((tmp_path / "alice" / smicers_batch / "restore.json").read_text())
    assert summary["only_the_subjects_records"] and summary["records"] == 1


def test_the_restore_command_by_address_reports_pending_then_copies(
    engine, locked_bucket, moto_endpoint, tmp_path, monkeypatch, capsys
):
    closed_smicer(engine, email="zebulon@canary-pii.example")
    archive_to(engine, tmp_path, locked_bucket, s3_options(moto_endpoint))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    command = [
        f"s3://{locked_bucket}/{PREFIX}",
        "--email",
        "zebulon@canary-pii.example",
        "--db-url",
        engine.url.render_as_string(hide_password=False),
        "--to",
        (tmp_path / "out").as_uri(),
        "--endpoint-url",
        moto_endpoint,
        "--region",
        REGION,
    ]

    with monkeypatch.context() as still_restoring:
        still_restoring.setattr(S3ArchiveStore, "restore_status", lambda self, key: "restoring")
        assert restore.main(command) == restore.PENDING_EXIT
    assert restore.main(command) == 0

    output = capsys.readouterr().out
    assert output.count(": restoring (1 part(s)") == 2 and output.count(": copied (1 part(s)") == 2
    assert "zebulon" not in output
    assert len(list((tmp_path / "out").rglob("records.parquet"))) == 2


# Bucket check


def test_the_bucket_check_says_what_is_missing_and_passes_a_bucket_set_up_right(s3, moto_endpoint, monkeypatch, capsys):
    bare = new_bucket(s3, object_lock=False)
    ready = new_bucket(s3)
    s3.put_bucket_encryption(
        Bucket=ready,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_public_access_block(
        Bucket=ready,
        PublicAccessBlockConfiguration=dict.fromkeys(
            ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
        ),
    )
    s3.put_bucket_lifecycle_configuration(
        Bucket=ready,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "abort-uploads",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                }
            ]
        },
    )
    abroad = new_bucket(plain_client(moto_endpoint, region="us-east-1"), region="us-east-1")

    assert {f.check: f.ok for f in bucket_check.check_bucket(s3, bare)} == {
        "region": True,
        "versioning": False,
        "object lock": False,
        "default encryption": False,
        "public access block": False,
        "abandoned uploads": False,
    }
    assert all(f.ok for f in bucket_check.check_bucket(s3, ready))
    assert [f.check for f in bucket_check.check_bucket(s3, abroad) if not f.ok][0] == "region"

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    assert bucket_check.main([f"s3://{bare}", "--endpoint-url", moto_endpoint]) == 1
    assert "MISSING  object lock" in capsys.readouterr().out
    assert bucket_check.main([f"s3://{ready}/{PREFIX}", "--endpoint-url", moto_endpoint]) == 0
    assert "6 of 6 checks pass" in capsys.readouterr().out
    assert bucket_check.main(["s3://no-such-bucket-here", "--endpoint-url", moto_endpoint]) == 2


def test_an_identity_document_scan_on_s3_is_erased_with_every_version(engine, s3, moto_endpoint, tmp_path):
    bucket = new_bucket(s3, object_lock=False)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for content in (b"first scan", b"second scan"):
        s3.put_object(Bucket=bucket, Key="scans/id-1.pdf", Body=content)
    request = add(engine, "rights_requests", identity_verified_at=datetime(2026, 1, 5))
    document = add(engine, "identity_documents", rights_request_id=request, storage_uri=f"s3://{bucket}/scans/id-1.pdf")

    run_rules(engine, AS_OF, tmp_path, ["identity-documents"], s3_options=s3_options(moto_endpoint))

    assert not exists(engine, "identity_documents", document)
    assert s3.list_object_versions(Bucket=bucket, Prefix="scans/").get("Versions", []) == []
