"""Letter content on the filesystem, addressed by its SHA-256 digest.

Content never enters the event store: the ``Deposited`` event binds each
attachment's digest, and the bytes live here, written once and atomically,
read back in chunks. Storing the same bytes twice stores them once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from pli.infrastructure.files import write_atomically

__all__ = ["CHUNK_SIZE", "ContentMissing", "ContentStore"]

CHUNK_SIZE = 64 * 1024


class ContentMissing(Exception):
    """No content, or content that no longer matches its digest, is stored."""


class ContentStore:
    """Content-addressed files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; return its SHA-256 (hex) and size."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            write_atomically(path, data)
        return digest, len(data)

    def check(self, sha256: str) -> None:
        """Raise ContentMissing unless the stored bytes match their digest."""
        for _ in self.read_chunks(sha256):
            pass

    def read_chunks(self, sha256: str) -> Iterator[bytes]:
        """Yield the stored bytes in chunks, checking the digest at the end."""
        path = self._path(sha256)
        if not path.is_file():
            raise ContentMissing(sha256)
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                hasher.update(chunk)
                yield chunk
        if hasher.hexdigest() != sha256:
            raise ContentMissing(f"{sha256} (stored bytes changed)")
