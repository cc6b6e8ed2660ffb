"""``pli compliance export``: a sealed, self-contained bundle for one period.

The bundle is what a supervisor (ANSSI) or an auditor receives: the period's
sealed events without payloads, what anchors their chains, the key ceremony
log, the certificates, a configuration and software snapshot, statistics and
a sample of proofs (DESIGN §8), listed with their digests in a manifest that
the token seals. ``pli.compliance.verify_bundle`` checks it offline.

The period [from, to) is a stretch of the log: it starts at the first event
whose time is at or after ``from`` and ends before the first later event
whose time is at or after ``to``, so a bundle is always a contiguous run of
log positions, however the servers' clocks drifted. The bundle binds that
run to the transparency log (``pli.compliance.bundle_log``): the export takes
the log's latest checkpoint, sealing one first when the log has grown past
it, and holds no event past that checkpoint. Events are read in pages and
every file is streamed into the archive, so memory stays flat however long
the period; the archive appears under its name only once complete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventsourcing.persistence import Notification

from pli.compliance.bundle_events import record_of
from pli.compliance.bundle_format import (
    FORMAT,
    MANIFEST,
    MANIFEST_SIGNATURE,
    Period,
    iso_utc,
)
from pli.compliance.bundle_io import BundleError, BundleWriter, ScannedEvent
from pli.compliance.bundle_parts import PARTS
from pli.compliance.bundle_sources import ExportSource
from pli.compliance.bundle_stats import aware
from pli.hsm.seal import EventSealer, SealVerifier
from pli.infrastructure.checkpointer import Checkpointer
from pli.infrastructure.checkpoints import Checkpoint
from pli.infrastructure.envelope import split_state
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.settings import Settings

__all__ = [
    "DEFAULT_SAMPLE_SIZE",
    "MAX_SAMPLE_SIZE",
    "BundleError",
    "ExportResult",
    "export_bundle",
    "scan_log",
]

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_SIZE = 10
MAX_SAMPLE_SIZE = 1000
_PAGE = 1000
_RANK_RULE = "ascending SHA-256 of (the period's last event digest, newline, letter id)"


@dataclass(frozen=True)
class ExportResult:
    """Where the bundle went and what it holds."""

    path: Path
    sha256: str
    size: int
    events: int
    first_position: int | None
    last_position: int | None
    checkpoint: Checkpoint | None


@dataclass
class _LogRange:
    """The log positions the period covers, as the manifest states them."""

    events: int = 0
    first_position: int | None = None
    last_position: int | None = None

    def observe(self, event: ScannedEvent) -> None:
        if event.in_period:
            self.events += 1
            self.first_position = self.first_position or event.record.position
            self.last_position = event.record.position

    def to_json(self, log_end: int) -> dict[str, int | None]:
        return {
            "events": self.events,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "log_end_at_export": log_end,
        }


def scan_log(
    letters: LetterApplication, period: Period, log_end: int
) -> Iterator[ScannedEvent]:
    """Every event from the log's start to the period's end, in log order.

    The period is the stretch of the log from the first event recorded at or
    after its start to the last event recorded before its end. Recorded times
    do not follow commit order exactly (concurrent commands, a development
    clock moved ahead), so an event recorded outside the period but stored
    inside that stretch belongs to it: nothing is left out unseen.
    """
    first, last = _period_bounds(letters, period, log_end)
    if first is None or last is None or last < first:
        return
    for notification, moment, facts in _decoded(letters, last):
        record = record_of(
            notification.id,
            str(notification.originator_id),
            notification.originator_version,
            notification.topic,
            notification.state,
        )
        yield ScannedEvent(record, moment, facts, in_period=notification.id >= first)


def _period_bounds(
    letters: LetterApplication, period: Period, log_end: int
) -> tuple[int | None, int | None]:
    """The store positions of the period's first and last events."""
    first = last = None
    for notification, moment, _ in _decoded(letters, log_end):
        if first is None and moment >= period.start:
            first = notification.id
        if first is not None and moment < period.end:
            last = notification.id
    return first, last


def _decoded(
    letters: LetterApplication, log_end: int
) -> Iterator[tuple[Notification, dt.datetime, dict[str, Any]]]:
    """Each stored event up to ``log_end`` with its recorded time and payload."""
    recorder = letters.recorder
    transcoder = letters.mapper.transcoder
    start = 1
    while start <= log_end:
        try:
            page = recorder.select_notifications(start=start, limit=_PAGE, stop=log_end)
        except (ValueError, TypeError) as exc:
            raise BundleError(
                f"stored events from log position {start} cannot be read; "
                "run `pli audit verify`"
            ) from exc
        if not page:
            return
        for notification in page:
            try:
                facts = transcoder.decode(split_state(notification.state)[1])
                moment = aware(facts["timestamp"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BundleError(
                    f"the event at log position {notification.id} cannot be "
                    "decoded; run `pli audit verify`"
                ) from exc
            yield notification, moment, facts
        start = page[-1].id + 1


def export_bundle(
    letters: LetterApplication,
    settings: Settings,
    sealer: EventSealer,
    period: Period,
    out: Path,
    *,
    checkpointer: Checkpointer,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    created_at: dt.datetime | None = None,
) -> ExportResult:
    """Write the bundle of ``period`` to ``out``; raises BundleError.

    The bundle holds the period's events the transparency log holds; callers
    bring the log up to date first. ``checkpointer`` seals a checkpoint when
    none covers the whole log (raising what it raises when the token or the
    TSA fails).
    """
    if not 0 <= sample_size <= MAX_SAMPLE_SIZE:
        raise BundleError(f"the proof sample holds 0 to {MAX_SAMPLE_SIZE} proofs")
    if out.exists():
        raise BundleError(f"{out} exists; choose another name")
    if not out.parent.is_dir():
        raise BundleError(f"{out.parent} is not a folder")
    created_at = (created_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    checkpoint = _latest_checkpoint(checkpointer)
    descriptor, temporary = tempfile.mkstemp(
        dir=out.parent, prefix=f".{out.name}.", suffix=".part"
    )
    os.close(descriptor)
    try:
        source = ExportSource(
            letters,
            settings,
            period,
            sample_size,
            created_at,
            out.parent,
            checkpointer.log,
            checkpoint,
        )
        log = _write_archive(Path(temporary), source, sealer)
        digest, size = _sync_and_digest(Path(temporary))
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_folder(out.parent)
    logger.info(
        "bundle exported period_from=%s period_to=%s events=%d size=%d",
        iso_utc(period.start),
        iso_utc(period.end),
        log.events,
        size,
    )
    return ExportResult(
        out,
        digest,
        size,
        log.events,
        log.first_position,
        log.last_position,
        checkpoint,
    )


def _latest_checkpoint(checkpointer: Checkpointer) -> Checkpoint | None:
    """The log's latest checkpoint, sealed now if the log grew past it."""
    size = checkpointer.log.size()
    return checkpointer.covering(size) if size else None


def _log_end(source: ExportSource) -> int:
    """The store position of the last event the latest checkpoint covers."""
    if source.checkpoint is None:
        return 0
    entries = source.log.entries(source.checkpoint.size - 1, 1)
    if not entries:
        raise BundleError(
            f"the log lacks the last leaf of its checkpoint of size "
            f"{source.checkpoint.size}; run `pli audit verify`"
        )
    return entries[0].notification_id


def _write_archive(path: Path, source: ExportSource, sealer: EventSealer) -> _LogRange:
    log_end = _log_end(source)
    exporters = [(part, part.exporter(source)) for part in PARTS]
    log = _LogRange()
    for event in scan_log(source.letters, source.period, log_end):
        log.observe(event)
        for _, exporter in exporters:
            exporter.observe(event)

    with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
        bundle = BundleWriter(archive, source.created_at)
        parts: dict[str, list[str]] = {}
        for part, exporter in exporters:
            before = len(bundle.files)
            exporter.write(bundle)
            parts[part.name] = [entry.path for entry in bundle.files[before:]]
        manifest = _manifest(source, sealer, bundle, parts, log.to_json(log_end))
        seal = sealer.seal(manifest)
        if not SealVerifier([sealer.certificate]).is_valid(manifest, seal):
            raise BundleError("the token's seal key does not match its certificate")
        bundle.write_unlisted(MANIFEST, manifest)
        bundle.write_unlisted(MANIFEST_SIGNATURE, seal.signature)
    return log


def _manifest(
    source: ExportSource,
    sealer: EventSealer,
    bundle: BundleWriter,
    parts: dict[str, list[str]],
    log: dict[str, int | None],
) -> bytes:
    document = {
        "format": FORMAT,
        "created_at": iso_utc(source.created_at),
        "provider": source.settings.provider_name,
        "period": source.period.to_json(),
        "log": log,
        "proof_sample": {"requested": source.sample_size, "rank": _RANK_RULE},
        "seal": {
            "key_id": sealer.key_id,
            "algorithm": "ECDSA P-256 with SHA-256 over the bytes of manifest.json",
            "signature": f"{MANIFEST_SIGNATURE} (DER)",
        },
        "parts": parts,
        "files": [entry.to_json() for entry in bundle.files],
    }
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def _sync_and_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(handle.fileno())
    return digest.hexdigest(), size


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
