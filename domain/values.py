"""The value objects of a deposit, and the checks that make them valid.

Every check collects its problems instead of stopping at the first, so a
frontend can show the sender everything wrong with a deposit at once.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum, StrEnum

from pli.domain.errors import FieldProblem

__all__ = [
    "MAX_NAME_LENGTH",
    "Assurance",
    "AttachmentRef",
    "LetterKind",
    "Party",
    "Recipient",
    "RecipientType",
    "check_email",
    "check_text",
    "check_name",
]

MAX_NAME_LENGTH = 200
MAX_EMAIL_LENGTH = 254
MAX_FILENAME_LENGTH = 255
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
COMPANY_ID = re.compile(r"[0-9]{9}|[0-9]{14}")  # SIREN or SIRET
BIRTHDATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# RFC 6838 type/subtype names, without parameters.
MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}"
)
# Deliberately plain: one @, a dot-atom-ish local part, a domain with a dot.
# RFC 5322 allows more, but a registered letter must reach a real mailbox.
EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


class LetterKind(StrEnum):
    """The product a letter is deposited as; fixed at deposit."""

    LRE = "LRE"  # qualified: eIDAS art. 44, CPCE L.100
    ERE = "ERE"  # simple: eIDAS art. 43


class Assurance(int, Enum):
    """eIDAS levels of assurance (art. 8), ordered."""

    LOW = 1
    SUBSTANTIAL = 2
    HIGH = 3


_FORBIDDEN = "must not contain control characters or Unicode noncharacters"


def _is_noncharacter(ch: str) -> bool:
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def _has_forbidden_characters(text: str) -> bool:
    # Noncharacters are not for interchange (Unicode 15, section 23.7), and
    # the ETSI evidence, being XML 1.0, cannot carry U+FFFE or U+FFFF at all.
    return any(
        unicodedata.category(ch) in ("Cc", "Cf", "Cs") or _is_noncharacter(ch)
        for ch in text
    )


def check_name(value: str, field: str) -> list[FieldProblem]:
    """Problems with a person's or company's name."""
    if not value.strip():
        return [FieldProblem(field, "must not be empty")]
    if len(value) > MAX_NAME_LENGTH:
        return [FieldProblem(field, f"must be at most {MAX_NAME_LENGTH} characters")]
    if _has_forbidden_characters(value):
        return [FieldProblem(field, _FORBIDDEN)]
    return []


def check_text(value: str, field: str, *, maximum: int) -> list[FieldProblem]:
    """Problems with a free-text field such as an identification method."""
    if len(value) > maximum:
        return [FieldProblem(field, f"must be at most {maximum} characters")]
    if _has_forbidden_characters(value):
        return [FieldProblem(field, _FORBIDDEN)]
    return []


def check_email(value: str, field: str) -> list[FieldProblem]:
    """Problems with an e-mail address."""
    if not value:
        return [FieldProblem(field, "must not be empty")]
    if len(value) > MAX_EMAIL_LENGTH:
        return [FieldProblem(field, f"must be at most {MAX_EMAIL_LENGTH} characters")]
    local = value.partition("@")[0]
    if not EMAIL.fullmatch(value) or len(local) > 64:
        return [FieldProblem(field, "must be an e-mail address like name@example.fr")]
    return []


@dataclass(frozen=True)
class Party:
    """A sender or recipient: name (or company name) and e-mail address."""

    name: str
    email: str

    def problems(self, field: str) -> list[FieldProblem]:
        """Everything wrong with this party, fields prefixed by ``field``."""
        return check_name(self.name, f"{field}.name") + check_email(
            self.email, f"{field}.email"
        )

    def as_dict(self) -> dict[str, str]:
        """The party as stored in an event."""
        return {"name": self.name, "email": self.email}


class RecipientType(StrEnum):
    """Whether the recipient receives as a consumer or as a professional."""

    CONSUMER = "consumer"  # an LRE needs prior consent (CPCE L.100)
    PROFESSIONAL = "professional"


@dataclass(frozen=True)
class Recipient:
    """The recipient as the sender names them, to be matched at identification.

    A natural person is named by given names, family name and, optionally,
    birthdate. A company adds its name and SIREN or SIRET; the given and
    family names are then those of the representative who will identify.
    """

    email: str
    type: RecipientType
    given_names: str
    family_name: str
    birthdate: str = ""
    company_name: str = ""
    company_id: str = ""

    @property
    def name(self) -> str:
        """The name the proofs show: the company's, else the person's."""
        if self.company_name:
            return self.company_name
        return f"{self.given_names} {self.family_name}"

    @property
    def is_company(self) -> bool:
        """Whether a company is the recipient."""
        return bool(self.company_id)

    def problems(self, field: str) -> list[FieldProblem]:
        """Everything wrong with this recipient, fields prefixed by ``field``."""
        found = check_email(self.email, f"{field}.email")
        found += check_name(self.given_names, f"{field}.given_names")
        found += check_name(self.family_name, f"{field}.family_name")
        if self.birthdate and not _is_date(self.birthdate):
            found.append(
                FieldProblem(f"{field}.birthdate", "must be a date like 1980-05-31")
            )
        if bool(self.company_name) != bool(self.company_id):
            found.append(
                FieldProblem(
                    f"{field}.company_id",
                    "a company needs both its name and its SIREN or SIRET",
                )
            )
        if self.company_name:
            found += check_name(self.company_name, f"{field}.company_name")
        if self.company_id and not COMPANY_ID.fullmatch(self.company_id):
            found.append(
                FieldProblem(
                    f"{field}.company_id", "must be a SIREN (9 digits) or SIRET (14)"
                )
            )
        return found

    def as_dict(self) -> dict[str, str]:
        """The recipient as stored in an event."""
        return {
            "email": self.email,
            "type": self.type.value,
            "given_names": self.given_names,
            "family_name": self.family_name,
            "birthdate": self.birthdate,
            "company_name": self.company_name,
            "company_id": self.company_id,
        }

    @classmethod
    def from_dict(cls, stored: dict[str, str]) -> Recipient:
        """The recipient an event stored."""
        return cls(**{**stored, "type": RecipientType(stored["type"])})


def _is_date(value: str) -> bool:
    if not BIRTHDATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class AttachmentRef:
    """An attachment as the event store knows it: stored content's digest."""

    filename: str
    media_type: str
    size: int
    sha256: str

    def problems(self, field: str) -> list[FieldProblem]:
        """Everything wrong with this attachment reference."""
        found: list[FieldProblem] = []
        name = self.filename
        if not name.strip():
            found.append(FieldProblem(f"{field}.filename", "must not be empty"))
        elif len(name) > MAX_FILENAME_LENGTH:
            found.append(
                FieldProblem(
                    f"{field}.filename",
                    f"must be at most {MAX_FILENAME_LENGTH} characters",
                )
            )
        elif _has_forbidden_characters(name):
            found.append(FieldProblem(f"{field}.filename", _FORBIDDEN))
        elif "/" in name or "\\" in name or name in (".", ".."):
            found.append(
                FieldProblem(f"{field}.filename", "must be a file name, not a path")
            )
        if not MEDIA_TYPE.fullmatch(self.media_type):
            found.append(
                FieldProblem(
                    f"{field}.media_type", "must be a media type like application/pdf"
                )
            )
        if self.size <= 0:
            found.append(FieldProblem(f"{field}.content", "must not be empty"))
        if not SHA256_HEX.fullmatch(self.sha256):
            found.append(FieldProblem(f"{field}.sha256", "must be 64 hex digits"))
        return found

    def as_dict(self) -> dict[str, object]:
        """The attachment reference as stored in an event."""
        return {
            "filename": self.filename,
            "media_type": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
        }
