"""The tests' PostgreSQL helper: throwaway servers and per-test databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

import postgres
from postgres import (
    LOCAL_SERVER_URL,
    PostgresUnavailable,
    fresh_database,
    postgres_server,
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The server the rest of the suite would use."""
    with postgres_server() as url:
        yield url


def local_server_start_time() -> dt.datetime | None:
    try:
        with psycopg.connect(LOCAL_SERVER_URL, connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    except psycopg.OperationalError:
        return None
    assert row is not None
    return row[0]


def database_exists(base_url: str, name: str) -> bool:
    with psycopg.connect(base_url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None
    return bool(row[0])


def test_throwaway_server_gives_a_loopback_superuser_and_vanishes_afterwards() -> None:
    shared_before = local_server_start_time()

    with postgres_server(prefer_running=False) as url:
        address = urlsplit(url)
        with psycopg.connect(url, connect_timeout=5) as conn:
            superuser = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            data_row = conn.execute("SHOW data_directory").fetchone()
        assert data_row is not None
        root = Path(data_row[0]).parent
        assert root.is_dir()

    assert address.hostname == "127.0.0.1"
    assert address.port != 5432
    assert superuser == (True,)
    assert not root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()
    assert local_server_start_time() == shared_before


def test_fresh_database_is_created_for_the_test_and_dropped_after(
    base_url: str,
) -> None:
    with fresh_database(base_url) as url:
        name = urlsplit(url).path.strip("/")
        with psycopg.connect(url, connect_timeout=5) as conn:
            current = conn.execute("SELECT current_database()").fetchone()

        existed = database_exists(base_url, name)

    assert name.startswith("pli_test_")
    assert current == (name,)
    assert existed
    assert not database_exists(base_url, name)


def test_fresh_database_is_dropped_even_while_a_session_holds_it(
    base_url: str,
) -> None:
    with fresh_database(base_url) as url:
        name = urlsplit(url).path.strip("/")
        lingering = psycopg.connect(url, connect_timeout=5)

    lingering.close()
    assert not database_exists(base_url, name)


def test_each_fresh_database_has_its_own_name(base_url: str) -> None:
    with (
        fresh_database(base_url) as first,
        fresh_database(base_url) as second,
    ):
        assert first != second


def test_missing_binaries_are_reported_plainly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(postgres, "_BINARIES_GLOB", str(tmp_path / "*" / "bin"))

    with pytest.raises(PostgresUnavailable, match="no initdb/pg_ctl were found"):
        with postgres_server(prefer_running=False):
            pass
