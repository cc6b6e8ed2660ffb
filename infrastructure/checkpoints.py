"""Checkpoints of the transparency log: a sealed, optionally time-stamped tree head.

A checkpoint says "the log's first ``size`` leaves have Merkle root ``root``,
as of ``time``" under the provider's seal (DESIGN §3), in the manner of a
Certificate Transparency signed tree head (RFC 9162 §4.10). The seal is the
token's event-seal key (:class:`pli.hsm.seal.EventSealer`) over the
*checkpoint message*, a domain-separated text of five lines::

    pli/log-checkpoint/v1
    <size, decimal>
    <root, 64 lowercase hex digits>
    <time, UTC, YYYY-MM-DDTHH:MM:SS.ffffffZ>
    <key id, the SHA-256 of the seal certificate's public key, hex>

each ending in a newline. The context line keeps a checkpoint seal from
ever being taken for an event seal (``pli/event-seal/v1``) and the other way
round. A checkpoint may also carry an RFC 3161 time-stamp token over the
SHA-256 of that message, from the stamper the operator configures.

Everything here works offline: a checkpoint's JSON form (:meth:`to_json`)
and the seal certificates are enough to check it, with no database and no
token.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms, tsp
from cryptography import x509

from pli.hsm.seal import EventSealer, Seal, SealVerifier, UnknownSealKey
from pli.hsm.timestamp import BadTimeStamp, StampInfo, check_token

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "MalformedCheckpoint",
    "Stamper",
    "checkpoint_problems",
    "checkpoint_stamp",
    "seal_checkpoint",
]

CHECKPOINT_FORMAT = "pli-log-checkpoint/1"
_CONTEXT = "pli/log-checkpoint/v1"

Stamper = Callable[[bytes], bytes]
"""Returns an RFC 3161 time-stamp token (DER) over a SHA-256 digest."""


class MalformedCheckpoint(ValueError):
    """A checkpoint's JSON or fields are not those of a pli checkpoint."""


def _time_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Checkpoint:
    """A sealed tree head: the log's first ``size`` leaves have root ``root``."""

    size: int
    root: bytes
    time: dt.datetime
    key_id: str
    seal: bytes
    stamp: bytes | None = None

    @property
    def time_text(self) -> str:
        """The checkpoint's time as the message and the JSON form write it."""
        return _time_text(self.time)

    @property
    def message(self) -> bytes:
        """The exact bytes the seal signs (see the module's docstring)."""
        return checkpoint_message(self.size, self.root, self.time, self.key_id)

    def to_json(self) -> dict[str, Any]:
        """The checkpoint as JSON: what ``pli log checkpoint --out`` writes."""
        return {
            "format": CHECKPOINT_FORMAT,
            "size": self.size,
            "root": self.root.hex(),
            "time": self.time_text,
            "key_id": self.key_id,
            "seal": base64.b64encode(self.seal).decode(),
            "stamp": base64.b64encode(self.stamp).decode() if self.stamp else None,
        }

    @classmethod
    def from_json(cls, document: Any) -> Checkpoint:
        """Read a checkpoint's JSON form; raises MalformedCheckpoint."""
        try:
            if document["format"] != CHECKPOINT_FORMAT:
                raise ValueError(f"format is not {CHECKPOINT_FORMAT}")
            size = document["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError("size must be a whole number")
            time = dt.datetime.fromisoformat(document["time"])
            if time.utcoffset() is None:
                raise ValueError("time must be in UTC")
            stamp = document.get("stamp")
            return cls(
                size=size,
                root=_root(document["root"]),
                time=time.astimezone(dt.UTC),
                key_id=str(document["key_id"]),
                seal=base64.b64decode(document["seal"], validate=True),
                stamp=base64.b64decode(stamp, validate=True) if stamp else None,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise MalformedCheckpoint(f"not a pli checkpoint: {exc}") from exc


def _root(text: Any) -> bytes:
    root = bytes.fromhex(str(text))
    if len(root) != 32:
        raise ValueError("root must be 32 bytes")
    return root


def checkpoint_message(size: int, root: bytes, time: dt.datetime, key_id: str) -> bytes:
    """The domain-separated bytes a checkpoint's seal signs."""
    lines = (_CONTEXT, str(size), root.hex(), _time_text(time), key_id)
    return "".join(line + "\n" for line in lines).encode("ascii")


def seal_checkpoint(
    size: int,
    root: bytes,
    time: dt.datetime,
    sealer: EventSealer,
    stamper: Stamper | None = None,
) -> Checkpoint:
    """Seal a tree head in the token, and time-stamp it when a stamper is given.

    Raises TokenUnavailable when the token cannot seal, and whatever the
    stamper raises when it cannot stamp: no checkpoint is made either way.
    """
    moment = time.astimezone(dt.UTC)
    key_id = sealer.key_id
    message = checkpoint_message(size, root, moment, key_id)
    seal = sealer.seal(message)
    stamp = None
    if stamper is not None:
        stamp = stamper(hashlib.sha256(message).digest())
    return Checkpoint(size, root, moment, seal.key_id, seal.signature, stamp)


def checkpoint_problems(
    checkpoint: Checkpoint,
    verifier: SealVerifier,
    *,
    trust_roots: Sequence[x509.Certificate] | None = None,
) -> list[str]:
    """What is wrong with a checkpoint's seal and time stamp (empty when fine).

    With ``trust_roots`` the time stamp is checked in full
    (:func:`checkpoint_stamp`): its authority's signature and certificate
    chain as well as what it covers. Without, it is only checked to cover
    this checkpoint's message, for a caller that has no trust anchors.
    """
    problems: list[str] = []
    try:
        if not verifier.is_valid(
            checkpoint.message, Seal(checkpoint.key_id, checkpoint.seal)
        ):
            problems.append("checkpoint seal does not verify")
    except UnknownSealKey:
        problems.append(f"checkpoint sealed by unknown key {checkpoint.key_id}")
    except ValueError:
        problems.append("checkpoint seal is malformed")
    if checkpoint.stamp is None:
        return problems
    if trust_roots is None:
        return problems + _imprint_problems(checkpoint)
    try:
        checkpoint_stamp(checkpoint, trust_roots=trust_roots)
    except BadTimeStamp as bad:
        problems.append(f"checkpoint time stamp does not verify: {bad.reason}")
    return problems


def checkpoint_stamp(
    checkpoint: Checkpoint,
    *,
    trust_roots: Sequence[x509.Certificate],
    qualified_roots: Sequence[x509.Certificate] = (),
) -> StampInfo | None:
    """A checkpoint's checked time stamp, None when it carries none.

    Raises :class:`BadTimeStamp` when the token does not cover this
    checkpoint's message or its authority's signature or chain fails.
    """
    if checkpoint.stamp is None:
        return None
    return check_token(
        checkpoint.stamp,
        digest=hashlib.sha256(checkpoint.message).digest(),
        trust_roots=trust_roots,
        qualified_roots=qualified_roots,
    )


def _imprint_problems(checkpoint: Checkpoint) -> list[str]:
    try:
        signed = cms.ContentInfo.load(checkpoint.stamp)["content"]
        info = signed["encap_content_info"]["content"].parsed
        if not isinstance(info, tsp.TSTInfo):
            raise ValueError("no TSTInfo")
        imprint = info["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        digest = imprint["hashed_message"].native
    except (ValueError, TypeError, KeyError) as exc:
        return [f"checkpoint time stamp is not an RFC 3161 token ({exc})"]
    if algorithm != "sha256" or digest != hashlib.sha256(checkpoint.message).digest():
        return ["checkpoint time stamp does not cover this checkpoint"]
    return []
