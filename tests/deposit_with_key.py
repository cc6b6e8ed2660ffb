"""Deposit one ERE letter sealed, or stamped, by a fixed key of the token.

Run as ``python deposit_with_key.py KEY [--seal-label L] [--tsa-label L]`` with
``PLI_HOME`` set, in a process of its own (SoftHSM2 reads its configuration
once per process). The letter goes through the ordinary Python API, but its
events are sealed by the seal key labelled ``--seal-label`` and stamped by the
built-in TSA with the key labelled ``--tsa-label`` whatever the ceremony log
says, as a server that missed a rotation, or someone with the token, would.
Prints the letter id.
"""

from __future__ import annotations

import argparse

from cryptography import x509
from deposit_letters import ensure_account, ere_request

from pli.hsm.keys import certificate_file, installed_chain
from pli.hsm.seal import EventSealer, SealVerifier
from pli.hsm.timestamp import NON_QUALIFIED_POLICY
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure.content import ContentStore
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.settings import Settings
from pli.infrastructure.stamping import TreeStamper
from pli.infrastructure.timestamps import LocalTimeStampClient, time_stamp_source
from pli.services.runtime import Runtime


def fixed_letters(
    runtime: Runtime, seal_label: str | None, tsa_label: str | None
) -> LetterApplication:
    """A letters application on the same store, with the keys asked for."""
    settings = runtime.settings
    certs = settings.token.certs_dir
    sealer = EventSealer(runtime.token)
    if seal_label is not None:
        certificate = x509.load_pem_x509_certificate(
            certificate_file(certs, seal_label).read_bytes()
        )
        sealer = EventSealer(runtime.token, certificate, key_label=seal_label)
    source = time_stamp_source(settings, runtime.token, runtime.clock)
    if tsa_label is not None:
        chain = installed_chain(certs, tsa_label)
        authority = TimeStampAuthority(
            runtime.token,
            certificate=chain[0],
            chain=chain[1:],
            policy=NON_QUALIFIED_POLICY,
            clock=runtime.clock,
            key_label=tsa_label,
        )
        source = LocalTimeStampClient(
            authority, trust_roots=settings.tsa.trust_roots(certs)
        )
    return LetterApplication(
        settings.eventsourcing_env(),
        sealer=sealer,
        verifier=SealVerifier.from_dir(certs),
        clock=runtime.clock,
        content=ContentStore(settings.content_dir),
        stamper=TreeStamper(source),
    )


def main() -> None:
    """Deposit the letter, then let the log and the other processes catch up."""
    parser = argparse.ArgumentParser()
    parser.add_argument("key")
    parser.add_argument("--seal-label")
    parser.add_argument("--tsa-label")
    args = parser.parse_args()
    runtime = Runtime.open(Settings.from_env())
    try:
        ensure_account(runtime)
        letters = fixed_letters(runtime, args.seal_label, args.tsa_label)
        request = ere_request(args.key)
        letter, _ = letters.deposit(args.key, request, runtime.authoriser(request, ""))
        letters.close()
        print(letter.id)
        runtime.runner.run_until_idle()
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
