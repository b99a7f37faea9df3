"""The evidence archive on S3, `s3://bucket/prefix`, in the format of CONTRACTS.md: each part in a
cold storage class, encrypted, with a SHA-256 checksum that S3 checks on upload and, where the
bucket has Object Lock, a COMPLIANCE retention until 00:00 UTC of its retain_until; the manifest in
STANDARD so it stays readable.

boto3 is imported inside functions only (DAG parsing stays fast). The client comes from
`S3Options.client_factory` (under Airflow: the Amazon provider's S3Hook on connection
`aws_default`) or, without one, from boto3's own credential chain. Every call goes through
botocore's bounded "standard" retries; what still fails raises ArchiveError, naming the batch or
part, never a record's data."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lifecycle.stores import LEDGER_SUFFIX, MANIFEST, ArchiveError

STORAGE_CLASSES = ("DEEP_ARCHIVE", "GLACIER", "GLACIER_IR")
RESTORABLE_CLASSES = ("DEEP_ARCHIVE", "GLACIER")
ENCRYPTIONS = ("AES256", "aws:kms")
RESTORE_TIERS = ("Bulk", "Standard", "Expedited")
# AWS regions inside the EU/EEA. London (eu-west-2) and Zurich (eu-central-2) are outside it.
EEA_REGIONS = frozenset({"eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1", "eu-south-2"})
DEFAULT_REGION = "eu-west-3"
MIB = 1 << 20
MAX_MULTIPART_PARTS = 10_000
DELETE_BATCH = 1000


@dataclass(frozen=True)
class S3Options:
    """How parts are stored and reached. `endpoint_url` and `region` serve the default client only;
    a `client_factory(botocore_config) -> s3 client` brings its own."""

    storage_class: str = "DEEP_ARCHIVE"
    encryption: str = "AES256"
    kms_key_id: str | None = None
    allow_outside_eea: bool = False
    multipart_threshold: int = 64 * MIB
    multipart_chunk_size: int = 16 * MIB
    max_attempts: int = 5
    region: str = DEFAULT_REGION
    endpoint_url: str | None = None
    client_factory: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("storage class", self.storage_class, STORAGE_CLASSES),
            ("encryption", self.encryption, ENCRYPTIONS),
        ):
            if value not in allowed:
                raise ArchiveError(f"S3 archive {name} {value!r} is not one of {', '.join(allowed)}")
        if self.kms_key_id and self.encryption != "aws:kms":
            raise ArchiveError("S3 archive: a KMS key id needs the encryption aws:kms")
        if min(self.multipart_threshold, self.multipart_chunk_size, self.max_attempts) < 1:
            raise ArchiveError("S3 archive: multipart sizes and attempts must be positive")

    def botocore_config(self):
        from botocore.config import Config

        return Config(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=10,
            read_timeout=120,
        )

    def client(self):
        if self.client_factory is not None:
            return self.client_factory(self.botocore_config())
        import boto3

        return boto3.client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=self.botocore_config()
        )


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ArchiveError(f"archive location {uri!r} is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


def bucket_region(client, bucket: str) -> str:
    """The bucket's region, as S3 names it (an empty location is us-east-1, `EU` is eu-west-1)."""
    location = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)


def sha256_base64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def checksum_digest(checksum: str | None) -> str | None:
    """The digest of an S3 checksum, without the `-<parts>` S3 appends to a multipart object's."""
    return checksum.split("-", 1)[0] if checksum else None


@contextmanager
def failing_closed(action: str, uri: str, error_class: type[Exception] = ArchiveError) -> Iterator[None]:
    """botocore's errors, once its retries are spent, as an `error_class` saying what failed."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as error:
        raise error_class(f"{action} under {uri}: {client_error_reason(error)}") from None
    except BotoCoreError as error:
        raise error_class(f"{action} under {uri}: {error}") from None


def checked_client(options: S3Options, bucket: str, uri: str, error_class: type[Exception] = ArchiveError):
    """The options' client, once the bucket (of the location `uri`) is known to be reachable and inside
    the EU/EEA (or allowed)."""
    client = options.client()
    with failing_closed(f"cannot reach bucket {bucket}", uri, error_class):
        region = bucket_region(client, bucket)
    if region not in EEA_REGIONS and not options.allow_outside_eea:
        raise error_class(
            f"bucket {bucket} is in region {region}, outside the EU/EEA: refused (allow it explicitly "
            "with the option allow_outside_eea, Airflow variable lifecycle_s3_allow_outside_eea)"
        )
    return client


def client_error_reason(error) -> str:
    metadata = error.response.get("ResponseMetadata", {})
    code = error.response.get("Error", {}).get("Code", "error")
    retries = metadata.get("RetryAttempts", 0)
    return f"{code} (HTTP {metadata.get('HTTPStatusCode', '?')})" + (f" after {retries} retries" if retries else "")


def is_not_found(error) -> bool:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404


def error_code(error) -> str:
    return error.response.get("Error", {}).get("Code", "")


class S3ArchiveStore:
    """An archive under a bucket's prefix: parts cold and locked, the manifest written last."""

    def __init__(self, bucket: str, prefix: str, options: S3Options):
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    @classmethod
    def from_uri(cls, uri: str, options: S3Options) -> S3ArchiveStore:
        return cls(*split_s3_uri(uri), options)

    @cached_property
    def _client(self):
        return checked_client(self.options, self.bucket, self.uri)

    @cached_property
    def object_lock(self) -> bool:
        from botocore.exceptions import ClientError

        with failing_closed(f"cannot read the Object Lock of bucket {self.bucket}", self.uri):
            try:
                configuration = self._client.get_object_lock_configuration(Bucket=self.bucket)
            except ClientError as error:
                if error_code(error) == "ObjectLockConfigurationNotFoundError":
                    return False
                raise
        return configuration.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _write_arguments(self, storage_class: str, retain_until: date | None) -> dict:
        arguments = {
            "Bucket": self.bucket,
            "StorageClass": storage_class,
            "ServerSideEncryption": self.options.encryption,
            # S3 wants the algorithm named, besides the value, for a write under Object Lock.
            "ChecksumAlgorithm": "SHA256",
        }
        if self.options.kms_key_id:
            arguments["SSEKMSKeyId"] = self.options.kms_key_id
        lock_until = self._lock_until(retain_until)
        if lock_until is not None:
            arguments |= {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": lock_until}
        return arguments

    def _lock_until(self, retain_until: date | None) -> datetime | None:
        """00:00 UTC of retain_until; none for a date already past (a backfill's), which S3 refuses."""
        if retain_until is None or not self.object_lock:
            return None
        instant = datetime.combine(retain_until, time.min, tzinfo=UTC)
        return instant if instant > datetime.now(UTC) else None

    def put_file(self, local: Path, key: str, retain_until: date | None = None) -> dict:
        """Upload a part; returns the S3 checksum it must keep, for the manifest."""
        arguments = self._write_arguments(self.options.storage_class, retain_until) | {"Key": self._object_key(key)}
        with failing_closed(f"cannot write archive part {key}", self.uri):
            if local.stat().st_size >= self.options.multipart_threshold:
                checksum = self._upload_multipart(local, arguments)
            else:
                body = local.read_bytes()
                checksum = sha256_base64(body)
                self._client.put_object(Body=body, ChecksumSHA256=checksum, **arguments)
        return {"s3_checksum_sha256": checksum}

    def _upload_multipart(self, local: Path, arguments: dict) -> str:
        """Each chunk sent with its SHA-256 for S3 to check; the object's checksum is their composite."""
        size = local.stat().st_size
        chunk_size = max(self.options.multipart_chunk_size, -(-size // MAX_MULTIPART_PARTS))
        target = {"Bucket": arguments["Bucket"], "Key": arguments["Key"]}
        upload_id = self._client.create_multipart_upload(**arguments)["UploadId"]
        try:
            parts = self._upload_chunks(local, chunk_size, target | {"UploadId": upload_id})
            completed = self._client.complete_multipart_upload(
                **target, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # An abandoned upload would keep its chunks, personal data included, out of every lock and expiry.
            with suppress(Exception):
                self._client.abort_multipart_upload(**target, UploadId=upload_id)
            raise
        if "ObjectLockMode" in arguments:
            # Some S3-compatible stores drop CreateMultipartUpload's lock headers: lock the version itself.
            self._client.put_object_retention(
                **target,
                VersionId=completed.get("VersionId"),
                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": arguments["ObjectLockRetainUntilDate"]},
            )
        digests = b"".join(base64.b64decode(part["ChecksumSHA256"]) for part in parts)
        return f"{sha256_base64(digests)}-{len(parts)}"

    def _upload_chunks(self, local: Path, chunk_size: int, upload: dict) -> list[dict]:
        parts = []
        with local.open("rb") as handle:
            for number, chunk in enumerate(iter(lambda: handle.read(chunk_size), b""), start=1):
                checksum = sha256_base64(chunk)
                response = self._client.upload_part(**upload, PartNumber=number, Body=chunk, ChecksumSHA256=checksum)
                parts.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum})
        return parts

    def put_manifest(self, batch_key: str, manifest: dict) -> None:
        body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        retain_until = date.fromisoformat(manifest["retain_until"])
        key = self._object_key(f"{batch_key}/{MANIFEST}")
        arguments = self._write_arguments("STANDARD", retain_until) | {"Key": key}
        with failing_closed(f"cannot write the manifest of batch {batch_key}", self.uri):
            self._client.put_object(
                Body=body, ChecksumSHA256=sha256_base64(body), ContentType="application/json", **arguments
            )

    def read_manifest(self, batch_key: str) -> dict | None:
        from botocore.exceptions import ClientError

        key = self._object_key(f"{batch_key}/{MANIFEST}")
        with failing_closed(f"cannot read the manifest of batch {batch_key}", self.uri):
            try:
                body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as error:
                if is_not_found(error):
                    return None
                raise
        try:
            return json.loads(body)
        except ValueError as error:
            raise ArchiveError(f"the manifest of batch {batch_key} cannot be read: {error}") from None

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        with failing_closed(f"cannot check archive part {key}", self.uri):
            try:
                return self._client.head_object(Bucket=self.bucket, Key=self._object_key(key), ChecksumMode="ENABLED")
            except ClientError as error:
                if is_not_found(error):
                    return None
                raise

    def part_matches(self, key: str, sha256: str, size: int, s3_checksum: str | None = None) -> bool:
        """Size and S3's own SHA-256 checksum against the manifest, by HEAD: nothing cold is read."""
        head = self._head(key)
        if head is None:
            return False
        expected = s3_checksum or base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
        stored = checksum_digest(head.get("ChecksumSHA256"))
        return head["ContentLength"] == size and stored == checksum_digest(expected)

    def batch_keys(self) -> list[str]:
        """Every batch with a manifest, by key."""
        folder = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with failing_closed("cannot list the archive's batches", self.uri):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
                keys += [item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(f"/{MANIFEST}")]
        return sorted(key[len(folder) : -len(MANIFEST) - 1] for key in keys)

    def delete_batch(self, batch_key: str, part_keys: list[str]) -> None:
        """Every version of everything under the batch's folder (the parts, `part_keys`, and any left
        by an interrupted write), then of the manifest; a version the lock or a legal hold keeps
        leaves the manifest in place."""
        manifest_key = self._object_key(f"{batch_key}/{MANIFEST}")
        with failing_closed(f"cannot purge batch {batch_key}", self.uri):
            versions = self._versions(self._object_key(f"{batch_key}/"))
            parts = [v for v in versions if v["Key"] != manifest_key]
            refused = self._delete_versions(parts)
            if not refused:
                refused = self._delete_versions([v for v in versions if v["Key"] == manifest_key])
        if refused:
            codes = ", ".join(sorted(set(refused)))
            raise ArchiveError(
                f"batch {batch_key}: {len(refused)} object version(s) not deleted ({codes}); the manifest stays"
            )

    def _versions(self, folder: str) -> list[dict]:
        versions = []
        for page in self._client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                versions.append({"Key": item["Key"], "VersionId": item["VersionId"]})
        return versions

    def _delete_versions(self, versions: list[dict]) -> list[str]:
        """Delete the versions; the error code of each one S3 refused."""
        refused = []
        for start in range(0, len(versions), DELETE_BATCH):
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": versions[start : start + DELETE_BATCH], "Quiet": True}
            )
            refused += [error.get("Code", "error") for error in response.get("Errors", [])]
        return refused

    def restore_status(self, key: str) -> str:
        """`available` to read now, `archived` (cold, no restore asked) or `restoring`."""
        head = self._head(key)
        if head is None:
            raise ArchiveError(f"archive part {key} is missing under {self.uri}")
        if head.get("StorageClass") not in RESTORABLE_CLASSES:
            return "available"
        restore = head.get("Restore")
        if restore is None:
            return "archived"
        return "restoring" if 'ongoing-request="true"' in restore else "available"

    def start_restore(self, key: str, tier: str, days: int) -> None:
        """Ask S3 for a temporary readable copy of a cold part, kept `days` days."""
        from botocore.exceptions import ClientError

        with failing_closed(f"cannot restore archive part {key}", self.uri):
            try:
                self._client.restore_object(
                    Bucket=self.bucket,
                    Key=self._object_key(key),
                    RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
                )
            except ClientError as error:
                if error_code(error) != "RestoreAlreadyInProgress":
                    raise

    def fetch(self, key: str, local: Path) -> None:
        with failing_closed(f"cannot read archive part {key}", self.uri):
            body = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))["Body"]
            with local.open("wb") as handle:
                shutil.copyfileobj(body, handle, 1 << 20)

    def put_ledger(self, key: str, local: Path) -> str:
        """Upload a ledger object in STANDARD (readable at once), with the SHA-256 S3 checks and keeps;
        a retried write replaces it. Returns the digest."""
        body = local.read_bytes()
        arguments = self._write_arguments("STANDARD", None) | {"Key": self._object_key(key)}
        with failing_closed(f"cannot write ledger object {key}", self.uri):
            self._client.put_object(Body=body, ChecksumSHA256=sha256_base64(body), **arguments)
        return hashlib.sha256(body).hexdigest()

    def ledger_keys(self, prefix: str, start_after: str = "") -> list[str]:
        """The keys of the ledger objects under `prefix` that sort after `start_after`, in order: S3
        lists from there on, not the objects before."""
        folder = self._object_key(prefix)
        listing = {"Bucket": self.bucket, "Prefix": folder}
        if start_after:
            listing["StartAfter"] = self._object_key(start_after)
        keys = []
        with failing_closed("cannot list the erasure ledger", self.uri):
            for page in self._client.get_paginator("list_objects_v2").paginate(**listing):
                keys += [item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(LEDGER_SUFFIX)]
        skipped = len(self._object_key(""))
        return sorted(key[skipped:] for key in keys)

    def fetch_ledger(self, key: str, local: Path) -> None:
        """Download a ledger object, checked against the SHA-256 S3 keeps with it."""
        with failing_closed(f"cannot read ledger object {key}", self.uri):
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key), ChecksumMode="ENABLED")
            body = response["Body"].read()
        if checksum_digest(response.get("ChecksumSHA256")) != sha256_base64(body):
            raise ArchiveError(f"ledger object {key} under {self.uri} does not match its SHA-256")
        local.write_bytes(body)
