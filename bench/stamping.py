"""What RFC 3161 stamping costs per deposited letter, with and without batching.

Two measurements, each against a baseline taken in the same run (the
machines are shared, so only ratios compare from run to run):

1. In process, sixteen threads each stamp one event at a time through
   ``TreeStamper``, with batching (one request for the events queued while
   the previous request was in flight) and without (one request per event),
   against the built-in TSA in process and over HTTP on loopback. Baseline:
   the same threads sealing one event each with the token, the cost sealing
   already had.
2. End to end, ``pli serve`` on PostgreSQL takes ERE deposits from sixteen
   gRPC clients with ``PLI_TSA_BATCHING=1`` and ``=0``, against plain
   ``eventsourcing`` saves (``bench/deposit.py``).

    .venv/bin/python bench/stamping.py [--seconds 10] [--threads 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import deposit  # noqa: E402

from pli.hsm.provision import ROOT_CRL_FILE  # noqa: E402
from pli.hsm.seal import EventSealer  # noqa: E402
from pli.hsm.token import Token, TokenConfig  # noqa: E402
from pli.hsm.tsa import TimeStampAuthority  # noqa: E402
from pli.infrastructure.clock import SystemClock  # noqa: E402
from pli.infrastructure.stamping import TreeStamper  # noqa: E402
from pli.infrastructure.timestamps import (  # noqa: E402
    HttpTimeStampClient,
    LocalTimeStampClient,
)
from pli.infrastructure.tsa_server import TsaServer  # noqa: E402

from postgres import fresh_database, postgres_server  # noqa: E402


def _threads(
    threads: int, seconds: float, work: Callable[[int], None]
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop(worker: int) -> None:
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            work(worker)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return len(latencies) / seconds, latencies


def _line(what: str, rate: float, latencies: list[float], extra: str = "") -> None:
    print(
        f"  {what}: {rate:8.1f}/s, mean {1000 * statistics.mean(latencies):6.2f} ms"
        f", p50 {1000 * statistics.median(latencies):6.2f} ms{extra}"
    )


def in_process(config: TokenConfig, threads: int, seconds: float) -> None:
    """Stamp one event per call from many threads; compare with sealing."""
    token = Token(config)
    sealer = EventSealer(token)
    authority = TimeStampAuthority.from_token(token, SystemClock())
    root = authority.chain[-1]
    seal_rate, seal_lat = _threads(
        threads, seconds, lambda worker: sealer.seal(b"event %d" % worker)
    )
    print(f"in process, {threads} threads, one event per call:")
    _line("baseline: token seals", seal_rate, seal_lat)
    with TsaServer(authority, config.certs_dir / ROOT_CRL_FILE) as server:
        clients = {
            "in-process TSA": LocalTimeStampClient(authority, trust_roots=[root]),
            "TSA over HTTP": HttpTimeStampClient(server.url, trust_roots=[root]),
        }
        for name, client in clients.items():
            for batching in (False, True):
                stamper = TreeStamper(client, batching=batching)
                rate, lat = _threads(
                    threads,
                    seconds,
                    lambda worker, s=stamper: s.stamp_leaves([os.urandom(96)]),
                )
                per_request = len(lat) / max(stamper.requests, 1)
                label = f"{name}, {'batched' if batching else 'one request each'}"
                _line(
                    label,
                    rate,
                    lat,
                    f", {per_request:.1f} events/request, "
                    f"{rate / seal_rate:.2f} x the seal rate",
                )
    token.close()


def end_to_end(clients: int, seconds: float) -> None:
    """Deposits over gRPC with batching on and off, against plain saves."""
    with postgres_server() as base:
        with fresh_database(base) as dsn:
            base_rate, _ = deposit.baseline(dsn, clients, seconds)
        print(f"end to end, {clients} gRPC clients, ERE deposits:")
        print(f"  baseline: plain eventsourcing saves: {base_rate:8.1f}/s")
        for batching in ("0", "1"):
            with fresh_database(base) as dsn:
                home = Path(f"/tmp/pli-bench-{uuid.uuid4().hex[:8]}")
                server, port = deposit._serve(
                    dsn, home, {"PLI_TSA_BATCHING": batching}
                )
                try:
                    rate, lat = deposit.deposits(port, clients, seconds)
                finally:
                    server.terminate()
                    server.wait(timeout=30)
                    deposit._report_server_errors(home / "server.log")
                    shutil.rmtree(home, ignore_errors=True)
            label = "batched stamps" if batching == "1" else "one stamp request each"
            print(
                f"  pli deposits, {label}: {rate:8.1f} letters/s, "
                f"p50 {1000 * statistics.median(lat):.1f} ms, "
                f"{rate / base_rate:.3f} x the baseline; "
                f"{1000 / rate:.2f} ms of one server per letter"
            )


def main() -> None:
    """Run both measurements and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    home = Path(os.environ.get("PLI_HOME", "var")).resolve()
    config = TokenConfig.from_env(home)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    in_process(config, args.threads, args.seconds)
    end_to_end(args.threads, args.seconds)


if __name__ == "__main__":
    main()
