"""Where archive batches live: `file:///abs/dir` here, `s3://bucket/prefix` in s3_archive.py; the
format is that of CONTRACTS.md: Parquet parts (zstd) and a `manifest.json` beside them, naming each
part's key, rows and SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from lifecycle.s3_archive import S3ArchiveStore, S3Options

MANIFEST = "manifest.json"


class ArchiveError(RuntimeError):
    """The archive cannot be written, read or trusted; the message names the batch and the part."""


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FileArchiveStore:
    """An archive folder: writes are atomic (temporary name, then rename), the manifest last."""

    def __init__(self, root: Path):
        self.root = root
        self.uri = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ArchiveError(f"archive key {key!r} leaves the archive folder")
        return path

    def put_file(self, local: Path, key: str, retain_until: date | None = None) -> dict:
        """Copy a part in; nothing to add to its manifest entry (a folder keeps no retention)."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(target.name + ".partial")
            shutil.copyfile(local, temporary)
            os.replace(temporary, target)
        except OSError as error:
            raise ArchiveError(f"cannot write archive part {key} under {self.uri}: {error.strerror}") from None
        return {}

    def put_manifest(self, batch_key: str, manifest: dict) -> None:
        target = self._path(f"{batch_key}/{MANIFEST}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(MANIFEST + ".partial")
            temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
            os.replace(temporary, target)
        except OSError as error:
            raise ArchiveError(f"cannot write the manifest of batch {batch_key}: {error.strerror}") from None

    def read_manifest(self, batch_key: str) -> dict | None:
        path = self._path(f"{batch_key}/{MANIFEST}")
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ArchiveError(f"the manifest of batch {batch_key} cannot be read: {error}") from None

    def part_matches(self, key: str, sha256: str, size: int, s3_checksum: str | None = None) -> bool:
        path = self._path(key)
        return path.is_file() and path.stat().st_size == size and sha256_of_file(path) == sha256

    def batch_keys(self) -> list[str]:
        """Every batch with a manifest, by key."""
        if not self.root.exists():
            return []
        return sorted(str(path.parent.relative_to(self.root)) for path in self.root.rglob(MANIFEST))

    def delete_batch(self, batch_key: str, part_keys: list[str]) -> None:
        """Parts first, the manifest last, so a half-purged batch still names what remains."""
        for key in part_keys:
            self._path(key).unlink(missing_ok=True)
        self._path(f"{batch_key}/{MANIFEST}").unlink(missing_ok=True)
        folder = self._path(batch_key)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def restore_status(self, key: str) -> str:
        """A folder holds nothing cold: every part is `available` (lifecycle.restore)."""
        if not self._path(key).is_file():
            raise ArchiveError(f"archive part {key} is missing under {self.uri}")
        return "available"

    def fetch(self, key: str, local: Path) -> None:
        shutil.copyfile(self._path(key), local)


def open_archive_store(uri: str, s3_options: S3Options | None = None) -> FileArchiveStore | S3ArchiveStore:
    """The store of `uri`; `s3_options` (storage class, encryption, client...) serve s3:// only."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        root = Path(parsed.path)
        if not root.is_absolute():
            raise ArchiveError(f"archive location {uri!r} is not an absolute file:/// URI")
        return FileArchiveStore(root)
    if parsed.scheme == "s3":
        from lifecycle.s3_archive import S3ArchiveStore, S3Options

        return S3ArchiveStore.from_uri(uri, s3_options or S3Options())
    raise ArchiveError(
        f"archive location {uri!r}: unsupported scheme {parsed.scheme!r} (use file:///abs/dir or s3://bucket/prefix)"
    )
