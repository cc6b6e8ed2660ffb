"""Time stampers for PDF seals in the tests: the token's built-in TSA, in process.

The sealer holds the process-wide PKCS#11 lock while pyHanko asks for the
signature time stamp, so the built-in TSA answers in the caller's thread
(``LocalTimeStampClient``), as it does in ``pli serve``.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509
from pyhanko.sign.timestamps.api import TimeStamper

from pli.domain.clock import Clock
from pli.hsm.provision import ROOT_CERT_FILE
from pli.hsm.token import Token
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure.timestamps import LocalTimeStampClient, PyhankoTimeStamper


def built_in_stamper(token: Token, clock: Clock) -> Callable[[], TimeStamper]:
    """Makes pyHanko time stampers answered by the token's TSA at ``clock``."""
    root = x509.load_pem_x509_certificate(
        (token.config.certs_dir / ROOT_CERT_FILE).read_bytes()
    )
    source = LocalTimeStampClient(
        TimeStampAuthority.from_token(token, clock), trust_roots=[root]
    )
    return lambda: PyhankoTimeStamper(source)
