"""Where archive batches are kept, behind one small interface: put_file, put_manifest, read_manifest,
part_matches, batch_keys, delete_batch, restore_status, fetch; and the erasure ledger beside them
(lifecycle.ledger): put_ledger, ledger_keys, fetch_ledger. A folder (`file:///abs/dir`,
lifecycle.stores.folder) or an S3 bucket (`s3://bucket/prefix`, lifecycle.stores.s3). The format
is the archive contract: Parquet parts (zstd) and a `manifest.json` beside them, naming each part's
key, rows and SHA-256. Ledger objects are Parquet files without a manifest, kept readable at once
(STANDARD) with their SHA-256: nothing listing batches (batch_keys) sees them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from lifecycle.stores.folder import FileArchiveStore
    from lifecycle.stores.s3 import S3ArchiveStore, S3Options

MANIFEST = "manifest.json"
LEDGER_SUFFIX = ".parquet"


class ArchiveError(RuntimeError):
    """The archive cannot be written, read or trusted; the message names the batch and the part."""


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_archive_store(uri: str, s3_options: S3Options | None = None) -> FileArchiveStore | S3ArchiveStore:
    """The store of `uri`; `s3_options` (storage class, encryption, client...) serve s3:// only."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        root = Path(parsed.path)
        if not root.is_absolute():
            raise ArchiveError(f"archive location {uri!r} is not an absolute file:/// URI")
        from lifecycle.stores.folder import FileArchiveStore

        return FileArchiveStore(root)
    if parsed.scheme == "s3":
        from lifecycle.stores.s3 import S3ArchiveStore, S3Options

        return S3ArchiveStore.from_uri(uri, s3_options or S3Options())
    raise ArchiveError(
        f"archive location {uri!r}: unsupported scheme {parsed.scheme!r} (use file:///abs/dir or s3://bucket/prefix)"
    )
