"""Everything a pli process runs on, assembled from :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from pli.domain.clock import Clock
from pli.domain.key_ceremony import KeyRole
from pli.hsm.ceremony import development_root
from pli.hsm.long_term import LongTermValidation
from pli.hsm.pades import PdfSealer
from pli.hsm.qualification import RoleQualification, load_qualified_roots
from pli.hsm.seal import EventSealer, SealVerifier
from pli.hsm.secrets import SecretBox
from pli.hsm.token import Token
from pli.hsm.xml_seal import XmlSealer
from pli.infrastructure.accounts import Consents, SenderAccounts
from pli.infrastructure.checkpointer import Checkpointer
from pli.infrastructure.clock import SystemClock
from pli.infrastructure.content import ContentStore
from pli.infrastructure.lease import ProcessLease
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.mail_queue import MailQueue
from pli.infrastructure.oidc import IdTokenVerifier, load_trusted_issuers
from pli.infrastructure.settings import Settings
from pli.infrastructure.smtp import MailTransport, OutboxTransport, SmtpTransport
from pli.infrastructure.stamping import TreeStamper
from pli.infrastructure.timestamps import PyhankoTimeStamper, time_stamp_source
from pli.infrastructure.transparency import LogStore, open_log_store
from pli.infrastructure.views import LetterViewStore
from pli.services.deposits import DepositAuthoriser
from pli.services.evidence_issuer import EvidenceIssuer
from pli.services.evidence_store import EvidenceFollower, EvidenceStore
from pli.services.identification import IdentityChecker
from pli.services.notification_delivery import NotificationDelivery
from pli.services.notification_mail import MailComposer
from pli.services.processes import (
    Expirer,
    LogAppender,
    Notifier,
    ProcessRunner,
    Projector,
    Purger,
)
from pli.services.proof_builder import ProofBuilder
from pli.services.proofs import ProofWriter
from pli.services.stamped_times import StampedTimes

__all__ = ["Runtime"]


@dataclass
class Runtime:
    """The letters application, its views and its background processes."""

    settings: Settings
    clock: Clock
    qualified_roots: list[x509.Certificate]
    token: Token
    pdf_sealer: PdfSealer
    letters: LetterApplication
    accounts: SenderAccounts
    consents: Consents
    authoriser: DepositAuthoriser
    identities: IdentityChecker
    views: LetterViewStore
    log: LogStore
    log_appender: LogAppender
    checkpointer: Checkpointer
    projector: Projector
    notifier: Notifier
    evidence: EvidenceStore
    evidence_follower: EvidenceFollower
    proof_builder: ProofBuilder
    expirer: Expirer
    runner: ProcessRunner

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None) -> Runtime:
        """Connect to the event store and the token (lazily) and wire it all."""
        clock = clock or SystemClock()
        qualified_roots = load_qualified_roots(
            settings.tsa.qualified_roots_file,
            development_root(settings.token.certs_dir),
        )
        token = Token(settings.token)
        stamps = time_stamp_source(settings, token, clock)
        sealer = EventSealer(token)
        letters = LetterApplication(
            settings.eventsourcing_env(),
            sealer=sealer,
            verifier=SealVerifier.from_dir(settings.token.certs_dir),
            clock=clock,
            content=ContentStore(settings.content_dir),
            stamper=TreeStamper(stamps, batching=settings.tsa.batching),
        )
        accounts = SenderAccounts(letters, SecretBox(token), clock)
        consents = Consents(letters, clock)
        verifier = None
        if settings.oidc_issuers is not None:
            verifier = IdTokenVerifier(load_trusted_issuers(settings.oidc_issuers))
        views = LetterViewStore(
            letters.recorder.datastore, is_sqlite=settings.is_embedded
        )
        log = open_log_store(letters.recorder)
        log_appender = LogAppender(letters, log)
        checkpointer = Checkpointer(
            log,
            sealer,
            clock,
            interval=settings.checkpoint_interval,
            stamper=lambda digest: stamps.stamp(digest).token,
        )
        projector = Projector(letters, views)
        notifier = Notifier(letters, views, _delivery(settings, letters, clock))
        stamped_times = StampedTimes(
            letters,
            settings.tsa.trust_roots(settings.token.certs_dir),
            qualified_roots,
        )
        issuer = EvidenceIssuer(
            settings.provider_name,
            XmlSealer(token, settings.token.certs_dir),
            time_of=stamped_times.of_event,
        )
        evidence = EvidenceStore(letters, issuer, settings.proofs_dir)
        evidence_follower = EvidenceFollower(letters, views, evidence)
        # B-LT proofs: stamped by the configured TSA (the built-in one in this
        # thread, as the sealer holds the PKCS#11 lock), validated offline.
        pdf_sealer = PdfSealer(
            settings.token,
            lambda: PyhankoTimeStamper(stamps),
            validation=LongTermValidation(
                settings.token.certs_dir,
                [*settings.tsa.trust_roots(settings.token.certs_dir), *qualified_roots],
                token=token,
            ),
        )
        proof_builder = ProofBuilder(
            letters,
            views,
            ProofWriter(pdf_sealer, settings.proofs_dir),
            evidence,
            log,
            checkpointer,
            seal_qualified=RoleQualification(
                settings.token.certs_dir, KeyRole.SEAL, qualified_roots
            ),
            times=stamped_times,
        )
        expirer = Expirer(letters, views, clock)
        # The log appender goes first: the proof builder only reads events
        # the log already holds.
        steps = [
            log_appender.run_once,
            projector.run_once,
            notifier.run_once,
            evidence_follower.run_once,
            proof_builder.run_once,
            expirer.run_once,
            checkpointer.run_once,
        ]
        if settings.content_retention_days is not None:
            purger = Purger(letters, views, clock, settings.content_retention_days)
            steps.append(purger.run_once)
        runner = ProcessRunner(
            steps,
            settings.poll_interval,
            lease=None if settings.is_embedded else ProcessLease(settings.database_url),
        )
        return cls(
            settings=settings,
            clock=clock,
            qualified_roots=qualified_roots,
            token=token,
            pdf_sealer=pdf_sealer,
            letters=letters,
            accounts=accounts,
            consents=consents,
            authoriser=DepositAuthoriser(accounts, consents),
            identities=IdentityChecker(letters, verifier, clock),
            views=views,
            log=log,
            log_appender=log_appender,
            checkpointer=checkpointer,
            projector=projector,
            notifier=notifier,
            evidence=evidence,
            evidence_follower=evidence_follower,
            proof_builder=proof_builder,
            expirer=expirer,
            runner=runner,
        )

    def close(self) -> None:
        """Release the database connections and the token session."""
        self.letters.close()
        self.pdf_sealer.close()
        self.token.close()


def _delivery(
    settings: Settings, letters: LetterApplication, clock: Clock
) -> NotificationDelivery:
    """The notifier's mail queue, composer and transport, as configured."""
    composer = MailComposer(
        provider_name=settings.provider_name,
        mail_from=settings.mail_from,
        accept_url_template=settings.desk_accept_url_template,
        refuse_url_template=settings.desk_refuse_url_template,
    )
    queue = MailQueue(letters.recorder.datastore, is_sqlite=settings.is_embedded)
    return NotificationDelivery(letters, queue, _transport(settings), composer, clock)


def _transport(settings: Settings) -> MailTransport:
    """An SMTP relay when ``PLI_SMTP_HOST`` names one, else the ``.eml`` outbox."""
    if settings.smtp is None:
        return OutboxTransport(settings.outbox_dir)
    return SmtpTransport(settings.smtp, settings.mail_from)
