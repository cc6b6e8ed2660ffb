"""The mail queue: one durable row per message pli must send, at most once.

A registered-mail provider must never notify a recipient twice, so every
message goes through this table, kept in the event store's own database
(SQLite or PostgreSQL) next to the views. A row moves

    queued -> sending -> sent | failed | in-doubt

and is *settled* once the letter records what became of it (``Notified``
or ``NotificationFailed``). ``sending`` is committed right before the
message's bytes leave; a row found still ``sending`` long after that can
only mean the sender died mid-transfer, and it is then declared
``in-doubt`` instead of being sent again.

The primary key (letter, purpose) makes queueing idempotent: a follower
that sees the same deposit twice after a crash queues nothing new.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

from pli.infrastructure.letters import iso

__all__ = ["MailQueue", "MailState", "Purpose", "QueuedMail"]


class Purpose(StrEnum):
    """Why a message is sent."""

    NOTIFICATION = "notification"
    SENDER_NOTICE = "sender-notice"


class MailState(StrEnum):
    """Where a message stands."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    IN_DOUBT = "in-doubt"


_CREATE = (
    "CREATE TABLE IF NOT EXISTS pli_mail_queue ("
    "letter_id TEXT NOT NULL, purpose TEXT NOT NULL, "
    "message_id TEXT NOT NULL UNIQUE, state TEXT NOT NULL, "
    "attempts INTEGER NOT NULL, queued_at TEXT NOT NULL, "
    "next_attempt_at TEXT NOT NULL, attempted_at TEXT, last_code INTEGER, "
    "outcome TEXT, settled INTEGER NOT NULL, "
    "PRIMARY KEY (letter_id, purpose))",
    "CREATE INDEX IF NOT EXISTS pli_mail_queue_due "
    "ON pli_mail_queue (state, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS pli_mail_queue_unsettled "
    "ON pli_mail_queue (settled, state)",
)

_COLUMNS = (
    "letter_id, purpose, message_id, state, attempts, queued_at, "
    "next_attempt_at, attempted_at, last_code, outcome, settled"
)


@dataclass(frozen=True)
class QueuedMail:
    """One row of the queue."""

    letter_id: UUID
    purpose: Purpose
    message_id: str
    state: MailState
    attempts: int
    queued_at: dt.datetime
    next_attempt_at: dt.datetime
    attempted_at: dt.datetime | None
    last_code: int | None
    outcome: str | None
    settled: bool

    @classmethod
    def from_row(cls, row: Any) -> QueuedMail:
        """Read a database row."""
        return cls(
            letter_id=UUID(row["letter_id"]),
            purpose=Purpose(row["purpose"]),
            message_id=row["message_id"],
            state=MailState(row["state"]),
            attempts=int(row["attempts"]),
            queued_at=_moment(row["queued_at"]),
            next_attempt_at=_moment(row["next_attempt_at"]),
            attempted_at=_moment(row["attempted_at"]) if row["attempted_at"] else None,
            last_code=row["last_code"],
            outcome=row["outcome"],
            settled=bool(row["settled"]),
        )

    @property
    def key(self) -> dict[str, str]:
        """The row's primary key, as query parameters."""
        return {"letter_id": str(self.letter_id), "purpose": self.purpose.value}


def _moment(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


class MailQueue:
    """The ``pli_mail_queue`` table, in the recorder's database."""

    def __init__(self, datastore: Any, *, is_sqlite: bool) -> None:
        self.datastore = datastore
        self.is_sqlite = is_sqlite
        with self._cursor() as cursor:
            for statement in _CREATE:
                cursor.execute(statement)

    @contextmanager
    def _cursor(self, *, commit: bool = True) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield cursor

    def _run(self, statement: str, params: dict[str, Any]) -> int:
        """Execute one change in its own transaction; return the rows it hit."""
        # RETURNING counts the rows on both databases (SQLite 3.35 and later),
        # where the library's SQLite cursor shows no row count.
        with self._cursor() as cursor:
            cursor.execute(
                self._placeholders(statement + " RETURNING letter_id"), params
            )
            return len(cursor.fetchall())

    def _select(self, statement: str, params: dict[str, Any]) -> list[QueuedMail]:
        with self._cursor(commit=False) as cursor:
            cursor.execute(self._placeholders(statement), params)
            return [QueuedMail.from_row(row) for row in cursor.fetchall()]

    def _placeholders(self, statement: str) -> str:
        """Statements are written with ``:name``; psycopg wants ``%(name)s``."""
        if self.is_sqlite:
            return statement
        return re.sub(r":(\w+)", r"%(\1)s", statement)

    def enqueue(
        self, letter_id: UUID, purpose: Purpose, message_id: str, at: dt.datetime
    ) -> bool:
        """Queue a message, due at once; False if it was queued before."""
        return bool(
            self._run(
                "INSERT INTO pli_mail_queue (" + _COLUMNS + ") VALUES ("
                ":letter_id, :purpose, :message_id, 'queued', 0, :at, :at, "
                "NULL, NULL, NULL, 0) ON CONFLICT DO NOTHING",
                {
                    "letter_id": str(letter_id),
                    "purpose": purpose.value,
                    "message_id": message_id,
                    "at": iso(at),
                },
            )
        )

    def get(self, letter_id: UUID, purpose: Purpose) -> QueuedMail | None:
        """The row for this letter and purpose, if one was queued."""
        rows = self._select(
            "SELECT " + _COLUMNS + " FROM pli_mail_queue "
            "WHERE letter_id = :letter_id AND purpose = :purpose",
            {"letter_id": str(letter_id), "purpose": purpose.value},
        )
        return rows[0] if rows else None

    def due(self, at: dt.datetime, limit: int) -> list[QueuedMail]:
        """Queued messages whose next attempt is due at ``at``, oldest first."""
        return self._select(
            "SELECT " + _COLUMNS + " FROM pli_mail_queue "
            "WHERE state = 'queued' AND next_attempt_at <= :at "
            "ORDER BY next_attempt_at LIMIT :limit",
            {"at": iso(at), "limit": limit},
        )

    def unsettled(self, limit: int) -> list[QueuedMail]:
        """Finished messages whose outcome the letter does not record yet."""
        return self._select(
            "SELECT " + _COLUMNS + " FROM pli_mail_queue "
            "WHERE settled = 0 AND state IN ('sent', 'failed', 'in-doubt') "
            "ORDER BY queued_at LIMIT :limit",
            {"limit": limit},
        )

    def mark_sending(self, mail: QueuedMail, at: dt.datetime) -> bool:
        """Commit that the message is about to leave; False if another took it."""
        return bool(
            self._run(
                "UPDATE pli_mail_queue SET state = 'sending', attempted_at = :at "
                "WHERE letter_id = :letter_id AND purpose = :purpose "
                "AND state = 'queued'",
                {**mail.key, "at": iso(at)},
            )
        )

    def mark_sent(self, mail: QueuedMail, attempts: int) -> None:
        """The server took the message.

        The server's word wins over a guess: a message declared in doubt
        while it was still leaving becomes sent, and is settled again.
        """
        self._run(
            "UPDATE pli_mail_queue SET state = 'sent', attempts = :attempts, "
            "last_code = 250, outcome = NULL, settled = 0 "
            "WHERE letter_id = :letter_id AND purpose = :purpose "
            "AND state IN ('sending', 'in-doubt')",
            {**mail.key, "attempts": attempts},
        )

    def defer(
        self, mail: QueuedMail, attempts: int, until: dt.datetime, code: int
    ) -> None:
        """Put the message back in the queue for another attempt at ``until``."""
        self._run(
            "UPDATE pli_mail_queue SET state = 'queued', attempts = :attempts, "
            "next_attempt_at = :until, last_code = :code "
            "WHERE letter_id = :letter_id AND purpose = :purpose "
            "AND state IN ('queued', 'sending')",
            {**mail.key, "attempts": attempts, "until": iso(until), "code": code},
        )

    def finish(
        self,
        mail: QueuedMail,
        state: MailState,
        outcome: str,
        attempts: int,
        code: int | None,
    ) -> None:
        """Record that the message failed for good or is in doubt."""
        if state not in (MailState.FAILED, MailState.IN_DOUBT):
            raise ValueError(f"{state} is not an unsuccessful end")
        self._run(
            "UPDATE pli_mail_queue SET state = :state, outcome = :outcome, "
            "attempts = :attempts, last_code = :code "
            "WHERE letter_id = :letter_id AND purpose = :purpose "
            "AND state IN ('queued', 'sending')",
            {
                **mail.key,
                "state": state.value,
                "outcome": outcome,
                "attempts": attempts,
                "code": code,
            },
        )

    def expose_in_doubt(self, started_before: dt.datetime, outcome: str) -> int:
        """Declare in doubt every message still leaving since before a moment."""
        # Looked for first, so that an idle queue costs a read, not a write.
        if not self._select(
            "SELECT " + _COLUMNS + " FROM pli_mail_queue "
            "WHERE state = 'sending' AND attempted_at <= :before LIMIT 1",
            {"before": iso(started_before)},
        ):
            return 0
        return self._run(
            "UPDATE pli_mail_queue SET state = 'in-doubt', outcome = :outcome "
            "WHERE state = 'sending' AND attempted_at <= :before",
            {"before": iso(started_before), "outcome": outcome},
        )

    def mark_settled(self, mail: QueuedMail) -> None:
        """The letter now records the message's outcome."""
        self._run(
            "UPDATE pli_mail_queue SET settled = 1 "
            "WHERE letter_id = :letter_id AND purpose = :purpose",
            mail.key,
        )
