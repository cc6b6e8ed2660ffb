"""``pli serve``: the gRPC server, with health checking and reflection.

One server process serves ``pli.v1`` and runs the background processes
(transparency log, views, notifier, proof builder, expirer, checkpoints).
Standard health checking and server reflection are on, so ``grpcurl`` and
load balancers work unchanged.
"""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pli.domain.clock import Clock
from pli.hsm.seal import EventSealer
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

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving, stop the processes, release resources."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.runtime.runner.stop()
        self.runtime.close()


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
    server.start()
    if processes:
        runtime.runner.start()
    logger.info("serving pli.v1 listen=%s port=%d", settings.listen, port)
    return RunningServer(server, port, runtime, health_servicer)
