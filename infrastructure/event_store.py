"""An ``eventsourcing`` application whose every stored event is sealed.

The library's event store turns domain events into stored events and hands
them to a recorder (SQLite or PostgreSQL). pli slips in between: before a
batch is recorded, each stored event is wrapped in an envelope that chains
it to the same letter's previous event and carries the token's seal over it
(``pli.infrastructure.envelope``). If the token cannot seal, nothing is
recorded. On the way back, seals are checked before an event is applied, so
a command never acts on a tampered history.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from threading import Lock
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import (
    EventStore,
    IntegrityError,
    Mapper,
    Notification,
    Recording,
    StoredEvent,
)

from pli.hsm.seal import EventSealer, Seal, SealVerifier, UnknownSealKey
from pli.infrastructure.envelope import (
    GENESIS,
    Envelope,
    EventStamp,
    MalformedEnvelope,
    event_digest,
    seal_message,
    stamp_leaf_input,
)

__all__ = [
    "BrokenHistory",
    "ConcurrentChange",
    "EnvelopeMapper",
    "EventStamper",
    "SealedApplication",
    "SealingEventStore",
    "StampingUnavailable",
]

logger = logging.getLogger(__name__)

_HEADS_KEPT = 10_000
_RETRIES = 12

A = TypeVar("A")


class ConcurrentChange(Exception):
    """An aggregate kept changing under a command; the caller may retry."""


def pause_before_retry(attempt: int) -> None:
    """Jittered, growing pauses let concurrent writers interleave."""
    time.sleep(random.uniform(0, 0.01) * (attempt + 1))


class BrokenHistory(Exception):
    """A stored event's seal or chain link does not verify."""

    def __init__(self, originator_id: str, version: int, reason: str) -> None:
        self.originator_id = originator_id
        self.version = version
        self.reason = reason
        super().__init__(f"letter {originator_id} version {version}: {reason}")


class EnvelopeMapper(Mapper[UUID]):
    """The library's mapper, reading the payload out of the sealed envelope."""

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """Strip the envelope, then decode the payload as usual."""
        envelope = Envelope.from_bytes(stored_event.state)
        return super().to_domain_event(
            StoredEvent(
                originator_id=stored_event.originator_id,
                originator_version=stored_event.originator_version,
                topic=stored_event.topic,
                state=envelope.payload,
            )
        )


def _id(stored: StoredEvent) -> str:
    return str(stored.originator_id)


class StampingUnavailable(Exception):
    """The time-stamp authority cannot stamp; nothing was stored."""


class EventStamper(Protocol):
    """Time-stamps a batch of stamp leaves with one token over their tree."""

    def stamp_leaves(self, leaves: Sequence[bytes]) -> list[EventStamp]:
        """One :class:`EventStamp` per leaf input, in order."""
        ...


@dataclass
class _Draft:
    """An event sealed but not yet stamped or wrapped in its envelope."""

    stored: StoredEvent
    previous: str
    message: bytes
    seal: Seal
    stamp: EventStamp | None = None
    sealed: StoredEvent | None = None


class SealingEventStore(EventStore[UUID]):
    """Seals and chains events on the way in, checks them on the way out."""

    def __init__(
        self,
        mapper: Mapper[UUID],
        recorder: Any,
        sealer: EventSealer,
        verifier: SealVerifier,
        stamper: EventStamper | None = None,
        stamped_topics: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(mapper, recorder)
        self.sealer = sealer
        self.verifier = verifier
        self.stamper = stamper
        self.stamped_topics = stamped_topics
        self._heads: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._heads_lock = Lock()

    def put(self, domain_events: Sequence[Any], **kwargs: Any) -> list[Recording[UUID]]:
        """Seal and record a batch of domain events atomically."""
        plain = [self.mapper.to_stored_event(event) for event in domain_events]
        sealed = self._seal_batch(plain)
        notification_ids = self.recorder.insert_events(sealed, **kwargs)
        for stored in sealed:
            self._remember_head(stored)
        recordings: list[Recording[UUID]] = []
        for event, stored, notification_id in zip(
            domain_events, sealed, notification_ids or [], strict=False
        ):
            notification = Notification(
                id=notification_id,
                originator_id=stored.originator_id,
                originator_version=stored.originator_version,
                topic=stored.topic,
                state=stored.state,
            )
            recordings.append(Recording(event, notification))
        return recordings

    def get(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        """Yield the letter's events after checking each seal and chain link."""
        try:
            stored_events = list(
                self.recorder.select_events(
                    originator_id=originator_id, gt=gt, lte=lte, desc=desc, limit=limit
                )
            )
        except (TypeError, ValueError) as exc:
            # The recorder could not even decode a row (a NULL state, say).
            raise BrokenHistory(str(originator_id), 0, "stored row unreadable") from exc
        self.check(stored_events, from_genesis=(gt is None and not desc))
        if stored_events and not desc and lte is None and limit is None:
            self._remember_head(stored_events[-1])
        return map(self.mapper.to_domain_event, stored_events)

    def check(self, stored_events: list[StoredEvent], *, from_genesis: bool) -> None:
        """Raise BrokenHistory at the first event whose seal or link fails."""
        previous: str | None = GENESIS if from_genesis else None
        expected_version = 1
        for stored in stored_events:
            version = stored.originator_version
            if from_genesis and version != expected_version:
                raise BrokenHistory(_id(stored), version, "version out of sequence")
            envelope = self._open(stored)
            if previous is not None and envelope.previous != previous:
                raise BrokenHistory(_id(stored), version, "chain link broken")
            if not self._seal_is_valid(stored, envelope):
                raise BrokenHistory(_id(stored), version, "seal does not verify")
            previous = event_digest(_id(stored), version, stored.topic, stored.state)
            expected_version = version + 1

    def _open(self, stored: StoredEvent) -> Envelope:
        try:
            return Envelope.from_bytes(stored.state)
        except MalformedEnvelope as exc:
            raise BrokenHistory(
                _id(stored), stored.originator_version, "not a sealed envelope"
            ) from exc

    def _seal_is_valid(self, stored: StoredEvent, envelope: Envelope) -> bool:
        message = seal_message(
            _id(stored),
            stored.originator_version,
            stored.topic,
            envelope.payload,
            envelope.previous,
        )
        try:
            return self.verifier.is_valid(
                message, Seal(envelope.key_id, envelope.signature)
            )
        except UnknownSealKey:
            logger.warning("seal by unknown key key_id=%s", envelope.key_id)
            return False

    def _seal_batch(self, plain: list[StoredEvent]) -> list[StoredEvent]:
        drafts: list[_Draft] = []
        # The draft of each letter's latest event in this batch: the next event
        # of the same letter chains to its digest, known once it is stamped.
        latest: dict[str, _Draft] = {}
        for stored in plain:
            letter = _id(stored)
            version = stored.originator_version
            head = latest.get(letter)
            if head is not None and head.stored.originator_version == version - 1:
                if head.sealed is None:
                    self._stamp_and_finish(drafts)
                assert head.sealed is not None
                previous = event_digest(
                    letter, version - 1, head.sealed.topic, head.sealed.state
                )
            else:
                previous = self._previous_digest(stored)
            message = seal_message(
                letter, version, stored.topic, stored.state, previous
            )
            draft = _Draft(stored, previous, message, self.sealer.seal(message))
            drafts.append(draft)
            latest[letter] = draft
        self._stamp_and_finish(drafts)
        return [draft.sealed for draft in drafts if draft.sealed is not None]

    def _stamp_and_finish(self, drafts: list[_Draft]) -> None:
        """Stamp the drafts that need it, in one request, and build their states."""
        waiting = [d for d in drafts if d.sealed is None]
        to_stamp = [d for d in waiting if d.stored.topic in self.stamped_topics]
        if to_stamp:
            if self.stamper is None:
                raise StampingUnavailable("no time-stamp authority configured")
            leaves = [stamp_leaf_input(d.message, d.seal.signature) for d in to_stamp]
            for draft, stamp in zip(
                to_stamp, self.stamper.stamp_leaves(leaves), strict=True
            ):
                draft.stamp = stamp
        for draft in waiting:
            state = Envelope(
                payload=draft.stored.state,
                previous=draft.previous,
                key_id=draft.seal.key_id,
                signature=draft.seal.signature,
                stamp=draft.stamp,
            ).to_bytes()
            draft.sealed = StoredEvent(
                originator_id=draft.stored.originator_id,
                originator_version=draft.stored.originator_version,
                topic=draft.stored.topic,
                state=state,
            )

    def _previous_digest(self, stored: StoredEvent) -> str:
        letter = _id(stored)
        version = stored.originator_version
        if version == 1:
            return GENESIS
        with self._heads_lock:
            head = self._heads.get(letter)
        if head is not None and head[0] == version - 1:
            return head[1]
        rows = list(
            self.recorder.select_events(
                originator_id=stored.originator_id,
                lte=version - 1,
                desc=True,
                limit=1,
            )
        )
        if not rows or rows[0].originator_version != version - 1:
            raise BrokenHistory(letter, version, "previous event is missing")
        previous = rows[0]
        return event_digest(letter, version - 1, previous.topic, previous.state)

    def _remember_head(self, stored: StoredEvent) -> None:
        letter = _id(stored)
        digest = event_digest(
            letter, stored.originator_version, stored.topic, stored.state
        )
        with self._heads_lock:
            self._heads[letter] = (stored.originator_version, digest)
            self._heads.move_to_end(letter)
            while len(self._heads) > _HEADS_KEPT:
                self._heads.popitem(last=False)


class SealedApplication(Application[UUID]):
    """An application that records through a :class:`SealingEventStore`.

    Events whose topic is in :attr:`stamped_topics` are time-stamped as they
    are sealed, by ``stamper``; without one, recording them fails.
    """

    stamped_topics: frozenset[str] = frozenset()

    def __init__(
        self,
        env: dict[str, str],
        sealer: EventSealer,
        verifier: SealVerifier,
        stamper: EventStamper | None = None,
    ) -> None:
        self._sealer = sealer
        self._verifier = verifier
        self._stamper = stamper
        super().__init__(env)

    def construct_mapper(self) -> Mapper[UUID]:
        """Read payloads out of envelopes."""
        return EnvelopeMapper(transcoder=self.construct_transcoder())

    def construct_recorder(self) -> Any:
        """A process recorder, so processes can record tracking atomically."""
        return self.factory.process_recorder()

    def construct_event_store(self) -> SealingEventStore:
        """The sealing event store."""
        return SealingEventStore(
            self.mapper,
            self.recorder,
            self._sealer,
            self._verifier,
            stamper=self._stamper,
            stamped_topics=self.stamped_topics,
        )

    def save_deciding(self, aggregate_id: UUID, decide: Callable[[], A]) -> A:
        """Save what ``decide`` returns; after a concurrent write, decide again.

        ``decide`` loads the aggregate and applies the command, so each retry
        runs the domain's rules on the fresh history and races are settled by
        those rules and the store's uniqueness on (aggregate, version).
        """
        for attempt in range(_RETRIES):
            aggregate = decide()
            try:
                self.save(aggregate)
                return aggregate
            except IntegrityError:
                pause_before_retry(attempt)
                logger.info(
                    "concurrent write, retrying aggregate=%s attempt=%d",
                    aggregate_id,
                    attempt + 1,
                )
        raise ConcurrentChange(str(aggregate_id))

    @property
    def sealed_events(self) -> SealingEventStore:
        """The event store, typed as the sealing store it is."""
        assert isinstance(self.events, SealingEventStore)
        return self.events
