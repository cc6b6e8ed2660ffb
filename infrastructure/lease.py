"""Which of several servers on one PostgreSQL cluster runs the processes.

Every ``pli serve`` answers gRPC calls, but only one at a time follows the
event log to notify, render proofs and expire letters, so a notification is
not written twice by two servers (DESIGN §10). The one that holds a session
advisory lock on the cluster is that server; if its connection drops, the
lock is released by PostgreSQL and another server takes over at its next
poll. The embedded SQLite default runs one server and needs no lease.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

__all__ = ["ProcessLease"]

logger = logging.getLogger(__name__)

# An arbitrary, fixed 64-bit key naming pli's processes among advisory locks.
_LOCK_KEY = 0x706C692D70726F63


class ProcessLease:
    """A PostgreSQL session advisory lock, taken and kept on demand."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._connection: Any = None
        self._held = False

    def held(self) -> bool:
        """Whether this process holds the lease now (taking it if it is free)."""
        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(
                    self.database_url, autocommit=True, connect_timeout=5
                )
                self._held = False
            if self._held:
                self._connection.execute("SELECT 1")
            else:
                row = self._connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)
                ).fetchone()
                self._held = bool(row and row[0])
                if self._held:
                    logger.info("process lease taken")
        except psycopg.Error as exc:
            logger.warning("process lease lost error=%s", type(exc).__name__)
            self.release()
        return self._held

    def release(self) -> None:
        """Give the lease up by closing the session that holds it."""
        if self._connection is not None and not self._connection.closed:
            self._connection.close()
        self._connection = None
        self._held = False
