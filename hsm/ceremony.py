"""The token's side of a key ceremony: keys, requests, certificates, checks.

Each function does one thing to the token or to the certificates folder and
leaves the recording to ``pli.infrastructure.key_ceremonies``. Keys are EC
P-256, generated inside the token as sensitive and non-extractable. A
certification request (PKCS#10, RFC 2986) and a development certificate are
built with ``cryptography`` around a throwaway key, and the token then signs
the exact to-be-signed bytes, so no private key ever exists outside it.

An operator's chain is checked by ``pli.hsm.chains`` before
:func:`install_chain` puts it in the token and beside it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pkcs11 import Attribute, ObjectClass

from pli.domain.key_ceremony import KeyRole
from pli.hsm.chains import fingerprint
from pli.hsm.keys import DEFAULT_LABELS, certificate_file, chain_file
from pli.hsm.provision import (
    ROOT_CERT_FILE,
    base_builder,
    dev_name,
    generate_ec_key,
    key_usage,
    public_key_of,
    sign_with_token,
    store_certificate_object,
)
from pli.hsm.token import ROOT_KEY_LABEL, Token, TokenUnavailable

__all__ = [
    "ALGORITHM",
    "SubjectProblem",
    "certification_request",
    "development_root",
    "generate_key",
    "install_chain",
    "issue_development_certificate",
    "next_label",
    "token_public_key",
]

ALGORITHM = "EC P-256"
_ROTATED_LABEL = re.compile(r"(?P<base>.+)\.(?P<number>[0-9]+)")


class SubjectProblem(ValueError):
    """A request's subject is not an RFC 4514 name with a common name."""


def token_public_key(token: Token, label: str) -> ec.EllipticCurvePublicKey | None:
    """The public key of the labelled EC key pair, or None if there is none."""

    def read(session: Any) -> ec.EllipticCurvePublicKey | None:
        if not token.has_private_key(session, label):
            return None
        return public_key_of(session, label)

    return token.run(read)


def next_label(token: Token, role: KeyRole) -> str:
    """The role's label if the token has no such key, else the next ``label.N``."""
    base = DEFAULT_LABELS[role]

    def labels(session: Any) -> set[str]:
        found = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        return {str(key[Attribute.LABEL]) for key in found}

    taken = token.run(labels)
    if base not in taken:
        return base
    numbers = [
        int(match["number"])
        for label in taken
        if (match := _ROTATED_LABEL.fullmatch(label)) and match["base"] == base
    ]
    return f"{base}.{max([1, *numbers]) + 1}"


def generate_key(token: Token, label: str) -> ec.EllipticCurvePublicKey:
    """Generate a non-extractable EC P-256 key pair labelled ``label``."""

    def generate(session: Any) -> ec.EllipticCurvePublicKey:
        if list(session.get_objects({Attribute.LABEL: label})):
            raise TokenUnavailable(f"the token already holds objects labelled {label}")
        generate_ec_key(session, label)
        return public_key_of(session, label)

    return token.run(generate)


def development_root(certs_dir: Path) -> x509.Certificate | None:
    """The development root made by ``pli hsm init``, if there is one."""
    try:
        return x509.load_pem_x509_certificate((certs_dir / ROOT_CERT_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def _role_name(role: KeyRole, label: str) -> x509.Name:
    what = {KeyRole.SEAL: "seal", KeyRole.TSA: "time-stamping unit"}[role]
    suffix = "" if label == DEFAULT_LABELS[role] else f" {label}"
    return dev_name(f"pli development {what}{suffix} (non-qualified)")


def issue_development_certificate(
    token: Token, role: KeyRole, label: str, public_key: ec.EllipticCurvePublicKey
) -> x509.Certificate:
    """A certificate for the key under the development root, signed in the token."""
    root = development_root(token.config.certs_dir)
    if root is None:
        raise TokenUnavailable("no development root; run pli hsm init")
    builder = (
        base_builder(_role_name(role, label), root.subject, public_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()),
            critical=False,
        )
    )
    if role is KeyRole.TSA:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
        )
    return sign_with_token(token, builder, ROOT_KEY_LABEL)


def _subject(text: str) -> x509.Name:
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        reason = f" ({exc})" if str(exc) else ""
        raise SubjectProblem(
            f"--subject {text!r} is not an RFC 4514 name such as "
            f"'CN=Example seal,O=Example,C=FR'{reason}"
        ) from exc
    if not name.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise SubjectProblem(f"--subject {text!r} has no CN (common name)")
    return name


def certification_request(
    token: Token, role: KeyRole, label: str, subject: str
) -> bytes:
    """A PEM PKCS#10 request for the labelled token key, signed by that key."""
    name = _subject(subject)
    public_key = token_public_key(token, label)
    if public_key is None:
        raise TokenUnavailable(f"the token holds no key {label}")
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    for extension, critical in _requested_extensions(role):
        builder = builder.add_extension(extension, critical=critical)
    # cryptography signs a request only with a key it holds, so it signs with
    # a throwaway key; the request info then gets the token key's public key
    # and the token signs it, and the throwaway signature is discarded.
    scratch = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    info = asn1_csr.CertificationRequestInfo.load(scratch.tbs_certrequest_bytes)
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info["subject_pk_info"] = asn1_keys.PublicKeyInfo.load(spki)
    signature = token.sign_ecdsa_sha256(label, info.dump(force=True))
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )
    der = request.dump()
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def _requested_extensions(role: KeyRole) -> list[tuple[x509.ExtensionType, bool]]:
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (key_usage(cert_sign=False), True),
    ]
    if role is KeyRole.TSA:
        extensions.append(
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), True)
        )
    return extensions


def install_chain(token: Token, label: str, chain: list[x509.Certificate]) -> None:
    """Put the leaf in the token and the chain beside it; keep what it replaces."""
    certs_dir = token.config.certs_dir
    leaf = chain[0]
    token.run(lambda session: _put_in_token(session, label, leaf))
    leaf_path = certificate_file(certs_dir, label)
    if leaf_path.exists():
        _archive(certs_dir, leaf_path)
    chain_path = chain_file(certs_dir, label)
    chain_path.parent.mkdir(parents=True, exist_ok=True)
    _write(chain_path, b"".join(_pem(c) for c in chain))
    _write(leaf_path, _pem(leaf))


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_bytes(data)
    scratch.replace(path)


def _archive(certs_dir: Path, leaf_path: Path) -> None:
    try:
        old = x509.load_pem_x509_certificate(leaf_path.read_bytes())
    except ValueError:
        return
    archive = certs_dir / "archive"
    archive.mkdir(exist_ok=True)
    shutil.copyfile(leaf_path, archive / f"{fingerprint(old)}.pem")


def _put_in_token(session: Any, label: str, leaf: x509.Certificate) -> None:
    # The token keeps one certificate per key, labelled like it, which is
    # where pyHanko's signer finds it; the new one goes in before the old
    # one is removed, so a failure in between leaves a certificate in place.
    der = leaf.public_bytes(serialization.Encoding.DER)
    query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}
    existing = list(session.get_objects(query))
    if not any(bytes(c[Attribute.VALUE]) == der for c in existing):
        store_certificate_object(session, leaf, label)
    kept = False
    for certificate in existing:
        if bytes(certificate[Attribute.VALUE]) == der and not kept:
            kept = True
            continue
        certificate.destroy()
