"""``pli hsm init``: the token, its keys and certificates, seen by other tools."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest
from cryptography import x509

from pli.hsm.provision import initialise_token
from pli.hsm.token import Token, TokenConfig, TokenUnavailable


def test_a_second_init_creates_nothing(token_config: TokenConfig) -> None:
    assert initialise_token(token_config) == []


def test_pin_files_are_private(token_config: TokenConfig) -> None:
    for name in ("pin", "so-pin"):
        assert (token_config.hsm_dir / name).stat().st_mode & 0o777 == 0o600


def opensc_listing(token_config: TokenConfig) -> str:
    """What OpenSC's pkcs11-tool lists in the token, logged in."""
    env = {"SOFTHSM2_CONF": str(token_config.softhsm_conf), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            token_config.module,
            "--token-label",
            token_config.token_label,
            "--login",
            "--pin",
            token_config.pin(),
            "--list-objects",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_opensc_lists_non_extractable_seal_and_tsa_keys(
    token_config: TokenConfig,
) -> None:
    listing = opensc_listing(token_config)
    private_keys = listing.split("Private Key Object")[1:]

    assert len(private_keys) == 3
    assert all("never extractable" in block for block in private_keys)
    assert "label:      pli-seal" in listing
    assert "label:      pli-tsa" in listing
    assert listing.count("Certificate Object") == 3


def test_opensc_lists_a_non_extractable_aes_key_for_secrets(
    token_config: TokenConfig,
) -> None:
    listing = opensc_listing(token_config)
    secret_keys = listing.split("Secret Key Object")[1:]

    assert len(secret_keys) == 1
    key = secret_keys[0].split("Object;")[0]
    assert key.startswith("; AES length 32")
    assert "label:      pli-secrets" in key
    assert "Usage:      encrypt, decrypt\n" in key
    assert "never extractable" in key


def test_seal_certificate_chains_to_the_development_root(
    token_config: TokenConfig,
) -> None:
    root = x509.load_pem_x509_certificate(
        (token_config.certs_dir / "root.pem").read_bytes()
    )
    seal = x509.load_pem_x509_certificate(
        (token_config.certs_dir / "seal.pem").read_bytes()
    )

    seal.verify_directly_issued_by(root)
    assert "non-qualified" in seal.subject.rfc4514_string()


def test_a_rejected_pin_is_never_offered_to_the_token_again(
    token_config: TokenConfig,
) -> None:
    wrong = replace(token_config, pin_from_env="31337")
    token = Token(wrong)
    with pytest.raises(TokenUnavailable) as first:
        token.run(lambda session: None)
    with pytest.raises(TokenUnavailable) as second:
        token.run(lambda session: None)
    assert "PinIncorrect" in str(first.value)
    assert "not retried" in str(second.value)
    token.close()
