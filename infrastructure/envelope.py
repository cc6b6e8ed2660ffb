"""The sealed envelope in which every event is stored, and its chain.

A stored event's ``state`` is one line of JSON (the envelope header) and a
newline, followed by the event's payload exactly as the transcoder wrote it.
The header carries the digest of the same letter's previous event and the
seal. The seal covers a domain-separated message binding the letter id, the
version, the event topic, the SHA-256 of the payload bytes and that previous
digest, so changing, removing, reordering or inserting an event breaks
either a seal or a chain link (DESIGN §3).

Legally relevant events also carry, in the header, an RFC 3161 time-stamp
token over their seal (:class:`EventStamp`): several events stamped by one
request share a token over the root of a hash tree of their seals, and each
keeps its leaf's path to that root.

An event's digest (what the next event chains to, and the transparency log's
leaf) covers the header line and the SHA-256 of the payload, not the payload
itself: seals, stamps, chain links and the log can all be checked from the
header and the payload's digest, so an export for auditors can leave out the
payload, where the personal data is.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

__all__ = [
    "GENESIS",
    "Envelope",
    "EventStamp",
    "MalformedEnvelope",
    "event_digest",
    "event_digest_from_parts",
    "seal_message",
    "stamp_leaf_input",
    "seal_message_from_parts",
    "split_state",
]

GENESIS = "0" * 64
_SEAL_CONTEXT = b"pli/event-seal/v1\n"


class MalformedEnvelope(ValueError):
    """A stored state is not a pli envelope."""


@dataclass(frozen=True)
class EventStamp:
    """An RFC 3161 token over a hash tree of seals, and this event's place in it.

    ``token`` stamps the tree's root (RFC 9162 hashing, ``size`` leaves); the
    event's leaf is :func:`stamp_leaf_input` of its seal, at ``index``, and
    ``path`` is its inclusion path. A tree of one leaf has an empty path.
    """

    token: bytes
    index: int
    size: int
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, object]:
        """The header field."""
        return {
            "tst": base64.b64encode(self.token).decode(),
            "i": self.index,
            "n": self.size,
            "path": [node.hex() for node in self.path],
        }

    @classmethod
    def from_json(cls, field: dict[str, object]) -> EventStamp:
        """Read the header field back."""
        path = field["path"]
        index, size = field["i"], field["n"]
        if not isinstance(path, list) or not isinstance(index, int):
            raise ValueError("malformed stamp")
        if not isinstance(size, int) or not 0 <= index < size:
            raise ValueError("malformed stamp position")
        return cls(
            token=base64.b64decode(str(field["tst"]), validate=True),
            index=index,
            size=size,
            path=tuple(bytes.fromhex(str(node)) for node in path),
        )


@dataclass(frozen=True)
class Envelope:
    """A payload with the previous event's digest and the seal over both."""

    payload: bytes
    previous: str
    key_id: str
    signature: bytes
    stamp: EventStamp | None = None

    def header_line(self) -> bytes:
        """The first line of the stored state."""
        header: dict[str, object] = {
            "v": 1,
            "prev": self.previous,
            "key": self.key_id,
            "seal": base64.b64encode(self.signature).decode(),
        }
        if self.stamp is not None:
            header["stamp"] = self.stamp.to_json()
        return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()

    def to_bytes(self) -> bytes:
        """The exact bytes stored as the event's state."""
        return self.header_line() + b"\n" + self.payload

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
            stamp = header.get("stamp")
            return cls(
                payload=payload,
                previous=str(header["prev"]),
                key_id=str(header["key"]),
                signature=base64.b64decode(header["seal"], validate=True),
                stamp=None if stamp is None else EventStamp.from_json(stamp),
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


def stamp_leaf_input(message: bytes, signature: bytes) -> bytes:
    """What an event's stamp leaf hashes: its seal message's digest and seal."""
    return hashlib.sha256(message).digest() + signature


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
    """:func:`event_digest` from the header line and the payload's SHA-256."""
    head = f"{originator_id}\n{version}\n{topic}\n".encode()
    material = b"pli/event/v2\n" + head + header_line + b"\n" + payload_sha256
    return hashlib.sha256(material).hexdigest()
