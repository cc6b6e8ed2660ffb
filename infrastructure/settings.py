"""pli's configuration: one typed object read from ``PLI_*`` variables.

The embedded default needs no variable at all: SQLite, the SoftHSM token,
content, proofs and the ``.eml`` outbox all live under ``./var`` (or
``PLI_HOME``). Production sets ``PLI_DATABASE_URL`` to a PostgreSQL URL,
``PLI_PKCS11_MODULE`` to its HSM's module and ``PLI_SMTP_HOST`` to its mail
relay; the README lists every variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pli.hsm.token import TokenConfig
from pli.infrastructure.smtp import SmtpSettings

__all__ = ["Settings", "SettingsError"]

DEFAULT_MAIL_FROM = "pli <no-reply@pli.invalid>"
DEFAULT_ACCEPT_URL = "https://desk.pli.invalid/letters/{letter_id}/accept"
DEFAULT_REFUSE_URL = "https://desk.pli.invalid/letters/{letter_id}/refuse"


class SettingsError(ValueError):
    """A configuration variable has a value pli cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything a pli process needs to know about its surroundings."""

    home: Path
    database_url: str
    listen: str
    provider_name: str
    token: TokenConfig
    poll_interval: float
    development_clock: bool
    oidc_issuers: Path | None = None
    content_retention_days: int | None = None
    mail_from: str = DEFAULT_MAIL_FROM
    desk_accept_url_template: str = DEFAULT_ACCEPT_URL
    desk_refuse_url_template: str = DEFAULT_REFUSE_URL
    smtp: SmtpSettings | None = None
    checkpoint_interval: float = 300.0

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from the environment, with embedded defaults."""
        home = Path(os.environ.get("PLI_HOME", "var")).resolve()
        interval = os.environ.get("PLI_POLL_INTERVAL", "0.2")
        try:
            poll_interval = float(interval)
        except ValueError as exc:
            raise SettingsError(f"PLI_POLL_INTERVAL={interval!r} is no number") from exc
        return cls(
            home=home,
            database_url=os.environ.get("PLI_DATABASE_URL", ""),
            listen=os.environ.get("PLI_LISTEN", "127.0.0.1:50051"),
            provider_name=os.environ.get(
                "PLI_PROVIDER_NAME", "pli (development, non-qualified)"
            ),
            token=TokenConfig.from_env(home),
            poll_interval=poll_interval,
            development_clock=os.environ.get("PLI_DEVELOPMENT_CLOCK", "") == "1",
            oidc_issuers=_optional_path("PLI_OIDC_ISSUERS"),
            content_retention_days=_retention_days(),
            mail_from=os.environ.get("PLI_MAIL_FROM", DEFAULT_MAIL_FROM),
            desk_accept_url_template=_desk_template("ACCEPT", DEFAULT_ACCEPT_URL),
            desk_refuse_url_template=_desk_template("REFUSE", DEFAULT_REFUSE_URL),
            smtp=_smtp_settings(),
            checkpoint_interval=_checkpoint_interval(),
        )

    @property
    def is_embedded(self) -> bool:
        """Whether this is the embedded default (SQLite under the home)."""
        return not self.database_url

    @property
    def content_dir(self) -> Path:
        """Where letters' content is stored, addressed by SHA-256."""
        return self.home / "content"

    @property
    def proofs_dir(self) -> Path:
        """Where proof PDFs are written, one folder per letter."""
        return self.home / "proofs"

    @property
    def dev_idp_dir(self) -> Path:
        """Where the development identity provider keeps its key and JWKS."""
        return self.home / "dev-idp"

    @property
    def outbox_dir(self) -> Path:
        """Where the embedded notifier writes its ``.eml`` messages."""
        return self.home / "outbox"

    def eventsourcing_env(self) -> dict[str, str]:
        """The ``eventsourcing`` persistence settings for this database."""
        if self.is_embedded:
            self.home.mkdir(parents=True, exist_ok=True)
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.home / "pli.sqlite3"),
                "SQLITE_LOCK_TIMEOUT": "10",
            }
        url = urlsplit(self.database_url)
        if url.scheme not in ("postgresql", "postgres") or not url.path.strip("/"):
            raise SettingsError(
                "PLI_DATABASE_URL must look like postgresql://user@host:port/dbname"
            )
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(url.path.strip("/")),
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
            "POSTGRES_POOL_SIZE": os.environ.get("PLI_DATABASE_POOL_SIZE", "10"),
            "POSTGRES_MAX_OVERFLOW": "10",
            "POSTGRES_CONNECT_TIMEOUT": "5",
        }
        return env


def _optional_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value).resolve() if value else None


def _checkpoint_interval() -> float:
    value = os.environ.get("PLI_CHECKPOINT_INTERVAL", "300")
    try:
        interval = float(value)
    except ValueError:
        interval = -1.0
    if not 0 < interval < float("inf"):
        raise SettingsError(
            f"PLI_CHECKPOINT_INTERVAL={value!r} is not a positive number of seconds"
        )
    return interval


def _retention_days() -> int | None:
    value = os.environ.get("PLI_CONTENT_RETENTION_DAYS", "")
    if not value:
        return None
    if not value.isdigit():
        raise SettingsError(
            f"PLI_CONTENT_RETENTION_DAYS={value!r} is not a whole number of days"
        )
    return int(value)


def _desk_template(decision: str, default: str) -> str:
    """A desk link template; ``PLI_DESK_URL_TEMPLATE`` serves both decisions."""
    name = f"PLI_DESK_{decision}_URL_TEMPLATE"
    template = os.environ.get(name) or os.environ.get("PLI_DESK_URL_TEMPLATE")
    if not template:
        return default
    try:
        link = template.format(letter_id="00000000-0000-0000-0000-000000000000")
    except (KeyError, IndexError, ValueError) as exc:
        raise SettingsError(
            f"{name} may hold no placeholder but {{letter_id}}"
        ) from exc
    if link == template:
        raise SettingsError(f"{name} must contain {{letter_id}}")
    return template


def _smtp_settings() -> SmtpSettings | None:
    try:
        return SmtpSettings.from_env()
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
