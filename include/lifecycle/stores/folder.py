"""An archive in a folder, `file:///abs/dir`: the single-machine default (a cluster needs S3)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import date
from pathlib import Path

from lifecycle.stores import LEDGER_SUFFIX, MANIFEST, ArchiveError, sha256_of_file

LEDGER_DIGEST = ".sha256"


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

    def put_ledger(self, key: str, local: Path) -> str:
        """Copy a ledger object in (replacing an earlier try's), its SHA-256 beside it in `<key>.sha256`;
        returns the digest."""
        digest = sha256_of_file(local)
        self.put_file(local, key)
        target = self._path(f"{key}{LEDGER_DIGEST}")
        try:
            temporary = target.with_name(target.name + ".partial")
            temporary.write_text(f"{digest}\n", encoding="ascii")
            os.replace(temporary, target)
        except OSError as error:
            raise ArchiveError(f"cannot write the SHA-256 of ledger object {key}: {error.strerror}") from None
        return digest

    def ledger_keys(self, prefix: str, start_after: str = "") -> list[str]:
        """The keys of the ledger objects under `prefix` that sort after `start_after`, in order."""
        root = self.root.resolve()
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        keys = (path.relative_to(root).as_posix() for path in folder.rglob(f"*{LEDGER_SUFFIX}"))
        return sorted(key for key in keys if key > start_after)

    def fetch_ledger(self, key: str, local: Path) -> None:
        """Copy a ledger object out, checked against the SHA-256 written beside it."""
        digest_path = self._path(f"{key}{LEDGER_DIGEST}")
        try:
            shutil.copyfile(self._path(key), local)
            expected = digest_path.read_text(encoding="ascii").strip()
        except OSError as error:
            raise ArchiveError(f"cannot read ledger object {key} under {self.uri}: {error.strerror}") from None
        if sha256_of_file(local) != expected:
            raise ArchiveError(f"ledger object {key} under {self.uri} does not match its SHA-256")
