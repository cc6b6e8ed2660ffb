"""Checking the log binding part of a bundle (``pli.compliance.bundle_log``).

Offline, from the bundle alone: every checkpoint's seal with the bundle's
seal certificates (the certificate valid at the checkpoint's time) and its
RFC 3161 time stamp with the bundle's trust anchor; every consistency proof
between successive checkpoints (RFC 9162 §2.1.4.2); and, for every event
line, its inclusion line matched by store position: the leaf hash recomputed
from the event line, the log position following the previous event's, and
the inclusion proof (RFC 9162 §2.1.3.2) leading to the latest checkpoint's
root. Checkpoints are few (one per interval); only their sizes and roots are
kept, and the event lines and inclusion lines are read side by side, so
memory does not grow with the events.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

from pli.compliance.bundle_format import (
    EVENTS,
    LOG_CHECKPOINTS,
    LOG_CONSISTENCY,
    LOG_INCLUSION,
    EventRecord,
    MalformedLine,
    iso_utc,
)
from pli.compliance.bundle_io import UnreadableMember
from pli.compliance.bundle_log import (
    PART,
    ConsistencyProof,
    InclusionProof,
    json_object,
    leaf_of,
)
from pli.compliance.bundle_sources import CheckSource
from pli.hsm.timestamp import BadTimeStamp, check_token
from pli.infrastructure import merkle
from pli.infrastructure.checkpoints import Checkpoint, MalformedCheckpoint

__all__ = ["LogBindingChecker"]


class LogBindingChecker:
    """Checks checkpoints, consistency proofs and each event's inclusion proof."""

    def __init__(self, source: CheckSource) -> None:
        self.bundle = source.bundle
        self.findings = source.findings
        self.trust = source.trust
        self.roots: dict[int, bytes] = {}
        self.sizes: list[int] = []
        self.latest: Checkpoint | None = None
        self._latest_sealed = False
        self._bundled = set(self.trust.certificate_files.values())
        self._stamps = 0
        self._read_checkpoints()
        self._consistent = self._check_consistency()
        self._proofs = self._lines(LOG_INCLUSION)
        self._pending: tuple[int, InclusionProof] | None = None
        self._previous: int | None = None
        self._first: int | None = None
        self._included = 0

    def _fault(self, where: str, reason: str) -> None:
        self.findings.fault(PART, where, reason)

    def _lines(self, name: str) -> Iterator[tuple[int, bytes]]:
        if not self.bundle.has(name):
            return
        try:
            yield from self.bundle.lines(name)
        except UnreadableMember as exc:
            self._fault(name, f"unreadable ({exc})")

    # Checkpoints.

    def _read_checkpoints(self) -> None:
        for number, line in self._lines(LOG_CHECKPOINTS):
            where = f"{LOG_CHECKPOINTS} line {number}"
            try:
                checkpoint = Checkpoint.from_json(json_object(line))
            except (MalformedLine, MalformedCheckpoint) as exc:
                self._fault(where, str(exc))
                continue
            where += f" (size {checkpoint.size})"
            if self.sizes and checkpoint.size <= self.sizes[-1]:
                self._fault(
                    where,
                    f"listed after the checkpoint of size {self.sizes[-1]}: "
                    "checkpoints go by growing size",
                )
                continue
            sealed = self._check_seal(checkpoint, where)
            if checkpoint.stamp is not None:
                self._check_stamp(checkpoint, checkpoint.stamp, where)
            self.sizes.append(checkpoint.size)
            self.roots[checkpoint.size] = checkpoint.root
            self.latest, self._latest_sealed = checkpoint, sealed

    def _check_seal(self, checkpoint: Checkpoint, where: str) -> bool:
        problem = self.trust.verify_signature(
            checkpoint.key_id, checkpoint.seal, checkpoint.message
        )
        if problem:
            self._fault(where, f"checkpoint seal: {problem}")
            return False
        certificate = self.trust.by_key_id[checkpoint.key_id]
        if not (
            certificate.not_valid_before_utc
            <= checkpoint.time
            <= certificate.not_valid_after_utc
        ):
            self._fault(where, "the seal certificate was not valid at its time")
            return False
        return True

    def _check_stamp(self, checkpoint: Checkpoint, stamp: bytes, where: str) -> None:
        digest = hashlib.sha256(checkpoint.message).digest()
        try:
            info = check_token(stamp, digest=digest, trust_roots=self.trust.anchors)
        except BadTimeStamp as exc:
            self._fault(where, f"checkpoint time stamp: {exc.reason}")
            return
        if info.tsa_certificate not in self._bundled:
            self._fault(where, "the time stamp's TSA certificate is not in certs/")
            return
        self._stamps += 1

    # Consistency proofs.

    def _check_consistency(self) -> int:
        index = {size: i for i, size in enumerate(self.sizes)}
        linked: set[int] = set()
        consistent = 0
        for number, line in self._lines(LOG_CONSISTENCY):
            where = f"{LOG_CONSISTENCY} line {number}"
            try:
                proof = ConsistencyProof.parse(line)
            except MalformedLine as exc:
                self._fault(where, str(exc))
                continue
            where += f" (size {proof.first} to {proof.second})"
            unknown = [s for s in (proof.first, proof.second) if s not in index]
            if unknown:
                self._fault(
                    where,
                    f"names the checkpoint of size {unknown[0]}, which "
                    f"{LOG_CHECKPOINTS} does not hold",
                )
                continue
            if index[proof.second] != index[proof.first] + 1:
                self._fault(where, "does not link two successive checkpoints")
                continue
            if index[proof.first] in linked:
                self._fault(where, "a second proof for the same two checkpoints")
                continue
            linked.add(index[proof.first])
            if merkle.verify_consistency(
                proof.first,
                proof.second,
                self.roots[proof.first],
                self.roots[proof.second],
                proof.proof,
            ):
                consistent += 1
            else:
                self._fault(
                    where,
                    f"does not prove that the checkpoint of size {proof.second} "
                    f"extends that of size {proof.first}",
                )
        for i, (older, newer) in enumerate(itertools.pairwise(self.sizes)):
            if i not in linked:
                self._fault(
                    LOG_CONSISTENCY,
                    f"no proof that the checkpoint of size {newer} extends that "
                    f"of size {older}",
                )
        return consistent

    # Inclusion proofs, matched to the event lines by store position.

    def observe(self, record: EventRecord, line: int) -> None:
        """Check the inclusion proof of one event line."""
        if record.position is None:
            return  # the events part names it
        found = self._proof_at(record.position, line)
        if found is None:
            return
        number, proof = found
        where = f"{LOG_INCLUSION} line {number} ({record.where()})"
        if (proof.aggregate_id, proof.version) != (record.aggregate_id, record.version):
            self._fault(
                where,
                f"vouches for aggregate {proof.aggregate_id} version "
                f"{proof.version} at store position {proof.position}, where "
                f"{EVENTS} line {line} has another event",
            )
            return
        self._check_position(proof.log_position, where)
        leaf = leaf_of(record)
        if proof.leaf_hash != leaf:
            self._fault(where, "the leaf hash is not that of the event line")
        if self.latest is None:
            return
        size, root = self.latest.size, self.latest.root
        if merkle.verify_inclusion(leaf, proof.log_position, size, proof.path, root):
            self._included += 1
        else:
            self._fault(
                where,
                "the inclusion proof does not lead from the event to the root of "
                f"the latest checkpoint (size {size})",
            )

    def _proof_at(self, position: int, line: int) -> tuple[int, InclusionProof] | None:
        """The inclusion line of this store position; names lines passed over."""
        while self._pending is None or self._pending[1].position < position:
            if self._pending is not None:
                self._unmatched(*self._pending)
            self._pending = self._next_proof()
            if self._pending is None:
                break
        if self._pending is None or self._pending[1].position > position:
            self._fault(
                f"{EVENTS} line {line}",
                f"store position {position} has no line in {LOG_INCLUSION}",
            )
            return None
        found, self._pending = self._pending, None
        return found

    def _next_proof(self) -> tuple[int, InclusionProof] | None:
        for number, data in self._proofs:
            try:
                return number, InclusionProof.parse(data)
            except MalformedLine as exc:
                self._fault(f"{LOG_INCLUSION} line {number}", str(exc))
        return None

    def _unmatched(self, number: int, proof: InclusionProof) -> None:
        self._fault(
            f"{LOG_INCLUSION} line {number}",
            f"vouches for store position {proof.position}, which no line of "
            f"{EVENTS} holds in this order",
        )

    def _check_position(self, position: int, where: str) -> None:
        if self._previous is not None and position != self._previous + 1:
            self._fault(
                where,
                f"log position {position} does not follow {self._previous}: the "
                "period's events are not one unbroken run of the log",
            )
        if self._first is None:
            self._first = position
        self._previous = position

    def check(self) -> None:
        """Name proofs of no event line, and report what was checked."""
        left = self._pending or self._next_proof()
        while left is not None:
            self._unmatched(*left)
            left = self._next_proof()
        if self.latest is None and self._previous is not None:
            self._fault(LOG_CHECKPOINTS, "no checkpoint: the events are bound to none")
        note = self.findings.note
        note(PART, "checkpoints", len(self.sizes))
        note(PART, "checkpoint time stamps valid", self._stamps)
        note(PART, "consistency proofs valid", self._consistent)
        note(PART, "inclusion proofs valid", self._included)
        if self._first is not None:
            note(PART, "log positions", f"{self._first} to {self._previous}")
        if self.latest is not None:
            note(
                PART,
                "latest checkpoint",
                _summary(self.latest, sealed=self._latest_sealed),
            )


def _summary(checkpoint: Checkpoint, *, sealed: bool) -> dict[str, Any]:
    # An auditor compares size and root with a checkpoint published elsewhere.
    return {
        "size": checkpoint.size,
        "root": checkpoint.root.hex(),
        "time": iso_utc(checkpoint.time),
        "seal": "valid" if sealed else "FAULT",
    }
