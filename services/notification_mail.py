"""The notification e-mail: what the recipient learns before deciding.

CPCE R.53-3 I: the recipient is told that a registered letter awaits and
that they may accept or refuse it within 15 days from the day after this
message; nothing in it may reveal who sent the letter. So the message
names the provider, the letter number, its kind, the last day to decide and
the desk's links, and never the sender, the subject or the content.
"""

from __future__ import annotations

import datetime as dt
import os
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from pli.domain.letter import Letter
from pli.domain.window import last_day_to_decide

__all__ = ["compose_notification"]

_DESK_URL = "https://desk.pli.invalid/letters/{letter_id}"


def compose_notification(
    letter: Letter, at: dt.datetime, provider_name: str
) -> EmailMessage:
    """The RFC 5322 notification of ``letter``, sent at ``at``."""
    last_day = last_day_to_decide(at).strftime("%d/%m/%Y")
    desk = os.environ.get("PLI_DESK_URL_TEMPLATE", _DESK_URL).format(
        letter_id=letter.id
    )
    kind_fr = {
        "LRE": "lettre recommandée électronique",
        "ERE": "envoi recommandé électronique simple",
    }[letter.kind.value]
    kind_en = {
        "LRE": "electronic registered letter (LRE)",
        "ERE": "simple electronic registered delivery",
    }[letter.kind.value]
    message = EmailMessage()
    message["From"] = os.environ.get("PLI_MAIL_FROM", "pli <no-reply@pli.invalid>")
    message["To"] = letter.recipient.email
    message["Subject"] = (
        "Lettre recommandée électronique en attente / Registered letter awaiting you"
    )
    message["Date"] = format_datetime(at.astimezone(dt.UTC))
    message["Message-ID"] = make_msgid(idstring=str(letter.id), domain="pli.invalid")
    message.set_content(
        f"""Bonjour,

{provider_name} détient pour vous une {kind_fr}, numéro {letter.id}.
Vous pouvez l'accepter ou la refuser jusqu'au {last_day} inclus (heure de
Paris), après vous être identifié :

  Accepter ou refuser : {desk}

Sans décision de votre part à cette date, l'expéditeur recevra une preuve de
non-réclamation.

--

Hello,

{provider_name} holds a {kind_en} for you, number {letter.id}.
You may accept or refuse it until {last_day} included (Paris time), once
you have been identified:

  Accept or refuse: {desk}

Without a decision by that day, the sender receives a proof of non-claim.
"""
    )
    return message
