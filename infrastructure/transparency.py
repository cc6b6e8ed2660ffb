"""The transparency log: a Merkle tree over every sealed event, in commit order.

Above the per-letter chains, every stored event of every aggregate (letters,
sender accounts, consents) becomes one leaf of a global, append-only Merkle
tree (RFC 9162 §2.1, :mod:`pli.infrastructure.merkle`), so a proof document
can be checked against a published checkpoint without trusting the
database (DESIGN §3). A leaf's data is the 32-byte event digest of the
stored event (:func:`pli.infrastructure.envelope.event_digest`), which binds
the aggregate id, the version, the topic and the exact stored state.

The log is a projection of the event store, kept in the same database
(SQLite or PostgreSQL) in three tables:

- ``pli_log_leaves``: one row per leaf, by *log position* (0-based, the
  RFC's leaf index), with the event's notification id, aggregate id and
  version, and the leaf hash;
- ``pli_log_nodes``: the hash of every complete subtree above the leaves,
  by (level, index), so a root or a proof costs O(log n) reads;
- ``pli_log_checkpoints``: the sealed checkpoints, by tree size.

Appending is exactly-once through the library's tracking records: the
leaves, their nodes and the tracking record of the last notification
appended are written in one transaction, and a second appender racing the
first fails on the tracking record (or the leaf's position) and writes
nothing. Each store subclasses the ``eventsourcing`` tracking recorder of
its database and shares the event store's tracking table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Notification, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.sql import SQL

from pli.infrastructure import merkle
from pli.infrastructure.checkpoints import Checkpoint
from pli.infrastructure.envelope import event_digest

__all__ = [
    "LOG_TRACKING_NAME",
    "LogEntry",
    "LogStore",
    "UnreadableEvent",
    "event_leaf",
    "open_log_store",
]


LOG_TRACKING_NAME = "pli-transparency-log"

_TABLES = (
    "CREATE TABLE IF NOT EXISTS pli_log_leaves ("
    "position BIGINT PRIMARY KEY, notification_id BIGINT NOT NULL UNIQUE, "
    "aggregate_id TEXT NOT NULL, version BIGINT NOT NULL, "
    "leaf_hash {blob} NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pli_log_leaves_aggregate "
    "ON pli_log_leaves (aggregate_id, version)",
    "CREATE TABLE IF NOT EXISTS pli_log_nodes ("
    "level INTEGER NOT NULL, idx BIGINT NOT NULL, hash {blob} NOT NULL, "
    "PRIMARY KEY (level, idx))",
    "CREATE TABLE IF NOT EXISTS pli_log_checkpoints ("
    "size BIGINT PRIMARY KEY, root {blob} NOT NULL, time TEXT NOT NULL, "
    "key_id TEXT NOT NULL, seal {blob} NOT NULL, stamp {blob})",
)

_LEAF_COLUMNS = "position, notification_id, aggregate_id, version, leaf_hash"
_CHECKPOINT_COLUMNS = "size, root, time, key_id, seal, stamp"


class UnreadableEvent(Exception):
    """A stored event cannot be read well enough to become a leaf."""

    def __init__(self, notification_id: int) -> None:
        self.notification_id = notification_id
        super().__init__(f"stored event {notification_id} has no readable state")


@dataclass(frozen=True)
class LogEntry:
    """One leaf of the log: which event it is, where, and its hash."""

    position: int
    notification_id: int
    aggregate_id: str
    version: int
    leaf_hash: bytes


def event_leaf(notification: Notification) -> bytes:
    """The leaf hash of a stored event: RFC 9162 leaf of its event digest."""
    if not isinstance(notification.state, bytes | bytearray | memoryview):
        raise UnreadableEvent(notification.id)
    digest = event_digest(
        str(notification.originator_id),
        notification.originator_version,
        notification.topic,
        bytes(notification.state),
    )
    return merkle.leaf_hash(bytes.fromhex(digest))


class LogStore:
    """The log's tables in the event store's database; see the module docstring.

    Concrete stores mix this into the library's tracking recorder of their
    database, which provides ``datastore`` and the ``_insert_tracking`` and
    ``_max_tracking_id`` steps that take the caller's transaction: the
    library's way of recording a projection and its tracking atomically.
    """

    datastore: Any
    is_sqlite = False

    def _sql(self, statement: str) -> str:
        if not self.is_sqlite:
            return statement
        return statement.replace("%(", ":").replace(")s", "")

    @contextmanager
    def _cursor(self, *, commit: bool = False) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield cursor

    # Appending.

    def tracked(self) -> int:
        """The notification id of the last event the log holds (0 if none)."""
        with self._cursor() as cursor:
            return self._max_tracking_id(LOG_TRACKING_NAME, cursor) or 0

    def append(self, notifications: Sequence[Notification]) -> int:
        """Append the events the log does not hold yet; return how many.

        ``notifications`` must follow the log's last one in commit order.
        Raises IntegrityError when another appender got there first; nothing
        is written then.
        """
        leaves = [(n, event_leaf(n)) for n in notifications]
        with self._cursor(commit=True) as cursor:
            tracked = self._max_tracking_id(LOG_TRACKING_NAME, cursor) or 0
            fresh = [(n, leaf) for n, leaf in leaves if n.id > tracked]
            if not fresh:
                return 0
            size = self._size(cursor)
            edge = merkle.CompactRange.load(
                size, lambda nodes: self._read_nodes(cursor, nodes)
            )
            leaf_rows, node_rows = [], []
            for notification, leaf in fresh:
                for level, index, value in edge.append(leaf):
                    if level == 0:
                        leaf_rows.append(_leaf_row(index, notification, value))
                    else:
                        node_rows.append({"level": level, "idx": index, "hash": value})
            cursor.executemany(
                self._sql(
                    f"INSERT INTO pli_log_leaves ({_LEAF_COLUMNS}) VALUES "
                    "(%(position)s, %(notification_id)s, %(aggregate_id)s, "
                    "%(version)s, %(leaf_hash)s)"
                ),
                leaf_rows,
            )
            if node_rows:
                cursor.executemany(
                    self._sql(
                        "INSERT INTO pli_log_nodes (level, idx, hash) "
                        "VALUES (%(level)s, %(idx)s, %(hash)s)"
                    ),
                    node_rows,
                )
            self._insert_tracking(cursor, Tracking(LOG_TRACKING_NAME, fresh[-1][0].id))
        return len(fresh)

    # Reading the tree.

    def size(self) -> int:
        """How many leaves the log holds."""
        with self._cursor() as cursor:
            return self._size(cursor)

    def _size(self, cursor: Any) -> int:
        cursor.execute("SELECT MAX(position) AS last FROM pli_log_leaves")
        row = cursor.fetchone()
        last = row["last"] if row else None
        return 0 if last is None else int(last) + 1

    def read_nodes(self, nodes: Sequence[merkle.Node]) -> Mapping[merkle.Node, bytes]:
        """The stored hashes of complete subtrees (level 0: the leaves)."""
        with self._cursor() as cursor:
            return self._read_nodes(cursor, nodes)

    def _read_nodes(
        self, cursor: Any, nodes: Sequence[merkle.Node]
    ) -> dict[merkle.Node, bytes]:
        found: dict[merkle.Node, bytes] = {}
        leaves = [index for level, index in nodes if level == 0]
        upper = [(level, index) for level, index in nodes if level > 0]
        if leaves:
            names = {f"p{i}": position for i, position in enumerate(leaves)}
            marks = ", ".join(f"%({name})s" for name in names)
            cursor.execute(
                self._sql(
                    "SELECT position, leaf_hash FROM pli_log_leaves "
                    f"WHERE position IN ({marks})"
                ),
                names,
            )
            for row in cursor.fetchall():
                found[0, int(row["position"])] = bytes(row["leaf_hash"])
        if upper:
            params: dict[str, int] = {}
            values = []
            for i, (level, index) in enumerate(upper):
                params[f"l{i}"], params[f"i{i}"] = level, index
                values.append(f"(%(l{i})s, %(i{i})s)")
            cursor.execute(
                self._sql(
                    "SELECT level, idx, hash FROM pli_log_nodes "
                    f"WHERE (level, idx) IN (VALUES {', '.join(values)})"
                ),
                params,
            )
            for row in cursor.fetchall():
                found[int(row["level"]), int(row["idx"])] = bytes(row["hash"])
        return found

    def root(self, size: int) -> bytes:
        """The Merkle root of the log's first ``size`` leaves."""
        return merkle.root(size, self.read_nodes)

    def inclusion_proof(self, position: int, size: int) -> list[bytes]:
        """The audit path of the leaf at ``position`` in the tree of ``size``."""
        return merkle.inclusion_proof(position, size, self.read_nodes)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """The proof that the tree of ``second`` leaves extends that of ``first``."""
        return merkle.consistency_proof(first, second, self.read_nodes)

    # Reading the leaves.

    def entries(self, start: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` leaves from log position ``start``, in order."""
        with self._cursor() as cursor:
            cursor.execute(
                self._sql(
                    f"SELECT {_LEAF_COLUMNS} FROM pli_log_leaves "
                    "WHERE position >= %(start)s ORDER BY position LIMIT %(limit)s"
                ),
                {"start": start, "limit": limit},
            )
            return [_entry(row) for row in cursor.fetchall()]

    def entries_of(self, aggregate_id: str) -> list[LogEntry]:
        """Every leaf of one aggregate (a letter, say), by version."""
        with self._cursor() as cursor:
            cursor.execute(
                self._sql(
                    f"SELECT {_LEAF_COLUMNS} FROM pli_log_leaves "
                    "WHERE aggregate_id = %(id)s ORDER BY version"
                ),
                {"id": aggregate_id},
            )
            return [_entry(row) for row in cursor.fetchall()]

    # Checkpoints.

    def add_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store a checkpoint; if one of its size exists, return that one."""
        with self._cursor(commit=True) as cursor:
            cursor.execute(
                self._sql(
                    f"INSERT INTO pli_log_checkpoints ({_CHECKPOINT_COLUMNS}) "
                    "VALUES (%(size)s, %(root)s, %(time)s, %(key_id)s, %(seal)s, "
                    "%(stamp)s) ON CONFLICT (size) DO NOTHING"
                ),
                {
                    "size": checkpoint.size,
                    "root": checkpoint.root,
                    "time": checkpoint.time_text,
                    "key_id": checkpoint.key_id,
                    "seal": checkpoint.seal,
                    "stamp": checkpoint.stamp,
                },
            )
        stored = self.checkpoint(checkpoint.size)
        assert stored is not None
        return stored

    def checkpoint(self, size: int) -> Checkpoint | None:
        """The stored checkpoint of this tree size, if there is one."""
        found = self._checkpoints("WHERE size = %(size)s", {"size": size})
        return found[0] if found else None

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint of the largest tree, if any."""
        found = self._checkpoints("ORDER BY size DESC LIMIT 1", {})
        return found[0] if found else None

    def checkpoints(self, after: int, limit: int) -> list[Checkpoint]:
        """Up to ``limit`` checkpoints of sizes above ``after``, smallest first."""
        return self._checkpoints(
            "WHERE size > %(after)s ORDER BY size LIMIT %(limit)s",
            {"after": after, "limit": limit},
        )

    def _checkpoints(self, clause: str, params: dict[str, int]) -> list[Checkpoint]:
        with self._cursor() as cursor:
            cursor.execute(
                self._sql(
                    f"SELECT {_CHECKPOINT_COLUMNS} FROM pli_log_checkpoints {clause}"
                ),
                params,
            )
            return [_checkpoint(row) for row in cursor.fetchall()]


def _leaf_row(position: int, notification: Notification, leaf: bytes) -> dict[str, Any]:
    return {
        "position": position,
        "notification_id": notification.id,
        "aggregate_id": str(notification.originator_id),
        "version": notification.originator_version,
        "leaf_hash": leaf,
    }


def _entry(row: Any) -> LogEntry:
    return LogEntry(
        position=int(row["position"]),
        notification_id=int(row["notification_id"]),
        aggregate_id=str(row["aggregate_id"]),
        version=int(row["version"]),
        leaf_hash=bytes(row["leaf_hash"]),
    )


def _checkpoint(row: Any) -> Checkpoint:
    stamp = row["stamp"]
    return Checkpoint(
        size=int(row["size"]),
        root=bytes(row["root"]),
        time=dt.datetime.fromisoformat(row["time"]),
        key_id=str(row["key_id"]),
        seal=bytes(row["seal"]),
        stamp=None if stamp is None else bytes(stamp),
    )


class SQLiteLogStore(LogStore, SQLiteTrackingRecorder):
    """The log in the embedded SQLite database."""

    is_sqlite = True

    def construct_create_table_statements(self) -> list[str]:
        """The library's tracking table and the log's tables."""
        return super().construct_create_table_statements() + [
            statement.format(blob="BLOB") for statement in _TABLES
        ]


class PostgresLogStore(LogStore, PostgresTrackingRecorder):
    """The log in PostgreSQL."""

    def __init__(self, datastore: Any, *, tracking_table_name: str) -> None:
        super().__init__(datastore, tracking_table_name=tracking_table_name)
        for statement in _TABLES:
            self.sql_create_statements.append(SQL(statement.format(blob="BYTEA")))


def open_log_store(recorder: Any) -> LogStore:
    """The log store beside the event store that ``recorder`` writes to."""
    store: LogStore
    if isinstance(recorder.datastore, SQLiteDatastore):
        store = SQLiteLogStore(recorder.datastore)
    else:
        store = PostgresLogStore(
            recorder.datastore, tracking_table_name=recorder.tracking_table_name
        )
    store.create_table()  # type: ignore[attr-defined]
    return store
