"""Which key of the token signs for each role, as the signers find it at runtime.

The key ceremony log (``pli.domain.key_ceremony``) is the record of every
key; this module is the pointer the signers follow: ``active.json`` beside
the certificates names the active key of each role by token label and key
id. The ceremony commands rewrite it after every recorded ceremony, so it is
a projection of the log. A file, rather than the database or the token, because
the signers (``EventSealer``, ``PdfSealer``, the built-in TSA) live below the
event store and must keep working without it, because an auditor's offline
bundle carries the certificates folder whole, and because a token offers no
portable attribute that says "active". A signer re-reads the file when it
changes, so a running server follows a rotation without a restart.

Without ``active.json`` (a token set up by ``pli hsm init`` and not rotated
since) each role's key is the one ``pli hsm init`` created: ``pli-seal``
certified by ``seal.pem``, ``pli-tsa`` certified by ``tsa.pem``. A rotated
key ``pli-seal.2`` is certified by ``seal.2.pem``; its chain, leaf first, is
``chains/pli-seal.2.pem``; certificates replaced for the same key are kept in
``archive/`` under their SHA-256 fingerprint.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from pli.domain.key_ceremony import KeyRole
from pli.hsm.provision import ROOT_CERT_FILE
from pli.hsm.token import SEAL_KEY_LABEL, TSA_KEY_LABEL, TokenUnavailable

__all__ = [
    "ACTIVE_KEYS_FILE",
    "DEFAULT_LABELS",
    "TSA_LABEL",
    "ActiveKey",
    "ActiveKeyWatcher",
    "NoActiveKey",
    "certificate_file",
    "chain_file",
    "installed_chain",
    "read_active_keys",
    "write_active_keys",
]

ACTIVE_KEYS_FILE = "active.json"
_FORMAT = "pli-active-keys/1"
_FIELDS = ("label", "key_id")
TSA_LABEL = TSA_KEY_LABEL
DEFAULT_LABELS = {KeyRole.SEAL: SEAL_KEY_LABEL, KeyRole.TSA: TSA_LABEL}


class NoActiveKey(TokenUnavailable):
    """A role has no active key (it was retired), so nothing can be signed."""


@dataclass(frozen=True)
class ActiveKey:
    """The key that signs for a role, and where its certificates are."""

    role: KeyRole
    label: str
    key_id: str | None  # None: the default key, not named by active.json
    certificate: Path
    chain: Path | None  # None: leaf and development root (root.pem)


def certificate_file(certs_dir: Path, label: str) -> Path:
    """The leaf certificate of the key with this label: ``pli-seal.2`` → seal.2.pem."""
    return certs_dir / f"{label.removeprefix('pli-')}.pem"


def chain_file(certs_dir: Path, label: str) -> Path:
    """The key's chain, leaf first, as installed."""
    return certs_dir / "chains" / f"{label}.pem"


def _active(
    certs_dir: Path, role: KeyRole, label: str, key_id: str | None
) -> ActiveKey:
    chain = chain_file(certs_dir, label)
    return ActiveKey(
        role=role,
        label=label,
        key_id=key_id,
        certificate=certificate_file(certs_dir, label),
        chain=chain if chain.exists() else None,
    )


def installed_chain(certs_dir: Path, label: str) -> list[x509.Certificate]:
    """The key's chain, leaf first: as installed, or leaf and development root."""
    chain = chain_file(certs_dir, label)
    try:
        if chain.exists():
            return x509.load_pem_x509_certificates(chain.read_bytes())
        leaf = certificate_file(certs_dir, label).read_bytes()
        root = (certs_dir / ROOT_CERT_FILE).read_bytes()
        return x509.load_pem_x509_certificates(leaf + root)
    except (OSError, ValueError) as exc:
        raise TokenUnavailable(f"no readable certificate chain for {label}") from exc


def read_active_keys(certs_dir: Path) -> dict[KeyRole, ActiveKey | None]:
    """Each role's active key; ``None`` for a role whose keys are all retired."""
    path = certs_dir / ACTIVE_KEYS_FILE
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {
            role: _active(certs_dir, role, label, None)
            for role, label in DEFAULT_LABELS.items()
        }
    except (OSError, ValueError) as exc:
        raise TokenUnavailable(f"{path} is unreadable") from exc
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise TokenUnavailable(f"{path} is not a {_FORMAT} document")
    roles = document.get("roles")
    if not isinstance(roles, dict):
        raise TokenUnavailable(f"{path} names no roles")
    keys: dict[KeyRole, ActiveKey | None] = {}
    for role in KeyRole:
        if role.value not in roles:
            keys[role] = _active(certs_dir, role, DEFAULT_LABELS[role], None)
            continue
        entry = roles[role.value]
        if entry is None:
            keys[role] = None
            continue
        try:
            keys[role] = _active(
                certs_dir, role, str(entry["label"]), str(entry["key_id"])
            )
        except (KeyError, TypeError) as exc:
            raise TokenUnavailable(f"{path} names no key for {role}") from exc
    return keys


def write_active_keys(
    certs_dir: Path, labels: dict[KeyRole, tuple[str, str] | None]
) -> None:
    """Replace ``active.json`` atomically.

    ``labels`` maps a role to its active key's (label, key id), or to None when
    the role's keys are all retired; a role it omits keeps its default key.
    """
    document = {
        "format": _FORMAT,
        "roles": {role.value: _entry(entry) for role, entry in sorted(labels.items())},
    }
    certs_dir.mkdir(parents=True, exist_ok=True)
    path = certs_dir / ACTIVE_KEYS_FILE
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    with open(scratch, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(scratch, path)


def _entry(entry: tuple[str, str] | None) -> dict[str, str] | None:
    return None if entry is None else dict(zip(_FIELDS, entry, strict=True))


class ActiveKeyWatcher:
    """Follows ``active.json`` for one role, re-reading it only when it changes."""

    def __init__(self, certs_dir: Path, role: KeyRole) -> None:
        self.certs_dir = certs_dir
        self.role = role
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._key: ActiveKey | None = None
        self.generation = 0  # counts the reads: a signer re-opens when it moves

    def current(self) -> ActiveKey:
        """The role's active key; raises NoActiveKey when it has none."""
        stamp = self._file_stamp()
        with self._lock:
            if self._key is None or stamp != self._stamp:
                self._key = read_active_keys(self.certs_dir)[self.role]
                self._stamp = stamp
                self.generation += 1
                if self._key is None:
                    raise NoActiveKey(f"no active {self.role} key; rotate to make one")
            return self._key

    def _file_stamp(self) -> tuple[int, int, int]:
        try:
            info = os.stat(self.certs_dir / ACTIVE_KEYS_FILE)
        except FileNotFoundError:
            return (0, 0, 0)
        return (info.st_ino, info.st_mtime_ns, info.st_size)
