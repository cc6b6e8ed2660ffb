"""What a frontend does, for the tests: senders, consents, deposits, identity.

Each call goes over real gRPC to the test's server; one-time codes are
computed from the secret the server enrolled, at the server's clock, and ID
tokens are signed by the development identity provider the server trusts.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from pli.infrastructure.dev_idp import DevIdentityProvider
from pli.v1 import accounts_pb2 as apb
from pli.v1 import consents_pb2 as cpb
from pli.v1 import letters_pb2 as pb

from conftest import Pli

CONTENT = b"%PDF-1.4\n% a letter's bytes, opaque to pli\n"
# A TOTP step: each code is accepted once, so deposits are a step apart.
STEP = dt.timedelta(seconds=30)


def recipient(**overrides: object) -> pb.Recipient:
    """A professional recipient, Camille Martin, unless overridden."""
    fields: dict[str, object] = {
        "email": "camille@example.org",
        "type": pb.RECIPIENT_TYPE_PROFESSIONAL,
        "given_names": "Camille",
        "family_name": "Martin",
    }
    fields.update(overrides)
    return pb.Recipient(**fields)  # type: ignore[arg-type]


def attachment(
    content: bytes = CONTENT, name: str = "mise-en-demeure.pdf"
) -> pb.Attachment:
    """One PDF attachment."""
    return pb.Attachment(filename=name, media_type="application/pdf", content=content)


@dataclass
class Sender:
    """A registered sender account and its enrolled TOTP secret."""

    account_id: str
    secret: bytes


@dataclass
class Frontend:
    """A sender frontend and a recipient desk driving one server."""

    pli: Pli
    senders: dict[str, Sender] = field(default_factory=dict)

    def sender(self, key: str = "sci-exemple", name: str = "SCI Exemple") -> Sender:
        """Register (once) a verified sender and enrol its second factor."""
        if key in self.senders:
            return self.senders[key]
        account = self.pli.accounts.RegisterSenderAccount(
            apb.RegisterSenderAccountRequest(
                idempotency_key=key,
                identity=pb.Party(name=name, email=f"{key}@example.fr"),
                level=pb.ASSURANCE_LEVEL_SUBSTANTIAL,
                method=apb.VERIFICATION_METHOD_NOTIFIED_EID,
                verifier_reference="franceconnect-check-1",
            )
        ).account
        uri = self.pli.accounts.EnrollSecondFactor(
            apb.EnrollSecondFactorRequest(account_id=account.account_id)
        ).otpauth_uri
        secret = parse_qs(urlsplit(uri).query)["secret"][0]
        padded = secret + "=" * (-len(secret) % 8)
        sender = Sender(account.account_id, base64.b32decode(padded))
        self.senders[key] = sender
        return sender

    def code(self, sender: Sender) -> str:
        """The sender's current one-time code, at the server's clock."""
        totp = TOTP(sender.secret, 6, SHA1(), 30, enforce_key_length=False)
        moment = int(self.pli.clock.now().timestamp())
        return totp.generate(moment).decode()

    def deposit_request(
        self, sender: Sender | None = None, **overrides: object
    ) -> pb.DepositLetterRequest:
        """An LRE to Camille Martin with a fresh code, unless overridden."""
        sender = sender or self.sender()
        self.pli.clock.advance(STEP)
        fields: dict[str, object] = {
            "idempotency_key": uuid.uuid4().hex,
            "kind": pb.LETTER_KIND_LRE,
            "sender_account_id": sender.account_id,
            "recipient": recipient(),
            "attachments": [attachment()],
            "second_factor_code": self.code(sender),
            "subject": "Loyers impayés de janvier",
        }
        fields.update(overrides)
        return pb.DepositLetterRequest(**fields)  # type: ignore[arg-type]

    def deposit(self, sender: Sender | None = None, **overrides: object) -> pb.Letter:
        """Deposit a letter and return it as the sender sees it."""
        request = self.deposit_request(sender, **overrides)
        return self.pli.letters.DepositLetter(request).letter

    def deposit_and_notify(self, **overrides: object) -> pb.Letter:
        """Deposit, let the notifier run, return the notified letter."""
        letter = self.deposit(**overrides)
        self.pli.run_processes()
        return self.get(letter.letter_id)

    def get(self, letter_id: str) -> pb.Letter:
        """The letter as the sender sees it."""
        return self.pli.letters.GetLetter(
            pb.GetLetterRequest(letter_id=letter_id)
        ).letter

    def grant_consent(self, sender: Sender, address: str) -> cpb.Consent:
        """Record a consumer's consent to this sender's LREs."""
        return self.pli.consents.GrantConsent(
            cpb.GrantConsentRequest(
                sender_account_id=sender.account_id,
                recipient_email=address,
                method="signed-form",
                text_version="consent-2026-01",
                evidence_reference="form-2026-0042",
            )
        ).consent

    def identity_provider(self) -> DevIdentityProvider:
        """The development identity provider the server trusts."""
        return DevIdentityProvider(Path(self.pli.runtime.settings.dev_idp_dir))

    def id_token(self, nonce: str, **claims: object) -> str:
        """An ID token for Camille Martin (or ``claims``), for this nonce."""
        fields: dict[str, object] = {
            "given_name": "Camille",
            "family_name": "Martin",
            "acr": "eidas2",
        }
        fields.update(claims)
        return self.identity_provider().issue(
            nonce=nonce,
            at=self.pli.clock.now(),
            **fields,  # type: ignore[arg-type]
        )

    def begin(self, letter_id: str) -> str:
        """Start an identification; return its nonce."""
        return self.pli.desk.BeginIdentification(
            pb.BeginIdentificationRequest(letter_id=letter_id)
        ).nonce

    def identify(self, letter_id: str, **claims: object) -> pb.Notice:
        """Identify the recipient with a fresh attempt and a matching token."""
        nonce = self.begin(letter_id)
        return self.pli.desk.IdentifyRecipient(
            pb.IdentifyRecipientRequest(
                letter_id=letter_id,
                nonce=nonce,
                id_token=self.id_token(nonce, **claims),
            )
        ).notice

    def accept(self, letter_id: str) -> pb.Notice:
        """Accept as the identified recipient."""
        return self.pli.desk.AcceptLetter(
            pb.AcceptLetterRequest(letter_id=letter_id)
        ).notice

    def refuse(self, letter_id: str) -> pb.Notice:
        """Refuse as the identified recipient."""
        return self.pli.desk.RefuseLetter(
            pb.RefuseLetterRequest(letter_id=letter_id)
        ).notice

    def download(
        self, letter_id: str, index: int = 0
    ) -> tuple[pb.AttachmentInfo, bytes]:
        """Download one attachment of an accepted letter."""
        stream = self.pli.desk.DownloadContent(
            pb.DownloadContentRequest(letter_id=letter_id, attachment_index=index)
        )
        info = None
        chunks = []
        for part in stream:
            if part.HasField("attachment"):
                info = part.attachment
            chunks.append(part.chunk)
        assert info is not None
        return info, b"".join(chunks)

    def identify_request(
        self, letter_id: str, **claims: object
    ) -> pb.IdentifyRecipientRequest:
        """A fresh attempt's request with a token for ``claims``, not yet sent."""
        nonce = self.begin(letter_id)
        return pb.IdentifyRecipientRequest(
            letter_id=letter_id, nonce=nonce, id_token=self.id_token(nonce, **claims)
        )
