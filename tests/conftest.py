"""Real parts for the tests: one SoftHSM token, SQLite and PostgreSQL, gRPC.

The SoftHSM2 library reads its configuration once per process, so the whole
session shares one token home; each test gets its own PLI home (content,
proofs, outbox, SQLite file) and, on PostgreSQL, its own database.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parent))

from pli.domain.clock import FixedClock  # noqa: E402
from pli.hsm.provision import (  # noqa: E402
    ROOT_CERT_FILE,
    ROOT_CRL_FILE,
    initialise_token,
)
from pli.hsm.token import DEFAULT_MODULE, Token, TokenConfig  # noqa: E402
from pli.hsm.tsa import TimeStampAuthority  # noqa: E402
from pli.infrastructure.clock import SystemClock  # noqa: E402
from pli.infrastructure.dev_idp import DevIdentityProvider  # noqa: E402
from pli.infrastructure.settings import Settings  # noqa: E402
from pli.infrastructure.tsa_server import TsaServer  # noqa: E402
from pli.services.runtime import Runtime  # noqa: E402
from pli.services.server import RunningServer, start_server  # noqa: E402
from pli.v1 import (  # noqa: E402
    accounts_pb2_grpc,
    consents_pb2_grpc,
    letters_pb2_grpc,
)

from postgres import fresh_database, postgres_server  # noqa: E402

T0 = dt.datetime(2026, 3, 20, 9, 30, tzinfo=dt.UTC)
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "letters"


@pytest.fixture(scope="session")
def token_config(tmp_path_factory: pytest.TempPathFactory) -> TokenConfig:
    """One initialised development token for the whole run."""
    for name in ("PLI_HSM_PIN", "PLI_HSM_PIN_FILE", "PLI_TOKEN_LABEL"):
        os.environ.pop(name, None)
    home = tmp_path_factory.mktemp("token-home")
    config = TokenConfig(
        hsm_dir=home / "hsm",
        module=os.environ.get("PLI_PKCS11_MODULE", DEFAULT_MODULE),
        token_label="pli",
        pin_file=home / "hsm" / "pin",
    )
    # The built-in TSA stamps at the tests' fixed clock, months in the past.
    os.environ["PLI_DEV_CERTS_VALID_FROM"] = (T0 - dt.timedelta(days=30)).isoformat()
    initialise_token(config)
    return config


@pytest.fixture(scope="session")
def postgres_base() -> Iterator[str]:
    """A PostgreSQL server: the machine's, or a throwaway one."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    """An empty event store: '' for the embedded SQLite, else a PostgreSQL URL."""
    if request.param == "sqlite":
        yield ""
        return
    base = request.getfixturevalue("postgres_base")
    with fresh_database(base) as dsn:
        yield dsn


@pytest.fixture
def settings(tmp_path: Path, token_config: TokenConfig, database_url: str) -> Settings:
    """Settings for one test: its own home, the shared token, its database.

    The development identity provider is trusted, as the demo trusts it.
    """
    identity_provider = DevIdentityProvider(tmp_path / "var" / "dev-idp")
    identity_provider.ensure()
    return Settings(
        home=tmp_path / "var",
        database_url=database_url,
        listen="127.0.0.1:0",
        provider_name="pli test provider (non-qualified)",
        token=token_config,
        poll_interval=0.05,
        development_clock=True,
        oidc_issuers=identity_provider.issuers_file,
    )


@pytest.fixture
def clock() -> FixedClock:
    """The clock every component of a test shares."""
    return FixedClock(T0)


@dataclass
class Pli:
    """A running server and the stubs a frontend would hold."""

    running: RunningServer
    channel: grpc.Channel
    letters: letters_pb2_grpc.LetterServiceStub
    desk: letters_pb2_grpc.RecipientDeskServiceStub
    accounts: accounts_pb2_grpc.SenderAccountServiceStub
    consents: consents_pb2_grpc.ConsentServiceStub
    clock: FixedClock

    @property
    def runtime(self) -> Runtime:
        """What the server runs on."""
        return self.running.runtime

    def run_processes(self) -> None:
        """Let the views, notifier, proof builder and expirer catch up."""
        self.runtime.runner.run_until_idle()

    def event_count(self) -> int:
        """How many events the store holds."""
        return self.runtime.letters.recorder.max_notification_id() or 0


def connect(running: RunningServer, clock: FixedClock) -> Pli:
    """Open a real gRPC channel over loopback TCP to a started server."""
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    return Pli(
        running=running,
        channel=channel,
        letters=letters_pb2_grpc.LetterServiceStub(channel),
        desk=letters_pb2_grpc.RecipientDeskServiceStub(channel),
        accounts=accounts_pb2_grpc.SenderAccountServiceStub(channel),
        consents=consents_pb2_grpc.ConsentServiceStub(channel),
        clock=clock,
    )


@pytest.fixture
def pli(settings: Settings, clock: FixedClock) -> Iterator[Pli]:
    """A real server on a loopback port; processes are driven by the test."""
    running = start_server(settings, clock, processes=False)
    client = connect(running, clock)
    yield client
    client.channel.close()
    running.stop(grace=0)


@pytest.fixture
def settings_with_wrong_pin(settings: Settings) -> Settings:
    """The same settings, logging into the token with a wrong PIN."""
    return replace(settings, token=replace(settings.token, pin_from_env="0000"))


@pytest.fixture(scope="session")
def dev_root(token_config: TokenConfig) -> x509.Certificate:
    """The development root that issued the seal and TSA certificates."""
    return x509.load_pem_x509_certificate(
        (token_config.certs_dir / ROOT_CERT_FILE).read_bytes()
    )


@pytest.fixture
def tsa_authority(token_config: TokenConfig) -> Iterator[TimeStampAuthority]:
    """The built-in TSA of the session's token, on the machine's clock.

    Its token session closes after the test: PKCS#11 logins are per process,
    and a session left open would keep the process logged in.
    """
    token = Token(token_config)
    yield TimeStampAuthority.from_token(token, SystemClock())
    token.close()


@pytest.fixture
def tsa_server(
    tsa_authority: TimeStampAuthority, token_config: TokenConfig
) -> Iterator[TsaServer]:
    """The built-in TSA and the root's CRL over HTTP on a free loopback port."""
    with TsaServer(tsa_authority, token_config.certs_dir / ROOT_CRL_FILE) as server:
        yield server
