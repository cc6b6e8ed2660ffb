"""``pli.v1.ComplianceService``: compliance bundles over gRPC.

The transparency log is brought up to date first, so the bundle holds every
event stored before the call. The bundle is exported to a private temporary
folder under the PLI home (it holds sample proofs, which carry personal
data), then streamed in chunks read from that file, so neither the export
nor the stream holds the archive in memory. The last message carries the
SHA-256 of the bytes sent, which the caller compares with its own; the
folder is removed when the stream ends, however it ends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
from eventsourcing.persistence import OperationalError

from pli.compliance.bundle import (
    DEFAULT_SAMPLE_SIZE,
    MAX_SAMPLE_SIZE,
    BundleError,
    export_bundle,
)
from pli.compliance.bundle_format import Period, PeriodError
from pli.hsm.seal import EventSealer
from pli.hsm.token import TokenUnavailable
from pli.infrastructure.checkpointer import Checkpointer
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.settings import Settings
from pli.infrastructure.timestamps import TimeStampUnavailable
from pli.infrastructure.transparency import UnreadableEvent
from pli.services.processes import LogAppender
from pli.services.wire import abort, abort_invalid, error_info
from pli.v1 import compliance_pb2 as pb

__all__ = ["CHUNK_SIZE", "ComplianceServicer"]

logger = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
_NAMES = ("start_time", "end_time")


class ComplianceServicer:
    """``pli.v1.ComplianceService``: what a compliance officer may do."""

    def __init__(
        self,
        letters: LetterApplication,
        settings: Settings,
        sealer: EventSealer,
        log_appender: LogAppender,
        checkpointer: Checkpointer,
    ) -> None:
        self.letters = letters
        self.settings = settings
        self.sealer = sealer
        self.log_appender = log_appender
        self.checkpointer = checkpointer

    def ExportBundle(  # noqa: N802 (gRPC method name)
        self, request: pb.ExportBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportBundleResponse]:
        """Export the period's bundle and stream it."""
        period, sample_size = self._request(request, context)
        work = self.settings.home / "exports"
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryDirectory(dir=work) as folder:
            path = Path(folder) / "bundle.zip"
            self._export(period, sample_size, path, context)
            yield from _stream(path)

    def _request(
        self, request: pb.ExportBundleRequest, context: grpc.ServicerContext
    ) -> tuple[Period, int]:
        problems: list[tuple[str, str]] = []
        bounds = []
        for name in _NAMES:
            bound = None
            if request.HasField(name):
                try:
                    bound = getattr(request, name).ToDatetime(tzinfo=dt.UTC)
                except (ValueError, OverflowError):
                    problems.append((name, "is not a valid timestamp"))
            bounds.append(bound)
        sample_size = DEFAULT_SAMPLE_SIZE
        if request.HasField("proof_sample_size"):
            sample_size = request.proof_sample_size
            if not 0 <= sample_size <= MAX_SAMPLE_SIZE:
                problems.append(
                    ("proof_sample_size", f"must be from 0 to {MAX_SAMPLE_SIZE}")
                )
        try:
            period = Period.of(bounds[0], bounds[1], _NAMES)
        except PeriodError as exc:
            reported = {name for name, _ in problems}
            problems += [p for p in exc.problems if p[0] not in reported]
        if problems:
            abort_invalid(context, problems)
        return period, sample_size

    def _export(
        self,
        period: Period,
        sample_size: int,
        path: Path,
        context: grpc.ServicerContext,
    ) -> None:
        try:
            self.log_appender.run_until_idle()
            export_bundle(
                self.letters,
                self.settings,
                self.sealer,
                period,
                path,
                checkpointer=self.checkpointer,
                sample_size=sample_size,
            )
        except (TokenUnavailable, TimeStampUnavailable, OperationalError) as exc:
            logger.error("bundle export failed error=%s", type(exc).__name__)
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the sealing token, the time-stamping authority or the event "
                "store is unavailable",
                [error_info("SEALING_UNAVAILABLE")],
            )
        except (BundleError, UnreadableEvent) as exc:
            logger.error("bundle export failed error=%s", exc)
            abort(
                context,
                grpc.StatusCode.DATA_LOSS,
                str(exc),
                [error_info("HISTORY_BROKEN")],
            )


def _stream(path: Path) -> Iterator[pb.ExportBundleResponse]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as archive:
        while chunk := archive.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            yield pb.ExportBundleResponse(chunk=chunk)
    yield pb.ExportBundleResponse(sha256=digest.hexdigest(), size_bytes=size)
