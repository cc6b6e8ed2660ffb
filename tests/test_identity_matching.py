"""eIDAS art. 44(1)(c): the identified person is the recipient named at deposit."""

import datetime as dt

import pytest

from pli.domain.identity import (
    AssertedIdentity,
    identity_mismatch,
    normalise_name,
)
from pli.domain.values import Assurance, Recipient, RecipientType

BORN = dt.date(1984, 7, 14)


def expected(
    given: str,
    family: str,
    birthdate: dt.date | None = None,
    company_id: str = "",
) -> Recipient:
    return named_recipient(
        given,
        family,
        birthdate=birthdate.isoformat() if birthdate else "",
        company_name="Transports Dupont SARL" if company_id else "",
        company_id=company_id,
    )


def named_recipient(given: str, family: str, **fields: str) -> Recipient:
    return Recipient(
        email="recipient@example.fr",
        type=RecipientType.PROFESSIONAL,
        given_names=given,
        family_name=family,
        **fields,
    )


def asserted(
    given: str,
    family: str,
    birthdate: dt.date | None = None,
    company_id: str = "",
    usage_name: str = "",
) -> AssertedIdentity:
    return AssertedIdentity(
        issuer="https://idp.example",
        subject_digest="0" * 64,
        given_name=given,
        family_name=family,
        birthdate=birthdate,
        company_id=company_id,
        assurance=Assurance.SUBSTANTIAL,
        qualified=True,
        usage_name=usage_name,
    )


CASES = [
    # sender named, provider asserted, expected reason (None: a match)
    pytest.param(
        expected("Émilie", "Lefèvre"),
        asserted("EMILIE", "LEFEVRE"),
        None,
        id="accents and case are forgiven",
    ),
    pytest.param(
        expected("Jean Pierre", "Martin"),
        asserted("Jean-Pierre", "Martin"),
        None,
        id="a hyphen in a given name reads as a space",
    ),
    pytest.param(
        expected("Jean-Pierre", "Martin"),
        asserted("Jean Pierre Louis", "Martin"),
        None,
        id="a hyphenated name may join two registered given names",
    ),
    pytest.param(
        expected("Anne", "Martin-Durand"),
        asserted("Anne", "Martin Durand"),
        None,
        id="a hyphen in a family name reads as a space",
    ),
    pytest.param(
        expected("Charles", "D'Artagnan"),
        asserted("Charles", "d’Artagnan"),
        None,
        id="apostrophes of either kind read as a space",
    ),
    pytest.param(
        expected("Charles", "DArtagnan"),
        asserted("Charles", "D'Artagnan"),
        "family name differs",
        id="a dropped apostrophe joins words and does not match",
    ),
    pytest.param(
        expected("  marie   claire ", "dupont"),
        asserted("Marie Claire", "DUPONT"),
        None,
        id="extra spaces are forgiven",
    ),
    pytest.param(
        expected("Lætitia", "Cœur"),
        asserted("Laetitia", "Coeur"),
        None,
        id="French ligatures read as their letters",
    ),
    pytest.param(
        expected("Marie", "Dupont"),
        asserted("Marie Anne Louise", "Dupont"),
        None,
        id="the first given name alone is enough",
    ),
    pytest.param(
        expected("Marie Louise", "Dupont"),
        asserted("Marie Anne Louise", "Dupont"),
        None,
        id="later given names may be skipped",
    ),
    pytest.param(
        expected("Anne", "Dupont"),
        asserted("Marie Anne Louise", "Dupont"),
        "given names differ",
        id="a later given name alone does not match",
    ),
    pytest.param(
        expected("Marie Louise Anne", "Dupont"),
        asserted("Marie Anne Louise", "Dupont"),
        "given names differ",
        id="given names out of their registered order do not match",
    ),
    pytest.param(
        expected("Marie Claire", "Dupont"),
        asserted("Marie Anne", "Dupont"),
        "given names differ",
        id="a given name the provider did not assert does not match",
    ),
    pytest.param(
        expected("Jean", "Martin"),
        asserted("Jean-Pierre", "Martin"),
        "given names differ",
        id="part of a compound given name does not match",
    ),
    pytest.param(
        expected("Paul", "Dupont"),
        asserted("Paul", "Dupond"),
        "family name differs",
        id="one letter apart is a different family name",
    ),
    pytest.param(
        expected("Emile", "Dupont"),
        asserted("Emilie", "Dupont"),
        "given names differ",
        id="one letter apart is a different given name",
    ),
    pytest.param(
        expected("Claire", "Martin"),
        asserted("Claire", "Dupont", usage_name="Martin"),
        None,
        id="the asserted usage name matches the family name",
    ),
    pytest.param(
        expected("Paul", "Dupont", BORN),
        asserted("Paul", "Dupont", BORN),
        None,
        id="the same birthdate matches",
    ),
    pytest.param(
        expected("Paul", "Dupont", BORN),
        asserted("Paul", "Dupont", dt.date(1984, 7, 15)),
        "birthdate differs",
        id="another birthdate does not match",
    ),
    pytest.param(
        expected("Paul", "Dupont", BORN),
        asserted("Paul", "Dupont"),
        "birthdate differs",
        id="a birthdate the provider did not assert does not match",
    ),
    pytest.param(
        expected("Paul", "Dupont"),
        asserted("Paul", "Dupont", BORN),
        None,
        id="the birthdate is not checked when the sender gave none",
    ),
    pytest.param(
        expected("Paul", "Dupont", company_id="552100554"),
        asserted("Paul", "Dupont", company_id="55210055400013"),
        None,
        id="a company named by SIREN matches a SIRET of that company",
    ),
    pytest.param(
        expected("Paul", "Dupont", company_id="55210055400013"),
        asserted("Paul", "Dupont", company_id="55210055400021"),
        None,
        id="any establishment of the company matches",
    ),
    pytest.param(
        expected("Paul", "Dupont", company_id="552100554"),
        asserted("Paul", "Dupont", company_id="73282932000074"),
        "company identifier differs",
        id="another company does not match",
    ),
    pytest.param(
        expected("Paul", "Dupont", company_id="552100554"),
        asserted("Paul", "Dupont"),
        "no company identifier asserted",
        id="a company needs an asserted company identifier",
    ),
    pytest.param(
        expected("Paul", "Dupont", company_id="552100554"),
        asserted("Paula", "Dupont", company_id="552100554"),
        "given names differ",
        id="a company is matched by its representative's identity too",
    ),
    pytest.param(
        expected("Paul", "Dupont"),
        asserted("Paul", "Dupont", company_id="552100554"),
        None,
        id="a person may be identified while representing a company",
    ),
]


@pytest.mark.parametrize(("named", "presented", "reason"), CASES)
def test_identity_matches_the_recipient_named_at_deposit(
    named: Recipient, presented: AssertedIdentity, reason: str | None
) -> None:
    assert identity_mismatch(named, presented) == reason


def test_a_mismatch_reason_never_echoes_a_value() -> None:
    reason = identity_mismatch(
        expected("Paul", "Dupont", BORN, "552100554"),
        asserted("Pierre", "Durand", dt.date(1990, 1, 1), "73282932000074"),
    )

    assert reason == "family name differs"


def test_names_are_normalised_to_plain_words() -> None:
    assert normalise_name("  Jean–Pierre  D’Artagnan-Éluard ") == (
        "jean pierre d artagnan eluard"
    )


PROBLEMS = [
    pytest.param(expected("Paul", "Dupont"), [], id="a person"),
    pytest.param(expected("Paul", "Dupont", company_id="552100554"), [], id="SIREN"),
    pytest.param(
        expected("Paul", "Dupont", company_id="55210055400013"), [], id="SIRET"
    ),
    pytest.param(
        expected("Paul", "Dupont", company_id="5521005"),
        ["recipient.company_id"],
        id="a company identifier of another length",
    ),
    pytest.param(
        expected("Paul", "Dupont", company_id="55210055A"),
        ["recipient.company_id"],
        id="a company identifier with a letter",
    ),
    pytest.param(
        named_recipient("Paul", "Dupont", company_name="Dupont SA"),
        ["recipient.company_id"],
        id="a company without an identifier",
    ),
    pytest.param(
        named_recipient("", " "),
        ["recipient.given_names", "recipient.family_name"],
        id="empty names",
    ),
]


@pytest.mark.parametrize(("recipient", "fields"), PROBLEMS)
def test_expected_recipient_reports_each_faulty_field(
    recipient: Recipient, fields: list[str]
) -> None:
    assert [p.field for p in recipient.problems("recipient")] == fields


def test_display_name_is_the_company_name_for_a_company() -> None:
    assert expected("Paul", "Dupont").name == "Paul Dupont"
    company = expected("Paul", "Dupont", company_id="552100554")
    assert company.name == "Transports Dupont SARL"
