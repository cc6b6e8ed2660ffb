"""The built-in TSA: its answers to bad requests, its certificate and its CRL."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from pathlib import Path

import pytest
from asn1crypto import tsp
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pli.domain.clock import FixedClock
from pli.hsm.provision import (
    CRL_URL,
    ROOT_CERT_FILE,
    ROOT_CRL_FILE,
    TSA_CERT_FILE,
    refresh_crl,
)
from pli.hsm.timestamp import (
    NON_QUALIFIED_POLICY,
    TimeStampResponse,
    check_response,
    request_for,
)
from pli.hsm.token import TokenConfig
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure.settings import SettingsError, TsaSettings

DIGEST = hashlib.sha256(b"an event's seal").digest()


def request(**changes: object) -> bytes:
    """A DER TimeStampReq for DIGEST, with fields changed or added."""
    fields: dict[str, object] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": "sha256"},
            "hashed_message": DIGEST,
        },
        "nonce": 42,
        "cert_req": True,
    }
    fields.update(changes)
    return tsp.TimeStampReq(fields).dump()


def status_of(answer: bytes) -> tuple[str, set[str]]:
    status = TimeStampResponse.load(answer)["status"]
    return status["status"].native, set(status["fail_info"].native or ())


# -- answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_request", "fail_info"),
    [
        (b"", "bad_data_format"),
        (b"\x30\x80garbage", "bad_data_format"),
        (
            request(
                message_imprint={
                    "hash_algorithm": {"algorithm": "sha1"},
                    "hashed_message": bytes(20),
                }
            ),
            "bad_alg",
        ),
        (
            request(
                message_imprint={
                    "hash_algorithm": {"algorithm": "sha256"},
                    "hashed_message": bytes(20),
                }
            ),
            "bad_data_format",
        ),
        (request(req_policy="1.2.250.1.999"), "unaccepted_policy"),
        (
            request(
                extensions=[
                    {
                        "extn_id": "2.5.29.99",
                        "critical": False,
                        "extn_value": b"\x05\x00",
                    }
                ]
            ),
            "unaccepted_extensions",
        ),
    ],
    ids=["empty", "garbage", "sha1", "short-imprint", "policy", "extension"],
)
def test_a_bad_request_gets_a_rejection_with_its_reason(
    tsa_authority: TimeStampAuthority, bad_request: bytes, fail_info: str
) -> None:
    assert status_of(tsa_authority.respond(bad_request)) == ("rejection", {fail_info})


def test_a_request_in_its_own_policy_is_granted(
    tsa_authority: TimeStampAuthority,
) -> None:
    answer = tsa_authority.respond(request(req_policy=NON_QUALIFIED_POLICY))

    assert status_of(answer) == ("granted", set())


def test_certificates_are_included_only_when_asked_for(
    tsa_authority: TimeStampAuthority,
) -> None:
    def certificates(answer: bytes) -> int:
        token = TimeStampResponse.load(answer)["time_stamp_token"]
        return len(token["content"]["certificates"] or ())

    assert certificates(tsa_authority.respond(request(cert_req=True))) == 2
    assert certificates(tsa_authority.respond(request(cert_req=False))) == 0


def test_stamps_carry_distinct_random_serials_and_the_clock_s_second(
    tsa_authority: TimeStampAuthority, dev_root: x509.Certificate
) -> None:
    at = dt.datetime.now(dt.UTC).replace(microsecond=654321)
    authority = TimeStampAuthority(
        tsa_authority.token,
        certificate=tsa_authority.certificate,
        chain=tsa_authority.chain,
        policy=NON_QUALIFIED_POLICY,
        clock=FixedClock(at),
    )

    stamps = [
        check_response(
            authority.respond(request_for(DIGEST, nonce=n)),
            digest=DIGEST,
            nonce=n,
            trust_roots=[dev_root],
        )
        for n in (1, 2, 3)
    ]

    assert len({s.serial for s in stamps}) == 3
    assert all(s.serial.bit_length() > 64 for s in stamps)
    assert {s.time for s in stamps} == {at.replace(microsecond=0)}
    assert {s.accuracy for s in stamps} == {dt.timedelta(seconds=1)}


def test_a_clock_outside_the_certificate_s_validity_gets_a_system_failure(
    tsa_authority: TimeStampAuthority,
) -> None:
    authority = TimeStampAuthority(
        tsa_authority.token,
        certificate=tsa_authority.certificate,
        chain=tsa_authority.chain,
        policy=NON_QUALIFIED_POLICY,
        clock=FixedClock(dt.datetime(2001, 1, 1, tzinfo=dt.UTC)),
    )

    assert status_of(authority.respond(request())) == ("rejection", {"system_failure"})


def test_a_missing_key_gets_a_system_failure(
    tsa_authority: TimeStampAuthority,
) -> None:
    authority = TimeStampAuthority(
        tsa_authority.token,
        certificate=tsa_authority.certificate,
        chain=tsa_authority.chain,
        policy=NON_QUALIFIED_POLICY,
        clock=tsa_authority.clock,
        key_label="no-such-key",
    )

    assert status_of(authority.respond(request())) == ("rejection", {"system_failure"})


# -- certificate and CRL ------------------------------------------------------


def test_the_tsa_certificate_has_the_rfc_3161_profile(
    token_config: TokenConfig,
) -> None:
    root = x509.load_pem_x509_certificate(
        (token_config.certs_dir / ROOT_CERT_FILE).read_bytes()
    )
    tsa = x509.load_pem_x509_certificate(
        (token_config.certs_dir / TSA_CERT_FILE).read_bytes()
    )
    extensions = tsa.extensions
    usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    key_usage = extensions.get_extension_for_class(x509.KeyUsage)
    points = extensions.get_extension_for_class(x509.CRLDistributionPoints).value

    tsa.verify_directly_issued_by(root)
    assert "(non-qualified)" in tsa.subject.rfc4514_string()
    assert usage.critical and list(usage.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    assert key_usage.critical
    assert key_usage.value.digital_signature and key_usage.value.content_commitment
    assert not key_usage.value.key_cert_sign
    assert extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert [n.value for n in points[0].full_name] == [CRL_URL]


def test_the_root_crl_verifies_with_openssl(token_config: TokenConfig) -> None:
    certs = token_config.certs_dir
    verdict = subprocess.run(
        [
            "openssl", "crl", "-inform", "DER", "-in", certs / ROOT_CRL_FILE,
            "-CAfile", certs / ROOT_CERT_FILE, "-noout",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip

    assert verdict.returncode == 0
    assert "verify OK" in verdict.stderr


def test_the_crl_is_reissued_once_older_than_half_its_validity(
    tsa_authority: TimeStampAuthority,
    dev_root: x509.Certificate,
    token_config: TokenConfig,
    tmp_path: Path,
) -> None:
    path = tmp_path / ROOT_CRL_FILE
    path.write_bytes((token_config.certs_dir / ROOT_CRL_FILE).read_bytes())
    first = x509.load_der_x509_crl(path.read_bytes())
    lifetime = first.next_update_utc - first.last_update_utc
    token = tsa_authority.token

    early = refresh_crl(token, dev_root, path, now=first.last_update_utc + lifetime / 3)
    late = refresh_crl(token, dev_root, path, now=first.last_update_utc + lifetime / 2)
    second = x509.load_der_x509_crl(path.read_bytes())

    assert early == []
    assert late == [f"development root CRL {path} (number 2)"]
    assert second.last_update_utc == first.last_update_utc + lifetime / 2
    assert second.is_signature_valid(dev_root.public_key())


def test_a_crl_that_is_not_the_root_s_is_replaced(
    tsa_authority: TimeStampAuthority, dev_root: x509.Certificate, tmp_path: Path
) -> None:
    path = tmp_path / ROOT_CRL_FILE
    path.write_bytes(b"not a CRL")

    assert refresh_crl(tsa_authority.token, dev_root, path) == [
        f"development root CRL {path} (number 1)"
    ]
    assert x509.load_der_x509_crl(path.read_bytes()).is_signature_valid(
        dev_root.public_key()
    )


# -- settings -----------------------------------------------------------------


def test_no_tsa_variable_means_the_built_in_tsa_on_loopback() -> None:
    settings = TsaSettings.from_env({})

    assert settings.url is None
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 8318)
    assert settings.qualified_roots() == []


def test_trust_defaults_to_the_development_root(
    token_config: TokenConfig, dev_root: x509.Certificate
) -> None:
    assert TsaSettings.from_env({}).trust_roots(token_config.certs_dir) == [dev_root]


def test_the_development_root_is_refused_as_qualified_root(
    token_config: TokenConfig,
) -> None:
    root_file = str(token_config.certs_dir / ROOT_CERT_FILE)

    with pytest.raises(SettingsError, match="cannot be a qualified root"):
        TsaSettings.from_env({"PLI_QUALIFIED_ROOTS": root_file})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PLI_TSA_URL": "ftp://tsa.example/"}, "PLI_TSA_URL"),
        ({"PLI_TSA_URL": "https://user:secret@tsa.example/"}, "credentials"),
        ({"PLI_TSA_POLICY": "not.an.oid"}, "PLI_TSA_POLICY"),
        ({"PLI_TSA_USERNAME": "pli"}, "go together"),
        ({"PLI_TSA_LISTEN": "0.0.0.0:8318"}, "loopback"),
        ({"PLI_TSA_LISTEN": "127.0.0.1:http"}, "loopback"),
        ({"PLI_TSA_TRUST": "/nonexistent/roots.pem"}, "PLI_TSA_TRUST"),
        ({"PLI_TSA_TIMEOUT": "0"}, "positive"),
    ],
)
def test_unusable_tsa_settings_are_refused(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        TsaSettings.from_env(environ)


def test_the_password_is_read_from_its_file(tmp_path: Path) -> None:
    password_file = tmp_path / "tsa-password"
    password_file.write_text("s3cret\n")

    settings = TsaSettings.from_env(
        {
            "PLI_TSA_URL": "https://tsa.example/rfc3161",
            "PLI_TSA_USERNAME": "pli",
            "PLI_TSA_PASSWORD_FILE": str(password_file),
        }
    )

    assert (settings.username, settings.password()) == ("pli", "s3cret")
