"""The events part: the period's sealed events and what anchors their chains.

``events.jsonl`` holds every event recorded in the period, in log order,
without payloads. ``chain-context.jsonl`` holds, for each aggregate with
events in the period, the versions the period holds and the aggregate's last
event before the period, so the verifier checks the first chain link inside
the period and notices a missing first or last event. The verifier checks
each seal with the trusted seal certificates, each chain link and version,
and that log positions only grow, and names each fault by line.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import IO
from uuid import UUID

from pli.compliance.bundle_format import (
    CHAIN_CONTEXT,
    EVENTS,
    ChainContext,
    EventRecord,
    MalformedLine,
)
from pli.compliance.bundle_io import (
    BundleWriter,
    Findings,
    ScannedEvent,
    UnreadableMember,
)
from pli.compliance.bundle_sources import CheckSource, ExportSource
from pli.hsm.seal import Seal, SealVerifier, UnknownSealKey
from pli.infrastructure.envelope import GENESIS, MalformedEnvelope, split_state

__all__ = ["EventsChecker", "EventsExporter", "record_of", "seal_problem"]

PART = "events"


def record_of(
    position: int | None, aggregate_id: str, version: int, topic: str, state: bytes
) -> EventRecord:
    """The bundle's record of a stored event: its payload reduced to a digest."""
    header_line, payload = split_state(state)
    return EventRecord(
        position=position,
        aggregate_id=aggregate_id,
        version=version,
        topic=topic,
        header_line=header_line,
        payload_sha256=hashlib.sha256(payload).digest(),
    )


def seal_problem(record: EventRecord, verifier: SealVerifier) -> str:
    """What is wrong with a record's seal, or '' when it verifies."""
    try:
        envelope = record.envelope()
    except MalformedEnvelope:
        return "the header is not a sealed envelope header"
    message = record.seal_message(envelope.previous)
    try:
        valid = verifier.is_valid(message, Seal(envelope.key_id, envelope.signature))
    except UnknownSealKey:
        return f"sealed by key {envelope.key_id}, which no trusted certificate holds"
    return "" if valid else "the seal does not verify"


def _previous_of(record: EventRecord) -> str | None:
    try:
        return record.envelope().previous
    except MalformedEnvelope:
        return None


class EventsExporter:
    """Spools the period's event lines, then writes them and the chain context."""

    def __init__(self, source: ExportSource) -> None:
        self.source = source
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=source.spool_dir)
        self._versions: dict[str, list[int]] = {}

    def observe(self, event: ScannedEvent) -> None:
        """Keep an event of the period."""
        if not event.in_period:
            return
        record = event.record
        self._spool.write(record.to_line())
        versions = self._versions.get(record.aggregate_id)
        if versions is None:
            self._versions[record.aggregate_id] = [record.version, record.version]
        else:
            versions[1] = record.version

    def write(self, bundle: BundleWriter) -> None:
        """Add ``events.jsonl`` and ``chain-context.jsonl``."""
        self._spool.seek(0)
        bundle.copy(EVENTS, self._spool)
        self._spool.close()
        with bundle.open(CHAIN_CONTEXT) as out:
            for aggregate_id, (first, last) in self._versions.items():
                previous = self._previous(aggregate_id, first)
                out.write(ChainContext(aggregate_id, first, last, previous).to_line())

    def _previous(self, aggregate_id: str, first: int) -> EventRecord | None:
        if first == 1:
            return None
        rows = self.source.letters.recorder.select_events(
            originator_id=UUID(aggregate_id), gt=first - 2, lte=first - 1
        )
        for row in rows:
            version, topic = row.originator_version, row.topic
            return record_of(None, aggregate_id, version, topic, row.state)
        return None


class _Chain:
    """Where one aggregate's chain stands while the lines are read."""

    __slots__ = ("version", "digest")

    def __init__(self, version: int, digest: str) -> None:
        self.version = version
        self.digest = digest


class EventsChecker:
    """Checks every event line's seal, chain link, version and log position."""

    def __init__(self, source: CheckSource) -> None:
        self.bundle = source.bundle
        self.findings: Findings = source.findings
        self.verifier = source.trust.seal_verifier()
        self.contexts = self._read_contexts()
        self._chains: dict[str, _Chain] = {}
        self._position = 0
        self._first_position: int | None = None
        self._count = 0

    def observe(self, record: EventRecord, line: int) -> None:
        """Check one event line."""
        where = f"{EVENTS} line {line} ({record.where()})"
        self._count += 1
        self._check_position(record, where)
        problem = seal_problem(record, self.verifier)
        if problem:
            self.findings.fault(PART, where, problem)
        chain = self._chains.get(record.aggregate_id)
        if chain is None:
            chain = self._start(record, where)
        expected = chain.version + 1
        if record.version != expected:
            gap = record.version > expected
            what = "an event is missing" if gap else "an event is repeated or moved"
            self.findings.fault(
                PART,
                where,
                f"version {record.version} where {expected} was due: {what}",
            )
        elif _previous_of(record) not in (None, chain.digest):
            self.findings.fault(
                PART, where, "chain link broken: the previous-event digest differs"
            )
        # Follow the chain as stored, so each later fault is named on its own.
        chain.version = record.version
        chain.digest = record.digest()

    def check(self) -> None:
        """Every aggregate of the chain context ends where the context says."""
        for aggregate_id, context in self.contexts.items():
            chain = self._chains.get(aggregate_id)
            where = f"{CHAIN_CONTEXT} aggregate {aggregate_id}"
            if chain is None:
                self.findings.fault(
                    PART, where, f"listed, but {EVENTS} has none of its events"
                )
            elif chain.version != context.last_version:
                self.findings.fault(
                    PART,
                    where,
                    f"{EVENTS} ends at version {chain.version}, the period ends "
                    f"at version {context.last_version}: an event is missing",
                )
        self._check_manifest_counts()
        self.findings.note(PART, "events", self._count)
        self.findings.note(PART, "aggregates", len(self._chains))

    def _start(self, record: EventRecord, where: str) -> _Chain:
        context = self.contexts.get(record.aggregate_id)
        if context is None:
            self.findings.fault(
                PART, where, f"its aggregate is missing from {CHAIN_CONTEXT}"
            )
            chain = _Chain(record.version - 1, _previous_of(record) or "")
        elif context.previous is None:
            chain = _Chain(context.first_version - 1, GENESIS)
        else:
            chain = _Chain(context.previous.version, context.previous.digest())
        self._chains[record.aggregate_id] = chain
        return chain

    def _check_position(self, record: EventRecord, where: str) -> None:
        position = record.position
        if position is None or position <= self._position:
            self.findings.fault(
                PART,
                where,
                f"log position {position} does not follow {self._position}: "
                "a line was inserted or moved",
            )
            return
        if self._first_position is None:
            self._first_position = position
        self._position = position

    def _read_contexts(self) -> dict[str, ChainContext]:
        contexts: dict[str, ChainContext] = {}
        if not self.bundle.has(CHAIN_CONTEXT):
            return contexts
        try:
            for number, line in self.bundle.lines(CHAIN_CONTEXT):
                self._read_context(contexts, number, line)
        except UnreadableMember as exc:
            self.findings.fault(PART, CHAIN_CONTEXT, f"unreadable ({exc})")
        return contexts

    def _read_context(
        self, contexts: dict[str, ChainContext], number: int, line: bytes
    ) -> None:
        where = f"{CHAIN_CONTEXT} line {number}"
        try:
            context = ChainContext.parse(line)
        except MalformedLine as exc:
            self.findings.fault(PART, where, str(exc))
            return
        if context.aggregate_id in contexts:
            self.findings.fault(PART, where, "the aggregate is listed twice")
            return
        self._check_anchor(context, where)
        contexts[context.aggregate_id] = context

    def _check_anchor(self, context: ChainContext, where: str) -> None:
        previous = context.previous
        if previous is None:
            if context.first_version != 1:
                self.findings.fault(
                    PART, where, "the period starts past version 1 with no anchor"
                )
            return
        if (
            previous.aggregate_id != context.aggregate_id
            or previous.version != context.first_version - 1
        ):
            self.findings.fault(
                PART, where, "the anchor is not the event just before the period"
            )
        problem = seal_problem(previous, self.verifier)
        if problem:
            self.findings.fault(PART, f"{where} (anchor)", problem)

    def _check_manifest_counts(self) -> None:
        stated = self.bundle.manifest.get("log")
        if not isinstance(stated, dict):
            return
        found = {
            "events": self._count,
            "first_position": self._first_position,
            "last_position": self._position or None,
        }
        for key, value in found.items():
            if stated.get(key) != value:
                self.findings.fault(
                    PART,
                    EVENTS,
                    f"the manifest states {key} {stated.get(key)!r}, "
                    f"the lines give {value!r}",
                )
