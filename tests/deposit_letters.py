"""Deposit ERE letters in a pli home of its own, then run the processes once.

Run as ``python deposit_letters.py KEY...`` with ``PLI_HOME`` set: SoftHSM2
reads its configuration once per process, so a test that works on a token
other than the session's (a rotated one) deposits through this script in a
process of its own. Prints one letter id per idempotency key.
"""

from __future__ import annotations

import sys
import uuid

from pli.domain.values import Assurance, LetterKind, Recipient, RecipientType
from pli.infrastructure.accounts import SenderAccountNotFound
from pli.infrastructure.letters import DepositRequest, NewAttachment
from pli.infrastructure.settings import Settings
from pli.services.runtime import Runtime

ACCOUNT = uuid.UUID("6f1c1c1e-1d2b-4d0e-9d3e-0b5c7c1a2f10")


def ensure_account(runtime: Runtime) -> None:
    """Register the sender account the letters come from, once."""
    try:
        runtime.accounts.get(ACCOUNT)
    except SenderAccountNotFound:
        runtime.accounts.register(
            ACCOUNT,
            name="SCI Exemple",
            email="gestion@sci-exemple.fr",
            assurance=Assurance.SUBSTANTIAL,
            method="notified-eid",
            verifier_reference="franceconnect-check-1",
        )


def ere_request(key: str) -> DepositRequest:
    """An ERE letter to a professional, its content made from ``key``."""
    return DepositRequest(
        kind=LetterKind.ERE,
        sender_account_id=ACCOUNT,
        recipient=Recipient(
            email="camille@example.org",
            type=RecipientType.PROFESSIONAL,
            given_names="Camille",
            family_name="Martin",
        ),
        subject="Mise en demeure",
        attachments=[
            NewAttachment(
                "mise-en-demeure.pdf",
                "application/pdf",
                b"%PDF-1.4\n" + key.encode(),
            )
        ],
    )


def main(keys: list[str]) -> None:
    """Deposit one letter per key and let notifier and proof builder run."""
    runtime = Runtime.open(Settings.from_env())
    try:
        ensure_account(runtime)
        for key in keys:
            request = ere_request(key)
            letter, _ = runtime.letters.deposit(
                key, request, runtime.authoriser(request, "")
            )
            print(letter.id)
        runtime.runner.run_until_idle()
    finally:
        runtime.close()


if __name__ == "__main__":
    main(sys.argv[1:])
