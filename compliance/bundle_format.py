"""What a compliance bundle holds, file by file, shared by exporter and verifier.

A bundle is one ZIP archive. ZIP rather than tar because its central
directory lets the verifier read ``manifest.json`` first and then each file
on its own, without unpacking anything to disk, and because the exporter can
stream every member through ``zipfile`` with ZIP64 for large periods.

Every file but the manifest and its seal is listed in ``manifest.json`` with
its SHA-256 and size; ``manifest.sig`` is the token's seal over the manifest
bytes, a DER ECDSA P-256/SHA-256 signature that ``openssl dgst -verify``
checks with the seal certificate in ``certs/``. The manifest names the seal
key, so it is itself covered by the seal.

Event lines carry only what the seal and the chain cover: the event's
position in the event store (its notification id), aggregate id, version,
topic, the exact envelope header line and the payload's SHA-256, never the
payload (``pli.infrastructure.envelope``). Its *log position*, the 0-based
leaf index in the transparency log, is in ``log/inclusion.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pli.infrastructure.envelope import (
    Envelope,
    event_digest_from_parts,
    seal_message_from_parts,
)

__all__ = [
    "CERTS_DIR",
    "CHAIN_CONTEXT",
    "CONFIGURATION",
    "EVENTS",
    "FORMAT",
    "KEY_CEREMONY",
    "LOG_CHECKPOINTS",
    "LOG_CONSISTENCY",
    "LOG_INCLUSION",
    "MANIFEST",
    "MANIFEST_SIGNATURE",
    "PROOFS_DIR",
    "SOFTWARE",
    "STATISTICS",
    "ChainContext",
    "EventRecord",
    "MalformedLine",
    "Period",
    "PeriodError",
    "canonical_json",
    "iso_utc",
    "parse_bound",
    "parse_iso_utc",
]

FORMAT = "pli-compliance-bundle/1"
MANIFEST = "manifest.json"
MANIFEST_SIGNATURE = "manifest.sig"
EVENTS = "events.jsonl"
CHAIN_CONTEXT = "chain-context.jsonl"
KEY_CEREMONY = "key-ceremony.jsonl"
CERTS_DIR = "certs/"
CONFIGURATION = "configuration.json"
SOFTWARE = "software.json"
STATISTICS = "statistics.json"
PROOFS_DIR = "proofs/"
LOG_CHECKPOINTS = "log/checkpoints.jsonl"
LOG_CONSISTENCY = "log/consistency.jsonl"
LOG_INCLUSION = "log/inclusion.jsonl"

_HEX64 = re.compile(r"[0-9a-f]{64}")


class MalformedLine(ValueError):
    """A line of a bundle file is not what the format says."""


def canonical_json(value: Any) -> bytes:
    """One line of JSON with sorted keys, as every bundle file writes it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def iso_utc(moment: dt.datetime) -> str:
    """A UTC instant as ISO 8601 with a ``Z``."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_iso_utc(text: str) -> dt.datetime:
    """Read back :func:`iso_utc`; raises ValueError on anything else."""
    moment = dt.datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment.astimezone(dt.UTC)


@dataclass(frozen=True)
class EventRecord:
    """One sealed event as a bundle carries it: everything but the payload."""

    position: int | None
    aggregate_id: str
    version: int
    topic: str
    header_line: bytes
    payload_sha256: bytes

    def to_line(self) -> bytes:
        """The JSON line for ``events.jsonl`` (newline included)."""
        return canonical_json(self.to_json()) + b"\n"

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {
            "position": self.position,
            "aggregate": self.aggregate_id,
            "version": self.version,
            "topic": self.topic,
            # The exact stored bytes, so the digest is recomputed from them.
            "header": self.header_line.decode("utf-8", "backslashreplace"),
            "payload_sha256": self.payload_sha256.hex(),
        }

    @classmethod
    def from_json(cls, value: Any) -> EventRecord:
        """Read a record; raises MalformedLine naming what is wrong."""
        if not isinstance(value, dict):
            raise MalformedLine("not a JSON object")
        try:
            position = value["position"]
            version = value["version"]
            digest = value["payload_sha256"]
            record = cls(
                position=position,
                aggregate_id=_text(value["aggregate"], "aggregate"),
                version=version,
                topic=_text(value["topic"], "topic"),
                header_line=_text(value["header"], "header").encode(),
                payload_sha256=bytes.fromhex(_text(digest, "payload_sha256")),
            )
        except KeyError as missing:
            raise MalformedLine(f"field {missing} is missing") from None
        except ValueError as exc:
            raise MalformedLine(str(exc)) from None
        if position is not None and not _is_count(position):
            raise MalformedLine("position is not a positive whole number")
        if not _is_count(version):
            raise MalformedLine("version is not a positive whole number")
        if not _HEX64.fullmatch(digest):
            raise MalformedLine("payload_sha256 is not a SHA-256 in hex")
        return record

    @classmethod
    def parse(cls, line: bytes) -> EventRecord:
        """Read one line of ``events.jsonl``."""
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise MalformedLine(f"not JSON ({exc.__class__.__name__})") from None
        return cls.from_json(value)

    @cached_property
    def _envelope(self) -> Envelope:
        return Envelope.from_bytes(self.header_line + b"\n")

    def envelope(self) -> Envelope:
        """The parsed header: previous digest, key id, seal."""
        return self._envelope

    def digest(self) -> str:
        """The digest the aggregate's next event chains to."""
        return event_digest_from_parts(
            self.aggregate_id,
            self.version,
            self.topic,
            self.header_line,
            self.payload_sha256,
        )

    def seal_message(self, previous: str) -> bytes:
        """The message the event's seal signs."""
        return seal_message_from_parts(
            self.aggregate_id, self.version, self.topic, self.payload_sha256, previous
        )

    def where(self) -> str:
        """How a report names this event."""
        return f"aggregate {self.aggregate_id} version {self.version}"


@dataclass(frozen=True)
class ChainContext:
    """What anchors one aggregate's events in the period to its earlier chain.

    ``previous`` is the aggregate's last event before the period (None when
    the period starts at version 1): its seal and digest let the verifier
    check the first link inside the period. ``first_version`` and
    ``last_version`` say which versions the period holds, so a removed first
    or last event is noticed too.
    """

    aggregate_id: str
    first_version: int
    last_version: int
    previous: EventRecord | None

    def to_line(self) -> bytes:
        """The JSON line for ``chain-context.jsonl``."""
        value = {
            "aggregate": self.aggregate_id,
            "first_version": self.first_version,
            "last_version": self.last_version,
            "previous": None if self.previous is None else self.previous.to_json(),
        }
        return canonical_json(value) + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> ChainContext:
        """Read one line of ``chain-context.jsonl``."""
        try:
            value = json.loads(line)
            context = cls(
                aggregate_id=_text(value["aggregate"], "aggregate"),
                first_version=value["first_version"],
                last_version=value["last_version"],
                previous=(
                    None
                    if value["previous"] is None
                    else EventRecord.from_json(value["previous"])
                ),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedLine(f"not a chain context ({exc})") from None
        versions = (context.first_version, context.last_version)
        if not all(_is_count(v) for v in versions) or versions[0] > versions[1]:
            raise MalformedLine("first_version and last_version are not a range")
        return context


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode") from None
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class PeriodError(ValueError):
    """A period's bounds are unreadable or inverted; names each bad bound."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {what}" for name, what in problems))


@dataclass(frozen=True)
class Period:
    """The half-open interval [start, end) of a bundle, in UTC."""

    start: dt.datetime
    end: dt.datetime

    @classmethod
    def of(
        cls,
        start: dt.datetime | None,
        end: dt.datetime | None,
        names: tuple[str, str] = ("from", "to"),
    ) -> Period:
        """A period from two instants; raises PeriodError naming each problem."""
        problems = []
        for name, bound in zip(names, (start, end), strict=True):
            if bound is None:
                problems.append((name, "is required"))
            elif bound.utcoffset() is None:
                problems.append((name, "needs a UTC offset, e.g. Z or +01:00"))
        if not problems and start is not None and end is not None and end <= start:
            problems.append((names[1], f"must be later than {names[0]}"))
        if problems:
            raise PeriodError(problems)
        assert start is not None and end is not None
        return cls(start.astimezone(dt.UTC), end.astimezone(dt.UTC))

    @classmethod
    def parse(
        cls, start: str, end: str, names: tuple[str, str] = ("from", "to")
    ) -> Period:
        """A period from two texts, each a date (midnight UTC) or an instant."""
        problems = []
        bounds: list[dt.datetime | None] = []
        for name, text in zip(names, (start, end), strict=True):
            try:
                bounds.append(parse_bound(text))
            except ValueError as exc:
                problems.append((name, str(exc)))
                bounds.append(None)
        if problems:
            raise PeriodError(problems)
        return cls.of(bounds[0], bounds[1], names)

    def to_json(self) -> dict[str, str]:
        """The period as the manifest states it."""
        return {"from": iso_utc(self.start), "to": iso_utc(self.end)}


def parse_bound(text: str) -> dt.datetime:
    """A date (``2026-03-01``, midnight UTC) or an ISO 8601 instant with offset."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day, dt.time(), dt.UTC)
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a date (YYYY-MM-DD) nor an ISO 8601 instant"
        ) from None
    if moment.utcoffset() is None:
        raise ValueError(f"{text!r} needs a UTC offset, e.g. Z or +01:00")
    return moment.astimezone(dt.UTC)
