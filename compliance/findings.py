"""What the audit finds: faults, which fail it, and notes, which do not.

Every finding names the letter (aggregate), the version and the log
position, so an auditor goes straight to the event. The replays
(:mod:`pli.compliance.log_replay`, :mod:`pli.compliance.stamp_replay`,
:mod:`pli.compliance.ceremony_replay`) report through a :data:`Report`
callable and know nothing of how findings are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["NO_LETTER", "Fault", "Finding", "Note", "Report"]

Report = Callable[[str, int, int | None, str], None]
"""Receives one finding: letter (aggregate) id, version, log position, reason."""

#: The letter id of a finding about the log as a whole (a checkpoint, say).
NO_LETTER = "-"


@dataclass(frozen=True)
class Finding:
    """What the audit found, by letter, version (0: the whole) and log position.

    ``letter_id`` is ``-`` for the log as a whole (a checkpoint, say) and
    ``?`` for a row that cannot be decoded; ``position`` is the 0-based log
    position, None for what is not in the log (a view, content).
    """

    kind: ClassVar[str] = "FINDING"

    letter_id: str
    version: int
    reason: str
    position: int | None = None

    def __str__(self) -> str:
        position = "-" if self.position is None else str(self.position)
        return (
            f"{self.kind} letter={self.letter_id} version={self.version} "
            f"position={position}: {self.reason}"
        )


@dataclass(frozen=True)
class Fault(Finding):
    """One thing wrong: the audit fails."""

    kind: ClassVar[str] = "FAULT"


@dataclass(frozen=True)
class Note(Finding):
    """Something worth knowing that is no fault: the audit still passes."""

    kind: ClassVar[str] = "NOTE"
