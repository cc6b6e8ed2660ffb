"""What each bundle part is given: the live system to export, the bundle to check."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from pli.compliance.bundle_format import Period
from pli.compliance.bundle_io import BundleReader, Findings
from pli.compliance.bundle_trust import BundleTrust
from pli.infrastructure.checkpoints import Checkpoint
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.settings import Settings
from pli.infrastructure.transparency import LogStore

__all__ = ["CheckSource", "ExportSource"]


@dataclass(frozen=True)
class ExportSource:
    """The event store, the settings and the period a bundle is exported from.

    ``checkpoint`` is the transparency log's latest checkpoint at export
    time (None while the log is empty); the bundle holds no event past it.
    """

    letters: LetterApplication
    settings: Settings
    period: Period
    sample_size: int
    created_at: dt.datetime
    spool_dir: Path
    log: LogStore
    checkpoint: Checkpoint | None


@dataclass(frozen=True)
class CheckSource:
    """The open bundle, the certificates it is checked against, the findings."""

    bundle: BundleReader
    trust: BundleTrust
    findings: Findings
