"""The built-in TSA over HTTP (RFC 3161 §3.4), and the development root's CRL.

``pli tsa serve`` and test fixtures run :class:`TsaServer`: a
``ThreadingHTTPServer`` in a daemon thread that answers ``POST /`` with
``application/timestamp-query`` by the authority's ``TimeStampResp``, and
``GET /crl/root.crl`` with the CRL that the development certificates name
as their distribution point. Anything else gets 404, 405, 411, 413 or 415.
Request bodies are capped at 64 KiB, slow clients are cut off after 10 s,
and the server binds loopback addresses only: the built-in TSA is
non-qualified and for this machine alone.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from pli.hsm.tsa import TimeStampAuthority

__all__ = ["MAX_REQUEST", "TsaServer"]

logger = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
CRL_TYPE = "application/pkix-crl"
_STAMP_PATH = "/"
_CRL_PATH = "/crl/root.crl"
_SOCKET_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding what the handlers answer with."""

    daemon_threads = True
    authority: TimeStampAuthority
    crl_path: Path


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """One request: a time-stamp query or the CRL."""

    server: _Server
    timeout = _SOCKET_TIMEOUT
    server_version = "pli-tsa"
    sys_version = ""

    def do_POST(self) -> None:
        """Answer a time-stamp query."""
        if self.path != _STAMP_PATH:
            self._refuse(self._unknown_path_status())
            return
        if self.headers.get_content_type() != QUERY_TYPE:
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            return
        body = self._body()
        if body is None:
            return
        self._reply(REPLY_TYPE, self.server.authority.respond(body))

    def do_GET(self) -> None:
        """Hand out the development root's CRL."""
        if self.path != _CRL_PATH:
            self._refuse(self._unknown_path_status())
            return
        try:
            crl = self.server.crl_path.read_bytes()
        except OSError:
            logger.error("CRL unreadable path=%s", self.server.crl_path)
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE)
            return
        self._reply(CRL_TYPE, crl)

    def do_HEAD(self) -> None:
        """Only GET and POST are served."""
        self._refuse(self._unknown_path_status())

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD

    def _unknown_path_status(self) -> HTTPStatus:
        allowed = {_STAMP_PATH: "POST", _CRL_PATH: "GET"}.get(self.path)
        if allowed is None or allowed == self.command:
            return HTTPStatus.NOT_FOUND
        return HTTPStatus.METHOD_NOT_ALLOWED

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            self._refuse(HTTPStatus.LENGTH_REQUIRED)
            return None
        if not length.isdigit():
            self._refuse(HTTPStatus.BAD_REQUEST)
            return None
        if int(length) > MAX_REQUEST:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return None
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            self._refuse(HTTPStatus.BAD_REQUEST)
            return None
        return body

    def _reply(self, content_type: str, body: bytes) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: HTTPStatus) -> None:
        self.close_connection = True
        self.send_response(status)
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            allowed = "POST" if self.path == _STAMP_PATH else "GET"
            self.send_header("Allow", allowed)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Request lines go to the debug log, not to stderr."""
        logger.debug("tsa http " + format, *args)


class TsaServer:
    """The built-in TSA and the root's CRL, served over HTTP on loopback."""

    def __init__(
        self,
        authority: TimeStampAuthority,
        crl_path: Path,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        try:
            address = ipaddress.ip_address(host)
        except ValueError as exc:
            raise ValueError(f"the TSA binds an IP address, not {host!r}") from exc
        if not address.is_loopback:
            raise ValueError(f"the built-in TSA binds loopback only, not {host}")
        self.authority = authority
        self.crl_path = crl_path
        self.host = host
        self.port = port
        self._ipv6 = address.version == 6
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where to POST time-stamp queries."""
        host = f"[{self.host}]" if self._ipv6 else self.host
        return f"http://{host}:{self.port}/"

    @property
    def crl_url(self) -> str:
        """Where the CRL is served."""
        return self.url.rstrip("/") + _CRL_PATH

    def start(self) -> str:
        """Listen and serve in a daemon thread; return the URL."""
        if self._server is not None:
            return self.url
        server_class = _IPv6Server if self._ipv6 else _Server
        server = server_class((self.host, self.port), _Handler)
        server.authority = self.authority
        server.crl_path = self.crl_path
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name="pli-tsa-http",
            daemon=True,
        )
        self._thread.start()
        logger.info("built-in TSA listening url=%s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        logger.info("built-in TSA stopped")

    def __enter__(self) -> TsaServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
