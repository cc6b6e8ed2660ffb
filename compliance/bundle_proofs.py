"""The proof sample part: sealed proof PDFs of letters deposited in the period.

Proofs carry personal data (the parties' names and addresses, as the law
requires), so a bundle holds a sample, not all of them: up to N proofs of
letters deposited in the period, whose every event lies inside the period.
The sample is deterministic yet cannot be arranged in advance: letters are
ranked by SHA-256 of the period's last event digest and the letter id.

The verifier validates each proof's PAdES seal with pyHanko against the
bundle's trust anchor (no fetching) and checks that its ``evidence.json``
names the letter and, version by version, the same sealed event digests as
the bundle's event lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from io import BytesIO
from pathlib import Path
from typing import Any

from eventsourcing.utils import get_topic
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator.errors import PathError, ValidationError

from pli.compliance.bundle_format import PROOFS_DIR, EventRecord
from pli.compliance.bundle_io import BundleWriter, ScannedEvent
from pli.compliance.bundle_sources import CheckSource, ExportSource
from pli.domain.letter import Letter

__all__ = ["ProofSampleChecker", "ProofSampleExporter", "read_evidence"]

logger = logging.getLogger(__name__)

PART = "proofs"
# The attachment name ``pli.services.proofs`` gives the evidence.
_EVIDENCE_FILE = "evidence.json"
_MAX_PROOF = 64 * 1024 * 1024
_DEPOSITED = get_topic(Letter.Deposited)
_PDF_ERRORS = (PdfError, ValueError, KeyError, TypeError, IndexError, AttributeError)


def read_evidence(pdf: bytes) -> dict[str, Any]:
    """The ``evidence.json`` embedded in a proof; raises ValueError."""
    try:
        reader = PdfFileReader(BytesIO(pdf), strict=False)
        names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
        for index in range(0, len(names) - 1, 2):
            if str(names[index]) == _EVIDENCE_FILE:
                spec = names[index + 1].get_object()
                data = spec["/EF"]["/F"].get_object().data
                document = json.loads(data)
                if isinstance(document, dict):
                    return document
    except _PDF_ERRORS as exc:
        raise ValueError(f"no readable {_EVIDENCE_FILE} ({exc})") from exc
    raise ValueError(f"no {_EVIDENCE_FILE} attached")


def _versions(evidence: dict[str, Any]) -> list[int]:
    events = evidence.get("events")
    if not isinstance(events, list):
        raise ValueError("the evidence lists no events")
    return [int(e["version"]) for e in events]


class ProofSampleExporter:
    """Picks the sample once the period's last event is known, then copies it."""

    def __init__(self, source: ExportSource) -> None:
        self.proofs_dir = source.settings.proofs_dir
        self.size = source.sample_size
        self._last_version: dict[str, int] = {}
        self._seed = ""

    def observe(self, event: ScannedEvent) -> None:
        """Follow letters deposited in the period to their last version in it."""
        if not event.in_period:
            return
        record = event.record
        if record.topic == _DEPOSITED or record.aggregate_id in self._last_version:
            self._last_version[record.aggregate_id] = record.version
        self._seed = record.digest()

    def write(self, bundle: BundleWriter) -> None:
        """Add up to N proofs, best-ranked letters first."""
        chosen = 0
        for letter_id in sorted(self._last_version, key=self._rank):
            for path in self._proofs_of(letter_id):
                if chosen == self.size:
                    return
                data = path.read_bytes()
                if self._inside_period(letter_id, data, path):
                    name = f"{PROOFS_DIR}{letter_id}/{path.name}"
                    bundle.write_bytes(name, data, compress=False)
                    chosen += 1
            if chosen == self.size:
                return

    def _rank(self, letter_id: str) -> str:
        return hashlib.sha256(f"{self._seed}\n{letter_id}".encode()).hexdigest()

    def _proofs_of(self, letter_id: str) -> list[Path]:
        folder = self.proofs_dir / letter_id
        return sorted(folder.glob("*.pdf")) if folder.is_dir() else []

    def _inside_period(self, letter_id: str, data: bytes, path: Path) -> bool:
        try:
            versions = _versions(read_evidence(data))
        except ValueError:
            logger.warning("proof skipped, evidence unreadable letter=%s", letter_id)
            return False
        return bool(versions) and max(versions) <= self._last_version[letter_id]


class ProofSampleChecker:
    """Validates each sampled proof's seal and its evidence against the events."""

    def __init__(self, source: CheckSource) -> None:
        self.bundle = source.bundle
        self.trust = source.trust
        self.findings = source.findings
        self.paths = self.bundle.members(PROOFS_DIR)
        self._letters = {
            path.split("/")[1] for path in self.paths if path.count("/") == 2
        }
        self._events: dict[tuple[str, int], tuple[str, str]] = {}
        self._deposited: set[str] = set()

    def observe(self, record: EventRecord, line: int) -> None:
        """Remember the sealed digests of the sampled letters' events."""
        letter_id = record.aggregate_id
        if letter_id not in self._letters:
            return
        self._events[(letter_id, record.version)] = (record.topic, record.digest())
        if record.topic == _DEPOSITED:
            self._deposited.add(letter_id)

    def check(self) -> None:
        """Check every proof of the sample."""
        for path in self.paths:
            self._check_proof(path)
        self.findings.note(PART, "proofs checked", len(self.paths))

    def _check_proof(self, path: str) -> None:
        parts = path.split("/")
        if len(parts) != 3 or not parts[2].endswith(".pdf"):
            self.findings.fault(PART, path, "not a proofs/<letter id>/<proof>.pdf")
            return
        letter_id = parts[1]
        try:
            data = self.bundle.read(path, _MAX_PROOF)
        except (ValueError, OSError) as exc:
            self.findings.fault(PART, path, f"unreadable ({exc})")
            return
        problem = self._seal_problem(data)
        if problem:
            self.findings.fault(PART, path, problem)
        if letter_id not in self._deposited:
            self.findings.fault(
                PART, path, "its letter was not deposited in the period"
            )
        try:
            evidence = read_evidence(data)
        except ValueError as exc:
            self.findings.fault(PART, path, str(exc))
            return
        for reason in self._evidence_problems(letter_id, parts[2], evidence):
            self.findings.fault(PART, path, reason)

    def _seal_problem(self, data: bytes) -> str:
        try:
            reader = PdfFileReader(BytesIO(data), strict=False)
            signatures = reader.embedded_signatures
            if not signatures:
                return "the PDF carries no seal"
            context = self.trust.validation_context(self.bundle.created_at)
            status = validate_pdf_signature(signatures[-1], context)
        except (*_PDF_ERRORS, ValidationError, PathError) as exc:
            return f"the PAdES seal cannot be validated ({exc.__class__.__name__})"
        if not (status.intact and status.valid):
            return "the PAdES seal does not verify: the document was changed"
        if not status.trusted:
            return "the PAdES seal does not chain to the trust anchor"
        if status.coverage is None or status.coverage.name != "ENTIRE_FILE":
            return "the PAdES seal does not cover the whole document"
        return ""

    def _evidence_problems(
        self, letter_id: str, file_name: str, evidence: dict[str, Any]
    ) -> list[str]:
        problems = []
        letter = evidence.get("letter")
        if not isinstance(letter, dict) or letter.get("id") != letter_id:
            problems.append("its evidence names another letter")
        if f"{evidence.get('proof')}.pdf" != file_name:
            problems.append(f"its evidence is of a {evidence.get('proof')!r} proof")
        events = evidence.get("events")
        if not isinstance(events, list) or not events:
            return [*problems, "its evidence lists no sealed events"]
        for event in events:
            problems += self._event_problems(letter_id, event)
        return problems

    def _event_problems(self, letter_id: str, event: Any) -> list[str]:
        try:
            version = int(event["version"])
            name, digest = str(event["event"]), str(event["sealed_digest"])
        except (KeyError, TypeError, ValueError):
            return ["its evidence has an unreadable event entry"]
        found = self._events.get((letter_id, version))
        if found is None:
            return [f"its evidence names version {version}, which the bundle lacks"]
        topic, bundle_digest = found
        problems = []
        if topic.rpartition(".")[2] != name:
            problems.append(f"version {version} is {name} in the evidence, not {topic}")
        if bundle_digest != digest:
            problems.append(
                f"version {version}: the evidence's sealed digest is not the event's"
            )
        return problems
