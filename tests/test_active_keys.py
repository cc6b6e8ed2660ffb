"""The signers' pointer to the active keys, followed without a restart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pli.domain.key_ceremony import KeyRole
from pli.hsm.keys import ActiveKeyWatcher, NoActiveKey, write_active_keys
from pli.hsm.seal import Seal, SealVerifier, key_id_of
from pli.hsm.token import TokenUnavailable


def self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test seal")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_without_active_json_each_role_uses_its_init_key(tmp_path: Path) -> None:
    seal = ActiveKeyWatcher(tmp_path, KeyRole.SEAL).current()
    tsa = ActiveKeyWatcher(tmp_path, KeyRole.TSA).current()

    assert (seal.label, seal.certificate.name) == ("pli-seal", "seal.pem")
    assert (tsa.label, tsa.certificate.name) == ("pli-tsa", "tsa.pem")


def test_a_watcher_follows_a_rewritten_active_json(tmp_path: Path) -> None:
    watcher = ActiveKeyWatcher(tmp_path, KeyRole.SEAL)
    assert watcher.current().label == "pli-seal"

    write_active_keys(tmp_path, {KeyRole.SEAL: ("pli-seal.2", "b" * 64)})
    rotated = watcher.current()
    write_active_keys(tmp_path, {KeyRole.SEAL: None})

    assert (rotated.label, rotated.certificate.name) == ("pli-seal.2", "seal.2.pem")
    with pytest.raises(NoActiveKey):
        watcher.current()
    assert ActiveKeyWatcher(tmp_path, KeyRole.TSA).current().label == "pli-tsa"


def test_a_damaged_active_json_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "active.json").write_text("{not json")

    with pytest.raises(TokenUnavailable):
        ActiveKeyWatcher(tmp_path, KeyRole.SEAL).current()


def test_a_verifier_finds_the_certificate_of_a_key_rotated_after_it_started(
    tmp_path: Path,
) -> None:
    first, second = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    pem = serialization.Encoding.PEM
    (tmp_path / "seal.pem").write_bytes(self_signed(first).public_bytes(pem))
    verifier = SealVerifier.from_dir(tmp_path)
    rotated = self_signed(second)
    (tmp_path / "seal.2.pem").write_bytes(rotated.public_bytes(pem))

    signature = second.sign(b"message", ec.ECDSA(hashes.SHA256()))

    assert verifier.is_valid(b"message", Seal(key_id_of(rotated), signature))
