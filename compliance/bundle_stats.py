"""The period's statistics: what a supervisor asks of a delivery service.

Letters deposited in the period by kind and by outcome at the period's end,
notification failures, decisions, non-claims (expiries), content purges and
the time recipients took to decide (median and 90th percentile, from the
notification to the acceptance or refusal). The exporter computes them from
the events' payloads; the verifier, which has no payloads, recomputes from
the topics alone every figure that does not need one and compares.

No figure names a person: they are counts and durations.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from pli.compliance.bundle_format import STATISTICS, EventRecord
from pli.compliance.bundle_io import BundleWriter, ScannedEvent
from pli.compliance.bundle_sources import CheckSource, ExportSource
from pli.domain.letter import Letter
from pli.infrastructure.envelope import split_state

__all__ = [
    "PeriodStatistics",
    "StatisticsChecker",
    "StatisticsExporter",
    "aware",
    "compare_statistics",
]

PART = "statistics"

_DEPOSITED = get_topic(Letter.Deposited)
_NOTIFIED = get_topic(Letter.Notified)
_NOTIFICATION_FAILED = get_topic(Letter.NotificationFailed)
_ACCEPTED = get_topic(Letter.Accepted)
_REFUSED = get_topic(Letter.Refused)
_EXPIRED = get_topic(Letter.Expired)
_PURGED = get_topic(Letter.ContentPurged)
_OUTCOMES = {_ACCEPTED: "accepted", _REFUSED: "refused", _EXPIRED: "expired"}
_PENDING = "pending"

# Finds when a letter notified before the period was notified.
NotifiedAt = Callable[[str], dt.datetime | None]


class PeriodStatistics:
    """Counts what the period's events say, in log order.

    ``observe`` takes each event with its decoded payload (``facts``) when the
    caller has it; without payloads only the figures the topics determine are
    produced, which is what the offline verifier recomputes.
    """

    def __init__(self, notified_at: NotifiedAt | None = None) -> None:
        self._notified_at_before = notified_at
        self._topics: Counter[str] = Counter()
        self._letters: dict[str, list[str | None]] = {}
        self._notified: dict[str, dt.datetime] = {}
        self._decision_seconds: list[float] = []
        self._with_facts = False

    def observe(self, record: EventRecord, facts: Mapping[str, Any] | None) -> None:
        """Count one event of the period."""
        self._topics[record.topic] += 1
        letter = record.aggregate_id
        if facts is not None:
            self._with_facts = True
        if record.topic == _DEPOSITED:
            kind = None if facts is None else str(facts.get("kind", "unknown"))
            self._letters[letter] = [kind, _PENDING]
        elif record.topic in _OUTCOMES:
            if letter in self._letters:
                self._letters[letter][1] = _OUTCOMES[record.topic]
            if facts is not None and record.topic != _EXPIRED:
                self._time_decision(letter, facts)
            self._notified.pop(letter, None)
        elif record.topic == _NOTIFIED and facts is not None:
            self._notified[letter] = aware(facts["timestamp"])

    def result(self) -> dict[str, Any]:
        """The statistics as the bundle's ``statistics.json`` holds them."""
        outcomes = Counter(outcome for _, outcome in self._letters.values())
        figures: dict[str, Any] = {
            "events": {
                "total": sum(self._topics.values()),
                "by_topic": dict(sorted(self._topics.items())),
            },
            "letters_deposited": {
                "total": len(self._letters),
                "by_outcome": _outcome_counts(outcomes),
            },
            "notification_failures": self._topics[_NOTIFICATION_FAILED],
            "decisions": {
                "accepted": self._topics[_ACCEPTED],
                "refused": self._topics[_REFUSED],
            },
            "expiries": self._topics[_EXPIRED],
            "content_purges": self._topics[_PURGED],
        }
        if self._with_facts:
            figures["letters_deposited"]["by_kind"] = self._by_kind()
            figures["time_to_decision_seconds"] = _distribution(self._decision_seconds)
        return figures

    def _by_kind(self) -> dict[str, Any]:
        kinds: dict[str, Counter[str]] = {}
        for kind, outcome in self._letters.values():
            kinds.setdefault(str(kind), Counter())[str(outcome)] += 1
        return {
            kind: {"total": sum(c.values()), **_outcome_counts(c)}
            for kind, c in sorted(kinds.items())
        }

    def _time_decision(self, letter: str, facts: Mapping[str, Any]) -> None:
        notified = self._notified.get(letter)
        if notified is None and self._notified_at_before is not None:
            notified = self._notified_at_before(letter)
        if notified is None:
            return
        seconds = (aware(facts["timestamp"]) - notified).total_seconds()
        self._decision_seconds.append(seconds)


def _outcome_counts(counts: Counter[str]) -> dict[str, int]:
    names = (*_OUTCOMES.values(), _PENDING)
    return {name: counts[name] for name in names}


def _distribution(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "median": _nearest_rank(ordered, 50),
        "p90": _nearest_rank(ordered, 90),
    }


def _nearest_rank(ordered: list[float], percent: int) -> float | None:
    if not ordered:
        return None
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def compare_statistics(stated: Any, recomputed: Mapping[str, Any]) -> list[str]:
    """Name every recomputed figure the bundle states differently."""
    differences = _compare(stated, recomputed, "statistics")
    deposited = stated.get("letters_deposited") if isinstance(stated, dict) else None
    by_kind = deposited.get("by_kind") if isinstance(deposited, dict) else None
    if isinstance(by_kind, dict):
        differences += _kind_sums(by_kind, deposited)
    return differences


def _compare(stated: Any, recomputed: Mapping[str, Any], path: str) -> list[str]:
    differences: list[str] = []
    given_all = stated if isinstance(stated, dict) else {}
    for key, value in recomputed.items():
        here = f"{path}.{key}"
        given = given_all.get(key)
        if key == "by_topic":
            given = given if isinstance(given, dict) else {}
            for topic in sorted(set(given) | set(value)):
                if given.get(topic) != value.get(topic):
                    differences.append(
                        f"{here}[{topic}]: the bundle says {given.get(topic)!r}, "
                        f"the events give {value.get(topic, 0)}"
                    )
        elif isinstance(value, dict):
            differences += _compare(given, value, here)
        elif given != value:
            differences.append(
                f"{here}: the bundle says {given!r}, the events give {value}"
            )
    return differences


def _kind_sums(by_kind: dict[str, Any], deposited: dict[str, Any]) -> list[str]:
    """The per-kind figures must add up to the totals the events confirm."""
    differences = []
    for name in ("total", *_OUTCOMES.values(), _PENDING):
        total = deposited.get("total") if name == "total" else None
        if total is None:
            total = (deposited.get("by_outcome") or {}).get(name)
        summed = sum(
            figures.get(name, 0)
            for figures in by_kind.values()
            if isinstance(figures, dict) and isinstance(figures.get(name, 0), int)
        )
        if summed != total:
            differences.append(
                f"statistics.letters_deposited.by_kind: {name} adds up to {summed}, "
                f"not {total!r}"
            )
    return differences


class StatisticsExporter:
    """Computes the statistics from the period's payloads; writes the JSON."""

    def __init__(self, source: ExportSource) -> None:
        self.source = source
        self.statistics = PeriodStatistics(self._notified_before)

    def observe(self, event: ScannedEvent) -> None:
        """Count an event of the period."""
        if event.in_period:
            self.statistics.observe(event.record, event.facts)

    def write(self, bundle: BundleWriter) -> None:
        """Add ``statistics.json``."""
        document = {"period": self.source.period.to_json()}
        document.update(self.statistics.result())
        bundle.write_json(STATISTICS, document)

    def _notified_before(self, letter_id: str) -> dt.datetime | None:
        letters = self.source.letters
        for row in letters.recorder.select_events(originator_id=UUID(letter_id)):
            if row.topic == _NOTIFIED:
                _, payload = split_state(row.state)
                return aware(letters.mapper.transcoder.decode(payload)["timestamp"])
        return None


class StatisticsChecker:
    """Recomputes from the event lines every figure that needs no payload."""

    def __init__(self, source: CheckSource) -> None:
        self.bundle = source.bundle
        self.findings = source.findings
        self.statistics = PeriodStatistics()

    def observe(self, record: EventRecord, line: int) -> None:
        """Count an event line."""
        self.statistics.observe(record, None)

    def check(self) -> None:
        """Compare the recomputed figures with ``statistics.json``."""
        if not self.bundle.has(STATISTICS):
            return
        try:
            stated = json.loads(self.bundle.read(STATISTICS, 16 * 1024 * 1024))
        except ValueError as exc:
            self.findings.fault(PART, STATISTICS, f"unreadable ({exc})")
            return
        recomputed = self.statistics.result()
        for difference in compare_statistics(stated, recomputed):
            self.findings.fault(PART, STATISTICS, difference)
        period = self.bundle.manifest.get("period")
        if isinstance(stated, dict) and stated.get("period") != period:
            self.findings.fault(PART, STATISTICS, "its period is not the manifest's")
        self.findings.note(PART, "figures recomputed", _leaves(recomputed))


def aware(moment: dt.datetime) -> dt.datetime:
    """An event time with its offset (the library's times are UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _leaves(figures: Mapping[str, Any]) -> int:
    return sum(
        _leaves(value) if isinstance(value, dict) else 1 for value in figures.values()
    )
