"""Letter content on the filesystem, one folder per letter, by SHA-256.

Content never enters the event store: the ``Deposited`` event binds each
attachment's digest, and the bytes live here, written once and atomically,
read back in chunks. Each letter keeps its own copy, so the retention
policy can purge one letter's content without touching another's.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

from pli.infrastructure.files import write_atomically

__all__ = ["CHUNK_SIZE", "ContentMissing", "ContentStore"]

CHUNK_SIZE = 64 * 1024


class ContentMissing(Exception):
    """No content, or content that no longer matches its digest, is stored."""


class ContentStore:
    """Content-addressed files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, letter_id: UUID) -> Path:
        return self.root / str(letter_id)

    def _path(self, letter_id: UUID, sha256: str) -> Path:
        return self._folder(letter_id) / sha256

    def put(self, letter_id: UUID, data: bytes) -> tuple[str, int]:
        """Store ``data`` for a letter; return its SHA-256 (hex) and size."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(letter_id, digest)
        if not path.exists():
            write_atomically(path, data)
        return digest, len(data)

    def check(self, letter_id: UUID, sha256: str) -> None:
        """Raise ContentMissing unless the stored bytes match their digest."""
        for _ in self.read_chunks(letter_id, sha256):
            pass

    def purge(self, letter_id: UUID) -> None:
        """Delete all of a letter's content."""
        shutil.rmtree(self._folder(letter_id), ignore_errors=True)

    def read_chunks(self, letter_id: UUID, sha256: str) -> Iterator[bytes]:
        """Yield the stored bytes in chunks, checking the digest at the end."""
        path = self._path(letter_id, sha256)
        if not path.is_file():
            raise ContentMissing(sha256)
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                hasher.update(chunk)
                yield chunk
        if hasher.hexdigest() != sha256:
            raise ContentMissing(f"{sha256} (stored bytes changed)")
