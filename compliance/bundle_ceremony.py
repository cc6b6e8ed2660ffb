"""The key ceremony part: every sealed event of the key ceremony log.

Key generation, activation and rotation are recorded as events (DESIGN §3).
The part holds all of them from the log's start to the period's end, not
only the period's, so an auditor sees the whole history of the keys whose
seals the bundle relies on; like every event line, without payloads. Until
such events exist the file is empty and the report says so.
"""

from __future__ import annotations

import tempfile
from typing import IO

from pli.compliance.bundle_events import seal_problem
from pli.compliance.bundle_format import KEY_CEREMONY, EventRecord, MalformedLine
from pli.compliance.bundle_io import BundleWriter, ScannedEvent, UnreadableMember
from pli.compliance.bundle_sources import CheckSource, ExportSource
from pli.compliance.ceremony_replay import CeremonyReplay
from pli.infrastructure.envelope import GENESIS, MalformedEnvelope

__all__ = ["KeyCeremonyChecker", "KeyCeremonyExporter", "is_key_ceremony"]

PART = "key ceremony"


def is_key_ceremony(topic: str) -> bool:
    """Whether an event topic belongs to the key ceremony log."""
    return CeremonyReplay.is_ceremony(topic)


class KeyCeremonyExporter:
    """Spools every key ceremony event up to the period's end."""

    def __init__(self, source: ExportSource) -> None:
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=source.spool_dir)

    def observe(self, event: ScannedEvent) -> None:
        """Keep a key ceremony event, whether before or inside the period."""
        if is_key_ceremony(event.record.topic):
            self._spool.write(event.record.to_line())

    def write(self, bundle: BundleWriter) -> None:
        """Add ``key-ceremony.jsonl`` (empty while no ceremony was recorded)."""
        self._spool.seek(0)
        bundle.copy(KEY_CEREMONY, self._spool)
        self._spool.close()


class KeyCeremonyChecker:
    """Checks each ceremony event's seal and each chain, complete from version 1."""

    def __init__(self, source: CheckSource) -> None:
        self.bundle = source.bundle
        self.findings = source.findings
        self.verifier = source.trust.seal_verifier()

    def observe(self, record: EventRecord, line: int) -> None:
        """Ceremony events are read from their own file."""

    def check(self) -> None:
        """Check ``key-ceremony.jsonl``."""
        if not self.bundle.has(KEY_CEREMONY):
            return
        records = []
        try:
            for number, line in self.bundle.lines(KEY_CEREMONY):
                try:
                    records.append((number, EventRecord.parse(line)))
                except MalformedLine as exc:
                    self.findings.fault(PART, f"{KEY_CEREMONY} line {number}", str(exc))
        except UnreadableMember as exc:
            self.findings.fault(PART, KEY_CEREMONY, f"unreadable ({exc})")
        self._check_records(records)
        self.findings.note(
            PART, "events", len(records) or "none recorded yet (empty log)"
        )

    def _check_records(self, records: list[tuple[int, EventRecord]]) -> None:
        heads: dict[str, tuple[int, str]] = {}
        position = 0
        for number, record in records:
            where = f"{KEY_CEREMONY} line {number} ({record.where()})"
            if not is_key_ceremony(record.topic):
                self.findings.fault(PART, where, "not a key ceremony event")
            if record.position is None or record.position <= position:
                self.findings.fault(PART, where, "log positions do not grow")
            position = record.position or position
            problem = seal_problem(record, self.verifier) or self._link_problem(
                record, heads.get(record.aggregate_id, (0, GENESIS))
            )
            if problem:
                self.findings.fault(PART, where, problem)
            heads[record.aggregate_id] = (record.version, record.digest())

    @staticmethod
    def _link_problem(record: EventRecord, head: tuple[int, str]) -> str:
        version, digest = head
        if record.version != version + 1:
            return f"version {record.version} where {version + 1} was due"
        try:
            previous = record.envelope().previous
        except MalformedEnvelope:
            return "the header is not a sealed envelope header"
        return "" if previous == digest else "chain link broken"
