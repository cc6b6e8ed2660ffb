"""An RFC 3161 time-stamp authority for the tests: OpenSSL's ``ts`` command.

pli takes a stamper (a digest in, a time-stamp token out) from whoever runs
it; the tests plug in ``openssl ts -reply`` with a throwaway TSA key and
certificate, and check tokens with ``openssl ts -verify``: a real TSA
implementation and a real validator, with nothing of pli in between.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CONFIG = """
[ tsa ]
default_tsa = pli_test_tsa

[ pli_test_tsa ]
dir = {folder}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


class OpensslTsa:
    """Stamps SHA-256 digests with ``openssl ts -reply``; verifies with ``-verify``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pli test TSA")])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256())
        )
        (folder / "tsa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.certificate = folder / "tsa.pem"
        self.certificate.write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
        )
        (folder / "serial").write_text("01\n")
        self.config = folder / "openssl.cnf"
        self.config.write_text(_CONFIG.format(folder=folder))
        self.stamped = 0

    def __call__(self, digest: bytes) -> bytes:
        """An RFC 3161 token (DER) over ``digest``, a SHA-256 digest."""
        query = self.folder / "query.tsq"
        token = self.folder / "token.der"
        self._openssl(
            "ts", "-query", "-digest", digest.hex(), "-sha256", "-cert",
            "-out", str(query),
        )  # fmt: skip
        self._openssl(
            "ts", "-reply", "-config", str(self.config), "-queryfile", str(query),
            "-token_out", "-out", str(token),
        )  # fmt: skip
        self.stamped += 1
        return token.read_bytes()

    def verify(self, token: bytes, digest: bytes) -> str:
        """``openssl ts -verify``'s verdict on a token for ``digest``."""
        path = self.folder / "verify.der"
        path.write_bytes(token)
        result = subprocess.run(
            ["openssl", "ts", "-verify", "-digest", digest.hex(), "-in", str(path),
             "-token_in", "-CAfile", str(self.certificate)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return result.stdout + result.stderr

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], capture_output=True, timeout=30, check=True)
