"""Making checkpoints of the transparency log: on a schedule, and on demand.

A checkpoint seals the log's current tree head (:mod:`.checkpoints`). The
process runner makes one every ``PLI_CHECKPOINT_INTERVAL`` seconds while the
log grows; the proof builder asks for one whenever no checkpoint covers the
events a proof states yet; ``pli log checkpoint`` makes one by hand. Two
makers that race for the same tree size end up with the same stored
checkpoint: the store keeps the first and hands it to both.
"""

from __future__ import annotations

import datetime as dt
import logging

from pli.domain.clock import Clock
from pli.hsm.seal import EventSealer
from pli.infrastructure.checkpoints import Checkpoint, Stamper, seal_checkpoint
from pli.infrastructure.transparency import LogStore

__all__ = ["Checkpointer", "EmptyLog", "NotYetLogged"]

logger = logging.getLogger(__name__)


class EmptyLog(Exception):
    """There is nothing to checkpoint: the log holds no leaf yet."""


class NotYetLogged(Exception):
    """A checkpoint was asked to cover leaves the log does not hold yet."""


class Checkpointer:
    """Seals the log's tree head, through the token and an optional stamper."""

    def __init__(
        self,
        log: LogStore,
        sealer: EventSealer,
        clock: Clock,
        *,
        interval: float = 300.0,
        stamper: Stamper | None = None,
    ) -> None:
        self.log = log
        self.sealer = sealer
        self.clock = clock
        self.interval = dt.timedelta(seconds=interval)
        self.stamper = stamper

    def checkpoint_now(self) -> Checkpoint:
        """A checkpoint of the whole log as it stands (the stored one if any).

        Raises EmptyLog on an empty log, TokenUnavailable when the token
        cannot seal.
        """
        size = self.log.size()
        if size == 0:
            raise EmptyLog("the transparency log holds no event yet")
        latest = self.log.latest_checkpoint()
        if latest is not None and latest.size == size:
            return latest
        checkpoint = seal_checkpoint(
            size, self.log.root(size), self.clock.now(), self.sealer, self.stamper
        )
        stored = self.log.add_checkpoint(checkpoint)
        logger.info("log checkpoint sealed size=%d key=%s", size, stored.key_id)
        return stored

    def covering(self, size: int) -> Checkpoint:
        """A checkpoint of at least ``size`` leaves: the latest, or a new one.

        Raises NotYetLogged when the log holds fewer than ``size`` leaves.
        """
        latest = self.log.latest_checkpoint()
        if latest is not None and latest.size >= size:
            return latest
        held = self.log.size()
        if held < size:
            raise NotYetLogged(f"the log holds {held} leaves, not {size}")
        return self.checkpoint_now()

    def run_once(self) -> int:
        """Checkpoint the log if it grew and the interval has passed; 1 if it did."""
        size = self.log.size()
        latest = self.log.latest_checkpoint()
        if size == 0 or (latest is not None and latest.size >= size):
            return 0
        if latest is not None and self.clock.now() - latest.time < self.interval:
            return 0
        self.checkpoint_now()
        return 1
