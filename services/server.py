"""``pli serve``: the gRPC server, with health checking and reflection.

One server process serves ``pli.v1`` and runs the background processes
(transparency log, views, notifier, proof builder, expirer, checkpoints).
Standard health checking and server reflection are on, so ``grpcurl`` and
load balancers work unchanged. Health follows the token: while it cannot be
used (away, wrong PIN, missing key), the server and every service that
seals answer NOT_SERVING, and the read-only audit service stays SERVING.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pli.domain.clock import Clock
from pli.hsm.seal import EventSealer
from pli.hsm.token import TokenUnavailable
from pli.infrastructure.settings import Settings
from pli.services.accounts_api import ConsentServicer, SenderAccountServicer
from pli.services.api import MAX_INLINE_CONTENT, LetterServicer, RecipientDeskServicer
from pli.services.audit_api import AuditServicer
from pli.services.compliance_api import ComplianceServicer
from pli.services.runtime import Runtime
from pli.services.wire import generic_handler
from pli.v1 import accounts_pb2, audit_pb2, compliance_pb2, consents_pb2, letters_pb2

__all__ = ["RunningServer", "start_server"]

logger = logging.getLogger(__name__)

_SERVICES = {
    **letters_pb2.DESCRIPTOR.services_by_name,
    **accounts_pb2.DESCRIPTOR.services_by_name,
    **consents_pb2.DESCRIPTOR.services_by_name,
    **compliance_pb2.DESCRIPTOR.services_by_name,
    **audit_pb2.DESCRIPTOR.services_by_name,
}


@dataclass
class RunningServer:
    """A started server, the port it listens on and what it runs."""

    server: grpc.Server
    port: int
    runtime: Runtime
    health: health.HealthServicer
    readiness: _TokenReadiness

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving, stop the processes, release resources."""
        self.readiness.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.runtime.runner.stop()
        self.runtime.close()


# Services that need no token: reading the log and its checkpoints.
_READ_ONLY = {"AuditService"}
_PROBE_EVERY = 5.0


class _TokenReadiness:
    """Reports in health checks whether the token can be used, every few seconds.

    A probe opens (or reuses) the token session: a PIN the token rejected is
    never offered again (``pli.hsm.token``), so probing cannot lock a token.
    """

    def __init__(self, runtime: Runtime, health_servicer: health.HealthServicer):
        self.runtime = runtime
        self.health = health_servicer
        self.names = [""] + [
            service.full_name
            for name, service in _SERVICES.items()
            if name not in _READ_ONLY
        ]
        self._stop = threading.Event()
        self._ready: bool | None = None
        self._thread = threading.Thread(
            target=self._loop, name="pli-readiness", daemon=True
        )

    def start(self) -> None:
        """Probe now, then every few seconds."""
        self.probe()
        self._thread.start()

    def stop(self) -> None:
        """Stop probing."""
        self._stop.set()

    def probe(self) -> bool:
        """Probe the token and set the health of the services that seal."""
        try:
            self.runtime.token.run(lambda session: None)
            ready = True
        except TokenUnavailable:
            ready = False
        if ready != self._ready:
            status = health_pb2.HealthCheckResponse
            for name in self.names:
                self.health.set(name, status.SERVING if ready else status.NOT_SERVING)
            if not ready:
                logger.error("token unusable; sealing services NOT_SERVING")
            elif self._ready is not None:
                logger.info("token usable again; SERVING")
            self._ready = ready
        return ready

    def _loop(self) -> None:
        while not self._stop.wait(_PROBE_EVERY):
            self.probe()


def start_server(
    settings: Settings, clock: Clock | None = None, *, processes: bool = True
) -> RunningServer:
    """Start serving ``pli.v1`` on ``settings.listen``."""
    runtime = Runtime.open(settings, clock)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="pli-rpc"),
        options=[
            # Inline content is capped at 4 MiB; leave room for the envelope.
            ("grpc.max_receive_message_length", MAX_INLINE_CONTENT + 256 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    proofs_dir = settings.proofs_dir
    servicers = {
        "LetterService": LetterServicer(
            runtime.letters,
            runtime.views,
            proofs_dir,
            runtime.authoriser,
            runtime.evidence,
            settings.poll_interval,
        ),
        "RecipientDeskService": RecipientDeskServicer(
            runtime.letters, proofs_dir, settings.provider_name, runtime.identities
        ),
        "SenderAccountService": SenderAccountServicer(runtime.accounts),
        "ConsentService": ConsentServicer(
            runtime.letters,
            runtime.accounts,
            runtime.consents,
            runtime.pdf_sealer,
            settings.provider_name,
        ),
        "ComplianceService": ComplianceServicer(
            runtime.letters,
            settings,
            EventSealer(runtime.token),
            runtime.log_appender,
            runtime.checkpointer,
        ),
        "AuditService": AuditServicer(
            runtime.letters,
            runtime.log,
            runtime.letters.sealed_events.verifier,
            settings.token.certs_dir,
        ),
    }
    server.add_generic_rpc_handlers(
        [generic_handler(_SERVICES[name], s) for name, s in servicers.items()]
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [service.full_name for service in _SERVICES.values()]
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    readiness = _TokenReadiness(runtime, health_servicer)
    readiness.start()
    server.start()
    if processes:
        runtime.runner.start()
    logger.info("serving pli.v1 listen=%s port=%d", settings.listen, port)
    return RunningServer(server, port, runtime, health_servicer, readiness)
