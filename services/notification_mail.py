"""The messages pli sends: the recipient's notification, the sender's notice.

CPCE R.53-3 I: the recipient is told that a registered letter awaits and
that they may accept or refuse it within 15 days from the day after this
message; nothing in it may reveal who sent the letter. So the notification
names the provider, the letter number, its kind, the last day to decide
and the desk's accept and refuse links, and never the sender (not even in
a header), the subject or the content.

When the notification cannot be delivered, the sender gets a notice saying
so; it may name the recipient's address, which the sender gave.

Both are written in French, then in English, as plain text in
quoted-printable, so any relay can carry them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from uuid import UUID

from pli.domain.letter import Letter
from pli.domain.window import last_day_to_decide
from pli.infrastructure.mail_queue import Purpose

__all__ = ["MailComposer"]

# French needs the article and the object pronoun to agree with the noun.
_KIND_FR = {
    "LRE": ("une", "lettre recommandée électronique", "la"),
    "ERE": ("un", "envoi recommandé électronique simple", "le"),
}
_ARTICLE_EN = {"LRE": "an", "ERE": "a"}
_KIND_EN = {
    "LRE": "electronic registered letter (LRE)",
    "ERE": "simple electronic registered delivery",
}
_MONTHS_EN = (
    "January February March April May June July August September October "
    "November December"
).split()

# Why a notification failed, as the sender reads it (French, English).
_REASONS = {
    "permanent-smtp-failure": (
        "le serveur de messagerie du destinataire l'a refusée",
        "the recipient's mail server refused it",
    ),
    "temporary-failure-exhausted": (
        "le serveur de messagerie n'a pas pu la prendre en charge pendant 24 heures",
        "the mail server could not take it for 24 hours",
    ),
    "delivery-unconfirmed": (
        "la remise a été interrompue et n'a pas pu être confirmée ; pour ne "
        "jamais notifier deux fois, elle n'est pas renvoyée",
        "the hand-over was interrupted and could not be confirmed; so as "
        "never to notify twice, it is not sent again",
    ),
}


def _english_date(day: dt.date) -> str:
    return f"{day.day} {_MONTHS_EN[day.month - 1]} {day.year}"


@dataclass(frozen=True)
class MailComposer:
    """Writes pli's messages with the operator's name, address and desk links."""

    provider_name: str
    mail_from: str
    accept_url_template: str
    refuse_url_template: str

    def message_id(self, letter_id: UUID, purpose: Purpose) -> str:
        """The fixed Message-ID of a letter's message, so a resend is recognisable."""
        domain = parseaddr(self.mail_from)[1].rpartition("@")[2] or "pli.invalid"
        if purpose is Purpose.NOTIFICATION:
            return f"<{letter_id}@{domain}>"
        return f"<{letter_id}.{purpose.value}@{domain}>"

    def notification(
        self, letter: Letter, at: dt.datetime, message_id: str
    ) -> EmailMessage:
        """The recipient's notification of ``letter``, sent at ``at``."""
        last_day = last_day_to_decide(at)
        accept = self.accept_url_template.format(letter_id=letter.id)
        refuse = self.refuse_url_template.format(letter_id=letter.id)
        kind = letter.kind.value
        article, kind_fr, pronoun = _KIND_FR[kind]
        body = f"""Bonjour,

{self.provider_name} détient pour vous {article} {kind_fr},
numéro {letter.id}.

Vous pouvez l'accepter ou {pronoun} refuser jusqu'au {last_day:%d/%m/%Y} inclus
(heure de Paris), après vous être identifié. Ce délai de quinze jours court
à compter du lendemain de l'envoi de ce message.

  Accepter : {accept}
  Refuser :  {refuse}

Sans décision de votre part à cette date, la lettre sera tenue pour non
réclamée.

--

Hello,

{self.provider_name} holds {_ARTICLE_EN[kind]} {_KIND_EN[kind]} for you,
number {letter.id}.

You may accept or refuse it until {_english_date(last_day)} included
(Paris time), once you have been identified. These fifteen days count from
the day after this message was sent.

  Accept: {accept}
  Refuse: {refuse}

Without a decision by that day, the letter is deemed unclaimed.
"""
        return self._message(
            to=letter.recipient.email,
            subject="Lettre recommandée électronique en attente / "
            "Registered letter awaiting you",
            at=at,
            message_id=message_id,
            body=body,
        )

    def sender_notice(
        self, letter: Letter, at: dt.datetime, message_id: str, reason: str
    ) -> EmailMessage:
        """The sender's notice that ``letter``'s notification was not delivered."""
        reason_fr, reason_en = _REASONS[reason.partition(":")[0]]
        kind = letter.kind.value
        body = f"""Bonjour,

La notification de votre {_KIND_FR[kind][1]} numéro {letter.id},
adressée à {letter.recipient.email}, n'a pas pu être remise :
{reason_fr}.

La lettre n'est donc pas notifiée : aucun délai ne court et aucune preuve de
dépôt et d'envoi n'est émise. Vous pouvez la déposer à nouveau.

{self.provider_name}

--

Hello,

The notification of your {_KIND_EN[kind]} number {letter.id},
addressed to {letter.recipient.email}, could not be delivered:
{reason_en}.

The letter is therefore not notified: no window runs and no proof of
deposit and sending is issued. You may deposit it again.

{self.provider_name}
"""
        return self._message(
            to=letter.sender.email,
            subject=f"Notification non remise / Notification not delivered: "
            f"{letter.id}",
            at=at,
            message_id=message_id,
            body=body,
        )

    def _message(
        self, *, to: str, subject: str, at: dt.datetime, message_id: str, body: str
    ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = format_datetime(at.astimezone(dt.UTC))
        message["Message-ID"] = message_id
        message["Content-Language"] = "fr, en"
        # RFC 3834: an automatic message, to which no auto-reply is wanted.
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(body, cte="quoted-printable")
        return message
