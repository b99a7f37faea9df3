"""Is a bucket fit to hold the evidence archive? Region inside the EU/EEA, versioning, Object Lock,
default encryption, public access blocked, abandoned multipart uploads cleaned up. Prints each
check and how to fix what is missing; exits 1 when something is.

    python -m lifecycle.stores.bucket_check s3://bucket[/prefix] [--endpoint-url URL] [--region eu-west-3]
        [--allow-outside-eea] [--kms-key-id KEY]

Credentials come from boto3's usual chain (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from lifecycle.stores import ArchiveError
from lifecycle.stores.s3 import (
    DEFAULT_REGION,
    EEA_REGIONS,
    S3Options,
    bucket_region,
    client_error_reason,
    error_code,
    failing_closed,
    split_s3_uri,
)


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str


def check_bucket(
    client, bucket: str, *, allow_outside_eea: bool = False, kms_key_id: str | None = None
) -> list[Finding]:
    with failing_closed(f"cannot check bucket {bucket}", f"s3://{bucket}"):
        return [
            _region(bucket_region(client, bucket), allow_outside_eea),
            _versioning(client, bucket),
            _object_lock(client, bucket),
            _default_encryption(client, bucket, kms_key_id),
            _public_access_block(client, bucket),
            _abort_incomplete_uploads(client, bucket),
        ]


def _region(region: str, allow_outside_eea: bool) -> Finding:
    if region in EEA_REGIONS:
        return Finding("region", True, f"{region}, inside the EU/EEA")
    if allow_outside_eea:
        return Finding("region", True, f"{region}, outside the EU/EEA, explicitly allowed")
    return Finding(
        "region", False, f"{region} is outside the EU/EEA: use a bucket in {DEFAULT_REGION} (or allow it explicitly)"
    )


def _versioning(client, bucket: str) -> Finding:
    status = _read(client.get_bucket_versioning, bucket).get("Status")
    if status == "Enabled":
        return Finding("versioning", True, "enabled")
    return Finding(
        "versioning",
        False,
        f"{status or 'never enabled'}: aws s3api put-bucket-versioning "
        f"--bucket {bucket} --versioning-configuration Status=Enabled",
    )


def _object_lock(client, bucket: str) -> Finding:
    configuration = _read(client.get_object_lock_configuration, bucket, "ObjectLockConfigurationNotFoundError")
    if configuration.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled":
        return Finding("object lock", True, "enabled (each part gets a COMPLIANCE retention until its retain_until)")
    return Finding(
        "object lock",
        False,
        "not enabled: parts could be deleted before their retain_until; "
        f"aws s3api put-object-lock-configuration --bucket {bucket} "
        "--object-lock-configuration ObjectLockEnabled=Enabled "
        "(versioning first)",
    )


def _default_encryption(client, bucket: str, kms_key_id: str | None) -> Finding:
    configuration = _read(client.get_bucket_encryption, bucket, "ServerSideEncryptionConfigurationNotFoundError")
    rules = configuration.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    defaults = [rule.get("ApplyServerSideEncryptionByDefault", {}) for rule in rules]
    if not defaults:
        return Finding(
            "default encryption",
            False,
            f"none: aws s3api put-bucket-encryption --bucket {bucket} --server-side-encryption-configuration ...",
        )
    algorithm = defaults[0].get("SSEAlgorithm")
    if kms_key_id and defaults[0].get("KMSMasterKeyID") not in (None, kms_key_id):
        return Finding("default encryption", False, f"{algorithm} with another KMS key than the archive's")
    return Finding("default encryption", True, algorithm or "set")


def _public_access_block(client, bucket: str) -> Finding:
    configuration = _read(client.get_public_access_block, bucket, "NoSuchPublicAccessBlockConfiguration")
    flags = configuration.get("PublicAccessBlockConfiguration", {})
    names = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    if flags and all(flags.get(name) for name in names):
        return Finding("public access block", True, "all four settings on")
    return Finding(
        "public access block",
        False,
        "not fully on: aws s3api put-public-access-block --bucket "
        f"{bucket} --public-access-block-configuration " + ",".join(f"{name}=true" for name in names),
    )


def _abort_incomplete_uploads(client, bucket: str) -> Finding:
    configuration = _read(client.get_bucket_lifecycle_configuration, bucket, "NoSuchLifecycleConfiguration")
    if any(
        rule.get("Status") == "Enabled" and "AbortIncompleteMultipartUpload" in rule
        for rule in configuration.get("Rules", [])
    ):
        return Finding("abandoned uploads", True, "a lifecycle rule aborts incomplete multipart uploads")
    return Finding(
        "abandoned uploads",
        False,
        "no lifecycle rule aborts incomplete multipart uploads "
        "(their chunks would keep data out of every lock and expiry)",
    )


def _read(operation, bucket: str, absent_code: str | None = None) -> dict:
    """A bucket setting; {} when S3 says it was never set."""
    from botocore.exceptions import ClientError

    try:
        return operation(Bucket=bucket)
    except ClientError as error:
        if absent_code and error_code(error) == absent_code:
            return {}
        reason = client_error_reason(error)
        raise ArchiveError(f"cannot read bucket {bucket} ({operation.__name__}): {reason}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("uri", help="the archive location, s3://bucket[/prefix]")
    parser.add_argument("--endpoint-url", help="an S3-compatible endpoint (default: AWS)")
    parser.add_argument("--region", default=DEFAULT_REGION, help=f"the client's region (default {DEFAULT_REGION})")
    parser.add_argument("--allow-outside-eea", action="store_true", help="accept a bucket outside the EU/EEA")
    parser.add_argument("--kms-key-id", help="the KMS key the archive encrypts with, if any")
    args = parser.parse_args(argv)
    try:
        bucket, _ = split_s3_uri(args.uri)
        client = S3Options(region=args.region, endpoint_url=args.endpoint_url, max_attempts=3).client()
        findings = check_bucket(client, bucket, allow_outside_eea=args.allow_outside_eea, kms_key_id=args.kms_key_id)
    except ArchiveError as error:
        print(f"bucket check failed: {error}", file=sys.stderr)
        return 2
    missing = [finding for finding in findings if not finding.ok]
    print(f"s3://{bucket}: {len(findings) - len(missing)} of {len(findings)} checks pass")
    for finding in findings:
        print(f"  {'ok' if finding.ok else 'MISSING':<8} {finding.check:<20} {finding.detail}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
