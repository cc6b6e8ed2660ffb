"""``pli hsm init``: create the development token, its keys and certificates.

Everything here is idempotent: a second run finds the token, the keys and the
certificates and leaves them alone. The signing keys are EC P-256 and the
key that encrypts pli's stored secrets (``pli.hsm.secrets``) is AES-256, all
generated inside the token as sensitive and non-extractable; certificates are
built with ``cryptography`` and signed by the token, so no private key ever
exists outside it. The chain is a development chain, labelled non-qualified in its
subject names; production imports the operator's qualified certificates.

The development root issues the seal certificate, the built-in TSA's
certificate (``pli-tsa``: critical extended key usage timeStamping, RFC 3161
§2.3) and a CRL (``root.crl``, DER), which each run reissues once it is
older than half its validity. Leaf certificates name the CRL's address on
the built-in TSA's HTTP server (:data:`CRL_URL`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pkcs11
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from pli.hsm.secrets import SECRETS_KEY_LABEL, generate_secrets_key, has_secret_key
from pli.hsm.token import (
    ROOT_KEY_LABEL,
    SEAL_KEY_LABEL,
    TSA_KEY_LABEL,
    Token,
    TokenConfig,
)

__all__ = [
    "CRL_URL",
    "ROOT_CERT_FILE",
    "ROOT_CRL_FILE",
    "SEAL_CERT_FILE",
    "TSA_CERT_FILE",
    "initialise_token",
    "refresh_crl",
]

logger = logging.getLogger(__name__)

ROOT_CERT_FILE = "root.pem"
SEAL_CERT_FILE = "seal.pem"
TSA_CERT_FILE = "tsa.pem"
ROOT_CRL_FILE = "root.crl"
CRL_URL = "http://127.0.0.1:8318/crl/root.crl"
_VALIDITY = dt.timedelta(days=3 * 365)
_CRL_VALIDITY = dt.timedelta(days=30)


def initialise_token(config: TokenConfig) -> list[str]:
    """Create whatever is missing; return a line per thing created."""
    created: list[str] = []
    config.hsm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    created += _write_softhsm_conf(config)
    created += _write_secret(config.pin_file, "user PIN")
    created += _write_secret(config.hsm_dir / "so-pin", "security officer PIN")
    config.activate()
    created += _create_token(config)

    token = Token(config)
    try:
        with token.session() as session:
            for label in (ROOT_KEY_LABEL, SEAL_KEY_LABEL, TSA_KEY_LABEL):
                if not token.has_private_key(session, label):
                    generate_ec_key(session, label)
                    created.append(f"key {label} (EC P-256, non-extractable)")
            if not has_secret_key(session, SECRETS_KEY_LABEL):
                generate_secrets_key(session, SECRETS_KEY_LABEL)
                created.append(f"key {SECRETS_KEY_LABEL} (AES-256, non-extractable)")
        created += _issue_certificates(token, config)
        root = x509.load_pem_x509_certificate(
            (config.certs_dir / ROOT_CERT_FILE).read_bytes()
        )
        created += refresh_crl(token, root, config.certs_dir / ROOT_CRL_FILE)
    finally:
        token.close()
    return created


def _write_softhsm_conf(config: TokenConfig) -> list[str]:
    if config.softhsm_conf.exists():
        return []
    tokens = config.hsm_dir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    config.softhsm_conf.write_text(
        f"directories.tokendir = {tokens.resolve()}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    return [f"SoftHSM2 configuration {config.softhsm_conf}"]


def _write_secret(path: Path, what: str) -> list[str]:
    if path.exists() or (what == "user PIN" and os.environ.get("PLI_HSM_PIN")):
        return []
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(16) + "\n")
    return [f"{what} file {path} (mode 0600)"]


def _create_token(config: TokenConfig) -> list[str]:
    lib = pkcs11.lib(config.module)
    if any(t.label == config.token_label for t in lib.get_tokens()):
        return []
    so_pin = (config.hsm_dir / "so-pin").read_text().strip()
    # softhsm2-util takes PINs only as arguments; they live for the few
    # milliseconds of this development-only call.
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            config.token_label,
            "--so-pin",
            so_pin,
            "--pin",
            config.pin(),
        ],
        check=True,
        capture_output=True,
    )
    pkcs11.lib(config.module).reinitialize()
    return [f"SoftHSM2 token {config.token_label}"]


def generate_ec_key(session: Any, label: str) -> None:
    """Generate a non-extractable EC P-256 key pair in the token under ``label``."""
    params = session.create_domain_parameters(
        KeyType.EC,
        {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
        local=True,
    )
    key_id = secrets.token_bytes(8)
    params.generate_keypair(
        store=True,
        label=label,
        id=key_id,
        private_template={
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        },
    )
    logger.info("key generated label=%s", label)


def public_key_of(session: Any, label: str) -> ec.EllipticCurvePublicKey:
    """Read the labelled EC public key out of the token."""
    key = session.get_key(
        object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=label
    )
    return serialization.load_der_public_key(encode_ec_public_key(key))


def _issue_certificates(token: Token, config: TokenConfig) -> list[str]:
    config.certs_dir.mkdir(parents=True, exist_ok=True)
    root_path = config.certs_dir / ROOT_CERT_FILE
    created: list[str] = []
    with token.session() as session:
        root_public = public_key_of(session, ROOT_KEY_LABEL)

    if not root_path.exists():
        name = dev_name("pli development root CA (non-qualified)")
        builder = base_builder(name, name, root_public).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        builder = builder.add_extension(
            key_usage(cert_sign=True), critical=True
        ).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_public), critical=False
        )
        root = sign_with_token(token, builder, ROOT_KEY_LABEL)
        _store_certificate(token, root, ROOT_KEY_LABEL, root_path)
        created.append(f"development root certificate {root_path}")

    root = x509.load_pem_x509_certificate(root_path.read_bytes())
    leaves = (
        (SEAL_KEY_LABEL, SEAL_CERT_FILE, "pli development seal (non-qualified)", ()),
        (
            TSA_KEY_LABEL,
            TSA_CERT_FILE,
            "pli development time-stamping authority (non-qualified)",
            (ExtendedKeyUsageOID.TIME_STAMPING,),
        ),
    )
    for label, file_name, common_name, purposes in leaves:
        path = config.certs_dir / file_name
        if path.exists():
            continue
        with token.session() as session:
            public_key = public_key_of(session, label)
        builder = _leaf_builder(dev_name(common_name), public_key, root)
        if purposes:
            # RFC 3161 §2.3: a TSA certificate has exactly this one purpose,
            # and the extension is critical.
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(list(purposes)), critical=True
            )
        leaf = sign_with_token(token, builder, ROOT_KEY_LABEL)
        _store_certificate(token, leaf, label, path)
        created.append(f"development certificate {path}")
    return created


def _leaf_builder(
    subject: x509.Name, public_key: ec.EllipticCurvePublicKey, root: x509.Certificate
) -> x509.CertificateBuilder:
    distribution_point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(CRL_URL)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return (
        base_builder(subject, root.subject, public_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()),
            critical=False,
        )
        .add_extension(x509.CRLDistributionPoints([distribution_point]), False)
    )


def refresh_crl(
    token: Token,
    root: x509.Certificate,
    path: Path,
    *,
    now: dt.datetime | None = None,
) -> list[str]:
    """Issue the root's CRL at ``path`` if it is missing, foreign or half-lived."""
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    current = _read_crl(path, root)
    if current is not None:
        issued = current.last_update_utc
        lifetime = (current.next_update_utc or issued) - issued
        if now - issued < lifetime / 2:
            return []
    number = 1 if current is None else _crl_number(current) + 1

    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(now)
        .next_update(now + _CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()),
            critical=False,
        )
    )
    scratch = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    tbs = scratch.tbs_certlist_bytes
    signature = token.sign_ecdsa_sha256(ROOT_KEY_LABEL, tbs)
    crl = asn1_crl.CertificateList(
        {
            "tbs_cert_list": asn1_crl.TbsCertList.load(tbs),
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )
    # Sealers and the CRL's HTTP server read the file while it is reissued;
    # replacing it whole means they never see half a CRL.
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    scratch.write_bytes(crl.dump())
    os.replace(scratch, path)
    logger.info("development root CRL issued number=%d", number)
    return [f"development root CRL {path} (number {number})"]


def _read_crl(
    path: Path, root: x509.Certificate
) -> x509.CertificateRevocationList | None:
    """The CRL at ``path`` if it is one the root signed, else None."""
    try:
        crl = x509.load_der_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None
    public_key = root.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    if crl.issuer != root.subject or not crl.is_signature_valid(public_key):
        return None
    return crl


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def dev_name(common_name: str) -> x509.Name:
    """A subject name of the development chain."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pli development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """Key usage of a CA (certificates and CRLs) or of a signing leaf."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=not cert_sign,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def development_validity_start(now: dt.datetime) -> dt.datetime:
    """When development certificates start to be valid.

    The built-in TSA stamps with the process's clock, which a development
    clock (tests, ``pli expire --at``) may set in the past; such a time is
    only stamped if the chain was already valid then. ``PLI_DEV_CERTS_VALID_FROM``
    (an ISO 8601 instant) moves the start back; by default it is five minutes
    before ``pli hsm init``.
    """
    earlier = os.environ.get("PLI_DEV_CERTS_VALID_FROM", "").strip()
    if not earlier:
        return now - dt.timedelta(minutes=5)
    start = dt.datetime.fromisoformat(earlier)
    if start.utcoffset() is None:
        raise ValueError("PLI_DEV_CERTS_VALID_FROM needs a UTC offset")
    return min(start, now - dt.timedelta(minutes=5))


def base_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    """A certificate builder with the development chain's validity and a serial."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(development_validity_start(now))
        .not_valid_after(now + _VALIDITY)
    )


def sign_with_token(
    token: Token, builder: x509.CertificateBuilder, key_label: str
) -> x509.Certificate:
    """Sign a certificate with the token's ``key_label`` key."""
    # cryptography cannot call out to a token to sign, so it signs the
    # to-be-signed part with a throwaway key of the same algorithm; the token
    # then signs those exact bytes and the throwaway signature is discarded.
    scratch = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    tbs = scratch.tbs_certificate_bytes
    signature = token.sign_ecdsa_sha256(key_label, tbs)
    certificate = asn1_x509.Certificate(
        {
            "tbs_certificate": asn1_x509.TbsCertificate.load(tbs),
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature_value": signature,
        }
    )
    return x509.load_der_x509_certificate(certificate.dump())


def store_certificate_object(
    session: Any, certificate: x509.Certificate, label: str
) -> None:
    """Put ``certificate`` in the token beside its key: same label, same id.

    That is where pyHanko's PKCS#11 signer looks for a key's certificate.
    """
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.CERTIFICATE,
            Attribute.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509,
            Attribute.TOKEN: True,
            Attribute.LABEL: label,
            Attribute.ID: key[Attribute.ID],
            Attribute.SUBJECT: certificate.subject.public_bytes(),
            Attribute.VALUE: certificate.public_bytes(serialization.Encoding.DER),
        }
    )


def _store_certificate(
    token: Token, certificate: x509.Certificate, label: str, path: Path
) -> None:
    token.run(lambda session: store_certificate_object(session, certificate, label))
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
