"""Proofs anchored in the transparency log: the ``log`` section of their evidence.

A proof's ``evidence.json`` lists the letter's sealed events by version,
each with its event digest (``"events": [{"version", "event",
"sealed_digest"}]``). The ``log`` section anchors those events in the
transparency log (DESIGN §3)::

    "log": {
      "format": "pli-log-anchor/1",
      "checkpoint": {<the checkpoint's JSON form, pli-log-checkpoint/1>},
      "entries": [
        {"version": 1, "position": 17, "leaf_hash": "<hex>",
         "inclusion_path": ["<hex>", ...]},
        ...
      ]
    }

one entry per event: its log position (0-based), its leaf hash (RFC 9162
leaf of the event digest) and its inclusion path in the checkpoint's tree.
:func:`verify_anchor` checks the section offline, with the seal
certificates alone: the checkpoint's seal (and time stamp, when present),
that each leaf is the leaf of the event digest the proof states, and each
inclusion path against the checkpoint's root. A checkpoint published
elsewhere (or fetched from the audit service) with the same size and root
then vouches for the proof without trusting pli's database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from cryptography import x509

from pli.hsm.seal import SealVerifier
from pli.infrastructure import merkle
from pli.infrastructure.checkpoints import (
    Checkpoint,
    MalformedCheckpoint,
    checkpoint_problems,
)
from pli.infrastructure.transparency import LogEntry

__all__ = ["ANCHOR_FORMAT", "anchor_section", "verify_anchor"]

ANCHOR_FORMAT = "pli-log-anchor/1"


def anchor_section(
    checkpoint: Checkpoint, entries: Sequence[tuple[LogEntry, Sequence[bytes]]]
) -> dict[str, Any]:
    """The ``log`` section: a checkpoint and each event's leaf and path in it."""
    return {
        "format": ANCHOR_FORMAT,
        "checkpoint": checkpoint.to_json(),
        "entries": [
            {
                "version": entry.version,
                "position": entry.position,
                "leaf_hash": entry.leaf_hash.hex(),
                "inclusion_path": [node.hex() for node in path],
            }
            for entry, path in entries
        ],
    }


def verify_anchor(
    document: dict[str, Any], seal_certificates: Iterable[x509.Certificate]
) -> list[str]:
    """What is wrong with a proof's anchor in the log (empty when it holds).

    ``document`` is the proof's parsed ``evidence.json``; no database and
    no token are needed.
    """
    section = document.get("log")
    if not isinstance(section, dict) or section.get("format") != ANCHOR_FORMAT:
        return ["the evidence has no log section"]
    try:
        checkpoint = Checkpoint.from_json(section.get("checkpoint"))
    except MalformedCheckpoint as exc:
        return [str(exc)]
    problems = checkpoint_problems(checkpoint, SealVerifier(list(seal_certificates)))
    digests = _stated_digests(document, problems)
    entries = _entries(section, problems)
    for version in sorted(set(digests) - set(entries)):
        problems.append(f"event version {version} has no entry in the log section")
    for version in sorted(set(entries) - set(digests)):
        problems.append(f"log entry for version {version}, an event the proof omits")
    previous = -1
    for version in sorted(set(digests) & set(entries)):
        position, leaf, path = entries[version]
        problems += _entry_problems(
            checkpoint, version, digests[version], position, leaf, path
        )
        if position <= previous:
            problems.append(
                f"event version {version} at log position {position}: "
                "positions are not in the events' order"
            )
        previous = position
    return problems


def _stated_digests(document: dict[str, Any], problems: list[str]) -> dict[int, str]:
    digests: dict[int, str] = {}
    events = document.get("events")
    if not isinstance(events, list):
        problems.append("the evidence lists no events")
        return digests
    for event in events:
        try:
            digests[int(event["version"])] = str(event["sealed_digest"])
        except (KeyError, TypeError, ValueError):
            problems.append("an event of the evidence is malformed")
    return digests


def _entries(
    section: dict[str, Any], problems: list[str]
) -> dict[int, tuple[int, bytes, list[bytes]]]:
    entries: dict[int, tuple[int, bytes, list[bytes]]] = {}
    raw = section.get("entries")
    if not isinstance(raw, list):
        problems.append("the log section has no entries")
        return entries
    for entry in raw:
        try:
            version = int(entry["version"])
            entries[version] = (
                int(entry["position"]),
                bytes.fromhex(entry["leaf_hash"]),
                [bytes.fromhex(node) for node in entry["inclusion_path"]],
            )
        except (KeyError, TypeError, ValueError):
            problems.append("an entry of the log section is malformed")
    return entries


def _entry_problems(
    checkpoint: Checkpoint,
    version: int,
    sealed_digest: str,
    position: int,
    leaf: bytes,
    path: list[bytes],
) -> list[str]:
    where = f"event version {version} at log position {position}"
    try:
        expected = merkle.leaf_hash(bytes.fromhex(sealed_digest))
    except ValueError:
        return [f"{where}: the stated digest is not hex"]
    if leaf != expected:
        return [f"{where}: leaf hash is not that of the stated event digest"]
    if not merkle.verify_inclusion(
        leaf, position, checkpoint.size, path, checkpoint.root
    ):
        return [
            f"{where}: inclusion path does not lead to the root of the "
            f"checkpoint of size {checkpoint.size}"
        ]
    return []
