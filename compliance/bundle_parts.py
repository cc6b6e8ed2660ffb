"""The parts of a compliance bundle, each an exporter and a checker.

Adding a part is one module with an exporter and a checker, and one line
below. Exporters see every event from the log's start to the
period's end, then write their files; checkers see every event line of the
bundle, then check their files. The manifest, its seal and the file digests
are the frame around the parts (``pli.compliance.bundle`` and
``pli.compliance.verify_bundle``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pli.compliance.bundle_ceremony import KeyCeremonyChecker, KeyCeremonyExporter
from pli.compliance.bundle_events import EventsChecker, EventsExporter
from pli.compliance.bundle_format import (
    CERTS_DIR,
    CHAIN_CONTEXT,
    CONFIGURATION,
    EVENTS,
    KEY_CEREMONY,
    LOG_CHECKPOINTS,
    LOG_CONSISTENCY,
    LOG_INCLUSION,
    PROOFS_DIR,
    SOFTWARE,
    STATISTICS,
)
from pli.compliance.bundle_io import PartChecker, PartExporter
from pli.compliance.bundle_log import LogBindingExporter
from pli.compliance.bundle_log_check import LogBindingChecker
from pli.compliance.bundle_proofs import ProofSampleChecker, ProofSampleExporter
from pli.compliance.bundle_snapshot import (
    CertificatesChecker,
    CertificatesExporter,
    ConfigurationChecker,
    ConfigurationExporter,
    SoftwareChecker,
    SoftwareExporter,
)
from pli.compliance.bundle_sources import CheckSource, ExportSource
from pli.compliance.bundle_stamps import TimeStampsChecker, TimeStampsExporter
from pli.compliance.bundle_stats import StatisticsChecker, StatisticsExporter

__all__ = ["PARTS", "Part"]


@dataclass(frozen=True)
class Part:
    """One part of the bundle: its files, how to export them, how to check them.

    ``required`` lists files every bundle has; ``folder`` is where a part
    with a variable number of files keeps them.
    """

    name: str
    required: tuple[str, ...]
    exporter: Callable[[ExportSource], PartExporter]
    checker: Callable[[CheckSource], PartChecker]
    folder: str = ""


PARTS: tuple[Part, ...] = (
    Part("events", (EVENTS, CHAIN_CONTEXT), EventsExporter, EventsChecker),
    Part("key ceremony", (KEY_CEREMONY,), KeyCeremonyExporter, KeyCeremonyChecker),
    Part(
        "certificates", (), CertificatesExporter, CertificatesChecker, folder=CERTS_DIR
    ),
    Part(
        "configuration", (CONFIGURATION,), ConfigurationExporter, ConfigurationChecker
    ),
    Part("software", (SOFTWARE,), SoftwareExporter, SoftwareChecker),
    Part(
        "log",
        (LOG_CHECKPOINTS, LOG_CONSISTENCY, LOG_INCLUSION),
        LogBindingExporter,
        LogBindingChecker,
    ),
    Part("time stamps", (), TimeStampsExporter, TimeStampsChecker),
    Part("statistics", (STATISTICS,), StatisticsExporter, StatisticsChecker),
    Part("proofs", (), ProofSampleExporter, ProofSampleChecker, folder=PROOFS_DIR),
)
