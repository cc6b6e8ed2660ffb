"""RFC 3161 time stamps: what the client accepts, and what openssl says of it.

The built-in TSA signs in the session's SoftHSM token and answers over real
HTTP on loopback. Faulty TSAs are small loopback HTTP servers that pass the
request to that same real authority and spoil the answer one way each.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from asn1crypto import cms, tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pli.hsm.provision import ROOT_CERT_FILE, TSA_CERT_FILE
from pli.hsm.timestamp import (
    NON_QUALIFIED_POLICY,
    BadTimeStamp,
    NotQualifiedRoot,
    TimeStampResponse,
    check_token,
)
from pli.hsm.token import TokenConfig
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure.clock import SystemClock
from pli.infrastructure.settings import Settings
from pli.infrastructure.timestamps import (
    HttpTimeStampClient,
    LocalTimeStampClient,
    TimeStampUnavailable,
    time_stamp_source,
)
from pli.infrastructure.tsa_server import TsaServer

DIGEST = hashlib.sha256(b"the Merkle root of a checkpoint").digest()
Answer = tuple[int, str, bytes]


# -- faulty TSAs and a second, software certificate authority ---------------


@contextmanager
def faulty_tsa(answer: Callable[[bytes], Answer], delay: float = 0) -> Iterator[str]:
    """A loopback HTTP server answering each POST with ``answer(body)``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay)
            status, content_type, payload = answer(body)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def relayed(
    authority: TimeStampAuthority,
    change_request: Callable[[tsp.TimeStampReq], dict] = lambda r: r.native,
    change_answer: Callable[[bytes], bytes] = lambda a: a,
) -> Callable[[bytes], Answer]:
    """Pass a (changed) request to the real authority; (change and) return."""

    def answer(body: bytes) -> Answer:
        request = tsp.TimeStampReq(change_request(tsp.TimeStampReq.load(body)))
        reply = change_answer(authority.respond(request.dump()))
        return 200, "application/timestamp-reply", reply

    return answer


class SoftwareCa:
    """A certificate authority with a software key, for chains pli did not make."""

    def __init__(self, name: str, issuer: SoftwareCa | None = None, **validity):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer = issuer or self
        builder = _builder(self.name, signer.name, self.key.public_key(), **validity)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        self.certificate = builder.sign(signer.key, hashes.SHA256())

    def issue_tsa(
        self, public_key: ec.EllipticCurvePublicKey, *, eku_critical: bool = True
    ) -> x509.Certificate:
        """A TSA certificate for ``public_key``."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a test TSA")])
        return (
            _builder(subject, self.name, public_key)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                critical=eku_critical,
            )
            .sign(self.key, hashes.SHA256())
        )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    *,
    start: dt.timedelta = dt.timedelta(days=-1),
    end: dt.timedelta = dt.timedelta(days=30),
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + start)
        .not_valid_after(now + end)
    )


def authority_with(
    tsa_authority: TimeStampAuthority,
    certificate: x509.Certificate,
    chain: list[x509.Certificate],
    policy: str = NON_QUALIFIED_POLICY,
) -> TimeStampAuthority:
    """The token's TSA key under another certificate."""
    return TimeStampAuthority(
        tsa_authority.token,
        certificate=certificate,
        chain=chain,
        policy=policy,
        clock=tsa_authority.clock,
    )


def tsa_public_key(authority: TimeStampAuthority) -> ec.EllipticCurvePublicKey:
    key = authority.certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def unavailable_reason(client: HttpTimeStampClient | LocalTimeStampClient) -> str:
    with pytest.raises(TimeStampUnavailable) as failure:
        client.stamp(DIGEST)
    return failure.value.reason


# -- a good stamp, seen by openssl -------------------------------------------


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False
    )


def test_a_stamp_from_the_built_in_tsa_verifies_with_openssl(
    tsa_server: TsaServer,
    dev_root: x509.Certificate,
    token_config: TokenConfig,
    tmp_path: Path,
) -> None:
    client = HttpTimeStampClient(tsa_server.url, trust_roots=[dev_root])
    info = client.stamp(DIGEST)

    certs = token_config.certs_dir
    token = tmp_path / "stamp.tst"
    token.write_bytes(info.token)
    verdict = openssl(
        "ts", "-verify", "-digest", DIGEST.hex(), "-token_in", "-in", token,
        "-CAfile", certs / ROOT_CERT_FILE, "-untrusted", certs / TSA_CERT_FILE,
    )  # fmt: skip
    assert verdict.returncode == 0, verdict.stderr
    assert "Verification: OK" in verdict.stdout
    assert not info.qualified
    assert info.policy == NON_QUALIFIED_POLICY
    assert "non-qualified" in info.tsa
    assert abs(info.time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


def test_a_reply_verifies_with_openssl_and_shows_the_policy(
    tsa_server: TsaServer, token_config: TokenConfig, tmp_path: Path
) -> None:
    certs = token_config.certs_dir
    query, reply = tmp_path / "query.tsq", tmp_path / "reply.tsr"
    made = openssl(
        "ts", "-query", "-digest", DIGEST.hex(), "-sha256", "-cert", "-out", query
    )
    assert made.returncode == 0, made.stderr
    request = urllib.request.Request(
        tsa_server.url,
        data=query.read_bytes(),
        headers={"Content-Type": "application/timestamp-query"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as answer:
        assert answer.headers.get_content_type() == "application/timestamp-reply"
        reply.write_bytes(answer.read())

    verdict = openssl(
        "ts", "-verify", "-digest", DIGEST.hex(), "-in", reply,
        "-CAfile", certs / ROOT_CERT_FILE, "-untrusted", certs / TSA_CERT_FILE,
    )  # fmt: skip
    against_query = openssl(
        "ts", "-verify", "-queryfile", query, "-in", reply,
        "-CAfile", certs / ROOT_CERT_FILE,
    )  # fmt: skip
    text = openssl("ts", "-reply", "-in", reply, "-text")
    assert verdict.returncode == 0 and against_query.returncode == 0, (
        verdict.stderr + against_query.stderr
    )
    assert f"Policy OID: {NON_QUALIFIED_POLICY}" in text.stdout
    assert "Accuracy: 0x01 seconds" in text.stdout


def test_a_stored_token_is_checked_offline(
    tsa_server: TsaServer, dev_root: x509.Certificate
) -> None:
    stamped = HttpTimeStampClient(tsa_server.url, trust_roots=[dev_root]).stamp(DIGEST)
    tsa_server.stop()

    checked = check_token(stamped.token, digest=DIGEST, trust_roots=[dev_root])

    assert checked == stamped


def test_a_tampered_stored_token_fails_its_check(
    tsa_server: TsaServer, dev_root: x509.Certificate
) -> None:
    stamped = HttpTimeStampClient(tsa_server.url, trust_roots=[dev_root]).stamp(DIGEST)
    gen_time = stamped.time.strftime("%Y%m%d%H%M%SZ").encode()
    earlier = (stamped.time - dt.timedelta(hours=1)).strftime("%Y%m%d%H%M%SZ")
    tampered = stamped.token.replace(gen_time, earlier.encode())
    assert tampered != stamped.token

    with pytest.raises(BadTimeStamp) as failure:
        check_token(tampered, digest=DIGEST, trust_roots=[dev_root])
    assert failure.value.reason == "message-digest attribute does not match the content"


def test_every_changed_byte_of_what_the_tsa_signed_is_detected(
    tsa_server: TsaServer, dev_root: x509.Certificate
) -> None:
    stamped = HttpTimeStampClient(tsa_server.url, trust_roots=[dev_root]).stamp(DIGEST)
    signed_data = cms.ContentInfo.load(stamped.token)["content"]
    signed_parts = [
        signed_data["encap_content_info"].dump(),
        signed_data["signer_infos"].dump(),
    ]
    positions = [
        offset + stamped.token.index(part)
        for part in signed_parts
        for offset in range(len(part))
    ]

    accepted = []
    for position in positions:
        changed = bytearray(stamped.token)
        changed[position] ^= 0x01
        try:
            check_token(bytes(changed), digest=DIGEST, trust_roots=[dev_root])
        except BadTimeStamp:
            continue
        accepted.append(position)

    assert len(positions) > 500
    assert accepted == []


def test_a_stored_token_for_other_data_fails_its_check(
    tsa_server: TsaServer, dev_root: x509.Certificate
) -> None:
    stamped = HttpTimeStampClient(tsa_server.url, trust_roots=[dev_root]).stamp(DIGEST)

    with pytest.raises(BadTimeStamp, match="imprint mismatch"):
        check_token(stamped.token, digest=bytes(32), trust_roots=[dev_root])


# -- every way a TSA can fail ------------------------------------------------


def test_a_tsa_that_is_down_is_unavailable(dev_root: x509.Certificate) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HttpTimeStampClient(f"http://127.0.0.1:{port}/", trust_roots=[dev_root])

    assert unavailable_reason(client) == "unreachable (Connection refused)"


def test_a_tsa_that_does_not_answer_in_time_is_unavailable(
    dev_root: x509.Certificate,
) -> None:
    late = (200, "application/timestamp-reply", b"")
    with faulty_tsa(lambda _: late, delay=2) as url:
        client = HttpTimeStampClient(url, trust_roots=[dev_root], timeout=0.5)
        assert "timed out" in unavailable_reason(client)


def test_a_wrong_nonce_is_refused(
    tsa_authority: TimeStampAuthority, dev_root: x509.Certificate
) -> None:
    def other_nonce(request: tsp.TimeStampReq) -> dict:
        return {**request.native, "nonce": request["nonce"].native + 1}

    with faulty_tsa(relayed(tsa_authority, change_request=other_nonce)) as url:
        client = HttpTimeStampClient(url, trust_roots=[dev_root])
        assert unavailable_reason(client) == "nonce mismatch"


def test_a_stamp_of_other_data_is_refused(
    tsa_authority: TimeStampAuthority, dev_root: x509.Certificate
) -> None:
    def other_imprint(request: tsp.TimeStampReq) -> dict:
        native = request.native
        native["message_imprint"]["hashed_message"] = bytes(32)
        return native

    with faulty_tsa(relayed(tsa_authority, change_request=other_imprint)) as url:
        client = HttpTimeStampClient(url, trust_roots=[dev_root])
        assert unavailable_reason(client) == "imprint mismatch"


def test_a_broken_signature_is_refused(
    tsa_authority: TimeStampAuthority, dev_root: x509.Certificate
) -> None:
    def flip_last_byte(answer: bytes) -> bytes:
        # The ECDSA signature ends the answer: its last byte is part of s.
        return answer[:-1] + bytes([answer[-1] ^ 0x01])

    with faulty_tsa(relayed(tsa_authority, change_answer=flip_last_byte)) as url:
        client = HttpTimeStampClient(url, trust_roots=[dev_root])
        assert unavailable_reason(client) == "signature invalid"


def test_a_chain_to_an_untrusted_root_is_refused(tsa_server: TsaServer) -> None:
    stranger = SoftwareCa("a root pli does not trust")
    client = HttpTimeStampClient(tsa_server.url, trust_roots=[stranger.certificate])

    assert unavailable_reason(client) == "no chain to a trusted root"


def test_a_tsa_certificate_without_critical_extended_key_usage_is_refused(
    tsa_authority: TimeStampAuthority,
) -> None:
    ca = SoftwareCa("a test root")
    certificate = ca.issue_tsa(tsa_public_key(tsa_authority), eku_critical=False)
    authority = authority_with(tsa_authority, certificate, [ca.certificate])

    with TsaServer(authority, Path("/nonexistent")) as server:
        client = HttpTimeStampClient(server.url, trust_roots=[ca.certificate])
        assert unavailable_reason(client) == (
            "TSA certificate's extended key usage is not critical"
        )


def test_an_intermediate_expired_at_the_stamped_time_is_refused(
    tsa_authority: TimeStampAuthority,
) -> None:
    root = SoftwareCa("a test root")
    expired = SoftwareCa(
        "an expired intermediate",
        issuer=root,
        start=dt.timedelta(days=-10),
        end=dt.timedelta(days=-1),
    )
    certificate = expired.issue_tsa(tsa_public_key(tsa_authority))
    authority = authority_with(tsa_authority, certificate, [expired.certificate])
    client = LocalTimeStampClient(authority, trust_roots=[root.certificate])

    assert unavailable_reason(client) == (
        "certificate CN=an expired intermediate not valid at the stamped time"
    )


def test_a_rejection_status_is_reported_with_its_failure_reason(
    tsa_server: TsaServer, dev_root: x509.Certificate
) -> None:
    client = HttpTimeStampClient(
        tsa_server.url, trust_roots=[dev_root], policy="1.2.250.1.999"
    )

    assert unavailable_reason(client) == (
        f"TSA answered rejection (unaccepted_policy): "
        f"this TSA stamps under {NON_QUALIFIED_POLICY}"
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            (200, "application/timestamp-reply", b"\x30\x03garbage"),
            "answer is not a DER TimeStampResp",
        ),
        ((200, "text/html", b"<html>welcome</html>"), "answer of type text/html"),
        ((500, "text/plain", b"down for maintenance"), "HTTP status 500"),
        ((302, "text/plain", b""), "HTTP status 302"),
    ],
)
def test_a_tsa_answering_nonsense_is_unavailable(
    dev_root: x509.Certificate, answer: Answer, reason: str
) -> None:
    with faulty_tsa(lambda _: answer) as url:
        client = HttpTimeStampClient(url, trust_roots=[dev_root])
        assert unavailable_reason(client) == reason


def test_a_granted_status_without_a_token_is_refused(
    dev_root: x509.Certificate,
) -> None:
    empty = TimeStampResponse({"status": {"status": "granted"}}).dump()
    with faulty_tsa(lambda _: (200, "application/timestamp-reply", empty)) as url:
        client = HttpTimeStampClient(url, trust_roots=[dev_root])
        assert unavailable_reason(client) == "status granted but no time-stamp token"


# -- qualified or not --------------------------------------------------------


def test_the_development_root_is_never_a_qualified_root(
    tsa_server: TsaServer, dev_root: x509.Certificate
) -> None:
    with pytest.raises(NotQualifiedRoot, match="cannot be a qualified root"):
        HttpTimeStampClient(
            tsa_server.url, trust_roots=[dev_root], qualified_roots=[dev_root]
        )


def test_a_stamp_is_qualified_only_under_a_qualified_root(
    tsa_authority: TimeStampAuthority,
) -> None:
    qualified_root = SoftwareCa("a qualified trust service root")
    intermediate = SoftwareCa("a qualified TSA issuing CA", issuer=qualified_root)
    certificate = intermediate.issue_tsa(tsa_public_key(tsa_authority))
    authority = authority_with(
        tsa_authority, certificate, [intermediate.certificate], policy="0.4.0.2023.1.1"
    )
    trusted_only = LocalTimeStampClient(
        authority, trust_roots=[qualified_root.certificate]
    )
    qualified = LocalTimeStampClient(
        authority, trust_roots=[], qualified_roots=[qualified_root.certificate]
    )

    assert not trusted_only.stamp(DIGEST).qualified
    assert qualified.stamp(DIGEST).qualified


def test_the_built_in_policy_is_never_qualified(
    tsa_authority: TimeStampAuthority,
) -> None:
    qualified_root = SoftwareCa("a qualified trust service root")
    certificate = qualified_root.issue_tsa(tsa_public_key(tsa_authority))
    authority = authority_with(tsa_authority, certificate, [])
    client = LocalTimeStampClient(
        authority, trust_roots=[], qualified_roots=[qualified_root.certificate]
    )

    assert not client.stamp(DIGEST).qualified


def test_the_certificate_in_a_stamp_is_the_tsa_certificate(
    tsa_server: TsaServer, dev_root: x509.Certificate, token_config: TokenConfig
) -> None:
    info = HttpTimeStampClient(tsa_server.url, trust_roots=[dev_root]).stamp(DIGEST)
    expected = x509.load_pem_x509_certificate(
        (token_config.certs_dir / TSA_CERT_FILE).read_bytes()
    )

    assert info.tsa_certificate == expected
    assert info.tsa == expected.subject.rfc4514_string()


# -- where stamps come from --------------------------------------------------


def test_without_a_tsa_url_stamps_come_from_the_built_in_tsa(
    tsa_server: TsaServer,
    tsa_authority: TimeStampAuthority,
    token_config: TokenConfig,
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path,
        database_url="",
        listen="127.0.0.1:0",
        provider_name="pli test provider (non-qualified)",
        token=token_config,
        poll_interval=0.05,
        development_clock=True,
    )
    over_http = replace(settings, tsa=replace(settings.tsa, url=tsa_server.url))

    built_in = time_stamp_source(settings, tsa_authority.token, SystemClock())
    remote = time_stamp_source(over_http, tsa_authority.token, SystemClock())

    assert isinstance(built_in, LocalTimeStampClient)
    assert isinstance(remote, HttpTimeStampClient)
    assert built_in.stamp(DIGEST).policy == remote.stamp(DIGEST).policy
