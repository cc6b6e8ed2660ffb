"""Time-stamping sealed events: one RFC 3161 request for many events.

The law dates a deposit, a notification, an identification, an acceptance, a
refusal and an expiry by a qualified time stamp (CPCE R.53-1 to R.53-3). A
request to the TSA costs a round trip and a signature in its HSM, so events
sealed at about the same time share one: their stamp leaves (the digest of the
seal message and the seal, :func:`pli.infrastructure.envelope.stamp_leaf_input`)
become the leaves of an RFC 9162 hash tree, the TSA stamps the root, and each
event keeps the token with its leaf's index and inclusion path. Anyone checks
one event's stamp alone: hash its leaf up the path and compare the root with
the token's message imprint.

:class:`TreeStamper` batches the way a database batches commits: while one
request is in flight, the events of other threads queue up, and the next
request carries them all. With ``batching=False`` every call makes its own
request (over the events of that call only), which the benchmark compares.

:class:`EventStampChecker` checks stored stamps offline, as the audit does
for every event: each event's inclusion path, and each distinct token once,
since events stamped together share their token.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from pli.hsm.timestamp import BadTimeStamp, StampInfo, check_token, stamped_digest
from pli.infrastructure import merkle
from pli.infrastructure.envelope import Envelope, EventStamp, stamp_leaf_input
from pli.infrastructure.event_store import StampingUnavailable

__all__ = [
    "DigestStamper",
    "EventStampChecker",
    "TreeStamper",
    "check_event_stamp",
    "stamped_root",
]

logger = logging.getLogger(__name__)


class DigestStamper(Protocol):
    """Anything that gets an RFC 3161 token over a SHA-256 digest."""

    def stamp(self, digest: bytes) -> StampInfo:
        """Stamp ``digest``; raise if no valid token could be had."""
        ...


@dataclass
class _Ticket:
    """One caller's leaves, waiting for a request that carries them."""

    leaves: list[bytes]
    stamps: list[EventStamp] | None = None
    error: BaseException | None = None
    done: bool = False
    offset: int = field(default=0)


class TreeStamper:
    """Stamps batches of leaves with one token over their hash tree."""

    def __init__(self, client: DigestStamper, *, batching: bool = True) -> None:
        self.client = client
        self.batching = batching
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: list[_Ticket] = []
        self._sending = False
        self.requests = 0

    def stamp_leaves(self, leaves: Sequence[bytes]) -> list[EventStamp]:
        """One stamp per leaf input, in order.

        Raises :class:`StampingUnavailable` when the TSA could not stamp.
        """
        ticket = _Ticket(list(leaves))
        if not ticket.leaves:
            return []
        if not self.batching:
            self._send([ticket])
        else:
            self._join(ticket)
        if ticket.error is not None:
            raise StampingUnavailable(str(ticket.error)) from ticket.error
        assert ticket.stamps is not None
        return ticket.stamps

    def _join(self, ticket: _Ticket) -> None:
        with self._lock:
            self._queue.append(ticket)
            while not ticket.done and self._sending:
                self._changed.wait()
            if ticket.done:
                return
            # No request in flight: this caller sends everything queued.
            self._sending = True
            batch, self._queue = self._queue, []
        try:
            self._send(batch)
        finally:
            with self._lock:
                self._sending = False
                self._changed.notify_all()

    def _send(self, batch: list[_Ticket]) -> None:
        """One request for the whole batch; each ticket gets stamps or the error."""
        hashes: list[bytes] = []
        for ticket in batch:
            ticket.offset = len(hashes)
            hashes.extend(merkle.leaf_hash(leaf) for leaf in ticket.leaves)
        tree = _BatchTree(hashes)
        try:
            info = self.client.stamp(tree.root())
        except Exception as exc:  # every waiting caller must hear of it
            logger.error("time stamp failed events=%d", len(hashes))
            for ticket in batch:
                ticket.error, ticket.done = exc, True
            return
        self.requests += 1
        for ticket in batch:
            ticket.stamps = [
                EventStamp(
                    token=info.token,
                    index=index,
                    size=len(hashes),
                    path=tuple(tree.path(index)),
                )
                for index in range(ticket.offset, ticket.offset + len(ticket.leaves))
            ]
            ticket.done = True


class _BatchTree:
    """The hash tree of one request's leaves, held in memory."""

    def __init__(self, hashes: list[bytes]) -> None:
        self.size = len(hashes)
        edge = merkle.CompactRange()
        self.nodes: dict[merkle.Node, bytes] = {}
        for value in hashes:
            for level, index, node in edge.append(value):
                self.nodes[(level, index)] = node

    def _read(self, wanted: Sequence[merkle.Node]) -> dict[merkle.Node, bytes]:
        return {node: self.nodes[node] for node in wanted if node in self.nodes}

    def root(self) -> bytes:
        return merkle.root(self.size, self._read)

    def path(self, index: int) -> list[bytes]:
        return merkle.inclusion_proof(index, self.size, self._read)


def check_event_stamp(
    envelope: Envelope,
    message: bytes,
    *,
    trust_roots: Sequence[x509.Certificate],
    qualified_roots: Sequence[x509.Certificate] = (),
) -> StampInfo:
    """Check an event's stamp offline; raise :class:`BadTimeStamp` if it fails.

    ``message`` is the event's seal message
    (:func:`pli.infrastructure.envelope.seal_message`).
    """
    root = stamped_root(envelope, message)
    assert envelope.stamp is not None
    return check_token(
        envelope.stamp.token,
        digest=root,
        trust_roots=trust_roots,
        qualified_roots=qualified_roots,
    )


def stamped_root(envelope: Envelope, message: bytes) -> bytes:
    """The root an event's stamp token covers, once the path to it is checked.

    The first half of :func:`check_event_stamp`: raises :class:`BadTimeStamp`
    unless the stamped tree holds the event's seal. Events stamped together
    share one token, which a caller checking many events checks once.
    """
    stamp = envelope.stamp
    if stamp is None:
        raise BadTimeStamp("event carries no time stamp")
    leaf = merkle.leaf_hash(stamp_leaf_input(message, envelope.signature))
    root = stamped_digest(stamp.token)
    if not merkle.verify_inclusion(leaf, stamp.index, stamp.size, stamp.path, root):
        raise BadTimeStamp("the stamped tree does not hold this event's seal")
    return root


class EventStampChecker:
    """:func:`check_event_stamp` for many events, checking each token once.

    The outcome of a token's check (its :class:`StampInfo` or the reason it
    failed) is kept for the ``remembered`` most recent tokens: events stamped
    by one request are stored next to each other.
    """

    def __init__(
        self,
        *,
        trust_roots: Sequence[x509.Certificate],
        qualified_roots: Sequence[x509.Certificate] = (),
        remembered: int = 1024,
    ) -> None:
        self.trust_roots = list(trust_roots)
        self.qualified_roots = list(qualified_roots)
        self.remembered = remembered
        self._outcomes: OrderedDict[bytes, StampInfo | str] = OrderedDict()
        self._outcomes_lock = threading.Lock()  # processes and calls share it

    def check(self, envelope: Envelope, message: bytes) -> StampInfo:
        """The event's checked stamp; raises :class:`BadTimeStamp`."""
        root = stamped_root(envelope, message)
        assert envelope.stamp is not None
        token = envelope.stamp.token
        key = hashlib.sha256(token).digest()
        with self._outcomes_lock:
            outcome = self._outcomes.get(key)
            if outcome is not None:
                self._outcomes.move_to_end(key)
        if outcome is None:
            outcome = self._check_token(token, root)
            with self._outcomes_lock:
                self._outcomes[key] = outcome
                if len(self._outcomes) > self.remembered:
                    self._outcomes.popitem(last=False)
        if isinstance(outcome, str):
            raise BadTimeStamp(outcome)
        return outcome

    def _check_token(self, token: bytes, root: bytes) -> StampInfo | str:
        try:
            return check_token(
                token,
                digest=root,
                trust_roots=self.trust_roots,
                qualified_roots=self.qualified_roots,
            )
        except BadTimeStamp as bad:
            return bad.reason
