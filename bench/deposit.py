"""Deposit throughput of ``pli serve`` on PostgreSQL, against a plain baseline.

Sixteen gRPC clients deposit letters concurrently into a real ``pli serve``
process (sealed in the token, on PostgreSQL) and the run prints letters per
second and the p50/p99 latency. In the same run, on the same server, it
measures plain unsealed saves of a one-event aggregate through
``eventsourcing`` with sixteen threads, and prints the ratio of the two: the
machines are shared, so only the ratio means something from run to run.

    .venv/bin/python bench/deposit.py [--seconds 20] [--clients 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pli.v1 import accounts_pb2 as apb
from pli.v1 import (
    accounts_pb2_grpc,
    letters_pb2_grpc,  # noqa: E402
)
from pli.v1 import letters_pb2 as pb  # noqa: E402

from postgres import fresh_database, postgres_server  # noqa: E402

CONTENT = os.urandom(32 * 1024)


class Ping(Aggregate):
    """A one-event aggregate: the cheapest thing eventsourcing can save."""

    def __init__(self, note: str) -> None:
        self.note = note


def _run_clients(
    clients: int, seconds: float, work: Callable[[int], None]
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop(worker: int) -> None:
        mine: list[float] = []
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                work(worker)
            except Exception as exc:  # counted and reported, never hidden
                with lock:
                    errors.append(exc)
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(f"{len(errors)} call(s) failed; the first: {errors[0]!r}")
    if not latencies:
        raise SystemExit("no call succeeded; nothing to measure")
    return len(latencies), latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def baseline(dsn: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    """Plain saves of a one-event aggregate through eventsourcing."""
    from urllib.parse import urlsplit

    url = urlsplit(dsn)
    app = Application(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": url.path.strip("/"),
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": url.username or "postgres",
            "POSTGRES_PASSWORD": url.password or "",
            "POSTGRES_POOL_SIZE": str(clients),
        }
    )
    count, latencies = _run_clients(
        clients, seconds, lambda worker: app.save(Ping(note=f"w{worker}"))
    )
    app.close()
    return count / seconds, latencies


def _serve(
    dsn: str, home: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    home.mkdir(parents=True)
    env = dict(os.environ)
    env.update(
        {
            "PLI_DATABASE_URL": dsn,
            "PLI_LISTEN": f"127.0.0.1:{port}",
            "PLI_HOME": str(home),
            "PLI_HSM_DIR": os.environ.get(
                "PLI_HSM_DIR", str(Path("var/hsm").resolve())
            ),
            "PLI_DATABASE_POOL_SIZE": "20",
            **(extra_env or {}),
        }
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "pli.services.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "server.log").open("ab"),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            break
        except grpc.RpcError:
            time.sleep(0.2)
    channel.close()
    return server, port


def deposits(port: int, clients: int, seconds: float) -> tuple[float, list[float]]:
    """Sealed deposits over gRPC, one channel per client."""
    stubs = [
        letters_pb2_grpc.LetterServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        for _ in range(clients)
    ]

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    account = (
        accounts_pb2_grpc.SenderAccountServiceStub(channel)
        .RegisterSenderAccount(
            apb.RegisterSenderAccountRequest(
                idempotency_key="bench-sender",
                identity=pb.Party(name="Bench Sender", email="sender@bench.example"),
                level=pb.ASSURANCE_LEVEL_SUBSTANTIAL,
                method=apb.VERIFICATION_METHOD_IN_PERSON,
                verifier_reference="bench",
            )
        )
        .account
    )
    recipient = pb.Recipient(
        email="to@bench.example",
        type=pb.RECIPIENT_TYPE_PROFESSIONAL,
        given_names="Bench",
        family_name="Recipient",
    )

    # ERE: an LRE's one-time code is accepted once per 30-second step and
    # account, which would measure the sender's patience, not pli.
    def deposit(worker: int) -> None:
        stubs[worker].DepositLetter(
            pb.DepositLetterRequest(
                idempotency_key=str(uuid.uuid4()),
                kind=pb.LETTER_KIND_ERE,
                sender_account_id=account.account_id,
                recipient=recipient,
                attachments=[
                    pb.Attachment(
                        filename="letter.pdf",
                        media_type="application/pdf",
                        content=CONTENT,
                    )
                ],
            )
        )

    count, latencies = _run_clients(clients, seconds, deposit)
    return count / seconds, latencies


def _report_server_errors(log: Path) -> None:
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    if errors:
        print(f"server logged {len(errors)} error(s); the first: {errors[0]}")


def main() -> None:
    """Run both measurements and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    with postgres_server() as base:
        with fresh_database(base) as dsn:
            base_rate, base_lat = baseline(dsn, args.clients, args.seconds)
        with fresh_database(base) as dsn:
            home = Path(f"/tmp/pli-bench-{uuid.uuid4().hex[:8]}")
            server, port = _serve(dsn, home)
            try:
                rate, lat = deposits(port, args.clients, args.seconds)
            finally:
                server.terminate()
                server.wait(timeout=30)
                _report_server_errors(home / "server.log")
                shutil.rmtree(home, ignore_errors=True)
    print(
        f"baseline: plain eventsourcing saves, {args.clients} threads: "
        f"{base_rate:.1f}/s, p50 {1000 * statistics.median(base_lat):.1f} ms, "
        f"p99 {1000 * _percentile(base_lat, 0.99):.1f} ms"
    )
    print(
        f"pli: sealed deposits over gRPC, {args.clients} clients, 32 KiB letter: "
        f"{rate:.1f} letters/s, p50 {1000 * statistics.median(lat):.1f} ms, "
        f"p99 {1000 * _percentile(lat, 0.99):.1f} ms"
    )
    print(f"ratio: pli deposits run at {rate / base_rate:.3f} x the baseline rate")


if __name__ == "__main__":
    main()
