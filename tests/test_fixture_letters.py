"""Real documents written elsewhere come back byte for byte, signatures intact."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pli.v1 import letters_pb2 as pb

from conftest import FIXTURES, Pli
from frontend import Frontend

LETTERS = sorted(FIXTURES.glob("*.pdf")) if FIXTURES.is_dir() else []


def pdfsig_verdicts(path: Path) -> list[str]:
    result = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
    return [
        line.strip()
        for line in result.stdout.splitlines()[1:]
        if "Signature Validation" in line or "Total document signed" in line
    ]


@pytest.mark.skipif(not LETTERS, reason="../shared/fixtures/letters is absent")
@pytest.mark.parametrize("source", LETTERS, ids=[p.name for p in LETTERS])
def test_fixture_letter_is_delivered_unchanged(
    pli: Pli, source: Path, tmp_path: Path
) -> None:
    content = source.read_bytes()
    attachment = pb.Attachment(
        filename=source.name, media_type="application/pdf", content=content
    )
    front = Frontend(pli)
    letter = front.deposit_and_notify(attachments=[attachment])
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)

    info, received = front.download(letter.letter_id)

    assert received == content
    assert info.filename == source.name
    copy = tmp_path / source.name
    copy.write_bytes(received)
    assert pdfsig_verdicts(copy) == pdfsig_verdicts(source)
