"""The snapshot parts: configuration, software versions and certificates.

The configuration snapshot is an allowlist of settings: every field is named
here, so a secret added to the settings later stays out until someone
decides it belongs. It never carries a PIN, a password, a username or the
database's credentials. The software snapshot lists pli's version, Python's
and every installed distribution (``importlib.metadata``), so a supervisor
knows exactly what produced the evidence. The certificates part copies the
token's certificate folder: the root, the current and older seal
certificates, and any revocation lists.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pli.compliance.bundle_format import CERTS_DIR, CONFIGURATION, SOFTWARE, EventRecord
from pli.compliance.bundle_io import BundleWriter, ScannedEvent
from pli.compliance.bundle_sources import CheckSource, ExportSource
from pli.infrastructure.settings import Settings

__all__ = [
    "CertificatesChecker",
    "CertificatesExporter",
    "ConfigurationChecker",
    "ConfigurationExporter",
    "SoftwareChecker",
    "SoftwareExporter",
    "configuration_snapshot",
    "software_snapshot",
]

_SECRET_NAMES = ("pin", "password", "secret", "private_key", "username", "credentials")


def _looks_secret(name: str) -> bool:
    leaf = name.rpartition(".")[2].lower()
    return any(leaf == word or leaf.endswith("_" + word) for word in _SECRET_NAMES)


def configuration_snapshot(settings: Settings) -> dict[str, Any]:
    """The settings an auditor may see: no secret, no credential, no person."""
    smtp = settings.smtp
    return {
        "provider_name": settings.provider_name,
        "database": _database(settings),
        "listen": settings.listen,
        "token": {
            "module": settings.token.module,
            "label": settings.token.token_label,
            "pin_read_from": "environment" if settings.token.pin_from_env else "file",
        },
        "poll_interval_seconds": settings.poll_interval,
        "development_clock": settings.development_clock,
        "trusted_identity_providers_file": _path(settings.oidc_issuers),
        "content_retention_days": settings.content_retention_days,
        "mail_from": settings.mail_from,
        "desk_accept_url_template": settings.desk_accept_url_template,
        "desk_refuse_url_template": settings.desk_refuse_url_template,
        "smtp": None
        if smtp is None
        else {
            "host": smtp.host,
            "port": smtp.port,
            "starttls": smtp.starttls,
            "authenticates": bool(smtp.username),
            "ca_file": _path(smtp.ca_file),
            "timeout_seconds": smtp.timeout,
        },
    }


def _database(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded:
        return {"engine": "sqlite", "embedded": True}
    url = urlsplit(settings.database_url)
    return {
        "engine": "postgresql",
        "host": url.hostname,
        "port": url.port or 5432,
        "name": url.path.strip("/"),
    }


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def software_snapshot() -> dict[str, Any]:
    """pli's version, Python's, and every installed distribution's."""
    distributions = {
        (d.metadata["Name"] or "?"): d.version for d in metadata.distributions()
    }
    try:
        requirements = metadata.requires("pli") or []
    except metadata.PackageNotFoundError:
        requirements = []
    return {
        "pli": distributions.get("pli", "unknown"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "requirements": sorted(requirements),
        "distributions": dict(sorted(distributions.items(), key=_lower)),
    }


def _lower(item: tuple[str, str]) -> str:
    return item[0].lower()


class _Document:
    """A part that is one JSON document written after the scan."""

    path = ""

    def __init__(self, source: ExportSource) -> None:
        self.source = source

    def observe(self, event: ScannedEvent) -> None:
        """The document does not depend on the events."""

    def write(self, bundle: BundleWriter) -> None:
        """Add the document."""
        bundle.write_json(self.path, self.document())

    def document(self) -> dict[str, Any]:
        """The JSON document."""
        raise NotImplementedError


class ConfigurationExporter(_Document):
    """Writes ``configuration.json``."""

    path = CONFIGURATION

    def document(self) -> dict[str, Any]:
        """The configuration snapshot."""
        return configuration_snapshot(self.source.settings)


class SoftwareExporter(_Document):
    """Writes ``software.json``."""

    path = SOFTWARE

    def document(self) -> dict[str, Any]:
        """The software snapshot."""
        return software_snapshot()


class CertificatesExporter:
    """Copies ``*.pem`` and ``*.crl`` of the token's certificate folder."""

    def __init__(self, source: ExportSource) -> None:
        self.certs_dir = source.settings.token.certs_dir

    def observe(self, event: ScannedEvent) -> None:
        """Certificates do not depend on the events."""

    def write(self, bundle: BundleWriter) -> None:
        """Add every certificate and revocation list."""
        for path in sorted(self.certs_dir.iterdir()):
            if path.suffix in (".pem", ".crl") and path.is_file():
                bundle.write_bytes(CERTS_DIR + path.name, path.read_bytes())


class _DocumentChecker:
    """Checks that a JSON document part is there and readable."""

    part = ""
    path = ""

    def __init__(self, source: CheckSource) -> None:
        self.bundle = source.bundle
        self.findings = source.findings

    def observe(self, record: EventRecord, line: int) -> None:
        """The document does not depend on the events."""

    def check(self) -> None:
        """Read the document and check what it says."""
        if not self.bundle.has(self.path):
            return
        try:
            document = json.loads(self.bundle.read(self.path, 16 * 1024 * 1024))
        except ValueError as exc:
            self.findings.fault(self.part, self.path, f"unreadable ({exc})")
            return
        if not isinstance(document, dict):
            self.findings.fault(self.part, self.path, "not a JSON object")
            return
        self.check_document(document)

    def check_document(self, document: dict[str, Any]) -> None:
        """Part-specific checks."""


class ConfigurationChecker(_DocumentChecker):
    """The configuration snapshot must carry no secret-looking field."""

    part = "configuration"
    path = CONFIGURATION

    def check_document(self, document: dict[str, Any]) -> None:
        """Name any field that looks like a secret."""
        for name in _field_names(document):
            if _looks_secret(name):
                self.findings.fault(
                    self.part, f"{self.path} field {name}", "names a secret"
                )
        self.findings.note(self.part, "provider", document.get("provider_name"))


class SoftwareChecker(_DocumentChecker):
    """Reports the software that produced the bundle."""

    part = "software"
    path = SOFTWARE

    def check_document(self, document: dict[str, Any]) -> None:
        """Note pli's and Python's versions."""
        self.findings.note(self.part, "pli", document.get("pli"))
        self.findings.note(self.part, "python", document.get("python"))
        distributions = document.get("distributions")
        if isinstance(distributions, dict):
            self.findings.note(self.part, "distributions", len(distributions))


class CertificatesChecker:
    """The certificates were read before the events (see ``bundle_trust``)."""

    def __init__(self, source: CheckSource) -> None:
        self.source = source

    def observe(self, record: EventRecord, line: int) -> None:
        """Certificates do not depend on the events."""

    def check(self) -> None:
        """Nothing more to check: paths were validated when trust was built."""


def _field_names(document: Any, prefix: str = "") -> list[str]:
    names: list[str] = []
    if isinstance(document, dict):
        for key, value in document.items():
            name = f"{prefix}{key}"
            names.append(name)
            names += _field_names(value, name + ".")
    return names
