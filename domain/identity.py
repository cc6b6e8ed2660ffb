"""Who the recipient must be, who an identity provider says they are, and the match.

The sender names the recipient at deposit (:class:`~pli.domain.values.Recipient`); an
identity provider later asserts an identity (:class:`AssertedIdentity`), and
:func:`identity_mismatch` decides whether both describe the same person, or
the same company through its representative (eIDAS art. 44(1)(c): the
recipient is identified before the letter is handed over).

Names are compared after a normalisation that forgives what people and
registries write differently (case, accents, hyphens, apostrophes, spacing)
and nothing else: "Dupont" never matches "Dupond".

Given names follow one rule. An identity provider such as FranceConnect
asserts every given name of the civil register, in order, separated by
spaces ("Jean-Pierre Marie Louis"). The sender's given names match when
they read as the first asserted given name followed by zero or more of the
later ones, in their order: "Jean-Pierre", "Jean Pierre" and "Jean-Pierre
Louis" match, while "Marie" (not the first), "Jean" (a part of the first) and
"Louis Jean-Pierre" (out of order) do not. A sender who knows the recipient
by a later given name must therefore give the first one as well.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import unicodedata
from dataclasses import dataclass

from pli.domain.values import Assurance, Recipient

__all__ = [
    "ACR_LEVELS",
    "AssertedIdentity",
    "identity_mismatch",
    "normalise_name",
    "siren_of",
    "subject_digest",
]

# The `acr` values FranceConnect sends for the eIDAS levels (art. 8).
ACR_LEVELS: dict[str, Assurance] = {
    "eidas1": Assurance.LOW,
    "eidas2": Assurance.SUBSTANTIAL,
    "eidas3": Assurance.HIGH,
}

# INSEE identifiers: a SIREN names a company, a SIRET one of its
# establishments and begins with the company's SIREN.
SIREN_LENGTH = 9

# Ligatures that Unicode compatibility decomposition leaves whole.
LIGATURES = str.maketrans({"æ": "ae", "œ": "oe"})
APOSTROPHES = "'’ʼ‘`´"


@dataclass(frozen=True)
class AssertedIdentity:
    """An identity an identity provider vouched for in a verified token.

    It keeps a digest of the issuer and subject, never the raw subject, so
    an event can show that two identifications were of the same account
    without carrying the provider's identifier.
    """

    issuer: str
    subject_digest: str
    given_name: str
    family_name: str
    birthdate: dt.date | None
    company_id: str
    assurance: Assurance
    qualified: bool
    usage_name: str = ""


def subject_digest(issuer: str, subject: str) -> str:
    """The SHA-256 (hex) of an issuer and subject pair, unambiguously encoded."""
    encoded = json.dumps([issuer, subject], ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def normalise_name(name: str) -> str:
    """A name as compared: no accents or case, one space between its words.

    Hyphens, dashes and apostrophes separate words like spaces do, so
    "D'Artagnan" reads as "d artagnan" and "Jean-Pierre" as "jean pierre".
    """
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    letters = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    spaced = "".join(
        " " if ch in APOSTROPHES or unicodedata.category(ch) == "Pd" else ch
        for ch in letters.translate(LIGATURES)
    )
    return " ".join(spaced.split())


def siren_of(company_id: str) -> str:
    """The SIREN a SIREN or SIRET begins with, spaces ignored."""
    return "".join(company_id.split())[:SIREN_LENGTH]


def identity_mismatch(expected: Recipient, asserted: AssertedIdentity) -> str | None:
    """Why ``asserted`` is not ``expected``, or None when it is.

    The reason names the item that differs and never its value, so it can
    be recorded and shown to whoever presented the identity.
    """
    if not _family_name_matches(expected.family_name, asserted):
        return "family name differs"
    if not _given_names_match(expected.given_names, asserted.given_name):
        return "given names differ"
    if expected.birthdate and (
        dt.date.fromisoformat(expected.birthdate) != asserted.birthdate
    ):
        return "birthdate differs"
    if expected.is_company:
        return _company_mismatch(expected.company_id, asserted.company_id)
    return None


def _family_name_matches(expected: str, asserted: AssertedIdentity) -> bool:
    # The birth name, or the usage name (nom d'usage) the provider vouches
    # for: a sender may know the recipient by either.
    wanted = normalise_name(expected)
    known = [asserted.family_name, asserted.usage_name]
    return bool(wanted) and any(wanted == normalise_name(name) for name in known)


def _given_names_match(expected: str, asserted: str) -> bool:
    wanted = tuple(normalise_name(expected).split())
    names = [tuple(normalise_name(name).split()) for name in asserted.split()]
    names = [name for name in names if name]
    if not wanted or not names or wanted[: len(names[0])] != names[0]:
        return False
    return _reads_as_later_names(wanted[len(names[0]) :], names[1:])


def _reads_as_later_names(words: tuple[str, ...], names: list[tuple[str, ...]]) -> bool:
    """Whether ``words`` is some of ``names`` put end to end, in their order."""
    # The word positions reachable with the names seen so far; each name is
    # used at most once, and repeated names cost no more than distinct ones.
    reachable = {0}
    for name in names:
        reachable |= {
            position + len(name)
            for position in reachable
            if words[position : position + len(name)] == name
        }
    return len(words) in reachable


def _company_mismatch(expected_id: str, asserted_id: str) -> str | None:
    if not asserted_id.strip():
        return "no company identifier asserted"
    if siren_of(expected_id) != siren_of(asserted_id):
        return "company identifier differs"
    return None
