"""Qualified or not: only a chain that ends at a configured qualified root."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pli.hsm.ceremony import development_root
from pli.hsm.qualification import (
    QualificationError,
    is_qualified,
    load_qualified_roots,
)
from pli.hsm.token import TokenConfig

NOW = dt.datetime.now(dt.UTC)


def name(common_name: str, organisation: str = "Example Trust Services") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    ca: bool,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key or key, hashes.SHA256())
    )


def pem_file(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
    )
    return path


@pytest.fixture(scope="module")
def hierarchy() -> dict[str, x509.Certificate]:
    """A qualified root, its intermediate and a seal leaf; and a stranger root."""
    root_key, sub_key, leaf_key, other_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(4)
    )
    root = certificate(name("Example Qualified Root"), root_key, ca=True)
    sub = certificate(
        name("Example Qualified Seal CA"), sub_key, root.subject, root_key, ca=True
    )
    leaf = certificate(name("Example seal"), leaf_key, sub.subject, sub_key, ca=False)
    other = certificate(name("Somebody else's root"), other_key, ca=True)
    return {"root": root, "sub": sub, "leaf": leaf, "other": other}


def test_a_chain_up_to_a_configured_root_is_qualified(
    hierarchy: dict[str, x509.Certificate],
) -> None:
    h = hierarchy
    assert is_qualified([h["leaf"], h["sub"], h["root"]], [h["root"]])
    assert is_qualified([h["leaf"], h["sub"]], [h["root"]])


def test_a_chain_to_another_root_or_with_a_gap_is_not(
    hierarchy: dict[str, x509.Certificate],
) -> None:
    h = hierarchy
    assert not is_qualified([h["leaf"], h["sub"], h["root"]], [h["other"]])
    assert not is_qualified([h["leaf"], h["root"]], [h["root"]])
    assert not is_qualified([h["leaf"], h["sub"], h["root"]], [])


def test_the_development_chain_is_never_qualified(token_config: TokenConfig) -> None:
    root = development_root(token_config.certs_dir)
    seal = x509.load_pem_x509_certificate(
        (token_config.certs_dir / "seal.pem").read_bytes()
    )
    assert root is not None

    assert not is_qualified([seal, root], [])


def test_the_development_root_cannot_be_configured_as_qualified(
    token_config: TokenConfig, hierarchy: dict[str, x509.Certificate], tmp_path: Path
) -> None:
    root = development_root(token_config.certs_dir)
    assert root is not None
    path = pem_file(tmp_path / "roots.pem", hierarchy["root"], root)

    with pytest.raises(QualificationError) as refused:
        load_qualified_roots(path, root)
    assert "development root" in str(refused.value)


def test_any_pli_development_root_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    elsewhere = certificate(name("pli dev root", "pli development"), key, ca=True)

    with pytest.raises(QualificationError):
        load_qualified_roots(pem_file(tmp_path / "roots.pem", elsewhere))


def test_configured_roots_must_be_readable_certificates_of_cas(
    hierarchy: dict[str, x509.Certificate], tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")

    with pytest.raises(QualificationError, match="no PEM certificate"):
        load_qualified_roots(garbage)
    with pytest.raises(QualificationError, match="cannot read"):
        load_qualified_roots(tmp_path / "missing.pem")
    with pytest.raises(QualificationError, match="not a CA"):
        load_qualified_roots(pem_file(tmp_path / "leaf.pem", hierarchy["leaf"]))
    assert load_qualified_roots(None) == []
    assert load_qualified_roots(pem_file(tmp_path / "ok.pem", hierarchy["root"])) == [
        hierarchy["root"]
    ]
