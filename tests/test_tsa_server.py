"""The built-in TSA over HTTP: what it serves, what it refuses, where it binds."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from pli.hsm.provision import ROOT_CRL_FILE
from pli.hsm.timestamp import TimeStampResponse, request_for
from pli.hsm.token import TokenConfig
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure.timestamps import HttpTimeStampClient
from pli.infrastructure.tsa_server import MAX_REQUEST, TsaServer

QUERY = request_for(hashlib.sha256(b"x").digest(), nonce=7)


def call(
    server: TsaServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def stamp_query(server: TsaServer, body: bytes) -> http.client.HTTPResponse:
    return call(
        server, "POST", "/", body, {"Content-Type": "application/timestamp-query"}
    )


def test_a_query_gets_a_reply(tsa_server: TsaServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", tsa_server.port, timeout=10)
    connection.request(
        "POST", "/", body=QUERY, headers={"Content-Type": "application/timestamp-query"}
    )
    response = connection.getresponse()
    answer = response.read()
    connection.close()

    assert response.status == 200
    assert response.getheader("Content-Type") == "application/timestamp-reply"
    assert TimeStampResponse.load(answer)["status"]["status"].native == "granted"


def test_the_crl_is_served_as_stored(
    tsa_server: TsaServer, token_config: TokenConfig
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", tsa_server.port, timeout=10)
    connection.request("GET", "/crl/root.crl")
    response = connection.getresponse()
    body = response.read()
    connection.close()

    assert response.status == 200
    assert response.getheader("Content-Type") == "application/pkix-crl"
    assert body == (token_config.certs_dir / ROOT_CRL_FILE).read_bytes()


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/", {}, 405),
        ("POST", "/crl/root.crl", {"Content-Type": "application/timestamp-query"}, 405),
        ("PUT", "/", {}, 405),
        ("GET", "/crl/other.crl", {}, 404),
        ("POST", "/tsa", {"Content-Type": "application/timestamp-query"}, 404),
        ("POST", "/", {"Content-Type": "application/octet-stream"}, 415),
    ],
)
def test_anything_else_is_refused(
    tsa_server: TsaServer,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    assert call(tsa_server, method, path, QUERY, headers).status == status


def test_a_body_over_64_kib_is_refused_unread(tsa_server: TsaServer) -> None:
    assert stamp_query(tsa_server, bytes(MAX_REQUEST + 1)).status == 413


def test_a_query_without_length_is_refused(tsa_server: TsaServer) -> None:
    with socket.create_connection(("127.0.0.1", tsa_server.port), timeout=10) as raw:
        raw.sendall(
            b"POST / HTTP/1.0\r\nContent-Type: application/timestamp-query\r\n\r\n"
        )
        status_line = raw.makefile("rb").readline()

    assert status_line.split()[1] == b"411"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "tsa.example", "::"])
def test_only_loopback_addresses_are_bound(
    tsa_authority: TimeStampAuthority, host: str
) -> None:
    with pytest.raises(ValueError, match="loopback only|IP address"):
        TsaServer(tsa_authority, Path("root.crl"), host=host)


def test_pli_tsa_serve_stamps_until_terminated(
    token_config: TokenConfig, dev_root: x509.Certificate
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {
        **os.environ,
        "PLI_HSM_DIR": str(token_config.hsm_dir),
        "PLI_TSA_LISTEN": f"127.0.0.1:{port}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pli.services.cli", "tsa", "serve"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline() if process.stdout else ""
        url = f"http://127.0.0.1:{port}/"
        stamp = HttpTimeStampClient(url, trust_roots=[dev_root]).stamp(bytes(32))
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)

    assert first_line == f"pli built-in TSA (non-qualified) serving on {url}\n"
    assert not stamp.qualified
    assert returncode == 0
