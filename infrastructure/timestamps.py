"""Time stamps for pli: from a TSA over HTTP (RFC 3161 §3.4) or the built-in one.

Production points :class:`HttpTimeStampClient` at the operator's qualified
TSA; the embedded default stamps with the built-in authority of
:mod:`pli.hsm.tsa`, in process (:class:`LocalTimeStampClient`) or over HTTP
(:mod:`pli.infrastructure.tsa_server`). Both send a fresh random nonce and
accept an answer only once :func:`pli.hsm.timestamp.check_response` has
checked it, so a stamp handed out is always one an auditor can check again.

Every failure, from a refused connection to a stamp that does not verify,
raises :class:`TimeStampUnavailable` with its reason: callers fail closed
and store nothing unstamped. Logs name the TSA's host and the reason, never
a digest, a stamp or a password.

:class:`PyhankoTimeStamper` lets pyHanko's PDF signer take its signature
time stamps from the same source with the same checks.
"""

from __future__ import annotations

import base64
import http.client
import logging
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from asn1crypto import cms
from cryptography import x509
from pyhanko.sign.timestamps.api import TimeStamper

from pli.domain.clock import Clock
from pli.hsm.timestamp import (
    BadTimeStamp,
    StampInfo,
    check_response,
    refuse_development_roots,
    request_for,
)
from pli.hsm.token import Token
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure.settings import Settings

__all__ = [
    "HttpTimeStampClient",
    "LocalTimeStampClient",
    "PyhankoTimeStamper",
    "TimeStampSource",
    "TimeStampUnavailable",
    "time_stamp_source",
]

logger = logging.getLogger(__name__)

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
_MAX_REPLY = 1024 * 1024
_CHUNK = 16 * 1024


class TimeStampUnavailable(Exception):
    """No checked time stamp could be had; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"time stamp unavailable: {reason}")
        self.reason = reason


class TimeStampSource(Protocol):
    """Something that returns a checked time stamp of a SHA-256 value."""

    def stamp(self, digest: bytes) -> StampInfo:
        """Stamp ``digest``; raise :class:`TimeStampUnavailable` on any failure."""
        ...


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A TSA answers where it is asked; a redirect is reported, not followed."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class HttpTimeStampClient:
    """Asks an RFC 3161 TSA over HTTP(S) and checks every answer."""

    def __init__(
        self,
        url: str,
        *,
        trust_roots: Sequence[x509.Certificate],
        qualified_roots: Sequence[x509.Certificate] = (),
        policy: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the TSA URL must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("TSA credentials go in username and password, not the URL")
        if (username is None) != (password is None):
            raise ValueError("a TSA username needs a password, and the reverse")
        if timeout <= 0:
            raise ValueError("the TSA timeout must be positive")
        refuse_development_roots(qualified_roots)
        self.url = url
        self.trust_roots = list(trust_roots)
        self.qualified_roots = list(qualified_roots)
        self.policy = policy
        self.timeout = timeout
        self._host = parts.netloc
        self._authorization = (
            None
            if username is None
            else "Basic "
            + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        )
        # No proxy from the environment: stamps go straight to the TSA named.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _RefuseRedirects()
        )

    def stamp(self, digest: bytes) -> StampInfo:
        """Stamp a 32-byte SHA-256 value; raise TimeStampUnavailable on failure."""
        nonce = secrets.randbelow(2**64 - 1) + 1
        request = request_for(digest, nonce=nonce, policy=self.policy)
        answer = self._post(request)
        try:
            info = check_response(
                answer,
                digest=digest,
                nonce=nonce,
                trust_roots=self.trust_roots,
                policy=self.policy,
                qualified_roots=self.qualified_roots,
            )
        except BadTimeStamp as exc:
            raise self._unavailable(exc.reason) from exc
        logger.info(
            "time stamp received tsa=%s serial=%x qualified=%s",
            self._host,
            info.serial,
            info.qualified,
        )
        return info

    def _post(self, request: bytes) -> bytes:
        headers = {"Content-Type": QUERY_TYPE, "Accept": REPLY_TYPE}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        http_request = urllib.request.Request(
            self.url, data=request, headers=headers, method="POST"
        )
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(http_request, timeout=self.timeout) as response:
                content_type = response.headers.get_content_type()
                if content_type != REPLY_TYPE:
                    raise self._unavailable(f"answer of type {content_type}")
                return self._read(response, deadline)
        except urllib.error.HTTPError as exc:
            raise self._unavailable(f"HTTP status {exc.code}") from exc
        except urllib.error.URLError as exc:
            raise self._unavailable(f"unreachable ({_describe(exc.reason)})") from exc
        except (TimeoutError, http.client.HTTPException, OSError) as exc:
            raise self._unavailable(_describe(exc)) from exc

    def _read(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > _MAX_REPLY:
                raise self._unavailable("answer too large")
            if time.monotonic() > deadline:
                raise self._unavailable("timed out")
            chunks.append(chunk)
        return b"".join(chunks)

    def _unavailable(self, reason: str) -> TimeStampUnavailable:
        logger.warning("time stamp unavailable tsa=%s reason=%s", self._host, reason)
        return TimeStampUnavailable(reason)


class LocalTimeStampClient:
    """Stamps with the built-in authority in this process, checking its answers.

    The request goes to the authority in the caller's thread, so a caller that
    holds the process-wide PKCS#11 lock (the PDF sealer does) can stamp
    without waiting for itself.
    """

    def __init__(
        self,
        authority: TimeStampAuthority,
        *,
        trust_roots: Sequence[x509.Certificate],
        qualified_roots: Sequence[x509.Certificate] = (),
        policy: str | None = None,
    ) -> None:
        refuse_development_roots(qualified_roots)
        self.authority = authority
        self.trust_roots = list(trust_roots)
        self.qualified_roots = list(qualified_roots)
        self.policy = policy

    def stamp(self, digest: bytes) -> StampInfo:
        """Stamp a 32-byte SHA-256 value; raise TimeStampUnavailable on failure."""
        nonce = secrets.randbelow(2**64 - 1) + 1
        answer = self.authority.respond(
            request_for(digest, nonce=nonce, policy=self.policy)
        )
        try:
            return check_response(
                answer,
                digest=digest,
                nonce=nonce,
                trust_roots=self.trust_roots,
                policy=self.policy,
                qualified_roots=self.qualified_roots,
            )
        except BadTimeStamp as exc:
            logger.warning("time stamp unavailable tsa=built-in reason=%s", exc.reason)
            raise TimeStampUnavailable(exc.reason) from exc


class PyhankoTimeStamper(TimeStamper):
    """pyHanko's ``timestamper=``, answered by a :class:`TimeStampSource`.

    pyHanko asks through :meth:`async_timestamp`; the stamp comes from the
    source, nonce and checks included, and a failure reaches the signing
    call as :class:`TimeStampUnavailable`. Only SHA-256 imprints are asked
    for, so the PDF signature must use SHA-256.

    pyHanko asks while the signing call runs, and pli's PDF sealer holds the
    process-wide PKCS#11 lock for that whole call. The built-in TSA signs
    under that lock, so a seal must use a :class:`LocalTimeStampClient`
    (same thread, lock re-entered), never this process's own ``TsaServer``.
    """

    def __init__(self, source: TimeStampSource) -> None:
        super().__init__(include_nonce=True)
        self.source = source

    async def async_timestamp(
        self, message_digest: bytes, md_algorithm: str
    ) -> cms.ContentInfo:
        """A checked time-stamp token over ``message_digest``."""
        if md_algorithm.lower() != "sha256":
            raise TimeStampUnavailable(f"{md_algorithm} imprint asked; only sha256")
        info = self.source.stamp(message_digest)
        return cms.ContentInfo.load(info.token)


def time_stamp_source(
    settings: Settings, token: Token, clock: Clock
) -> TimeStampSource:
    """The source the settings name: the TSA at ``PLI_TSA_URL``, or the built-in one."""
    tsa = settings.tsa
    trust_roots = tsa.trust_roots(settings.token.certs_dir)
    qualified_roots = tsa.qualified_roots()
    if tsa.url is None:
        return LocalTimeStampClient(
            TimeStampAuthority.from_token(token, clock),
            trust_roots=trust_roots,
            qualified_roots=qualified_roots,
            policy=tsa.policy,
        )
    return HttpTimeStampClient(
        tsa.url,
        trust_roots=trust_roots,
        qualified_roots=qualified_roots,
        policy=tsa.policy,
        username=tsa.username,
        password=tsa.password(),
        timeout=tsa.timeout,
    )


def _describe(error: object) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
