"""Only one server of a PostgreSQL cluster runs the processes at a time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pli.infrastructure.lease import ProcessLease

from postgres import fresh_database


@pytest.fixture
def database(postgres_base: str) -> Iterator[str]:
    with fresh_database(postgres_base) as dsn:
        yield dsn


def test_a_second_server_waits_until_the_first_lets_go(database: str) -> None:
    first, second = ProcessLease(database), ProcessLease(database)
    try:
        assert first.held()
        assert first.held()
        assert not second.held()

        first.release()

        assert second.held()
        assert not first.held()
    finally:
        first.release()
        second.release()
