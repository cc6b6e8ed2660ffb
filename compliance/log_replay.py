"""Replaying the transparency log: rebuild it from the events, compare it all.

The audit hands every stored event, in commit order, to a :class:`LogReplay`,
which checks the log as it goes, in pages, never holding the log in memory:

- each stored leaf against the event it names (notification id, aggregate,
  version, leaf hash): an event changed, removed or inserted after it was
  logged, or a log projection that disagrees, is named by its log position;
- the stored complete subtrees against a tree built from the stored leaves;
- every stored checkpoint's root against the log rebuilt from the events,
  its seal and time stamp, and, between successive checkpoints, a
  consistency proof from the stored subtrees; a checkpoint larger than the
  log shows a truncated log;
- with the auditor's trust anchors, each checkpoint's time stamp in full
  (its authority's signature and chain), that the stamps of successive
  checkpoints go forward, and that a stamp lies within the tolerance of the
  time its checkpoint states (it is taken as the checkpoint is sealed);
- optionally an auditor's earlier checkpoint: the rebuilt log must extend it,
  and the stored log must prove it consistent with the latest checkpoint.

What the audit sees is fixed when it starts: checkpoints, leaves and events
added while it runs (by a server that keeps working) are left for the next
audit, so a live system produces no false alarm.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from eventsourcing.persistence import Notification

from pli.compliance.findings import NO_LETTER, Report
from pli.compliance.stamp_replay import StampTrust, duration_text, time_text
from pli.hsm.seal import SealVerifier
from pli.hsm.timestamp import BadTimeStamp
from pli.infrastructure import merkle
from pli.infrastructure.checkpoints import (
    Checkpoint,
    checkpoint_problems,
    checkpoint_stamp,
)
from pli.infrastructure.transparency import (
    LogEntry,
    LogStore,
    UnreadableEvent,
    event_leaf,
)

__all__ = ["LogReplay"]


_PAGE = 500


@dataclass(frozen=True)
class _Snapshot:
    """How far the log and its checkpoints went when the audit started."""

    last_checkpoint: int
    tracked: int
    size: int


class LogReplay:
    """Checks the log against the events fed to it; see the module docstring."""

    def __init__(
        self,
        log: LogStore,
        verifier: SealVerifier,
        report: Report,
        against: Checkpoint | None = None,
        stamps: StampTrust | None = None,
    ) -> None:
        self.log = log
        self.verifier = verifier
        self.report = report
        self.against = against
        self.stamps = stamps
        self.stamped_checkpoints = 0
        self._previous_stamp: tuple[int, dt.datetime] | None = None
        latest = log.latest_checkpoint()
        # Read in this order, each bound is at least as far as the one before.
        tracked = log.tracked()
        self.snapshot = _Snapshot(latest.size if latest else 0, tracked, log.size())
        self.from_events = merkle.CompactRange()
        self.from_leaves = merkle.CompactRange()
        self._leaves_gap = False
        self.rebuild_stopped_at: int | None = None
        self.checkpoints_checked = 0
        self.against_root: bytes | None = None
        self._leaves = self._stored_leaves()
        self._leaf: LogEntry | None = next(self._leaves, None)
        self._nodes: list[tuple[int, int, bytes]] = []
        self._checkpoints = self._stored_checkpoints()
        self._checkpoint: Checkpoint | None = next(self._checkpoints, None)
        self._previous: Checkpoint | None = None
        self._at_size(0)

    # Feeding.

    def feed(self, notification: Notification) -> int:
        """Check one stored event (in commit order); return its log position.

        That is its position in the stored log, or, for an event the stored
        log does not hold, its position in the log rebuilt from the events.
        """
        self._leaves_before(notification.id)
        try:
            leaf = event_leaf(notification)
        except UnreadableEvent:
            leaf = None
        position = self._match(notification, leaf)
        if position is None:
            position = self.from_events.size
        self._rebuild(notification, leaf)
        return position

    def _match(self, notification: Notification, leaf: bytes | None) -> int | None:
        letter = str(notification.originator_id)
        version = notification.originator_version
        stored = self._leaf
        if stored is not None and stored.notification_id == notification.id:
            self._take_leaf()
            if (stored.aggregate_id, stored.version) != (letter, version):
                self.report(
                    letter,
                    version,
                    stored.position,
                    f"the log holds letter {stored.aggregate_id} version "
                    f"{stored.version} for this event",
                )
            elif stored.leaf_hash != leaf:
                self.report(
                    letter,
                    version,
                    stored.position,
                    "the log's leaf disagrees with the stored event "
                    "(changed after it was logged, or a forged leaf)",
                )
            return stored.position
        if notification.id <= self.snapshot.tracked:
            self.report(
                letter,
                version,
                self.from_events.size,
                "event is not in the log, though the log passed it "
                "(inserted after it was logged?); position as rebuilt",
            )
        return None

    def _leaves_before(self, notification_id: int) -> None:
        """Report stored leaves whose event the store no longer has."""
        while self._leaf is not None and self._leaf.notification_id < notification_id:
            self._missing_event(self._take_leaf())

    def _missing_event(self, entry: LogEntry) -> None:
        self.report(
            entry.aggregate_id,
            entry.version,
            entry.position,
            "event is in the log but missing from the event store (removed?)",
        )

    def _take_leaf(self) -> LogEntry:
        entry = self._leaf
        assert entry is not None
        expected = self.from_leaves.size
        if not self._leaves_gap and entry.position != expected:
            # The subtrees past a gap cannot be rebuilt from the leaves.
            self._leaves_gap = True
            self.report(
                NO_LETTER,
                0,
                expected,
                f"log positions {expected} to {entry.position - 1} are missing",
            )
        if not self._leaves_gap:
            self._nodes += self.from_leaves.append(entry.leaf_hash)[1:]
            if len(self._nodes) >= _PAGE:
                self._compare_nodes()
        self._leaf = next(self._leaves, None)
        return entry

    def _rebuild(self, notification: Notification, leaf: bytes | None) -> None:
        if self.rebuild_stopped_at is not None:
            return
        if leaf is None:
            self.rebuild_stopped_at = self.from_events.size
            self.report(
                str(notification.originator_id),
                notification.originator_version,
                self.from_events.size,
                "stored event unreadable: the log cannot be rebuilt past it",
            )
            return
        self.from_events.append(leaf)
        self._at_size(self.from_events.size)

    # Checkpoints.

    def _at_size(self, size: int) -> None:
        """Compare what the rebuilt log of ``size`` leaves must agree with."""
        if self.against is not None and self.against.size == size:
            self.against_root = self.from_events.root()
        while self._checkpoint is not None and self._checkpoint.size <= size:
            checkpoint = self._next_checkpoint()
            if checkpoint.size == size and checkpoint.root != self.from_events.root():
                self._checkpoint_fault(
                    checkpoint,
                    "root does not match the log rebuilt from the events "
                    "(a forged or replaced checkpoint, or changed events)",
                )

    def _next_checkpoint(self) -> Checkpoint:
        checkpoint = self._checkpoint
        assert checkpoint is not None
        self.checkpoints_checked += 1
        for problem in self._problems(checkpoint):
            self._checkpoint_fault(checkpoint, problem)
        self._check_stamp_time(checkpoint)
        if checkpoint.size > self.snapshot.size:
            self._checkpoint_fault(
                checkpoint,
                f"larger than the log ({self.snapshot.size} leaves): "
                "the log was truncated",
            )
        elif self._previous is not None:
            self._check_consistency(self._previous, checkpoint)
        self._previous = checkpoint
        self._checkpoint = next(self._checkpoints, None)
        return checkpoint

    def _problems(self, checkpoint: Checkpoint) -> list[str]:
        trust_roots = None if self.stamps is None else self.stamps.trust_roots
        return checkpoint_problems(checkpoint, self.verifier, trust_roots=trust_roots)

    def _check_stamp_time(self, checkpoint: Checkpoint) -> None:
        """Stamps of successive checkpoints go forward, each near its checkpoint."""
        if self.stamps is None or checkpoint.stamp is None:
            return
        self.stamped_checkpoints += 1
        try:
            info = checkpoint_stamp(checkpoint, trust_roots=self.stamps.trust_roots)
        except BadTimeStamp:
            return  # already reported with the checkpoint's problems
        assert info is not None
        previous = self._previous_stamp
        if previous is not None and info.time < previous[1]:
            self._checkpoint_fault(
                checkpoint,
                f"time stamp {time_text(info.time)} precedes that of the checkpoint "
                f"of size {previous[0]} ({time_text(previous[1])})",
            )
        else:
            self._previous_stamp = (checkpoint.size, info.time)
        gap = abs(info.time - checkpoint.time)
        if gap > self.stamps.tolerance:
            self._checkpoint_fault(
                checkpoint,
                f"time stamp {time_text(info.time)} is {duration_text(gap)} "
                f"from the checkpoint's time ({time_text(checkpoint.time)}); at "
                f"most {duration_text(self.stamps.tolerance)} is allowed",
            )

    def _check_consistency(self, first: Checkpoint, second: Checkpoint) -> None:
        problem = self._consistency_problem(
            first, second, f"not consistent with the checkpoint of size {first.size}"
        )
        if problem is not None:
            self._checkpoint_fault(second, problem)

    def _consistency_problem(
        self, first: Checkpoint, second: Checkpoint, differs: str
    ) -> str | None:
        """None when ``second`` extends ``first``; else why not."""
        try:
            proof = self.log.consistency_proof(first.size, second.size)
        except merkle.TreeRangeError as exc:
            return f"no consistency proof: {exc}"
        if merkle.verify_consistency(
            first.size, second.size, first.root, second.root, proof
        ):
            return None
        return differs

    def _checkpoint_fault(self, checkpoint: Checkpoint, reason: str) -> None:
        size = checkpoint.size
        self.report(NO_LETTER, 0, size, f"checkpoint of size {size}: {reason}")

    # Finishing.

    def finish(self) -> None:
        """Report what is left once every event was fed: leaves, checkpoints."""
        while self._leaf is not None:
            self._missing_event(self._take_leaf())
        self._compare_nodes()
        rebuilt = self.from_events.size
        while self._checkpoint is not None:
            checkpoint = self._next_checkpoint()
            if self.rebuild_stopped_at is None:
                self._checkpoint_fault(
                    checkpoint,
                    f"covers more events than the event store holds ({rebuilt}): "
                    "events were removed",
                )
        if self.against is not None:
            self._check_against(self.against)

    def _check_against(self, against: Checkpoint) -> None:
        for problem in self._problems(against):
            self._against_fault(against, problem)
        if self.against_root is None:
            self._against_fault(
                against,
                f"the log rebuilt from the events has {self.from_events.size} "
                "leaves: it was truncated",
            )
        elif self.against_root != against.root:
            self._against_fault(against, "the log does not extend it")
        latest = self._previous
        if latest is None or latest.size < against.size:
            return
        problem = self._consistency_problem(
            against,
            latest,
            f"the latest checkpoint (size {latest.size}) does not extend it",
        )
        if problem is not None:
            self._against_fault(against, problem)

    def _against_fault(self, against: Checkpoint, reason: str) -> None:
        self.report(
            NO_LETTER,
            0,
            against.size,
            f"auditor's checkpoint of size {against.size}: {reason}",
        )

    # Paging through the store.

    def _stored_leaves(self) -> Iterator[LogEntry]:
        start = 0
        while True:
            page = self.log.entries(start, _PAGE)
            for entry in page:
                if entry.notification_id > self.snapshot.tracked:
                    return
                yield entry
            if len(page) < _PAGE:
                return
            start = page[-1].position + 1

    def _stored_checkpoints(self) -> Iterator[Checkpoint]:
        after = -1
        while True:
            page = self.log.checkpoints(after, _PAGE)
            for checkpoint in page:
                if checkpoint.size > self.snapshot.last_checkpoint:
                    return
                yield checkpoint
            if len(page) < _PAGE:
                return
            after = page[-1].size

    def _compare_nodes(self) -> None:
        if not self._nodes:
            return
        stored = self.log.read_nodes(
            [(level, index) for level, index, _ in self._nodes]
        )
        for level, index, value in self._nodes:
            first = index << level
            where = f"subtree of log positions {first} to {first + (1 << level) - 1}"
            found = stored.get((level, index))
            if found is None:
                self.report(NO_LETTER, 0, first, f"the log lacks the {where}")
            elif found != value:
                self.report(
                    NO_LETTER,
                    0,
                    first,
                    f"the stored {where} disagrees with its leaves",
                )
        self._nodes.clear()
