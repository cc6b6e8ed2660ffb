"""``pli compliance verify``: check a compliance bundle offline.

No database, no token, no network: the verifier reads the archive and the
certificates in it (or a root the auditor holds, ``--trust``). It checks the
manifest's seal, every file's digest and size (naming each changed, missing
or added file), then hands every event line to each bundle part's checker:
seals and chain links, the key ceremony log, the binding to the transparency
log (checkpoints, consistency and inclusion proofs), the time stamps,
statistics recomputed from the events, the sample proofs' PAdES seals and
evidence. Every fault is named by part, file and line; the report also shows
the trust anchor's fingerprint and the latest checkpoint's size and root,
which the auditor compares out of band with what the provider published.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from pli.compliance.bundle_format import (
    EVENTS,
    FORMAT,
    MANIFEST,
    MANIFEST_SIGNATURE,
    EventRecord,
    MalformedLine,
    Period,
    PeriodError,
    parse_iso_utc,
)
from pli.compliance.bundle_io import (
    BundleReader,
    Findings,
    UnreadableMember,
    UnusableBundle,
)
from pli.compliance.bundle_parts import PARTS
from pli.compliance.bundle_sources import CheckSource
from pli.compliance.bundle_trust import BundleTrust

__all__ = ["UnusableBundle", "Verification", "verify_bundle"]

FRAME = "manifest"
_MAX_MANIFEST = 256 * 1024 * 1024


@dataclass
class Verification:
    """The outcome of verifying one bundle."""

    bundle: Path
    findings: Findings

    @property
    def clean(self) -> bool:
        """Whether nothing was found wrong."""
        return self.findings.clean

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "bundle": str(self.bundle),
            "clean": self.clean,
            "faults": [
                {"part": f.part, "where": f.where, "reason": f.reason}
                for f in self.findings.faults
            ],
            "notes": self.findings.notes,
        }

    def render(self) -> str:
        """The report for people."""
        lines = [f"bundle {self.bundle}"]
        for part, notes in self.findings.notes.items():
            lines.append(f"  {part}:")
            lines += [f"    {key}: {_text(value)}" for key, value in notes.items()]
        lines += [str(fault) for fault in self.findings.faults]
        count = len(self.findings.faults)
        verdict = "clean" if self.clean else f"{count} fault(s)"
        lines.append(f"verdict: {verdict}")
        return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {_text(item)}" for key, item in value.items())
    return str(value)


def verify_bundle(
    path: Path, trust_root: x509.Certificate | None = None
) -> Verification:
    """Verify the bundle at ``path``; raises UnusableBundle if it cannot be read."""
    findings = Findings()
    bundle = BundleReader(path)
    try:
        manifest = _read_manifest(bundle, findings)
        _check_duplicates(bundle, findings)
        trust = BundleTrust.build(bundle, trust_root, findings)
        _check_manifest_seal(bundle, trust, manifest, findings)
        _check_files(bundle, findings)
        _check_parts(CheckSource(bundle, trust, findings))
    finally:
        bundle.close()
    return Verification(path, findings)


def _read_manifest(bundle: BundleReader, findings: Findings) -> bytes | None:
    if not bundle.has(MANIFEST):
        findings.fault(FRAME, MANIFEST, "missing: nothing in the bundle is vouched for")
        return None
    try:
        data = bundle.read(MANIFEST, _MAX_MANIFEST)
        manifest = json.loads(data)
    except ValueError as exc:
        findings.fault(FRAME, MANIFEST, f"unreadable ({exc})")
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        findings.fault(FRAME, MANIFEST, f"not a {FORMAT} manifest")
        return data
    bundle.manifest = manifest
    try:
        period = manifest["period"]
        Period.of(parse_iso_utc(period["from"]), parse_iso_utc(period["to"]))
        bundle.created_at = parse_iso_utc(manifest["created_at"])
    except (KeyError, TypeError, ValueError, PeriodError) as exc:
        findings.fault(FRAME, MANIFEST, f"period or creation time unreadable ({exc})")
    findings.note(FRAME, "format", FORMAT)
    findings.note(FRAME, "provider", manifest.get("provider"))
    findings.note(FRAME, "created at", manifest.get("created_at"))
    findings.note(FRAME, "period", manifest.get("period"))
    findings.note(FRAME, "log", manifest.get("log"))
    return data


def _check_duplicates(bundle: BundleReader, findings: Findings) -> None:
    for name, count in Counter(bundle.names).items():
        if count > 1:
            findings.fault(FRAME, name, f"the archive holds {count} files of this name")


def _check_manifest_seal(
    bundle: BundleReader,
    trust: BundleTrust,
    manifest: bytes | None,
    findings: Findings,
) -> None:
    if manifest is None:
        return
    if not bundle.has(MANIFEST_SIGNATURE):
        findings.fault(FRAME, MANIFEST_SIGNATURE, "missing: the manifest is unsealed")
        return
    seal = bundle.manifest.get("seal")
    key_id = seal.get("key_id") if isinstance(seal, dict) else None
    if not isinstance(key_id, str):
        findings.fault(FRAME, MANIFEST, "names no seal key")
        return
    try:
        signature = bundle.read(MANIFEST_SIGNATURE, 4096)
    except ValueError as exc:
        findings.fault(FRAME, MANIFEST_SIGNATURE, f"unreadable ({exc})")
        return
    problem = trust.verify_signature(key_id, signature, manifest)
    if problem:
        findings.fault(FRAME, MANIFEST_SIGNATURE, problem)
        return
    certificate = trust.by_key_id[key_id]
    if bundle.created_at is not None and not (
        certificate.not_valid_before_utc
        <= bundle.created_at
        <= certificate.not_valid_after_utc
    ):
        findings.fault(
            FRAME, MANIFEST_SIGNATURE, "the seal certificate was not valid at creation"
        )
        return
    findings.note(FRAME, "manifest seal", "valid")
    findings.note(FRAME, "sealed by", certificate.subject.rfc4514_string())


def _check_files(bundle: BundleReader, findings: Findings) -> None:
    listed = bundle.manifest.get("files")
    if not isinstance(listed, list):
        if bundle.manifest:
            findings.fault(FRAME, MANIFEST, "lists no files")
        listed = []
    stated: dict[str, dict[str, Any]] = {}
    for entry in listed:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            stated[entry["path"]] = entry
    for path, entry in stated.items():
        if not bundle.has(path):
            findings.fault(FRAME, path, "missing: the manifest lists it")
            continue
        try:
            digest, size = bundle.digest(path)
        except UnreadableMember as exc:
            findings.fault(FRAME, path, f"unreadable ({exc})")
            continue
        if digest != entry.get("sha256") or size != entry.get("size"):
            findings.fault(FRAME, path, "changed: its SHA-256 is not the manifest's")
    for name in sorted(set(bundle.names) - set(stated)):
        if name not in (MANIFEST, MANIFEST_SIGNATURE):
            findings.fault(FRAME, name, "added: the manifest does not list it")
    for part in PARTS:
        for name in part.required:
            if name not in stated and not bundle.has(name):
                findings.fault(
                    FRAME, name, f"missing: every bundle has it ({part.name})"
                )
    findings.note(FRAME, "files listed", len(stated))


def _check_parts(source: CheckSource) -> None:
    checkers = [part.checker(source) for part in PARTS]
    bundle, findings = source.bundle, source.findings
    if bundle.has(EVENTS):
        try:
            for number, line in bundle.lines(EVENTS):
                try:
                    record = EventRecord.parse(line)
                except MalformedLine as exc:
                    findings.fault("events", f"{EVENTS} line {number}", str(exc))
                    continue
                for checker in checkers:
                    checker.observe(record, number)
        except UnreadableMember as exc:
            findings.fault("events", EVENTS, f"unreadable ({exc})")
    for checker in checkers:
        checker.check()
