"""The ``pli`` command: token set-up, the server, the TSA, the audit, the log,
compliance bundles, one-shot processes."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from pli.compliance.audit import AuditReport, StampTrust, audit
from pli.domain.clock import FixedClock
from pli.hsm.provision import ROOT_CRL_FILE
from pli.hsm.qualification import QualificationError
from pli.hsm.token import TokenUnavailable
from pli.infrastructure.checkpointer import EmptyLog
from pli.infrastructure.checkpoints import MalformedCheckpoint
from pli.infrastructure.files import write_new
from pli.infrastructure.settings import Settings, SettingsError
from pli.services.hsm_cli import add_hsm_commands

__all__ = ["main"]

logger = logging.getLogger("pli")


def _serve(settings: Settings, _: argparse.Namespace) -> int:
    from pli.services.server import start_server

    running = start_server(settings)
    print(f"pli serving pli.v1 on {settings.listen}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    running.stop()
    return 0


def _tsa_serve(settings: Settings, _: argparse.Namespace) -> int:
    from pli.hsm.token import Token
    from pli.hsm.tsa import TimeStampAuthority
    from pli.infrastructure.clock import SystemClock
    from pli.infrastructure.tsa_server import TsaServer

    token = Token(settings.token)
    authority = TimeStampAuthority.from_token(token, SystemClock())
    server = TsaServer(
        authority,
        settings.token.certs_dir / ROOT_CRL_FILE,
        host=settings.tsa.listen_host,
        port=settings.tsa.listen_port,
    )
    try:
        url = server.start()
    except OSError as exc:
        print(f"pli: cannot listen on {server.url}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"pli built-in TSA (non-qualified) serving on {url}", flush=True)
    print(f"CRL of the development root at {server.crl_url}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    token.close()
    return 0


def _audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    from pli.services.audit_api import read_checkpoint
    from pli.services.runtime import Runtime

    against = None
    if args.against and args.no_projections:
        print(
            "pli: --against needs the log rebuilt; drop --no-projections",
            file=sys.stderr,
        )
        return 2
    if args.against:
        try:
            against = read_checkpoint(Path(args.against).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, MalformedCheckpoint) as exc:
            print(f"pli: --against {args.against}: {exc}", file=sys.stderr)
            return 2
    stamps = StampTrust.from_settings(settings)
    runtime = Runtime.open(settings)
    try:
        report = audit(
            runtime.letters,
            runtime.views,
            runtime.log,
            stamps=stamps,
            against=against,
            progress=None if args.quiet else _progress,
            progress_every=args.progress_every,
            projections=not args.no_projections,
        )
    finally:
        runtime.close()
    for fault in report.faults:
        print(fault)
    for note in report.notes:
        print(note)
    verdict = "clean" if report.clean else f"{len(report.faults)} fault(s)"
    if report.notes:
        verdict += f", {len(report.notes)} note(s)"
    extends = ""
    if against is not None and report.clean:
        extends = f", extends the auditor's checkpoint of size {against.size}"
    if args.no_projections:
        rebuilt = "no projection rebuilt (--no-projections)"
        letters = ""
    else:
        rebuilt = (
            f"{report.views_compared} views compared, "
            f"{report.log_leaves} log leaves and {report.checkpoints} checkpoints "
            f"({report.checkpoint_stamps} time-stamped) checked"
        )
        letters = f" ({report.letters} letters)"
    print(
        f"audit: {report.events} events of {report.aggregates} aggregates"
        f"{letters} checked, {_stamps_and_keys(report)}, {rebuilt}{extends}: "
        f"{verdict}"
    )
    return 0 if report.clean else 1


def _stamps_and_keys(report: AuditReport) -> str:
    return (
        f"{report.stamps} time stamps checked, the keys of {report.seal_keys} "
        f"seals and {report.tsa_keys} stamps checked against "
        f"{report.ceremonies} key ceremony events"
    )


def _compliance_export(settings: Settings, args: argparse.Namespace) -> int:
    from pli.compliance.bundle import BundleError, export_bundle
    from pli.compliance.bundle_format import Period, PeriodError
    from pli.hsm.seal import EventSealer
    from pli.infrastructure.timestamps import TimeStampUnavailable
    from pli.infrastructure.transparency import UnreadableEvent
    from pli.services.runtime import Runtime

    try:
        period = Period.parse(args.start, args.end, ("--from", "--to"))
    except PeriodError as exc:
        print(f"pli: {exc}", file=sys.stderr)
        return 2
    runtime = Runtime.open(settings)
    try:
        runtime.log_appender.run_until_idle()
        result = export_bundle(
            runtime.letters,
            settings,
            EventSealer(runtime.token),
            period,
            Path(args.out),
            checkpointer=runtime.checkpointer,
            sample_size=args.proofs,
        )
    except (BundleError, TimeStampUnavailable, UnreadableEvent) as exc:
        print(f"pli: {exc}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    print(
        f"bundle {result.path}: {result.events} events, {result.size} bytes, "
        f"SHA-256 {result.sha256}"
    )
    if result.checkpoint is not None:
        print(
            f"bound to the log's checkpoint of size {result.checkpoint.size}, "
            f"root {result.checkpoint.root.hex()}"
        )
    return 0


def _progress(report: AuditReport) -> None:
    print(
        f"audit: {report.events} events checked so far, {_stamps_and_keys(report)}",
        file=sys.stderr,
        flush=True,
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _log_checkpoint(settings: Settings, args: argparse.Namespace) -> int:
    from pli.services.runtime import Runtime

    if args.out:
        out = Path(args.out)
        if out.exists() or not out.parent.is_dir():
            reason = "it exists" if out.exists() else "its folder does not exist"
            print(f"pli: will not write {args.out}: {reason}", file=sys.stderr)
            return 2
    runtime = Runtime.open(settings)
    try:
        appended = runtime.log_appender.run_until_idle()
        checkpoint = runtime.checkpointer.checkpoint_now()
    except EmptyLog as exc:
        print(f"pli: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    document = json.dumps(checkpoint.to_json(), indent=2) + "\n"
    if args.out:
        try:
            write_new(Path(args.out), document.encode())
        except OSError as exc:
            print(f"pli: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
    else:
        print(document, end="")
    print(
        f"log: {appended} event(s) appended; checkpoint of size {checkpoint.size}, "
        f"root {checkpoint.root.hex()}",
        file=sys.stderr,
    )
    return 0


def _compliance_verify(_: Settings | None, args: argparse.Namespace) -> int:
    from pli.compliance.bundle_trust import load_trust_root
    from pli.compliance.verify_bundle import UnusableBundle, verify_bundle

    root = None
    if args.trust:
        try:
            root = load_trust_root(Path(args.trust).read_bytes())
        except (OSError, ValueError) as exc:
            print(f"pli: --trust {args.trust}: unreadable ({exc})", file=sys.stderr)
            return 2
    try:
        verification = verify_bundle(Path(args.bundle), root)
    except UnusableBundle as exc:
        print(f"pli: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(verification.to_json(), indent=2, default=str))
    else:
        print(verification.render())
    return 0 if verification.clean else 1


def _sample_size(text: str) -> int:
    from pli.compliance.bundle import MAX_SAMPLE_SIZE

    if not text.isdigit() or int(text) > MAX_SAMPLE_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 to {MAX_SAMPLE_SIZE}"
        )
    return int(text)


def _expire(settings: Settings, args: argparse.Namespace) -> int:
    from pli.services.runtime import Runtime

    clock = None
    if args.at:
        if not (settings.is_embedded or settings.development_clock):
            print(
                "pli: --at moves the clock; it is allowed only on the embedded "
                "default or with PLI_DEVELOPMENT_CLOCK=1",
                file=sys.stderr,
            )
            return 2
        clock = FixedClock(args.at)
    runtime = Runtime.open(settings, clock)
    try:
        runtime.projector.run_until_idle()
        expired = runtime.expirer.run_once()
    finally:
        runtime.close()
    print(f"expired {expired} letter(s)")
    return 0


def _dev_id_token(settings: Settings, args: argparse.Namespace) -> int:
    from pli.infrastructure.dev_idp import DevIdentityProvider

    provider = DevIdentityProvider(settings.dev_idp_dir)
    provider.ensure()
    token = provider.issue(
        given_name=args.given_name,
        family_name=args.family_name,
        birthdate=args.birthdate,
        acr=args.acr,
        nonce=args.nonce,
        at=dt.datetime.now(dt.UTC),
        siret=args.siret,
    )
    print(token)
    print(
        f"development identity provider (non-qualified); trust it with "
        f"PLI_OIDC_ISSUERS={provider.issuers_file}",
        file=sys.stderr,
    )
    return 0


def _birthdate(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YYYY-MM-DD date") from exc


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from pli.services.demo import run_demo

    return run_demo(settings, args.letter)


def _instant(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 instant"
        ) from exc
    if moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset, e.g. +01:00")
    return moment.astimezone(dt.UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pli", description="Core of a qualified registered delivery service."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_hsm_commands(commands)
    commands.add_parser("serve", help="serve pli.v1 over gRPC").set_defaults(run=_serve)
    tsa = commands.add_parser("tsa", help="the built-in time-stamping authority")
    tsa_commands = tsa.add_subparsers(dest="tsa_command", required=True)
    tsa_commands.add_parser(
        "serve",
        help="serve RFC 3161 time stamps (non-qualified) and the root's CRL "
        "over HTTP on PLI_TSA_LISTEN until SIGINT or SIGTERM",
    ).set_defaults(run=_tsa_serve)
    audit_parser = commands.add_parser("audit", help="auditors' tools")
    audit_commands = audit_parser.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="replay and check every event, view, the log and checkpoints"
    )
    verify.add_argument(
        "--against",
        metavar="FILE",
        help="an auditor's earlier checkpoint (JSON) the log must extend",
    )
    verify.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr"
    )
    verify.add_argument(
        "--no-projections",
        action="store_true",
        help="check the stored events only (seals, links, stamps, keys); "
        "rebuild no view and no log",
    )
    verify.add_argument(
        "--progress-every",
        type=_positive,
        default=10_000,
        metavar="N",
        help="a progress line every N events (default 10000)",
    )
    verify.set_defaults(run=_audit_verify)
    log = commands.add_parser("log", help="the transparency log")
    log_commands = log.add_subparsers(dest="log_command", required=True)
    checkpoint = log_commands.add_parser(
        "checkpoint", help="bring the log up to date and seal a checkpoint of it"
    )
    checkpoint.add_argument(
        "--out", metavar="FILE", help="write the checkpoint's JSON here"
    )
    checkpoint.set_defaults(run=_log_checkpoint)
    _compliance_commands(commands)
    expire = commands.add_parser("expire", help="record every overdue non-claim")
    expire.add_argument(
        "--at",
        type=_instant,
        help="ISO 8601 instant with its offset, e.g. 2027-01-10T00:00:00+01:00 "
        "(development clock only)",
    )
    expire.set_defaults(run=_expire)
    dev = commands.add_parser("dev", help="development helpers (non-qualified)")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    id_token = dev_commands.add_parser(
        "id-token",
        help="sign an ID token with the development identity provider",
    )
    id_token.add_argument("--given-name", required=True)
    id_token.add_argument("--family-name", required=True)
    id_token.add_argument("--birthdate", type=_birthdate)
    id_token.add_argument(
        "--acr", default="eidas2", help="eidas1, eidas2 or eidas3 (default eidas2)"
    )
    id_token.add_argument(
        "--nonce", required=True, help="the nonce BeginIdentification returned"
    )
    id_token.add_argument("--siret", help="the company a representative acts for")
    id_token.set_defaults(run=_dev_id_token)
    demo = commands.add_parser("demo", help="run the demo against a real server")
    demo.add_argument("--letter", help="file to deliver instead of the formal notice")
    demo.set_defaults(run=_demo)
    return parser


def _compliance_commands(commands: argparse._SubParsersAction) -> None:
    compliance = commands.add_parser("compliance", help="compliance bundles")
    actions = compliance.add_subparsers(dest="compliance_command", required=True)
    export = actions.add_parser(
        "export", help="write the sealed bundle of a period [from, to)"
    )
    export.add_argument(
        "--from",
        dest="start",
        required=True,
        help="a date (midnight UTC) or an ISO 8601 instant with its offset",
    )
    export.add_argument(
        "--to", dest="end", required=True, help="end of the period, excluded"
    )
    export.add_argument(
        "--proofs",
        type=_sample_size,
        default=10,
        help="how many sealed proofs to sample (default 10)",
    )
    export.add_argument("out", help="the bundle file to create (.zip)")
    export.set_defaults(run=_compliance_export)
    verify = actions.add_parser(
        "verify", help="check a bundle offline: no database, no token, no network"
    )
    verify.add_argument("bundle", help="the bundle file")
    verify.add_argument("--json", action="store_true", help="report as JSON")
    verify.add_argument(
        "--trust", help="the root certificate (PEM or DER) the auditor trusts"
    )
    verify.set_defaults(run=_compliance_verify, offline=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pli`` command."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # PDF seals gather their validation data offline on purpose
    # (pli.hsm.long_term); pyHanko would warn about that at every seal.
    logging.getLogger("pyhanko.sign.signers.pdf_signer").addFilter(
        lambda record: "fetching is not allowed" not in record.getMessage()
    )
    args = _parser().parse_args(argv)
    try:
        # An offline command reads no setting, so any machine can run it.
        settings = None if getattr(args, "offline", False) else Settings.from_env()
        return int(args.run(settings, args))
    except (SettingsError, TokenUnavailable, QualificationError) as exc:
        print(f"pli: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
