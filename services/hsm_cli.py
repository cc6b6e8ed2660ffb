"""``pli hsm …``: the token's set-up and key ceremonies, from the command line.

``init`` creates the token and its keys and records the first ceremonies;
``csr``, ``import-cert``, ``rotate`` and ``retire`` are the ceremonies an
operator conducts later; ``keys`` lists what the ceremony log holds. Each
ceremony names its operator: ``--operator``, else ``$PLI_OPERATOR``, else the
user running the command. Every refusal is one line on stderr and exit 2,
with nothing changed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from pli.domain.errors import DomainError
from pli.domain.key_ceremony import KeyRecord, KeyRole
from pli.hsm.ceremony import SubjectProblem
from pli.hsm.chains import CertificateProblem
from pli.hsm.keys import read_active_keys
from pli.hsm.provision import initialise_token
from pli.hsm.qualification import QualificationError
from pli.infrastructure.event_store import ConcurrentChange
from pli.infrastructure.files import write_new
from pli.infrastructure.key_ceremonies import KeyCeremonies
from pli.infrastructure.settings import Settings

__all__ = ["add_hsm_commands"]

_REFUSALS = (
    CertificateProblem,
    SubjectProblem,
    DomainError,
    QualificationError,
    ConcurrentChange,
)


def _operator(args: argparse.Namespace) -> str:
    if args.operator:
        return str(args.operator)
    if os.environ.get("PLI_OPERATOR"):
        return os.environ["PLI_OPERATOR"]
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""  # refused by the ceremony: the operator must be named


def _with_ceremonies(settings: Settings, act: Any) -> int:
    from pli.services.runtime import Runtime

    try:
        runtime = Runtime.open(settings)
    except QualificationError as exc:
        print(f"pli: {exc}", file=sys.stderr)
        return 2
    try:
        ceremonies = KeyCeremonies(
            runtime.letters,
            runtime.token,
            runtime.clock,
            runtime.qualified_roots,
            settings.tsa.trust_roots(settings.token.certs_dir),
        )
        return int(act(ceremonies))
    except _REFUSALS as exc:
        print(f"pli: {exc}", file=sys.stderr)
        return 2
    finally:
        runtime.close()


def _init(settings: Settings, args: argparse.Namespace) -> int:
    created = initialise_token(settings.token)
    for line in created:
        print(f"created {line}")

    def record(ceremonies: KeyCeremonies) -> int:
        for key in ceremonies.record_initialised_keys(_operator(args)):
            print(f"recorded key {key.label} ({key.role}, {key.status}) {key.key_id}")
        return 0

    status = _with_ceremonies(settings, record)
    if not created and status == 0:
        print(f"token {settings.token.token_label} already set up; nothing to do")
    print(f"certificates: {settings.token.certs_dir}")
    return status


def _csr(settings: Settings, args: argparse.Namespace) -> int:
    def request(ceremonies: KeyCeremonies) -> int:
        key, pem = ceremonies.certification_request(
            KeyRole(args.key), args.subject, args.label
        )
        if args.out == "-":
            sys.stdout.write(pem.decode())
            return 0
        try:
            write_new(Path(args.out), pem)
        except OSError as exc:
            print(f"pli: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"request for key {key.label} ({key.status}) written to {args.out}")
        return 0

    return _with_ceremonies(settings, request)


def _import_cert(settings: Settings, args: argparse.Namespace) -> int:
    try:
        pem = Path(args.chain).read_bytes()
    except OSError as exc:
        print(f"pli: cannot read {args.chain}: {exc.strerror}", file=sys.stderr)
        return 2

    def install(ceremonies: KeyCeremonies) -> int:
        key = ceremonies.import_chain(KeyRole(args.key), pem, _operator(args))
        print(f"certificate installed for key {key.label}: {_describe(key)}")
        return 0

    return _with_ceremonies(settings, install)


def _rotate(settings: Settings, args: argparse.Namespace) -> int:
    def rotate(ceremonies: KeyCeremonies) -> int:
        rotation = ceremonies.rotate(KeyRole(args.key), _operator(args))
        key = rotation.key
        print(f"generated key {key.label} ({key.role}) {key.key_id}")
        if rotation.retired is not None:
            print(f"retired key {rotation.retired.label}; it still verifies")
        if key.certificate is None:
            print(
                f"key {key.label} is pending: pli hsm csr --key {key.role} "
                f"--subject ... OUT, then pli hsm import-cert --key {key.role} CHAIN"
            )
        else:
            print(f"key {key.label} is active: {_describe(key)}")
        return 0

    return _with_ceremonies(settings, rotate)


def _retire(settings: Settings, args: argparse.Namespace) -> int:
    def retire(ceremonies: KeyCeremonies) -> int:
        key = ceremonies.retire(KeyRole(args.key), _operator(args), args.label)
        print(f"retired key {key.label} ({key.role}); it still verifies")
        return 0

    return _with_ceremonies(settings, retire)


def _keys(settings: Settings, _: argparse.Namespace) -> int:
    def show(ceremonies: KeyCeremonies) -> int:
        keys = ceremonies.keys()
        if not keys:
            print("no key ceremony recorded; run pli hsm init")
            return 0
        active = read_active_keys(settings.token.certs_dir)
        for key in keys:
            print(f"{key.label}\t{key.role}\t{key.status}\t{_describe(key)}")
            print(f"  key id {key.key_id} ({key.algorithm})")
            print(f"  generated {key.generated_at.isoformat()} by {key.generated_by}")
            if key.certificate is not None:
                print(f"  issuer {key.certificate.issuer}")
                print(f"  certificate sha256 {key.certificate.fingerprints[0]}")
        for role, current in active.items():
            recorded = [k for k in keys if k.role is role and k.status == "active"]
            recorded_label = recorded[0].label if recorded else None
            current_label = current.label if current else None
            if recorded and recorded_label != current_label:
                print(
                    f"warning: the signers use {current_label} for {role}, the log "
                    f"says {recorded_label}; run pli hsm init to repair",
                    file=sys.stderr,
                )
        return 0

    return _with_ceremonies(settings, show)


def _describe(key: KeyRecord) -> str:
    if key.certificate is None:
        return "no certificate"
    return "qualified" if key.qualified else "non-qualified"


def add_hsm_commands(commands: Any) -> None:
    """Add ``pli hsm`` and its subcommands to the ``pli`` parser."""
    hsm = commands.add_parser("hsm", help="the PKCS#11 token and its key ceremonies")
    hsm_commands = hsm.add_subparsers(dest="hsm_command", required=True)
    roles = [role.value for role in KeyRole]

    def command(name: str, help_text: str, run: Any, *, role: bool = True) -> Any:
        parser = hsm_commands.add_parser(name, help=help_text)
        if role:
            parser.add_argument("--key", required=True, choices=roles, help="key role")
        parser.set_defaults(run=run)
        return parser

    def ceremony(parser: Any) -> None:
        parser.add_argument(
            "--operator",
            help="who conducts the ceremony (default: $PLI_OPERATOR, or the user)",
        )

    ceremony(
        command(
            "init",
            "create the token, keys and development certificates; record them",
            _init,
            role=False,
        )
    )
    csr = command("csr", "write a PKCS#10 request for the role's key", _csr)
    csr.add_argument("--subject", required=True, help='e.g. "CN=...,O=...,C=FR"')
    csr.add_argument("--label", help="a key other than the pending or active one")
    csr.add_argument("out", metavar="OUT", help="file to write, or - for stdout")
    install = command(
        "import-cert", "install the operator's chain for the role's key", _import_cert
    )
    install.add_argument("chain", metavar="CHAIN.pem", help="leaf first, then CAs")
    ceremony(install)
    ceremony(command("rotate", "generate the role's next key", _rotate))
    retire = command("retire", "stop the role's active key from signing", _retire)
    retire.add_argument("--label", help="retire this key instead of the active one")
    ceremony(retire)
    command("keys", "list the recorded keys", _keys, role=False)
