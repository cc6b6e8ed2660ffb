"""``pli audit verify`` rebuilds the transparency log and names every tampering.

On a real PostgreSQL store, each test tampers with the database behind
pli's back, as an attacker with database access would, then runs the audit
as a command. Every fault names the letter, the version and the log
position; a clean store passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pli.infrastructure.checkpoints import seal_checkpoint

from conftest import Pli
from frontend import Frontend
from postgres import fresh_database
from test_audit_tampering import (
    accepted_letter,
    delete_event,
    execute,
    read_state,
    write_state,
)


@pytest.fixture
def database_url(postgres_base: str) -> Iterator[str]:
    """Only PostgreSQL: the store a production operator runs."""
    with fresh_database(postgres_base) as dsn:
        yield dsn


def run_audit(pli: Pli, *args: str) -> subprocess.CompletedProcess[str]:
    settings = pli.runtime.settings
    env = dict(os.environ)
    env.update(
        {
            "PLI_HOME": str(settings.home),
            "PLI_DATABASE_URL": settings.database_url,
            "PLI_HSM_DIR": str(settings.token.hsm_dir),
        }
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "pli"), "audit", "verify", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def faults(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("FAULT")]


def position(pli: Pli, letter_id: str, version: int) -> int:
    (entry,) = [
        e for e in pli.runtime.log.entries_of(letter_id) if e.version == version
    ]
    return entry.position


@pytest.fixture
def logged(pli: Pli) -> tuple[str, str]:
    """Two accepted letters, every event logged, a checkpoint of it all."""
    front = Frontend(pli)
    letters = accepted_letter(front), accepted_letter(front)
    pli.runtime.checkpointer.checkpoint_now()
    return letters


def test_a_clean_store_and_log_pass(pli: Pli, logged: tuple[str, str]) -> None:
    result = run_audit(pli, "--progress-every", "5")

    assert result.returncode == 0, result.stdout + result.stderr
    assert not faults(result)
    size = pli.runtime.log.size()
    assert size == pli.event_count()
    assert f"{size} log leaves and " in result.stdout
    assert "audit: 5 events checked so far" in result.stderr


def test_quiet_silences_the_progress_lines(pli: Pli, logged: tuple[str, str]) -> None:
    result = run_audit(pli, "--quiet", "--progress-every", "1")

    assert result.returncode == 0
    assert "checked so far" not in result.stderr


def test_a_changed_byte_is_named_with_its_log_position(
    pli: Pli, logged: tuple[str, str]
) -> None:
    victim, bystander = logged
    state = bytearray(read_state(pli, victim, 2))
    state[-5] ^= 0x01
    write_state(pli, victim, 2, bytes(state))

    result = run_audit(pli)

    where = f"letter={victim} version=2 position={position(pli, victim, 2)}"
    assert result.returncode == 1
    assert any(where in f and "leaf disagrees" in f for f in faults(result))
    assert any(where in f and "seal does not verify" in f for f in faults(result))
    assert any("root does not match the log rebuilt" in f for f in faults(result))
    assert bystander not in result.stdout


def test_a_removed_event_is_named_with_its_log_position(
    pli: Pli, logged: tuple[str, str]
) -> None:
    victim, _ = logged
    removed = position(pli, victim, 2)
    delete_event(pli, victim, 2)

    result = run_audit(pli)

    assert result.returncode == 1
    assert any(
        f"letter={victim} version=2 position={removed}" in f
        and "missing from the event store" in f
        for f in faults(result)
    )
    third = f"letter={victim} version=3 position={position(pli, victim, 3)}"
    assert any(third in f and "out of sequence" in f for f in faults(result))


def test_removed_last_events_leave_checkpoints_larger_than_the_store(
    pli: Pli, logged: tuple[str, str]
) -> None:
    _, last_letter = logged
    size = pli.runtime.log.size()
    delete_event(pli, last_letter, 5)

    result = run_audit(pli)

    assert result.returncode == 1
    assert any(
        f"checkpoint of size {size}: covers more events than the event store "
        f"holds ({size - 1})" in f
        for f in faults(result)
    )


def test_two_swapped_events_are_named_at_both_positions(
    pli: Pli, logged: tuple[str, str]
) -> None:
    victim, _ = logged
    second, third = read_state(pli, victim, 2), read_state(pli, victim, 3)
    write_state(pli, victim, 2, third)
    write_state(pli, victim, 3, second)

    result = run_audit(pli)

    assert result.returncode == 1
    for version in (2, 3):
        where = f"letter={victim} version={version} position="
        where += str(position(pli, victim, version))
        assert any(where in f and "leaf disagrees" in f for f in faults(result))


def test_an_event_inserted_where_the_log_passed_is_named(
    pli: Pli, logged: tuple[str, str]
) -> None:
    victim, _ = logged
    table = pli.runtime.letters.recorder.events_table_name
    # A notification id left unused, as a rolled-back insert leaves one.
    gap = "SELECT nextval(pg_get_serial_sequence(%(t)s, 'notification_id'))"
    execute(pli, gap, {"t": table})
    Frontend(pli).deposit_and_notify()  # the log passes the unused id
    hole = pli.runtime.log.entries(0, 10_000)
    unused = next(
        a.notification_id + 1
        for a, b in zip(hole, hole[1:], strict=False)
        if b.notification_id != a.notification_id + 1
    )
    execute(
        pli,
        f"INSERT INTO {table} (notification_id, originator_id, originator_version, "
        "topic, state) SELECT %(n)s, originator_id, 6, topic, state FROM "
        f"{table} WHERE originator_id = %(id)s AND originator_version = 5",
        {"n": unused, "id": victim},
    )
    rebuilt_position = len([e for e in hole if e.notification_id < unused])

    result = run_audit(pli)

    where = f"letter={victim} version=6 position={rebuilt_position}"
    assert result.returncode == 1
    assert any(where in f and "not in the log" in f for f in faults(result))
    assert any(where in f and "chain link broken" in f for f in faults(result))


def test_an_inserted_event_the_log_took_in_is_named_with_its_position(
    pli: Pli, logged: tuple[str, str]
) -> None:
    victim, _ = logged
    table = pli.runtime.letters.recorder.events_table_name
    execute(
        pli,
        f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
        f"SELECT originator_id, 6, topic, state FROM {table} "
        "WHERE originator_id = %(id)s AND originator_version = 5",
        {"id": victim},
    )
    pli.runtime.log_appender.run_until_idle()  # a running server logs it

    result = run_audit(pli)

    where = f"letter={victim} version=6 position={position(pli, victim, 6)}"
    assert result.returncode == 1
    assert any(where in f and "chain link broken" in f for f in faults(result))


def test_a_truncated_log_is_found(pli: Pli, logged: tuple[str, str]) -> None:
    size = pli.runtime.log.size()
    execute(pli, "DELETE FROM pli_log_leaves WHERE position >= %(p)s", {"p": size - 3})

    result = run_audit(pli)

    assert result.returncode == 1
    assert any(
        f"position={size}: checkpoint of size {size}: larger than the log "
        f"({size - 3} leaves): the log was truncated" in f
        for f in faults(result)
    )
    assert any("not in the log, though the log passed it" in f for f in faults(result))


def test_a_forged_checkpoint_is_found(pli: Pli, logged: tuple[str, str]) -> None:
    size = pli.runtime.log.size()
    execute(
        pli,
        "UPDATE pli_log_checkpoints SET root = %(r)s WHERE size = %(s)s",
        {"r": b"\x17" * 32, "s": size},
    )

    result = run_audit(pli)

    assert result.returncode == 1
    named = [f for f in faults(result) if f"checkpoint of size {size}:" in f]
    assert any("checkpoint seal does not verify" in f for f in named)
    assert any("root does not match the log rebuilt" in f for f in named)
    assert all("letter=- version=0 position=" in f for f in named)


def test_a_replaced_checkpoint_with_a_valid_seal_is_found(
    pli: Pli, logged: tuple[str, str]
) -> None:
    # Someone who could use the seal key seals another history of this size.
    log = pli.runtime.log
    stored = log.checkpoints(0, 1)[0]
    forged = seal_checkpoint(
        stored.size, b"\x42" * 32, stored.time, pli.runtime.checkpointer.sealer
    )
    execute(
        pli,
        "UPDATE pli_log_checkpoints SET root = %(r)s, seal = %(seal)s "
        "WHERE size = %(s)s",
        {"r": forged.root, "seal": forged.seal, "s": stored.size},
    )

    result = run_audit(pli)

    assert result.returncode == 1
    named = [f for f in faults(result) if f"checkpoint of size {stored.size}:" in f]
    assert named and not any("seal does not verify" in f for f in named)
    assert any("root does not match the log rebuilt" in f for f in named)
    assert any(f"consistent with the checkpoint of size {stored.size}" in f
               for f in faults(result))  # fmt: skip


def test_a_log_leaf_that_disagrees_with_its_event_is_found(
    pli: Pli, logged: tuple[str, str]
) -> None:
    victim, _ = logged
    where = position(pli, victim, 3)
    execute(
        pli,
        "UPDATE pli_log_leaves SET leaf_hash = %(h)s WHERE position = %(p)s",
        {"h": b"\x00" * 32, "p": where},
    )

    result = run_audit(pli)

    assert result.returncode == 1
    assert any(
        f"letter={victim} version=3 position={where}" in f and "leaf disagrees" in f
        for f in faults(result)
    )
    assert any("disagrees with its leaves" in f for f in faults(result))
    # The events and the checkpoints are untouched: only the projection lies.
    assert not any("root does not match" in f for f in faults(result))


def test_the_log_extends_an_auditors_earlier_checkpoint(
    pli: Pli, logged: tuple[str, str], tmp_path: Path
) -> None:
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(pli.runtime.log.latest_checkpoint().to_json()))  # type: ignore[union-attr]
    Frontend(pli).deposit_and_notify()
    pli.runtime.checkpointer.checkpoint_now()

    result = run_audit(pli, "--against", str(earlier))

    size = json.loads(earlier.read_text())["size"]
    assert result.returncode == 0, result.stdout
    assert f"extends the auditor's checkpoint of size {size}" in result.stdout


def test_a_log_rewritten_since_the_auditors_checkpoint_is_found(
    pli: Pli, logged: tuple[str, str], tmp_path: Path
) -> None:
    victim, _ = logged
    earlier = tmp_path / "earlier.json"
    checkpoint = pli.runtime.log.latest_checkpoint()
    assert checkpoint is not None
    earlier.write_text(json.dumps(checkpoint.to_json()))
    # The whole history is rewritten: an event goes, the log and the
    # checkpoints are rebuilt and resealed, only the auditor's copy remains.
    delete_event(pli, victim, 5)
    for table in ("pli_log_checkpoints", "pli_log_nodes", "pli_log_leaves"):
        execute(pli, f"DELETE FROM {table}", {})
    execute(
        pli,
        "DELETE FROM letters_tracking WHERE application_name = %(n)s",
        {"n": "pli-transparency-log"},
    )
    pli.runtime.log_appender.run_until_idle()
    pli.runtime.checkpointer.checkpoint_now()

    result = run_audit(pli, "--against", str(earlier))

    assert result.returncode == 1
    assert any(
        f"auditor's checkpoint of size {checkpoint.size}: the log rebuilt from the "
        f"events has {checkpoint.size - 1} leaves: it was truncated" in f
        for f in faults(result)
    )


def test_an_auditors_checkpoint_of_another_history_is_refused(
    pli: Pli, logged: tuple[str, str], tmp_path: Path
) -> None:
    latest = pli.runtime.log.latest_checkpoint()
    assert latest is not None
    other = seal_checkpoint(
        latest.size - 2, b"\x42" * 32, latest.time, pli.runtime.checkpointer.sealer
    )
    earlier = tmp_path / "other.json"
    earlier.write_text(json.dumps(other.to_json()))

    result = run_audit(pli, "--against", str(earlier))

    named = [f for f in faults(result) if "auditor's checkpoint" in f]
    assert result.returncode == 1
    assert any("the log does not extend it" in f for f in named)
    assert any(f"the latest checkpoint (size {latest.size})" in f for f in named)


def test_an_unreadable_auditors_checkpoint_is_refused_before_anything_runs(
    pli: Pli, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "pli-log-checkpoint/1", "size": "many"}')

    result = run_audit(pli, "--against", str(bad))

    assert result.returncode == 2
    assert "not a pli checkpoint" in result.stderr
