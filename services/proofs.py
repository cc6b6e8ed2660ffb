"""Proof documents: the four proofs of CPCE R.53-2 and R.53-3 as sealed PDFs.

Each proof is composed with reportlab as a bilingual (French, then English)
A4 document that states the R.53-2 items: both parties' names and e-mail
addresses, the letter number, the time of deposit in UTC and Paris time, and
the time the proof is about (acceptance, refusal, end of the window). The
same facts travel as a machine-readable ``evidence.json``, embedded with
pyHanko as a PDF 2.0 associated file of the document (relationship ``Data``)
and named after the ETSI EN 319 522-2 evidence event the proof attests, so an
auditor's tool reads the facts without parsing the page. The sealed ETSI REM
evidence of the events the proof attests (``pli.services.etsi_evidence``)
travels with it as further associated files. Each associated file is embedded
in the PDF/A-3 manner: its file specification carries ``/AFRelationship``
and is listed in the document catalog's ``/AF`` array (pyHanko's
``embed_file`` adds it there), besides the ``/EmbeddedFiles`` name tree.

Sealing comes last (``pli.hsm.pades``), as the final incremental update, so
the seal covers the page and the evidence alike; it is a PAdES baseline B-LT
seal, time-stamped and carrying its certificates and CRLs, so the proof
still validates long after they expired. Proofs are written to
``<proofs dir>/<letter id>/<proof kind>.pdf`` atomically; writing one again
replaces it, which makes re-running the proof builder harmless.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.embed import (
    EmbeddedFileObject,
    EmbeddedFileParams,
    FileSpec,
    embed_file,
)
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import copy_into_new_writer

from pli.domain.proofs import ProofKind
from pli.hsm.pades import PdfSealer
from pli.infrastructure.files import write_atomically
from pli.services.proof_facts import (
    EVIDENCE_FILE,
    EVIDENCE_FORMAT,
    ProofFacts,
    evidence_document,
    facts_from_evidence,
)
from pli.services.proof_page import (
    NON_QUALIFIED_LABEL,
    TITLES,
    compose_page,
    own_time_field,
)

__all__ = [
    "AssociatedFile",
    "EVIDENCE_FILE",
    "EVIDENCE_FORMAT",
    "NON_QUALIFIED_LABEL",
    "ProofFacts",
    "ProofKind",
    "ProofWriter",
    "evidence_document",
    "facts_from_evidence",
    "render_proof",
]


@dataclass(frozen=True)
class AssociatedFile:
    """A file a proof carries as an associated file of the whole document."""

    name: str
    data: bytes
    mime_type: str
    description: str


def render_proof(
    proof_kind: ProofKind | str,
    facts: ProofFacts,
    associated: Sequence[AssociatedFile] = (),
) -> bytes:
    """Compose the unsealed proof PDF, with ``evidence.json`` and ``associated``."""
    kind = ProofKind(proof_kind)
    # CPCE R.53-3 II and III: each proof states the time of the fact it proves.
    own_time = own_time_field(kind)
    if getattr(facts, own_time) is None:
        raise ValueError(f"a {kind.value} proof needs {own_time}")

    page = compose_page(kind, facts)

    evidence = json.dumps(evidence_document(kind, facts), ensure_ascii=False, indent=2)
    files = [
        AssociatedFile(
            EVIDENCE_FILE,
            evidence.encode("utf-8"),
            "application/json",
            "Machine-readable evidence (ETSI EN 319 522-2 semantics)",
        ),
        *associated,
    ]
    return _attach(page, files)


class ProofWriter:
    """Renders, seals and stores proofs under ``<proofs_dir>/<letter id>/``."""

    def __init__(self, sealer: PdfSealer, proofs_dir: Path) -> None:
        self.sealer = sealer
        self.proofs_dir = proofs_dir

    def path_for(self, proof_kind: ProofKind | str, letter_id: str) -> Path:
        """Where the proof of this kind for this letter is stored."""
        return self.proofs_dir / letter_id / f"{ProofKind(proof_kind).value}.pdf"

    def write(
        self,
        proof_kind: ProofKind | str,
        facts: ProofFacts,
        associated: Sequence[AssociatedFile] = (),
    ) -> Path:
        """Render, seal and store one proof, replacing any earlier copy."""
        kind = ProofKind(proof_kind)
        french, english = TITLES[kind]
        sealed = self.sealer.seal(
            render_proof(kind, facts, associated), reason=f"{french} / {english}"
        )

        path = self.path_for(kind, facts.letter_id)
        write_atomically(path, sealed)
        return path


def _attach(pdf: bytes, files: Sequence[AssociatedFile]) -> bytes:
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("associated files must have distinct names")
    writer = copy_into_new_writer(PdfFileReader(BytesIO(pdf)))
    # The /EmbeddedFiles name tree must list its keys in sorted order.
    for associated in sorted(files, key=lambda f: f.name):
        stream = EmbeddedFileObject.from_file_data(
            writer,
            associated.data,
            mime_type=associated.mime_type,
            params=EmbeddedFileParams(),
        )
        spec = FileSpec(
            file_spec_string=associated.name,
            file_name=associated.name,
            embedded_data=stream,
            description=associated.description,
            af_relationship=generic.pdf_name("/Data"),
        )
        embed_file(writer, spec)
    writer.root["/PageMode"] = generic.pdf_name("/UseAttachments")
    out = BytesIO()
    writer.write(out)
    return out.getvalue()
