"""Replay, export and offline verification of a store of 100,000+ events.

The run seeds a fresh PostgreSQL store through pli's own application (every
event sealed by the token, legally timed ones stamped by the built-in TSA,
the views and the transparency log projected, checkpoints sealed), then
measures, each in its own process so that its peak memory is its own:

- baseline: reading every stored event in commit order, nothing checked;
- replay without rebuilding projections: every seal, chain link, stamp,
  leaf and checkpoint checked (``pli audit verify --no-projections``);
- full replay: the same, with the letter views and the log rebuilt and
  compared (``pli audit verify``);
- export of a bundle of the whole period (``pli compliance export``);
- offline verification of that bundle (``pli compliance verify``).

Figures are events per second and peak resident memory, with each speed as
a ratio to the baseline measured in the same run: the machines are shared.

    .venv/bin/python bench/audit.py [--events 100000] [--threads 16]

Seeding takes minutes (each event is sealed in the token). The store has no
proof documents: rendering and sealing 60,000 PDFs would take hours, so the
replay's proof comparison is measured by the tests, not here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pli.domain.clock import FixedClock  # noqa: E402
from pli.domain.values import LetterKind, Party, Recipient, RecipientType  # noqa: E402
from pli.infrastructure.letters import (  # noqa: E402
    Authorisation,
    DepositRequest,
    NewAttachment,
)
from pli.infrastructure.settings import Settings  # noqa: E402
from pli.services.runtime import Runtime  # noqa: E402

from postgres import fresh_database, postgres_server  # noqa: E402

# Events per letter: Deposited, Notified, three identification attempts that
# are opened and never closed, Expired. Three of the six are stamped.
_EVENTS_PER_LETTER = 6
_SENDER = Party(name="Bench Sender SARL", email="sender@bench.example")
_RECIPIENT = Recipient(
    email="recipient@bench.example",
    type=RecipientType.PROFESSIONAL,
    given_names="Bench",
    family_name="Recipient",
)


def _env(dsn: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PLI_DATABASE_URL": dsn,
            "PLI_HOME": str(home),
            "PLI_HSM_DIR": os.environ.get(
                "PLI_HSM_DIR", str(Path("var/hsm").resolve())
            ),
        }
    )
    return env


def seed(dsn: str, home: Path, events: int, threads: int) -> float:
    """Fill the store with letters until it holds ``events`` events."""
    os.environ.update(_env(dsn, home))
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = FixedClock(start)
    runtime = Runtime.open(Settings.from_env(), clock)
    letters = runtime.letters
    count = -(-events // _EVENTS_PER_LETTER)
    ids: list[uuid.UUID] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def work(worker: int, action: str) -> None:
        for n in range(worker, count, threads):
            if action == "deposit":
                letter, _ = letters.deposit(
                    f"bench-{n}",
                    DepositRequest(
                        kind=LetterKind.ERE,
                        sender_account_id=uuid.UUID(int=1),
                        recipient=_RECIPIENT,
                        subject=f"Relance n° {n}",
                        attachments=[
                            NewAttachment("letter.pdf", "application/pdf", b"%d" % n)
                        ],
                    ),
                    lambda _: Authorisation(sender=_SENDER),
                )
                letters.record_notified(letter.id, clock.now())
                for _ in range(3):
                    letters.begin_identification(letter.id, os.urandom(32).hex())
                with lock:
                    ids.append(letter.id)
            else:
                letters.expire(ids[n])

    for action in ("deposit", "expire"):
        pool = [
            threading.Thread(target=work, args=(worker, action))
            for worker in range(threads)
        ]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        if action == "deposit":
            clock.advance(dt.timedelta(days=16))
    seconds = time.perf_counter() - started
    runtime.log_appender.run_until_idle()
    runtime.projector.run_until_idle()
    runtime.checkpointer.checkpoint_now()
    runtime.close()
    return seconds


def _baseline(dsn: str, home: Path) -> None:
    """Read every stored event in commit order; check nothing."""
    os.environ.update(_env(dsn, home))
    runtime = Runtime.open(Settings.from_env())
    recorder = runtime.letters.recorder
    start, seen = 1, 0
    while True:
        page = recorder.select_notifications(start=start, limit=500)
        if not page:
            break
        seen += len(page)
        start = page[-1].id + 1
    runtime.close()
    print(f"read {seen} events")


def _measured(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run one phase in its own process; its time, peak memory (KiB), output."""
    script = (
        "import resource, runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        "else:\n"
        "    code = 0\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(f'peak-rss-kib {peak}', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    peak = 0
    for line in done.stderr.splitlines():
        if line.startswith("peak-rss-kib "):
            peak = int(line.split()[1])
    if done.returncode not in (0,):
        print(f"  (exit {done.returncode}) {done.stdout[-500:]} {done.stderr[-800:]}")
    return seconds, peak, done.stdout


def main() -> None:
    """Seed, then measure each phase and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "baseline":
        _baseline(args.dsn, Path(args.home))
        return

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    with postgres_server() as base, fresh_database(base) as dsn:
        home = Path(f"/tmp/pli-bench-audit-{uuid.uuid4().hex[:8]}")
        seconds = seed(dsn, home, args.events, args.threads)
        env = _env(dsn, home)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent)
        stored = _count(dsn, home)
        print(
            f"seeded {stored} events in {seconds:.0f} s "
            f"({stored / seconds:.0f} events/s, {args.threads} threads)"
        )
        bundle = home / "bench-bundle.zip"
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).date().isoformat()
        phases = [
            ("baseline: read every event", ["audit", "--phase", "baseline",
             "--dsn", dsn, "--home", str(home)]),
            ("replay, no projection rebuild", ["pli.services.cli", "audit",
             "verify", "--quiet", "--no-projections"]),
            ("full replay", ["pli.services.cli", "audit", "verify", "--quiet"]),
            ("bundle export", ["pli.services.cli", "compliance", "export",
             "--from", "2000-01-01", "--to", later, "--proofs", "0",
             str(bundle)]),
            ("bundle verify (offline)", ["pli.services.cli", "compliance",
             "verify", str(bundle)]),
        ]  # fmt: skip
        figures = []
        for name, argv in phases:
            took, peak, output = _measured(argv, env)
            figures.append((name, took, peak))
            summary = output.strip().splitlines()[-1:] or ["(no output)"]
            print(f"  {name}: {summary[0][:160]}")
        base_rate = stored / figures[0][1]
        for name, took, peak in figures:
            rate = stored / took
            print(
                f"{name}: {took:7.1f} s, {rate:9.0f} events/s "
                f"({rate / base_rate:.3f} x the baseline), "
                f"peak memory {peak / 1024:.0f} MiB"
            )
        print(f"bundle size: {bundle.stat().st_size / 2**20:.1f} MiB")


def _count(dsn: str, home: Path) -> int:
    os.environ.update(_env(dsn, home))
    runtime = Runtime.open(Settings.from_env())
    count = runtime.letters.recorder.max_notification_id() or 0
    runtime.close()
    return count


if __name__ == "__main__":
    main()
