"""Qualified or not: whether a certificate chain ends at a qualified root.

eIDAS art. 44 asks for a qualified provider's advanced seal and qualified
time stamps; pli labels everything else "non-qualified" (CPCE R.53-2 proofs
included). Which roots are qualified is the operator's statement, read from
``PLI_QUALIFIED_ROOTS`` (a PEM file of the roots or CA certificates of the
qualified trust services the operator relies on, as the national trusted
list names them). Nothing is qualified without that file, and the
development root made by ``pli hsm init`` can never be listed in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from pli.domain.key_ceremony import KeyRole
from pli.hsm.chains import links_up_to
from pli.hsm.keys import ActiveKeyWatcher, installed_chain

__all__ = [
    "DEVELOPMENT_ORGANISATION",
    "QualificationError",
    "RoleQualification",
    "is_qualified",
    "load_qualified_roots",
]

DEVELOPMENT_ORGANISATION = "pli development"


class QualificationError(ValueError):
    """``PLI_QUALIFIED_ROOTS`` cannot be used as configured."""


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_development(
    certificate: x509.Certificate, development_root: x509.Certificate | None
) -> bool:
    organisations = certificate.subject.get_attributes_for_oid(
        NameOID.ORGANIZATION_NAME
    )
    if any(o.value == DEVELOPMENT_ORGANISATION for o in organisations):
        return True
    return development_root is not None and _spki(certificate) == _spki(
        development_root
    )


def load_qualified_roots(
    path: Path | None, development_root: x509.Certificate | None = None
) -> list[x509.Certificate]:
    """The configured qualified roots; none without a file.

    Refuses a file that cannot be read, holds no certificate, holds a
    certificate that is not a CA, or holds a development root (this
    installation's, or any certificate of the "pli development" organisation).
    """
    if path is None:
        return []
    try:
        roots = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise QualificationError(f"PLI_QUALIFIED_ROOTS: cannot read {path}") from exc
    except ValueError as exc:
        raise QualificationError(
            f"PLI_QUALIFIED_ROOTS: {path} holds no PEM certificate"
        ) from exc
    for root in roots:
        subject = root.subject.rfc4514_string()
        if _is_development(root, development_root):
            raise QualificationError(
                f"PLI_QUALIFIED_ROOTS lists the development root {subject!r}; "
                "a development chain is never qualified, remove it"
            )
        try:
            constraints = root.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise QualificationError(
                f"PLI_QUALIFIED_ROOTS lists {subject!r}, which is not a CA"
            )
    return roots


def is_qualified(
    chain: Sequence[x509.Certificate], qualified_roots: Sequence[x509.Certificate]
) -> bool:
    """Whether ``chain`` (leaf first) links up to a configured qualified root.

    The chain's last certificate must be one of the roots or be issued by
    one, and every certificate must be issued by the next.
    """
    return links_up_to(chain, list(qualified_roots))


class RoleQualification:
    """Whether the active key of a role is qualified now, following rotations."""

    def __init__(
        self,
        certs_dir: Path,
        role: KeyRole,
        qualified_roots: Sequence[x509.Certificate],
    ) -> None:
        self.certs_dir = certs_dir
        self.qualified_roots = list(qualified_roots)
        self._watcher = ActiveKeyWatcher(certs_dir, role)
        self._known: tuple[int, bool] | None = None

    def __call__(self) -> bool:
        """Whether the role's active chain ends at a qualified root."""
        if not self.qualified_roots:
            return False
        active = self._watcher.current()
        generation = self._watcher.generation
        if self._known is None or self._known[0] != generation:
            chain = installed_chain(self.certs_dir, active.label)
            self._known = (generation, is_qualified(chain, self.qualified_roots))
        return self._known[1]
