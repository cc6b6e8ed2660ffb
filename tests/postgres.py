"""PostgreSQL for the tests: the machine's server, or a throwaway one.

``postgres_server`` yields the URL of a server where ``postgres`` is a
superuser: the one named by ``PLI_TEST_DATABASE_URL``, else a server with
trust authentication on 127.0.0.1:5432, else a private server started from
the installed PostgreSQL binaries in a temporary directory on a free loopback
port and removed afterwards. ``fresh_database`` gives each test its own
uniquely named database on that server and drops it when the test is done,
so tests never touch a database they did not create.

``initdb`` refuses to run as root, so when the tests run as root the
throwaway server is initialised and run as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

__all__ = [
    "LOCAL_SERVER_URL",
    "PostgresUnavailable",
    "fresh_database",
    "postgres_server",
]

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_BINARIES_GLOB = "/usr/lib/postgresql/*/bin"
_SYSTEM_USER = "postgres"
_TIMEOUT = 120


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started for the tests."""


@dataclass(frozen=True)
class _Binaries:
    initdb: Path
    pg_ctl: Path


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    version = bin_dir.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _installed_binaries() -> _Binaries:
    candidates = [
        Path(found)
        for found in glob.glob(_BINARIES_GLOB)
        if (Path(found) / "initdb").is_file() and (Path(found) / "pg_ctl").is_file()
    ]
    if not candidates:
        raise PostgresUnavailable(
            f"no PostgreSQL answers at {LOCAL_SERVER_URL}, PLI_TEST_DATABASE_URL "
            f"is unset, and no initdb/pg_ctl were found under {_BINARIES_GLOB}; "
            "install the PostgreSQL server package or point PLI_TEST_DATABASE_URL "
            "at a server where postgres is a superuser"
        )
    newest = max(candidates, key=_version_key)
    return _Binaries(initdb=newest / "initdb", pg_ctl=newest / "pg_ctl")


def _as_server_user() -> tuple[list[str], int, int] | None:
    """The command prefix, uid and gid to run the server with, if not ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(_SYSTEM_USER)
    except KeyError as missing:
        raise PostgresUnavailable(
            f"running as root, initdb needs the {_SYSTEM_USER!r} system user, "
            "which does not exist"
        ) from missing
    prefix = ["runuser", "-u", _SYSTEM_USER, "--"]
    return prefix, account.pw_uid, account.pw_gid


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(prefix: list[str], args: list[str], cwd: Path, step: str) -> None:
    result = subprocess.run(
        [*prefix, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"{step} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )


def _server_log(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


def _configure(data: Path, root: Path, port: int) -> None:
    # Durability is worthless for a server that lives as long as a test run.
    settings = (
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        f"unix_socket_directories = '{root}'",
        "fsync = off",
        "synchronous_commit = off",
        "full_page_writes = off",
    )
    with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n" + "\n".join(settings) + "\n")


def _initdb(binaries: _Binaries, prefix: list[str], root: Path, data: Path) -> None:
    _run(
        prefix,
        [str(binaries.initdb), "--pgdata", str(data), "--username", "postgres"]
        + ["--auth", "trust", "--encoding", "UTF8", "--no-locale", "--no-sync"],
        root,
        "initdb",
    )


def _start(binaries: _Binaries, prefix: list[str], root: Path, data: Path) -> None:
    log = root / "server.log"
    try:
        _run(
            prefix,
            [str(binaries.pg_ctl), "--pgdata", str(data), "--log", str(log)]
            + ["--wait", "--timeout", str(_TIMEOUT), "start"],
            root,
            "pg_ctl start",
        )
    except PostgresUnavailable as failure:
        raise PostgresUnavailable(f"{failure}\n{_server_log(log)}") from failure


def _stop(binaries: _Binaries, prefix: list[str], root: Path, data: Path) -> None:
    _run(
        prefix,
        [str(binaries.pg_ctl), "--pgdata", str(data), "--mode", "fast", "--wait"]
        + ["stop"],
        root,
        "pg_ctl stop",
    )


@contextmanager
def _throwaway_server() -> Iterator[str]:
    binaries = _installed_binaries()
    server_user = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="pli-postgres-"))
    prefix: list[str] = []
    if server_user is not None:
        prefix, uid, gid = server_user
        os.chown(root, uid, gid)
    data = root / "data"
    port = _free_loopback_port()
    try:
        _initdb(binaries, prefix, root, data)
        _configure(data, root, port)
        _start(binaries, prefix, root, data)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        # If stopping fails the exception skips the removal: the directory of
        # a live server stays for whoever has to stop it by hand.
        if (data / "postmaster.pid").exists():
            _stop(binaries, prefix, root, data)
        shutil.rmtree(root)


@contextmanager
def postgres_server(*, prefer_running: bool = True) -> Iterator[str]:
    """Yield a server URL with a superuser; throwaway unless one is running."""
    if prefer_running:
        configured = os.environ.get("PLI_TEST_DATABASE_URL")
        if configured:
            yield configured
            return
        if _answers(LOCAL_SERVER_URL):
            yield LOCAL_SERVER_URL
            return
    with _throwaway_server() as url:
        yield url


def _with_database(base_url: str, name: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql:// URL, got scheme {parts.scheme!r}")
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def fresh_database(base_dsn: str) -> Iterator[str]:
    """Create a uniquely named database, yield its URL, then drop it."""
    name = f"pli_test_{uuid.uuid4().hex[:16]}"
    database = sql.Identifier(name)
    with psycopg.connect(base_dsn, autocommit=True, connect_timeout=10) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(database))
    try:
        yield _with_database(base_dsn, name)
    finally:
        with psycopg.connect(base_dsn, autocommit=True, connect_timeout=10) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database)
            )
