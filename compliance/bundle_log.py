"""The log binding part: the period's events bound to the transparency log.

The per-letter chains prove that no event of a letter was changed, removed
or reordered; the transparency log (RFC 9162, :mod:`pli.infrastructure.merkle`)
proves that the period's events are those the provider published, in a tree
whose checkpoints anyone can compare with a checkpoint published elsewhere.
Three files make the binding:

- ``log/checkpoints.jsonl``: every stored checkpoint whose size falls inside
  the period's log positions (its last leaf is an event of the period) and,
  last, the latest checkpoint at export time, which covers every event of the
  bundle; each with its seal and time stamp, smallest first;
- ``log/consistency.jsonl``: a consistency proof (RFC 9162 §2.1.4) between
  each two successive checkpoints, so each one extends the one before;
- ``log/inclusion.jsonl``: in the order of ``events.jsonl``, each event's
  store position (as ``events.jsonl`` gives it), log position (the 0-based
  leaf index), leaf hash and inclusion proof (RFC 9162 §2.1.3) in the latest
  checkpoint.

``pli.compliance.bundle_log_check`` checks them offline. Inclusion proofs
are written a page at a time, each page's tree nodes read at once, and the
period's leaves are spooled to disk, so memory stays flat however long the
period.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from pli.compliance.bundle_format import (
    LOG_CHECKPOINTS,
    LOG_CONSISTENCY,
    LOG_INCLUSION,
    EventRecord,
    MalformedLine,
    canonical_json,
)
from pli.compliance.bundle_io import BundleError, BundleWriter, ScannedEvent
from pli.compliance.bundle_sources import ExportSource
from pli.infrastructure import merkle
from pli.infrastructure.checkpoints import Checkpoint
from pli.infrastructure.transparency import LogEntry, LogStore

__all__ = [
    "PART",
    "ConsistencyProof",
    "InclusionProof",
    "LogBindingExporter",
    "json_object",
    "leaf_of",
]

PART = "log"
_PAGE = 1000
# A spooled event of the period: its notification id and its leaf hash.
_SPOOLED = struct.Struct(">Q32s")
# A path in a tree of 2**64 leaves at most.
_MAX_PATH = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


def leaf_of(record: EventRecord) -> bytes:
    """The event's leaf hash in the log: RFC 9162 leaf of its event digest."""
    return merkle.leaf_hash(bytes.fromhex(record.digest()))


def _hashes(value: Any, name: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > _MAX_PATH:
        raise MalformedLine(f"{name} is not a list of at most {_MAX_PATH} hashes")
    return tuple(_hash(item, name) for item in value)


def _hash(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise MalformedLine(f"{name} holds something other than a SHA-256 in hex")
    return bytes.fromhex(value)


def _whole(value: Any, name: str, least: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise MalformedLine(f"{name} is not a whole number of at least {least}")
    return value


def json_object(line: bytes) -> dict[str, Any]:
    """One line of JSON that must be an object; raises MalformedLine."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise MalformedLine(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(value, dict):
        raise MalformedLine("not a JSON object")
    return value


@dataclass(frozen=True)
class InclusionProof:
    """One line of ``log/inclusion.jsonl``: where an event sits in the log."""

    position: int
    aggregate_id: str
    version: int
    log_position: int
    leaf_hash: bytes
    path: tuple[bytes, ...]

    def to_line(self) -> bytes:
        """The JSON line (newline included)."""
        value = {
            "position": self.position,
            "aggregate": self.aggregate_id,
            "version": self.version,
            "log_position": self.log_position,
            "leaf_hash": self.leaf_hash.hex(),
            "path": [node.hex() for node in self.path],
        }
        return canonical_json(value) + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> InclusionProof:
        """Read one line; raises MalformedLine naming what is wrong."""
        value = json_object(line)
        try:
            aggregate_id = value["aggregate"]
            if not isinstance(aggregate_id, str):
                raise MalformedLine("aggregate is not a string")
            return cls(
                position=_whole(value["position"], "position", 1),
                aggregate_id=aggregate_id,
                version=_whole(value["version"], "version", 1),
                log_position=_whole(value["log_position"], "log_position"),
                leaf_hash=_hash(value["leaf_hash"], "leaf_hash"),
                path=_hashes(value["path"], "path"),
            )
        except KeyError as missing:
            raise MalformedLine(f"field {missing} is missing") from None


@dataclass(frozen=True)
class ConsistencyProof:
    """One line of ``log/consistency.jsonl``: tree ``second`` extends ``first``."""

    first: int
    second: int
    proof: tuple[bytes, ...]

    def to_line(self) -> bytes:
        """The JSON line (newline included)."""
        value = {
            "first": self.first,
            "second": self.second,
            "proof": [node.hex() for node in self.proof],
        }
        return canonical_json(value) + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> ConsistencyProof:
        """Read one line; raises MalformedLine naming what is wrong."""
        value = json_object(line)
        try:
            return cls(
                first=_whole(value["first"], "first", 1),
                second=_whole(value["second"], "second", 1),
                proof=_hashes(value["proof"], "proof"),
            )
        except KeyError as missing:
            raise MalformedLine(f"field {missing} is missing") from None


class LogBindingExporter:
    """Spools the period's leaves, then writes checkpoints and proofs."""

    def __init__(self, source: ExportSource) -> None:
        self.log: LogStore = source.log
        self.latest = source.checkpoint
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=source.spool_dir)
        self._first: int | None = None
        self._count = 0

    def observe(self, event: ScannedEvent) -> None:
        """Keep the leaf of an event of the period."""
        if not event.in_period:
            return
        record = event.record
        if self._first is None:
            self._first = record.position
        self._spool.write(_SPOOLED.pack(record.position or 0, leaf_of(record)))
        self._count += 1

    def write(self, bundle: BundleWriter) -> None:
        """Add the checkpoints, the consistency and the inclusion proofs."""
        first = self._first_log_position()
        sizes: list[int] = []
        with bundle.open(LOG_CHECKPOINTS) as out:
            for checkpoint in self._checkpoints(first):
                out.write(canonical_json(checkpoint.to_json()) + b"\n")
                sizes.append(checkpoint.size)
        with bundle.open(LOG_CONSISTENCY) as out:
            for older, newer in itertools.pairwise(sizes):
                proof = self.log.consistency_proof(older, newer)
                out.write(ConsistencyProof(older, newer, tuple(proof)).to_line())
        with bundle.open(LOG_INCLUSION) as out:
            if first is not None:
                self._write_inclusion(out, first)
        self._spool.close()

    def _first_log_position(self) -> int | None:
        if self._first is None or self.latest is None:
            return None
        notification_id = self._first
        # Leaves are in store order, so their store positions grow with them.
        position = bisect.bisect_left(
            range(self.latest.size),
            notification_id,
            key=lambda p: self._entry(p).notification_id,
        )
        if (
            position == self.latest.size
            or self._entry(position).notification_id != notification_id
        ):
            raise BundleError(
                f"the period's first event (store position {notification_id}) is "
                "not in the transparency log; run `pli audit verify`"
            )
        return position

    def _entry(self, position: int) -> LogEntry:
        entries = self.log.entries(position, 1)
        if not entries or entries[0].position != position:
            raise BundleError(
                f"the transparency log lacks log position {position}; "
                "run `pli audit verify`"
            )
        return entries[0]

    def _checkpoints(self, first: int | None) -> Iterator[Checkpoint]:
        latest = self.latest
        if latest is None:
            return
        if first is not None:
            last = first + self._count - 1
            # Those whose last leaf is an event of the period, the latest apart.
            upto = min(last + 1, latest.size - 1)
            yield from _stored_checkpoints(self.log, first, upto)
        yield latest

    def _write_inclusion(self, out: Any, first: int) -> None:
        assert self.latest is not None
        size = self.latest.size
        self._spool.seek(0)
        position = first
        while chunk := self._spool.read(_SPOOLED.size * _PAGE):
            spooled = list(_SPOOLED.iter_unpack(chunk))
            entries = self.log.entries(position, len(spooled))
            paths = _inclusion_paths(self.log, position, len(entries), size)
            for index, (notification_id, leaf) in enumerate(spooled):
                entry = _entry_of(entries, position, index, notification_id, leaf)
                line = InclusionProof(
                    entry.notification_id,
                    entry.aggregate_id,
                    entry.version,
                    entry.position,
                    entry.leaf_hash,
                    tuple(paths[index]),
                )
                out.write(line.to_line())
            position += len(spooled)


def _stored_checkpoints(log: LogStore, after: int, upto: int) -> Iterator[Checkpoint]:
    """The stored checkpoints of sizes in (after, upto], smallest first."""
    while after < upto:
        page = log.checkpoints(after, _PAGE)
        for checkpoint in page:
            if checkpoint.size > upto:
                return
            yield checkpoint
        if len(page) < _PAGE:
            return
        after = page[-1].size


def _entry_of(
    entries: list[LogEntry], start: int, index: int, notification_id: int, leaf: bytes
) -> LogEntry:
    """The leaf at ``start + index``, which must be this event's."""
    position = start + index
    entry = entries[index] if index < len(entries) else None
    if entry is None or entry.notification_id != notification_id:
        raise BundleError(
            f"log position {position} is not the event at store position "
            f"{notification_id}; run `pli audit verify`"
        )
    if entry.leaf_hash != leaf:
        raise BundleError(
            f"the leaf at log position {position} is not the hash of its event; "
            "run `pli audit verify`"
        )
    return entry


def _inclusion_paths(
    log: LogStore, start: int, count: int, size: int
) -> list[list[bytes]]:
    """The audit paths of ``count`` leaves from ``start``, from one read."""
    positions = range(start, start + count)
    hashes: dict[merkle.Node, bytes] = {}

    def read(nodes: Any) -> dict[merkle.Node, bytes]:
        return {node: hashes[node] for node in nodes if node in hashes}

    try:
        wanted = {
            node
            for position in positions
            for low, high in merkle.inclusion_ranges(position, size)
            for node in merkle.range_nodes(low, high)
        }
        hashes.update(log.read_nodes(sorted(wanted)))
        return [merkle.inclusion_proof(p, size, read) for p in positions]
    except merkle.TreeRangeError as exc:
        raise BundleError(
            f"the transparency log lacks tree nodes ({exc}); run `pli audit verify`"
        ) from exc
