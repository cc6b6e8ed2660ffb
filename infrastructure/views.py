"""Read models kept in the event store's own database.

A view row is a plain summary of one letter, derived only from its events,
so it can be thrown away and rebuilt. The positions table records how far
each follower of the event log has got; a view change and its position are
committed in one transaction, so each event is projected exactly once.
The SQL is the subset SQLite and PostgreSQL share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["LetterViewStore", "VIEW_COLUMNS"]

VIEW_COLUMNS = (
    "letter_id",
    "sender_account_id",
    "kind",
    "state",
    "version",
    "deposited_at",
    "notified_at",
    "window_closes_at",
    "decided_at",
    "content_purged_at",
)

_CREATE = (
    "CREATE TABLE IF NOT EXISTS pli_letter_views ("
    "letter_id TEXT PRIMARY KEY, sender_account_id TEXT NOT NULL, "
    "kind TEXT NOT NULL, state TEXT NOT NULL, "
    "version INTEGER NOT NULL, deposited_at TEXT NOT NULL, notified_at TEXT, "
    "window_closes_at TEXT, decided_at TEXT, content_purged_at TEXT)",
    "CREATE INDEX IF NOT EXISTS pli_letter_views_open "
    "ON pli_letter_views (state, window_closes_at)",
    "CREATE INDEX IF NOT EXISTS pli_letter_views_sender "
    "ON pli_letter_views (sender_account_id, deposited_at, letter_id)",
    "CREATE TABLE IF NOT EXISTS pli_positions ("
    "name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
)

_UPSERT_VIEW = (
    "INSERT INTO pli_letter_views ("
    + ", ".join(VIEW_COLUMNS)
    + ") VALUES ("
    + ", ".join(f"%({c})s" for c in VIEW_COLUMNS)
    + ") ON CONFLICT (letter_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in VIEW_COLUMNS[1:])
    + " WHERE pli_letter_views.version <= excluded.version"
)

_UPSERT_POSITION = (
    "INSERT INTO pli_positions (name, position) VALUES (%(name)s, %(position)s) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position "
    "WHERE pli_positions.position < excluded.position"
)


class LetterViewStore:
    """Letter views and follower positions, in the recorder's database."""

    def __init__(self, datastore: Any, *, is_sqlite: bool) -> None:
        self.datastore = datastore
        self.is_sqlite = is_sqlite
        with self._cursor(commit=True) as cursor:
            for statement in _CREATE:
                cursor.execute(self._sql(statement))

    def _sql(self, statement: str) -> str:
        if not self.is_sqlite:
            return statement
        return statement.replace("%(", ":").replace(")s", "")

    @contextmanager
    def _cursor(self, *, commit: bool) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield cursor

    def position(self, name: str) -> int:
        """How far the named follower has got (0 before its first event)."""
        with self._cursor(commit=False) as cursor:
            cursor.execute(
                self._sql("SELECT position FROM pli_positions WHERE name = %(name)s"),
                {"name": name},
            )
            row = cursor.fetchone()
        return int(row["position"]) if row else 0

    def advance(
        self, name: str, position: int, views: Iterable[dict[str, Any]]
    ) -> None:
        """Store view rows and the follower's new position in one transaction."""
        with self._cursor(commit=True) as cursor:
            for view in views:
                cursor.execute(self._sql(_UPSERT_VIEW), view)
            cursor.execute(
                self._sql(_UPSERT_POSITION), {"name": name, "position": position}
            )

    def all_views(self) -> dict[str, dict[str, Any]]:
        """Every stored view row, by letter id."""
        with self._cursor(commit=False) as cursor:
            cursor.execute(
                "SELECT " + ", ".join(VIEW_COLUMNS) + " FROM pli_letter_views"
            )
            rows = cursor.fetchall()
        return {
            str(row["letter_id"]): {c: row[c] for c in VIEW_COLUMNS} for row in rows
        }

    def overdue(self, now_iso: str, limit: int = 100) -> list[str]:
        """Letters whose window closed before ``now`` with no decision yet."""
        with self._cursor(commit=False) as cursor:
            cursor.execute(
                self._sql(
                    "SELECT letter_id FROM pli_letter_views "
                    "WHERE state IN ('notified', 'identified') "
                    "AND window_closes_at <= %(now)s "
                    "ORDER BY window_closes_at LIMIT %(limit)s"
                ),
                {"now": now_iso, "limit": limit},
            )
            return [str(row["letter_id"]) for row in cursor.fetchall()]

    def sender_page(
        self,
        sender_account_id: str,
        *,
        states: list[str],
        deposited_from: str | None,
        deposited_before: str | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[str]:
        """One page of a sender's letter ids, newest deposit first.

        ``after`` is the (deposited_at, letter_id) of the previous page's
        last row: keyset pagination, stable while letters keep arriving.
        """
        clauses = ["sender_account_id = %(sender)s"]
        params: dict[str, Any] = {"sender": sender_account_id, "limit": limit}
        if states:
            names = []
            for index, state in enumerate(states):
                params[f"state{index}"] = state
                names.append(f"%(state{index})s")
            clauses.append("state IN (" + ", ".join(names) + ")")
        if deposited_from:
            clauses.append("deposited_at >= %(from)s")
            params["from"] = deposited_from
        if deposited_before:
            clauses.append("deposited_at < %(before)s")
            params["before"] = deposited_before
        if after:
            clauses.append(
                "(deposited_at < %(after_at)s OR "
                "(deposited_at = %(after_at)s AND letter_id < %(after_id)s))"
            )
            params["after_at"], params["after_id"] = after
        statement = (
            "SELECT letter_id FROM pli_letter_views WHERE "
            + " AND ".join(clauses)
            + " ORDER BY deposited_at DESC, letter_id DESC LIMIT %(limit)s"
        )
        with self._cursor(commit=False) as cursor:
            cursor.execute(self._sql(statement), params)
            return [str(row["letter_id"]) for row in cursor.fetchall()]

    def terminal_before(self, cutoff_iso: str, limit: int = 100) -> list[str]:
        """Final letters decided before ``cutoff``, for the retention policy."""
        with self._cursor(commit=False) as cursor:
            cursor.execute(
                self._sql(
                    "SELECT letter_id FROM pli_letter_views "
                    "WHERE state IN ('accepted', 'refused', 'expired') "
                    "AND content_purged_at IS NULL "
                    "AND decided_at < %(cutoff)s "
                    "ORDER BY decided_at LIMIT %(limit)s"
                ),
                {"cutoff": cutoff_iso, "limit": limit},
            )
            return [str(row["letter_id"]) for row in cursor.fetchall()]
