"""Recipient identification at the desk, by an OpenID Connect ID token.

The desk asks pli for a nonce (an attempt recorded with the nonce's digest
only), sends the recipient to a trusted identity provider with it, and
hands back the ID token. pli checks the token, then matches the identity it
asserts against the recipient the sender named. Every failed attempt is
recorded with its reason, never with the token; a check that completes
after the window closed records nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from typing import NoReturn
from uuid import UUID

from pli.domain.clock import Clock
from pli.domain.errors import RuleViolation
from pli.domain.identity import identity_mismatch
from pli.domain.letter import MINIMUM_ASSURANCE, Letter
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.oidc import IdTokenRejected, IdTokenVerifier

__all__ = [
    "MAX_ID_TOKEN",
    "NONCE",
    "IdentityChecker",
    "NoIdentityProvider",
    "new_nonce",
    "nonce_digest",
]

logger = logging.getLogger(__name__)

NONCE = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_ID_TOKEN = 16 * 1024


class NoIdentityProvider(Exception):
    """No trusted identity provider is configured."""


def new_nonce() -> str:
    """A fresh, unguessable nonce of 256 bits."""
    return secrets.token_urlsafe(32)


def nonce_digest(nonce: str) -> str:
    """What pli stores of a nonce: its SHA-256, so a reader cannot replay it."""
    return hashlib.sha256(nonce.encode()).hexdigest()


class IdentityChecker:
    """Checks an ID token for a letter and records the outcome."""

    def __init__(
        self,
        letters: LetterApplication,
        verifier: IdTokenVerifier | None,
        clock: Clock,
    ) -> None:
        self.letters = letters
        self.verifier = verifier
        self.clock = clock

    def identify(self, letter_id: UUID, nonce: str, id_token: str) -> Letter:
        """Identify the recipient of ``letter_id`` or raise, naming the reason."""
        digest = nonce_digest(nonce)
        letter = self.letters.get(letter_id)
        # A nonce that opens no attempt, or a closed window, records nothing.
        letter.attempt_for(digest)
        if self.verifier is None:
            raise NoIdentityProvider()
        try:
            asserted = self.verifier.verify(id_token, nonce=nonce, at=self.clock.now())
        except IdTokenRejected as rejected:
            self._fail(letter_id, digest, "identification-failed", rejected.reason)
        mismatch = identity_mismatch(letter.recipient, asserted)
        if mismatch:
            self._fail(
                letter_id,
                digest,
                "identity-mismatch",
                f"the identity does not match the recipient: {mismatch}",
            )
        minimum = MINIMUM_ASSURANCE[letter.kind]
        if asserted.assurance < minimum:
            self._fail(
                letter_id,
                digest,
                "assurance-too-low",
                f"an {letter.kind.value} recipient must be identified at level "
                f"{minimum.name.lower()} or higher (eIDAS art. 44, CPCE R.53-1)",
            )
        return self.letters.identify(
            letter_id,
            nonce_digest=digest,
            level=asserted.assurance,
            issuer=asserted.issuer,
            subject_digest=asserted.subject_digest,
            qualified=asserted.qualified,
        )

    def _fail(self, letter_id: UUID, digest: str, rule: str, reason: str) -> NoReturn:
        self.letters.fail_identification(letter_id, digest, reason)
        logger.info("identification refused letter=%s rule=%s", letter_id, rule)
        raise RuleViolation(rule, reason)
