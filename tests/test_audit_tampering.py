"""``pli audit verify`` finds every kind of tampering and names the letter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pli.infrastructure.settings import Settings
from pli.v1 import letters_pb2 as pb

from conftest import Pli
from frontend import Frontend


def run_audit(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        {
            "PLI_HOME": str(settings.home),
            "PLI_DATABASE_URL": settings.database_url,
            "PLI_HSM_DIR": str(settings.token.hsm_dir),
        }
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "pli"), "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def accepted_letter(front: Frontend) -> str:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)
    front.pli.run_processes()
    return letter.letter_id


def execute(pli: Pli, sql: str, params: dict[str, object]) -> None:
    settings = pli.runtime.settings
    if settings.is_embedded:
        sql = sql.replace("%(", ":").replace(")s", "")
    with pli.runtime.letters.recorder.datastore.transaction(commit=True) as cursor:
        cursor.execute(sql, params)


def stored_id(pli: Pli, letter_id: str) -> object:
    # SQLite stores ids as hex text, PostgreSQL as uuid.
    return letter_id.replace("-", "") if pli.runtime.settings.is_embedded else letter_id


def read_state(pli: Pli, letter_id: str, version: int) -> bytes:
    table = pli.runtime.letters.recorder.events_table_name
    sql = (
        f"SELECT state FROM {table} WHERE originator_id = %(id)s "
        "AND originator_version = %(v)s"
    )
    if pli.runtime.settings.is_embedded:
        sql = sql.replace("%(", ":").replace(")s", "")
    with pli.runtime.letters.recorder.datastore.transaction(commit=False) as cursor:
        cursor.execute(sql, {"id": stored_id(pli, letter_id), "v": version})
        return bytes(cursor.fetchone()["state"])


def write_state(pli: Pli, letter_id: str, version: int, state: bytes) -> None:
    table = pli.runtime.letters.recorder.events_table_name
    execute(
        pli,
        f"UPDATE {table} SET state = %(s)s WHERE originator_id = %(id)s "
        "AND originator_version = %(v)s",
        {"s": state, "id": stored_id(pli, letter_id), "v": version},
    )


def delete_event(pli: Pli, letter_id: str, version: int) -> None:
    table = pli.runtime.letters.recorder.events_table_name
    execute(
        pli,
        f"DELETE FROM {table} WHERE originator_id = %(id)s "
        "AND originator_version = %(v)s",
        {"id": stored_id(pli, letter_id), "v": version},
    )


@pytest.fixture
def two_letters(pli: Pli) -> tuple[str, str]:
    """Two accepted letters of one sender account."""
    front = Frontend(pli)
    return accepted_letter(front), accepted_letter(front)


def test_untouched_store_audits_clean(pli: Pli, two_letters: tuple[str, str]) -> None:
    result = run_audit(pli.runtime.settings)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every event: both letters' and their sender account's.
    assert f"audit: {pli.event_count()} events of 3 aggregates" in result.stdout
    assert "(2 letters)" in result.stdout


def test_one_changed_byte_is_found(pli: Pli, two_letters: tuple[str, str]) -> None:
    victim, bystander = two_letters
    state = bytearray(read_state(pli, victim, 2))
    state[-5] ^= 0x01
    write_state(pli, victim, 2, bytes(state))

    result = run_audit(pli.runtime.settings)

    assert result.returncode == 1
    assert f"letter={victim} version=2" in result.stdout
    assert bystander not in result.stdout


def test_a_deleted_middle_event_is_found(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    victim, _ = two_letters
    delete_event(pli, victim, 2)

    result = run_audit(pli.runtime.settings)

    assert result.returncode == 1
    assert f"letter={victim} version=3" in result.stdout


def test_a_deleted_last_event_is_found(pli: Pli, two_letters: tuple[str, str]) -> None:
    victim, _ = two_letters
    last = pli.letters.GetLetter(pb.GetLetterRequest(letter_id=victim)).letter.version
    assert last == 5  # Deposited, Notified, IdentificationStarted, ..., Accepted
    delete_event(pli, victim, last)

    result = run_audit(pli.runtime.settings)

    assert result.returncode == 1
    assert f"letter={victim}" in result.stdout


def test_two_swapped_events_are_found(pli: Pli, two_letters: tuple[str, str]) -> None:
    victim, _ = two_letters
    second, third = read_state(pli, victim, 2), read_state(pli, victim, 3)
    write_state(pli, victim, 2, third)
    write_state(pli, victim, 3, second)

    result = run_audit(pli.runtime.settings)

    assert result.returncode == 1
    assert f"letter={victim} version=2" in result.stdout


def test_a_tampered_letter_is_refused_service(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    import grpc

    victim, _ = two_letters
    state = bytearray(read_state(pli, victim, 3))
    state[-3] ^= 0x01
    write_state(pli, victim, 3, bytes(state))
    pli.runtime.letters.repository.cache = None

    with pytest.raises(grpc.RpcError) as caught:
        pli.letters.GetLetter(pb.GetLetterRequest(letter_id=victim))
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS


def test_changed_content_is_not_handed_over_nor_recorded(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    import grpc

    victim, _ = two_letters
    letter = pli.letters.GetLetter(pb.GetLetterRequest(letter_id=victim)).letter
    digest = letter.attachments[0].sha256
    stored = pli.runtime.settings.content_dir / victim / digest
    stored.write_bytes(stored.read_bytes() + b"!")
    events = pli.event_count()

    with pytest.raises(grpc.RpcError) as caught:
        list(pli.desk.DownloadContent(pb.DownloadContentRequest(letter_id=victim)))
    result = run_audit(pli.runtime.settings)

    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert pli.event_count() == events
    assert result.returncode == 1
    assert f"letter={victim}" in result.stdout
    assert "content of attachment 0" in result.stdout


def test_a_null_state_is_data_loss_and_named_by_the_audit(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    import grpc

    victim, _ = two_letters
    table = pli.runtime.letters.recorder.events_table_name
    execute(
        pli,
        f"UPDATE {table} SET state = NULL WHERE originator_id = %(id)s "
        "AND originator_version = 2",
        {"id": stored_id(pli, victim)},
    )

    with pytest.raises(grpc.RpcError) as caught:
        pli.letters.GetLetter(pb.GetLetterRequest(letter_id=victim))
    result = run_audit(pli.runtime.settings)

    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert result.returncode == 1
    # SQLite hands the row over and the audit names it; psycopg cannot decode
    # it, and the audit names its notification id instead.
    assert (
        f"letter={victim} version=2" in result.stdout
        or "unreadable stored event at notification" in result.stdout
    )


def test_one_broken_letter_does_not_stop_the_expirer(pli: Pli) -> None:
    import datetime as dt

    front = Frontend(pli)
    broken = front.deposit_and_notify()
    healthy = front.deposit_and_notify()
    state = bytearray(read_state(pli, broken.letter_id, 2))
    state[-3] ^= 0x01
    write_state(pli, broken.letter_id, 2, bytes(state))

    pli.clock.at = healthy.window_closes_at.ToDatetime(tzinfo=dt.UTC)
    pli.run_processes()

    got = pli.letters.GetLetter(pb.GetLetterRequest(letter_id=healthy.letter_id))
    assert got.letter.state == pb.LETTER_STATE_EXPIRED
