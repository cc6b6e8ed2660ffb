"""Writing and reading bundle archives, and what bundle parts plug into.

The writer streams each file into the ZIP archive through SHA-256, so the
manifest's digests are those of the bytes written and no file is ever held
whole in memory. The reader opens members one at a time, never extracts to
disk, and caps what it reads whole, so a hostile archive cannot fill memory.

A bundle *part* (events, certificates, statistics, ...) is an exporter and a
checker. Both see the period's events once, in log order (``observe``); the
exporter then writes its files, the checker checks them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from pli.compliance.bundle_format import EventRecord

__all__ = [
    "BundleError",
    "BundleReader",
    "BundleWriter",
    "Fault",
    "FileEntry",
    "Findings",
    "PartChecker",
    "PartExporter",
    "ScannedEvent",
    "UnreadableMember",
    "UnusableBundle",
]

_CHUNK = 1024 * 1024
_MAX_WHOLE = 64 * 1024 * 1024


class BundleError(Exception):
    """The bundle cannot be exported; nothing was written."""


class UnusableBundle(Exception):
    """The file is not a bundle the verifier can open at all."""


class UnreadableMember(ValueError):
    """A file inside the archive cannot be read back (damaged compression)."""


_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle as the manifest lists it."""

    path: str
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        """The manifest's entry."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


class _HashingWriter:
    """Passes bytes to a ZIP member, counting and hashing them."""

    def __init__(self, member: IO[bytes]) -> None:
        self._member = member
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._member.write(data)


class BundleWriter:
    """Adds files to the archive and remembers their digests for the manifest."""

    def __init__(self, archive: zipfile.ZipFile, created_at: dt.datetime) -> None:
        self.archive = archive
        self.files: list[FileEntry] = []
        self._date_time = created_at.astimezone(dt.UTC).timetuple()[:6]

    def _info(self, path: str, compress: bool) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(path, date_time=self._date_time)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        return info

    @contextmanager
    def open(self, path: str, *, compress: bool = True) -> Iterator[_HashingWriter]:
        """A writable stream for one new file of the bundle."""
        info = self._info(path, compress)
        with self.archive.open(info, "w", force_zip64=True) as member:
            writer = _HashingWriter(member)
            yield writer
        self.files.append(FileEntry(path, writer.digest.hexdigest(), writer.size))

    def write_bytes(self, path: str, data: bytes, *, compress: bool = True) -> None:
        """Add a small file."""
        with self.open(path, compress=compress) as out:
            out.write(data)

    def write_unlisted(self, path: str, data: bytes) -> None:
        """Add the manifest or its seal, which the manifest cannot list."""
        self.archive.writestr(self._info(path, compress=True), data)

    def write_json(self, path: str, value: Any) -> None:
        """Add a JSON document, indented for people to read."""
        text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
        self.write_bytes(path, text.encode("utf-8") + b"\n")

    def copy(self, path: str, source: IO[bytes], *, compress: bool = True) -> None:
        """Add a file streamed from ``source``, read from its current position."""
        with self.open(path, compress=compress) as out:
            shutil.copyfileobj(source, out, _CHUNK)  # type: ignore[misc]


@dataclass(frozen=True)
class ScannedEvent:
    """An event of the log as the exporter reads it: record, time and payload."""

    record: EventRecord
    timestamp: dt.datetime
    facts: Mapping[str, Any]
    in_period: bool


class PartExporter(Protocol):
    """The export half of a bundle part."""

    def observe(self, event: ScannedEvent) -> None:
        """See one event, from the log's start to the period's end."""

    def write(self, bundle: BundleWriter) -> None:
        """Add the part's files once every event was seen."""


@dataclass(frozen=True)
class Fault:
    """One thing wrong with a bundle, named by part and place."""

    part: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"FAULT [{self.part}] {self.where}: {self.reason}"


@dataclass
class Findings:
    """What the verifier found: faults, and notes for the report."""

    faults: list[Fault] = field(default_factory=list)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fault(self, part: str, where: str, reason: str) -> None:
        """Record a fault."""
        self.faults.append(Fault(part, where, reason))

    def note(self, part: str, key: str, value: Any) -> None:
        """Record a fact the report shows (counts, fingerprints)."""
        self.notes.setdefault(part, {})[key] = value

    @property
    def clean(self) -> bool:
        """Whether no fault was found."""
        return not self.faults


class PartChecker(Protocol):
    """The verification half of a bundle part."""

    def observe(self, record: EventRecord, line: int) -> None:
        """See one event line of ``events.jsonl``, in order."""

    def check(self) -> None:
        """Check the part's files once every event line was seen."""


class BundleReader:
    """Reads members of a bundle archive without extracting anything."""

    def __init__(self, path: Path) -> None:
        try:
            self.archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise UnusableBundle(f"{path}: not a readable ZIP archive ({exc})") from exc
        self.path = path
        self.names = [info.filename for info in self.archive.infolist()]
        self.manifest: dict[str, Any] = {}
        self.created_at: dt.datetime | None = None

    def close(self) -> None:
        """Close the archive."""
        self.archive.close()

    def has(self, name: str) -> bool:
        """Whether the archive holds a member of this name."""
        return name in self.names

    def members(self, prefix: str) -> list[str]:
        """The members whose names start with ``prefix``, sorted."""
        return sorted({n for n in self.names if n.startswith(prefix)})

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """A readable stream of one member; raises KeyError if absent."""
        with self.archive.open(name) as member:
            yield member

    def read(self, name: str, limit: int = _MAX_WHOLE) -> bytes:
        """A whole member, refusing one larger than ``limit`` bytes."""
        info = self.archive.getinfo(name)
        if info.file_size > limit:
            raise ValueError(f"{name} is larger than {limit} bytes")
        try:
            with self.archive.open(info) as member:
                data = member.read(limit + 1)
        except _ARCHIVE_ERRORS as exc:
            raise UnreadableMember(f"{name}: {exc.__class__.__name__}") from exc
        if len(data) > limit:
            raise ValueError(f"{name} is larger than {limit} bytes")
        return data

    def lines(self, name: str) -> Iterator[tuple[int, bytes]]:
        """A member's lines, numbered from 1, without their newlines."""
        try:
            with self.open(name) as member:
                for number, line in enumerate(member, start=1):
                    yield number, line.rstrip(b"\n")
        except _ARCHIVE_ERRORS as exc:
            raise UnreadableMember(f"{name}: {exc.__class__.__name__}") from exc

    def digest(self, name: str) -> tuple[str, int]:
        """A member's SHA-256 and size, streamed."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self.open(name) as member:
                while chunk := member.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except _ARCHIVE_ERRORS as exc:
            raise UnreadableMember(f"{name}: {exc.__class__.__name__}") from exc
        return digest.hexdigest(), size
