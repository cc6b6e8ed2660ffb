"""``pli audit verify`` checks every time stamp and every key against the ceremonies.

On a real PostgreSQL store, each test tampers with what the database holds,
as an attacker with database access would: a stamp removed, swapped, broken
or backdated, a checkpoint's stamp replaced. A seal cannot be redone without
the token, so an edited envelope header also breaks the next event's chain
link and the log's leaf; each test asserts that the stamp fault itself is
named by letter, version and log position. The key ceremony tests work on a
pli home of their own, driven as a subprocess (SoftHSM2 reads its
configuration once per process): they rotate a key, then record events with
the retired key through the Python API, as a server that missed the rotation
would. ``openssl ts -verify`` confirms that a clean store's stamps verify
for an independent tool too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from test_key_ceremonies import Home, new_home
from test_log_tampering import faults, position, run_audit

from pli.domain.clock import FixedClock
from pli.domain.letter import Letter
from pli.hsm.timestamp import stamped_digest
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure import merkle
from pli.infrastructure.envelope import (
    Envelope,
    EventStamp,
    seal_message,
    stamp_leaf_input,
)
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.timestamps import LocalTimeStampClient

from conftest import T0, Pli
from frontend import Frontend
from postgres import fresh_database
from test_audit_tampering import accepted_letter, execute, write_state

WITH_KEY = Path(__file__).with_name("deposit_with_key.py")


@pytest.fixture
def database_url(postgres_base: str) -> Iterator[str]:
    """Only PostgreSQL: the store a production operator runs."""
    with fresh_database(postgres_base) as dsn:
        yield dsn


@pytest.fixture
def two_letters(pli: Pli) -> tuple[str, str]:
    """Two accepted letters, every event logged, a stamped checkpoint of it all."""
    front = Frontend(pli)
    letters = accepted_letter(front), accepted_letter(front)
    pli.runtime.checkpointer.checkpoint_now()
    return letters


def stored(pli: Pli, letter_id: str, topic_end: str) -> StoredEvent:
    """The letter's stored event of that topic."""
    events = pli.runtime.letters.recorder.select_events(uuid.UUID(letter_id))
    (event,) = [e for e in events if e.topic.endswith(topic_end)]
    return event


def with_stamp(event: StoredEvent, stamp: EventStamp | None) -> bytes:
    """The stored state with another stamp in its header: the seal still holds."""
    envelope = Envelope.from_bytes(event.state)
    return dataclasses.replace(envelope, stamp=stamp).to_bytes()


def stamp_of(event: StoredEvent) -> EventStamp:
    stamp = Envelope.from_bytes(event.state).stamp
    assert stamp is not None
    return stamp


def named(
    result: subprocess.CompletedProcess[str], where: str, reason: str
) -> list[str]:
    return [f for f in faults(result) if where in f and reason in f]


def at(pli: Pli, letter_id: str, version: int) -> str:
    return f"letter={letter_id} version={version} position=" + str(
        position(pli, letter_id, version)
    )


def backdated_tsa(pli: Pli, days: int) -> LocalTimeStampClient:
    """The built-in TSA of the session's token, its clock set ``days`` back."""
    authority = TimeStampAuthority.from_token(
        pli.runtime.token, FixedClock(T0 - dt.timedelta(days=days))
    )
    settings = pli.runtime.settings
    return LocalTimeStampClient(
        authority, trust_roots=settings.tsa.trust_roots(settings.token.certs_dir)
    )


# Stamps of events.


def test_a_clean_store_passes_with_every_stamp_checked(
    pli: Pli, two_letters: tuple[str, str], tmp_path: Path
) -> None:
    deposited = stamp_of(stored(pli, two_letters[0], ".Deposited"))
    (tmp_path / "deposit.tst").write_bytes(deposited.token)
    root = stamped_digest(deposited.token)
    certs = pli.runtime.settings.token.certs_dir

    result = run_audit(pli)

    # Deposited, Notified, IdentityVerified and Accepted of each letter.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 time stamps checked" in result.stdout
    checkpoints = len(pli.runtime.log.checkpoints(-1, 100))
    assert f"{checkpoints} checkpoints ({checkpoints} time-stamped)" in result.stdout
    assert (
        "NOTE letter=- version=0 position=-: the event store holds no key "
        "ceremony log" in result.stdout
    )
    openssl = subprocess.run(
        ["openssl", "ts", "-verify", "-in", str(tmp_path / "deposit.tst"),
         "-token_in", "-digest", root.hex(), "-CAfile", str(certs / "root.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "Verification: OK" in openssl.stdout, openssl.stderr


def test_a_removed_stamp_is_named_with_the_faults_that_follow(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    victim, bystander = two_letters
    notified = stored(pli, victim, ".Notified")
    version = notified.originator_version
    write_state(pli, victim, version, with_stamp(notified, None))

    result = run_audit(pli)

    assert result.returncode == 1
    here = at(pli, victim, version)
    assert named(result, here, "legally timed event carries no time stamp")
    assert named(result, here, "leaf disagrees with the stored event")
    assert named(result, at(pli, victim, version + 1), "chain link broken")
    assert bystander not in result.stdout


def test_a_stamp_swapped_from_another_event_is_named(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    victim, donor = two_letters
    accepted = stored(pli, victim, ".Accepted")
    swapped = stamp_of(stored(pli, donor, ".Accepted"))
    write_state(pli, victim, accepted.originator_version, with_stamp(accepted, swapped))

    result = run_audit(pli)

    assert result.returncode == 1
    assert named(
        result,
        at(pli, victim, accepted.originator_version),
        "time stamp does not verify: the stamped tree does not hold this event's seal",
    )


def test_a_token_with_a_flipped_byte_is_named(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    victim, _ = two_letters
    verified = stored(pli, victim, ".IdentityVerified")
    stamp = stamp_of(verified)
    token = bytearray(stamp.token)
    token[-1] ^= 0x01  # the last byte of the TSA's signature
    broken = dataclasses.replace(stamp, token=bytes(token))
    write_state(pli, victim, verified.originator_version, with_stamp(verified, broken))

    result = run_audit(pli)

    assert result.returncode == 1
    assert named(
        result, at(pli, victim, verified.originator_version), "time stamp does not "
    )


def test_a_backdated_stamp_is_named_out_of_order_and_far_from_its_event(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    # A valid stamp over this very event, by a TSA whose clock is a day behind.
    victim, _ = two_letters
    accepted = stored(pli, victim, ".Accepted")
    version = accepted.originator_version
    envelope = Envelope.from_bytes(accepted.state)
    message = seal_message(
        victim, version, accepted.topic, envelope.payload, envelope.previous
    )
    leaf = merkle.leaf_hash(stamp_leaf_input(message, envelope.signature))
    token = backdated_tsa(pli, days=1).stamp(leaf).token
    write_state(pli, victim, version, with_stamp(accepted, EventStamp(token, 0, 1, ())))

    result = run_audit(pli)

    here = at(pli, victim, version)
    assert result.returncode == 1
    assert named(result, here, "a letter's stamps go forward")
    (gap,) = re.findall(r"is (\d+) s from the time the event records", result.stdout)
    assert int(gap) >= 86400
    assert not named(result, here, "does not verify")


class StampingEveryEvent(LetterApplication):
    """The letters application of a build that stamps failed notifications too."""

    name = LetterApplication.name
    stamped_topics = LetterApplication.stamped_topics | {
        get_topic(Letter.NotificationFailed)
    }


def test_a_stamp_on_an_event_that_needs_none_is_noted_not_faulted(pli: Pli) -> None:
    letter_id = Frontend(pli).deposit().letter_id
    store = pli.runtime.letters.sealed_events
    other_build = StampingEveryEvent(
        pli.runtime.settings.eventsourcing_env(),
        sealer=store.sealer,
        verifier=store.verifier,
        clock=pli.clock,
        content=pli.runtime.letters.content,
        stamper=store.stamper,
    )
    other_build.record_notification_failed(
        uuid.UUID(letter_id), "mailbox-full", at=pli.clock.now()
    )
    other_build.close()
    pli.run_processes()

    result = run_audit(pli)

    assert result.returncode == 0, result.stdout
    assert (
        f"NOTE {at(pli, letter_id, 2)}: carries a time stamp though it is not a "
        "legally timed event" in result.stdout
    )
    assert "2 time stamps checked" in result.stdout


# Stamps of checkpoints.


@pytest.fixture
def two_checkpoints(pli: Pli, two_letters: tuple[str, str]) -> tuple[int, int]:
    """The sizes of two stamped checkpoints, the second after one more letter."""
    first = pli.runtime.log.latest_checkpoint()
    Frontend(pli).deposit_and_notify()
    second = pli.runtime.checkpointer.checkpoint_now()
    assert first is not None and first.stamp and second.stamp
    return first.size, second.size


def replace_checkpoint_stamp(pli: Pli, size: int, stamp: bytes) -> None:
    execute(
        pli,
        "UPDATE pli_log_checkpoints SET stamp = %(stamp)s WHERE size = %(s)s",
        {"stamp": stamp, "s": size},
    )


def test_a_checkpoint_stamp_replaced_by_another_checkpoints_is_named(
    pli: Pli, two_checkpoints: tuple[int, int]
) -> None:
    first, second = two_checkpoints
    (earlier,) = pli.runtime.log.checkpoints(first - 1, 1)
    assert earlier.stamp is not None
    replace_checkpoint_stamp(pli, second, earlier.stamp)

    result = run_audit(pli)

    assert result.returncode == 1
    assert any(
        f"letter=- version=0 position={second}: checkpoint of size {second}: "
        "checkpoint time stamp does not verify: imprint mismatch" in f
        for f in faults(result)
    )


def test_a_backdated_checkpoint_stamp_is_named(
    pli: Pli, two_checkpoints: tuple[int, int]
) -> None:
    first, second = two_checkpoints
    (latest,) = pli.runtime.log.checkpoints(second - 1, 1)
    digest = hashlib.sha256(latest.message).digest()
    replace_checkpoint_stamp(
        pli, second, backdated_tsa(pli, days=1).stamp(digest).token
    )

    result = run_audit(pli)

    mine = [f for f in faults(result) if f"checkpoint of size {second}:" in f]
    assert result.returncode == 1
    assert any(f"precedes that of the checkpoint of size {first}" in f for f in mine)
    (gap,) = re.findall(r"is (\d+) s from the checkpoint's time", "".join(mine))
    assert int(gap) >= 86400
    assert not any("does not verify" in f for f in mine)


# Keys against the key ceremony log.


@pytest.fixture
def ceremony_home(tmp_path: Path, postgres_base: str) -> Iterator[tuple[Home, str]]:
    """A pli home of its own on PostgreSQL, its ceremonies recorded by init."""
    with fresh_database(postgres_base) as dsn:
        yield new_home(tmp_path, PLI_DATABASE_URL=dsn), dsn


def deposit_with_key(home: Home, key: str, *labels: str) -> str:
    result = subprocess.run(
        [sys.executable, str(WITH_KEY), key, *labels],
        env=home.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def log_position(dsn: str, letter_id: str, version: int) -> int:
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT position FROM pli_log_leaves "
            "WHERE aggregate_id = %s AND version = %s",
            (letter_id, version),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_store_with_ceremonies_passes_with_every_key_checked(
    ceremony_home: tuple[Home, str],
) -> None:
    home, _ = ceremony_home
    home.deposit("before")
    home.pli("hsm", "rotate", "--key", "seal")
    home.pli("hsm", "rotate", "--key", "tsa")
    home.deposit("after")

    result = home.pli("audit", "verify")

    summary = result.stdout.splitlines()[-1]
    events = int(summary.split()[1])
    stamps = int(summary.split(" time stamps checked")[0].rsplit(" ", 1)[1])
    assert "NOTE" not in result.stdout and summary.endswith(": clean")
    # init: the log opened, and three ceremonies per key; two rotations of four.
    assert (
        f"the keys of {events} seals and {stamps} stamps checked against 15 key "
        "ceremony events" in summary
    )
    assert stamps >= 4  # each letter's deposit and notification


def test_an_event_sealed_by_a_retired_seal_key_is_named(
    ceremony_home: tuple[Home, str],
) -> None:
    home, dsn = ceremony_home
    old_key = home.key_id("seal.pem")
    home.deposit("before")
    home.pli("hsm", "rotate", "--key", "seal")

    late = deposit_with_key(home, "late", "--seal-label", "pli-seal")
    result = home.pli("audit", "verify", ok=False)

    assert result.returncode == 1
    assert any(
        f"FAULT letter={late} version=1 position={log_position(dsn, late, 1)}: "
        f"sealed by key {old_key}, which the key ceremony log had retired at "
        "this position" in line
        for line in result.stdout.splitlines()
    ), result.stdout
    # The letter's notification was sealed by the server's active key.
    assert f"letter={late} version=2 " not in result.stdout


def test_a_stamp_by_a_retired_tsa_key_is_named(
    ceremony_home: tuple[Home, str],
) -> None:
    home, dsn = ceremony_home
    old_tsa = home.key_id("tsa.pem")
    home.pli("hsm", "rotate", "--key", "tsa")

    late = deposit_with_key(home, "late", "--tsa-label", "pli-tsa")
    result = home.pli("audit", "verify", ok=False)

    assert result.returncode == 1
    assert any(
        f"FAULT letter={late} version=1 position={log_position(dsn, late, 1)}: "
        f"time stamp by TSA key {old_tsa}, which the key ceremony log had retired "
        "at this position" in line
        for line in result.stdout.splitlines()
    ), result.stdout
    assert "sealed by key" not in result.stdout
