"""Proof documents: the four proofs of CPCE R.53-2 and R.53-3 as sealed PDFs.

Each proof is composed with reportlab as a bilingual (French, then English)
A4 document that states the R.53-2 items: both parties' names and e-mail
addresses, the letter number, the time of deposit in UTC and Paris time, and
the time the proof is about (acceptance, refusal, end of the window). The
same facts travel as a machine-readable ``evidence.json``, embedded with
pyHanko as a PDF 2.0 associated file of the document (relationship ``Data``)
and named after the ETSI EN 319 522-2 evidence event the proof attests, so an
auditor's tool reads the facts without parsing the page.

Sealing comes last (``pli.hsm.pades``), as the final incremental update, so
the seal covers the page and the evidence alike. Proofs are written to
``<proofs dir>/<letter id>/<proof kind>.pdf`` atomically; writing one again
replaces it, which makes re-running the proof builder harmless.
"""

from __future__ import annotations

import json
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


def render_proof(proof_kind: ProofKind | str, facts: ProofFacts) -> bytes:
    """Compose the unsealed proof PDF, with ``evidence.json`` attached."""
    kind = ProofKind(proof_kind)
    # CPCE R.53-3 II and III: each proof states the time of the fact it proves.
    own_time = own_time_field(kind)
    if getattr(facts, own_time) is None:
        raise ValueError(f"a {kind.value} proof needs {own_time}")

    page = compose_page(kind, facts)

    evidence = json.dumps(evidence_document(kind, facts), ensure_ascii=False, indent=2)
    return _attach_evidence(page, evidence.encode("utf-8"))


class ProofWriter:
    """Renders, seals and stores proofs under ``<proofs_dir>/<letter id>/``."""

    def __init__(self, sealer: PdfSealer, proofs_dir: Path) -> None:
        self.sealer = sealer
        self.proofs_dir = proofs_dir

    def path_for(self, proof_kind: ProofKind | str, letter_id: str) -> Path:
        """Where the proof of this kind for this letter is stored."""
        return self.proofs_dir / letter_id / f"{ProofKind(proof_kind).value}.pdf"

    def write(self, proof_kind: ProofKind | str, facts: ProofFacts) -> Path:
        """Render, seal and store one proof, replacing any earlier copy."""
        kind = ProofKind(proof_kind)
        french, english = TITLES[kind]
        sealed = self.sealer.seal(
            render_proof(kind, facts), reason=f"{french} / {english}"
        )

        path = self.path_for(kind, facts.letter_id)
        write_atomically(path, sealed)
        return path


def _attach_evidence(pdf: bytes, evidence: bytes) -> bytes:
    writer = copy_into_new_writer(PdfFileReader(BytesIO(pdf)))
    stream = EmbeddedFileObject.from_file_data(
        writer, evidence, mime_type="application/json", params=EmbeddedFileParams()
    )
    spec = FileSpec(
        file_spec_string=EVIDENCE_FILE,
        file_name=EVIDENCE_FILE,
        embedded_data=stream,
        description="Machine-readable evidence (ETSI EN 319 522-2 semantics)",
        af_relationship=generic.pdf_name("/Data"),
    )
    embed_file(writer, spec)
    writer.root["/PageMode"] = generic.pdf_name("/UseAttachments")
    out = BytesIO()
    writer.write(out)
    return out.getvalue()
