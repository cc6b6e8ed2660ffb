"""The sealed envelope in which every event is stored, and its chain.

A stored event's ``state`` is one line of JSON (the envelope header) and a
newline, followed by the event's payload exactly as the transcoder wrote it.
The header carries the digest of the same letter's previous event and the
seal. The seal covers a domain-separated message binding the letter id, the
version, the event topic, the SHA-256 of the payload bytes and that previous
digest, so changing, removing, reordering or inserting an event breaks
either a seal or a chain link (DESIGN §3).

An event's digest, which the next event chains to, covers the header line
and the payload's SHA-256 rather than the payload itself, so a compliance
bundle can carry events without their payloads (personal data) and an
auditor still checks every seal and every chain link.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

__all__ = [
    "GENESIS",
    "Envelope",
    "MalformedEnvelope",
    "event_digest",
    "event_digest_from_parts",
    "seal_message",
    "seal_message_from_parts",
    "split_state",
]

GENESIS = "0" * 64
_SEAL_CONTEXT = b"pli/event-seal/v1\n"


class MalformedEnvelope(ValueError):
    """A stored state is not a pli envelope."""


@dataclass(frozen=True)
class Envelope:
    """A payload with the previous event's digest and the seal over both."""

    payload: bytes
    previous: str
    key_id: str
    signature: bytes

    def to_bytes(self) -> bytes:
        """The exact bytes stored as the event's state."""
        header = {
            "v": 1,
            "prev": self.previous,
            "key": self.key_id,
            "seal": base64.b64encode(self.signature).decode(),
        }
        line = json.dumps(header, separators=(",", ":"), sort_keys=True)
        return line.encode() + b"\n" + self.payload

    @classmethod
    def from_bytes(cls, state: bytes) -> Envelope:
        """Split stored bytes into header and payload."""
        if not isinstance(state, bytes | bytearray | memoryview):
            raise MalformedEnvelope(f"state is {type(state).__name__}, not bytes")
        line, newline, payload = bytes(state).partition(b"\n")
        try:
            header = json.loads(line)
            if not newline or header.get("v") != 1:
                raise ValueError("not a version 1 envelope")
            return cls(
                payload=payload,
                previous=str(header["prev"]),
                key_id=str(header["key"]),
                signature=base64.b64decode(header["seal"], validate=True),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedEnvelope(str(exc)) from exc


def split_state(state: bytes) -> tuple[bytes, bytes]:
    """A stored state's header line (without its newline) and its payload."""
    line, _, payload = bytes(state).partition(b"\n")
    return line, payload


def seal_message(
    originator_id: str, version: int, topic: str, payload: bytes, previous: str
) -> bytes:
    """The bytes a seal signs for one event."""
    return seal_message_from_parts(
        originator_id, version, topic, hashlib.sha256(payload).digest(), previous
    )


def seal_message_from_parts(
    originator_id: str,
    version: int,
    topic: str,
    payload_sha256: bytes,
    previous: str,
) -> bytes:
    """The bytes a seal signs, from the payload's SHA-256 instead of its bytes."""
    fields = {
        "letter": originator_id,
        "version": version,
        "topic": topic,
        "payload_sha256": payload_sha256.hex(),
        "prev": previous,
    }
    return _SEAL_CONTEXT + json.dumps(fields, sort_keys=True).encode()


def event_digest(originator_id: str, version: int, topic: str, state: bytes) -> str:
    """The digest that the next event of the same letter chains to."""
    header_line, payload = split_state(state)
    return event_digest_from_parts(
        originator_id, version, topic, header_line, hashlib.sha256(payload).digest()
    )


def event_digest_from_parts(
    originator_id: str,
    version: int,
    topic: str,
    header_line: bytes,
    payload_sha256: bytes,
) -> str:
    """An event's digest from its header line and its payload's SHA-256."""
    head = f"{originator_id}\n{version}\n{topic}\n".encode()
    material = head + header_line + b"\n" + payload_sha256
    return hashlib.sha256(b"pli/event/v2\n" + material).hexdigest()
