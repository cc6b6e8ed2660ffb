"""Which proofs a letter's state warrants (CPCE R.53-2, R.53-3)."""

from __future__ import annotations

from enum import StrEnum

from pli.domain.letter import LetterState

__all__ = ["ProofKind", "proofs_warranted"]


class ProofKind(StrEnum):
    """The proof documents pli issues; the value names the PDF file."""

    DEPOSIT = "deposit"  # preuve de dépôt et d'envoi
    RECEIPT = "receipt"  # preuve de réception
    REFUSAL = "refusal"  # preuve de refus
    NON_CLAIM = "non-claim"  # preuve de non-réclamation


# CPCE R.53-3 I: the proof of deposit and sending is issued when the
# notification leaves, so a letter not yet notified has no proof at all.
_WARRANTED = {
    LetterState.DEPOSITED: (),
    LetterState.NOTIFIED: (ProofKind.DEPOSIT,),
    LetterState.IDENTIFIED: (ProofKind.DEPOSIT,),
    LetterState.ACCEPTED: (ProofKind.DEPOSIT, ProofKind.RECEIPT),
    LetterState.REFUSED: (ProofKind.DEPOSIT, ProofKind.REFUSAL),
    LetterState.EXPIRED: (ProofKind.DEPOSIT, ProofKind.NON_CLAIM),
}


def proofs_warranted(state: LetterState) -> tuple[ProofKind, ...]:
    """The proofs a letter in ``state`` is entitled to."""
    return _WARRANTED[state]
