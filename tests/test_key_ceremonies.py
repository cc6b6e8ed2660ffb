"""Key ceremonies through the ``pli hsm`` commands, each in a process of its own.

SoftHSM2 reads its configuration once per process, and the session's token
must keep its keys, so every test here runs ``pli`` as a subprocess on a pli
home (token, certificates, SQLite store) of its own. The operator's CA is
made and operated with ``openssl``; requests are checked with ``openssl req
-verify``; proofs with ``pdfsig`` and, as PAdES B-LT with no network at all,
``pyhanko sign adesverify``; the token's content with OpenSC's
``pkcs11-tool``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation.dss import DocumentSecurityStore
from reportlab.pdfgen import canvas

from pli.hsm.pades import long_term_gaps
from pli.hsm.seal import key_id_of

BIN = Path(sys.executable).parent
DEPOSIT = Path(__file__).with_name("deposit_letters.py")
OPERATOR = "Alice Martin"


@dataclass
class Home:
    """A pli home of its own, driven through the ``pli`` command."""

    path: Path
    extra_env: dict[str, str]

    @property
    def certs(self) -> Path:
        return self.path / "hsm" / "certs"

    def env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "HOME", "TMPDIR")
        env = {name: os.environ[name] for name in keep if name in os.environ}
        env.update(
            PLI_HOME=str(self.path), PLI_OPERATOR=OPERATOR, PLI_POLL_INTERVAL="0.05"
        )
        env.update(self.extra_env)
        return env

    def pli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "pli"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def deposit(self, *keys: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, str(DEPOSIT), *keys],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    def events(self) -> list[tuple[str, str, bytes]]:
        """(aggregate id, topic, stored state) of every event, in commit order."""
        with sqlite3.connect(self.path / "pli.sqlite3") as db:
            rows = db.execute(
                "SELECT originator_id, topic, state FROM stored_events ORDER BY rowid"
            ).fetchall()
        return [(str(uuid.UUID(r[0])), r[1], bytes(r[2])) for r in rows]

    def ceremonies(self) -> list[tuple[str, dict[str, object], str]]:
        """(event name, payload, sealing key id) of each ceremony event."""
        found = []
        for _, topic, state in self.events():
            if "KeyRegistry" not in topic:
                continue
            header, _, payload = state.partition(b"\n")
            found.append(
                (
                    topic.rpartition(".")[2],
                    json.loads(payload),
                    json.loads(header)["key"],
                )
            )
        return found

    def der(self, certificate: str) -> bytes:
        pem = (self.certs / certificate).read_bytes()
        return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)

    def key_id(self, certificate: str) -> str:
        return key_id_of(
            x509.load_pem_x509_certificate((self.certs / certificate).read_bytes())
        )

    def token_objects(self) -> str:
        hsm = self.path / "hsm"
        return subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                "/usr/lib/softhsm/libsofthsm2.so",
                "--token-label",
                "pli",
                "--login",
                "--pin",
                (hsm / "pin").read_text().strip(),
                "--list-objects",
            ],
            env={"SOFTHSM2_CONF": str(hsm / "softhsm2.conf"), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def state(self) -> tuple[object, ...]:
        """Everything a refused ceremony must leave as it was."""
        files = {
            str(p.relative_to(self.certs)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.certs.rglob("*"))
            if p.is_file()
        }
        return (len(self.events()), files, self.token_objects())


def new_home(tmp_path: Path, **extra_env: str) -> Home:
    home = Home(tmp_path / "var", dict(extra_env))
    home.pli("hsm", "init")
    return home


def openssl(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


class OperatorCa:
    """The operator's certification authority, run with openssl."""

    def __init__(self, folder: Path, name: str = "Example Qualified Root") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        openssl(
            "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key",
            cwd=folder,
        )  # fmt: skip
        openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-days", "30",
            "-subj", f"/C=FR/O=Example Trust Services/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", "ca.pem",
            cwd=folder,
        )  # fmt: skip
        self.root = folder / "ca.pem"

    def issue(self, request: Path, out: Path, extensions: str) -> Path:
        """Certify the request's key; return a chain file, leaf then root."""
        config = self.folder / f"{out.stem}.ext"
        config.write_text(extensions)
        leaf = self.folder / f"{out.stem}.leaf.pem"
        openssl(
            "x509", "-req", "-in", str(request), "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
            "-days", "20", "-extfile", str(config), "-out", str(leaf),
            cwd=self.folder,
        )  # fmt: skip
        out.write_bytes(leaf.read_bytes() + self.root.read_bytes())
        return out

    def crl(self, out: Path) -> Path:
        """The CA's current CRL (PEM, revoking nothing), as it publishes it."""
        (self.folder / "ca.cnf").write_text(
            "[ ca ]\ndefault_ca = operator\n[ operator ]\n"
            "database = index.txt\ncrlnumber = crlnumber\n"
            "default_md = sha256\ndefault_crl_days = 7\n"
        )
        (self.folder / "index.txt").touch()
        (self.folder / "crlnumber").write_text("01\n")
        openssl(
            "ca", "-gencrl", "-config", "ca.cnf", "-keyfile", "ca.key",
            "-cert", "ca.pem", "-out", str(out),
            cwd=self.folder,
        )  # fmt: skip
        return out


SEAL_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,nonRepudiation\n"
)
TSA_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=critical,timeStamping\n"
)


def request(home: Home, role: str, out: Path, *extra: str) -> Path:
    home.pli(
        "hsm", "csr", "--key", role, "--subject", "CN=Example seal,O=Example SA,C=FR",
        *extra, str(out),
    )  # fmt: skip
    return out


def dss_certificates(proof: Path) -> set[bytes]:
    """The DER certificates in a PDF's document security store."""
    reader = PdfFileReader(BytesIO(proof.read_bytes()))
    return {c.dump() for c in DocumentSecurityStore.read_dss(reader).load_certs()}


def proof_verdicts(proof: Path, *roots: Path) -> tuple[str, str]:
    """What pdfsig and pyHanko's B-LT validation, offline, say of a proof.

    ``pyhanko sign adesverify`` requires revocation data for every certificate
    and runs with no network (``unshare --net``), trusting only ``roots``: it
    finds the CRLs in the proof's DSS or fails. Its time stamp must be there.
    """
    pdfsig = subprocess.run(
        ["pdfsig", str(proof)], capture_output=True, text=True, timeout=60
    ).stdout
    trust = [option for root in roots for option in ("--trust", str(root))]
    pyhanko = subprocess.run(
        [
            "unshare", "--net", str(BIN / "pyhanko"), "sign", "adesverify",
            *trust, "--trust-replace", str(proof),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pyhanko.returncode == 0, pyhanko.stdout + pyhanko.stderr
    assert "TIMESTAMP_TOKEN<INTACT:TRUSTED>" in pyhanko.stdout
    assert long_term_gaps(proof.read_bytes()) == []
    return pdfsig, pyhanko.stdout


# pli hsm init


def test_init_records_the_first_ceremonies_sealed_by_the_key_they_record(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path)
    seal_key = home.key_id("seal.pem")

    ceremonies = home.ceremonies()

    names = [name for name, _, _ in ceremonies]
    per_key = ["KeyGenerated", "CertificateInstalled", "KeyActivated"]
    assert names == ["Opened", *per_key, *per_key]  # the seal key, then the TSA's
    assert ceremonies[4][1]["role"] == "tsa" and ceremonies[4][1]["label"] == "pli-tsa"
    assert {sealed_by for _, _, sealed_by in ceremonies} == {seal_key}
    generated = ceremonies[1][1]
    assert generated["role"] == "seal" and generated["label"] == "pli-seal"
    assert generated["key_id"] == seal_key and generated["operator"] == OPERATOR
    installed = ceremonies[2][1]
    assert installed["qualified"] is False
    assert "pli development root CA" in str(installed["issuer"])
    assert "BEGIN CERTIFICATE" in str(installed["chain_pem"])
    assert "clean" in home.pli("audit", "verify").stdout


def test_a_second_init_records_nothing_new(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    before = home.events()

    result = home.pli("hsm", "init", "--operator", "Bob Durand")

    assert "nothing to do" in result.stdout
    assert home.events() == before


def test_a_changed_ceremony_event_fails_the_audit(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    with sqlite3.connect(home.path / "pli.sqlite3") as db:
        (rowid, state) = db.execute(
            "SELECT rowid, state FROM stored_events WHERE topic LIKE '%KeyGenerated'"
        ).fetchone()
        forged = bytes(state).replace(OPERATOR.encode(), b"Mallory Doe!")
        db.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?", (forged, rowid)
        )

    result = home.pli("audit", "verify", ok=False)

    assert result.returncode == 1
    assert "FAULT" in result.stdout and "version=2" in result.stdout


# pli hsm csr


def test_csr_is_signed_by_the_token_key_and_openssl_verifies_it(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path)
    out = request(home, "seal", tmp_path / "seal.csr")

    verdict = openssl("req", "-verify", "-noout", "-in", str(out), cwd=tmp_path)

    csr = x509.load_pem_x509_csr(out.read_bytes())
    seal = x509.load_pem_x509_certificate((home.certs / "seal.pem").read_bytes())
    assert "verify OK" in verdict
    assert csr.public_key() == seal.public_key()
    assert csr.subject.rfc4514_string() == "CN=Example seal,O=Example SA,C=FR"


def test_csr_refuses_a_subject_it_cannot_read(tmp_path: Path) -> None:
    home = new_home(tmp_path)

    garbage = home.pli(
        "hsm", "csr", "--key", "seal", "--subject", "no name here",
        str(tmp_path / "x.csr"), ok=False,
    )  # fmt: skip
    no_cn = home.pli(
        "hsm", "csr", "--key", "seal", "--subject", "O=Example,C=FR",
        str(tmp_path / "y.csr"), ok=False,
    )  # fmt: skip

    assert garbage.returncode == 2 and "RFC 4514" in garbage.stderr
    assert no_cn.returncode == 2 and "no CN" in no_cn.stderr
    assert not (tmp_path / "x.csr").exists() and not (tmp_path / "y.csr").exists()


def test_csr_writes_a_new_file_only(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    taken = tmp_path / "taken.csr"
    taken.write_bytes(b"keep me")

    over = home.pli(
        "hsm", "csr", "--key", "seal", "--subject", "CN=Example seal",
        str(taken), ok=False,
    )  # fmt: skip
    nowhere = home.pli(
        "hsm", "csr", "--key", "seal", "--subject", "CN=Example seal",
        str(tmp_path / "no" / "such.csr"), ok=False,
    )  # fmt: skip

    assert over.returncode == 2 and "File exists" in over.stderr
    assert nowhere.returncode == 2 and "No such file" in nowhere.stderr
    assert taken.read_bytes() == b"keep me"


# pli hsm import-cert: refusals


@pytest.fixture(scope="module")
def operator_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home with a seal key and a TSA key, and the operator's CA beside it."""
    folder = tmp_path_factory.mktemp("operator")
    home = new_home(folder)
    home.pli("hsm", "rotate", "--key", "tsa")
    return home


@pytest.fixture(scope="module")
def ca(operator_home: Home) -> OperatorCa:
    return OperatorCa(operator_home.path.parent / "ca")


def refused_import(home: Home, role: str, chain: Path) -> str:
    before = home.state()
    result = home.pli("hsm", "import-cert", "--key", role, str(chain), ok=False)
    assert result.returncode == 2, result.stdout
    assert home.state() == before
    return result.stderr


def test_a_chain_for_another_key_is_refused(
    operator_home: Home, ca: OperatorCa, tmp_path: Path
) -> None:
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "other.key", "-subj", "/CN=Not our key",
        "-out", "other.csr",
        cwd=tmp_path,
    )  # fmt: skip
    chain = ca.issue(tmp_path / "other.csr", tmp_path / "other.pem", SEAL_EXTENSIONS)

    message = refused_import(operator_home, "seal", chain)

    assert "certifies none of the seal keys" in message


def test_a_chain_whose_links_do_not_verify_is_refused(
    operator_home: Home, ca: OperatorCa, tmp_path: Path
) -> None:
    csr = request(operator_home, "seal", tmp_path / "seal.csr")
    issued = ca.issue(csr, tmp_path / "seal.pem", SEAL_EXTENSIONS)
    stranger = OperatorCa(tmp_path / "stranger", "Somebody Else's Root")
    leaf = x509.load_pem_x509_certificates(issued.read_bytes())[0]
    broken = tmp_path / "broken.pem"
    broken.write_bytes(leaf.public_bytes(Encoding.PEM) + stranger.root.read_bytes())

    message = refused_import(operator_home, "seal", broken)

    assert "is not issued by certificate 2" in message


def test_a_tsa_certificate_without_the_critical_time_stamping_usage_is_refused(
    operator_home: Home, ca: OperatorCa, tmp_path: Path
) -> None:
    csr = request(operator_home, "tsa", tmp_path / "tsa.csr")
    without = ca.issue(csr, tmp_path / "plain.pem", SEAL_EXTENSIONS)
    not_critical = ca.issue(
        csr,
        tmp_path / "soft.pem",
        TSA_EXTENSIONS.replace("critical,timeStamping", "timeStamping"),
    )

    assert "id-kp-timeStamping" in refused_import(operator_home, "tsa", without)
    assert "id-kp-timeStamping" in refused_import(operator_home, "tsa", not_critical)


def test_a_tsa_chain_that_no_trusted_root_reaches_is_refused(
    operator_home: Home, ca: OperatorCa, tmp_path: Path
) -> None:
    csr = request(operator_home, "tsa", tmp_path / "tsa.csr")
    chain = ca.issue(csr, tmp_path / "tsa.pem", TSA_EXTENSIONS)
    leaf_alone = tmp_path / "leaf.pem"
    leaf_alone.write_bytes(
        x509.load_pem_x509_certificates(chain.read_bytes())[0].public_bytes(
            Encoding.PEM
        )
    )

    # Its stamps would all be refused, and every stamped command would fail.
    assert "PLI_TSA_TRUST" in refused_import(operator_home, "tsa", chain)
    assert "PLI_TSA_TRUST" in refused_import(operator_home, "tsa", leaf_alone)


def test_garbage_a_missing_file_and_an_unknown_role_are_refused(
    operator_home: Home, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")

    assert "no PEM certificate" in refused_import(operator_home, "seal", garbage)
    assert "cannot read" in refused_import(operator_home, "seal", tmp_path / "none")
    unknown = operator_home.pli(
        "hsm", "import-cert", "--key", "signing", str(garbage), ok=False
    )
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


# The operator's lifecycle: a qualified chain, a rotation to a pending key.


def test_the_operators_qualified_chain_is_installed_then_a_rotation_waits_for_its_own(
    tmp_path: Path,
) -> None:
    ca = OperatorCa(tmp_path / "ca")
    home = new_home(tmp_path, PLI_QUALIFIED_ROOTS=str(ca.root))
    development_seal = (home.certs / "seal.pem").read_bytes()
    chain = ca.issue(
        request(home, "seal", tmp_path / "seal.csr"), tmp_path / "seal.pem",
        SEAL_EXTENSIONS,
    )  # fmt: skip

    installed = home.pli("hsm", "import-cert", "--key", "seal", str(chain))
    # B-LT seals need the CA's CRL; pli reads it from the certificates folder.
    ca.crl(home.certs / "example-root.crl")
    (letter,) = home.deposit("after-import")

    assert "certificate installed for key pli-seal: qualified" in installed.stdout
    assert "CN=Example seal" in home.token_objects()
    # root, seal (the operator's now, replacing the development one) and TSA
    assert home.token_objects().count("Certificate Object") == 3
    assert (home.certs / "seal.pem").read_bytes() == chain.read_bytes()[
        : len((home.certs / "seal.pem").read_bytes())
    ]
    assert development_seal in [
        p.read_bytes() for p in (home.certs / "archive").iterdir()
    ]
    name, payload, _ = home.ceremonies()[-1]
    assert name == "CertificateInstalled" and payload["qualified"] is True
    proof = home.path / "proofs" / letter / "deposit.pdf"
    # The seal chains to the operator's root; the built-in TSA's to pli's.
    pdfsig, pyhanko = proof_verdicts(proof, ca.root, home.certs / "root.pem")
    assert "Signature is Valid" in pdfsig and "Example seal" in pdfsig
    assert "INTACT:TRUSTED" in pyhanko
    evidence = subprocess.run(
        ["pdfdetach", "-savefile", "evidence.json",
         "-o", str(tmp_path / "e.json"), str(proof)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert evidence.returncode == 0
    # The seal is qualified now, but the server clock is not qualified time.
    assert json.loads((tmp_path / "e.json").read_text())["qualified"] is False

    rotated = home.pli("hsm", "rotate", "--key", "seal")

    assert "key pli-seal.2 is pending" in rotated.stdout
    assert "pli-seal\tseal\tactive" in home.pli("hsm", "keys").stdout
    second = ca.issue(
        request(home, "seal", tmp_path / "seal2.csr"), tmp_path / "seal2.pem",
        SEAL_EXTENSIONS,
    )  # fmt: skip
    home.pli("hsm", "import-cert", "--key", "seal", str(second))
    keys = home.pli("hsm", "keys").stdout
    assert "pli-seal\tseal\tretired\tqualified" in keys
    assert "pli-seal.2\tseal\tactive\tqualified" in keys
    assert "clean" in home.pli("audit", "verify").stdout


# Rotation on the development chain, end to end.


def test_after_a_rotation_new_events_use_the_new_key_and_everything_older_verifies(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path)
    old_key = home.key_id("seal.pem")
    before = home.deposit("before-1", "before-2")

    rotated = home.pli("hsm", "rotate", "--key", "seal", "--operator", "Bob Durand")
    after = home.deposit("after-1", "after-2")

    new_key = home.key_id("seal.2.pem")
    assert "retired key pli-seal" in rotated.stdout
    assert "clean" in home.pli("audit", "verify").stdout
    sealed_by = {
        aggregate: json.loads(state.partition(b"\n")[0])["key"]
        for aggregate, _, state in home.events()
    }
    assert {sealed_by[letter] for letter in before} == {old_key}
    assert {sealed_by[letter] for letter in after} == {new_key}
    rotation = home.ceremonies()[-4:]
    assert [n for n, _, _ in rotation] == [
        "KeyGenerated", "CertificateInstalled", "KeyRetired", "KeyActivated",
    ]  # fmt: skip
    assert {k for _, _, k in rotation} == {old_key}  # the old key's last seals
    for letter, subject, leaf in [
        (before[0], "seal (non", "seal.pem"),
        (after[0], "pli-seal.2", "seal.2.pem"),
    ]:
        proof = home.path / "proofs" / letter / "deposit.pdf"
        pdfsig, pyhanko = proof_verdicts(proof, home.certs / "root.pem")
        assert "Signature is Valid" in pdfsig and subject in pdfsig
        assert "INTACT:TRUSTED" in pyhanko
        assert home.der(leaf) in dss_certificates(proof)


# The seal keeps its time stamper, which learnt the TSA's certificates from its
# first stamp; a rotation of the TSA key in another process must still reach
# the DSS of the next proof.
SEALING_PROCESS = """
import sys
from pathlib import Path
from pli.infrastructure.settings import Settings
from pli.services.runtime import Runtime

runtime = Runtime.open(Settings.from_env())
unsealed = Path(sys.argv[1]).read_bytes()
for line in sys.stdin:
    Path(line.strip()).write_bytes(runtime.pdf_sealer.seal(unsealed, reason="test"))
    print("sealed", flush=True)
runtime.close()
"""


def test_a_running_sealer_follows_a_rotation_of_the_tsa_key_into_the_dss(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path)
    unsealed = tmp_path / "unsealed.pdf"
    page = canvas.Canvas(str(unsealed))
    page.drawString(72, 720, "preuve (test)")
    page.save()
    sealing = subprocess.Popen(
        [sys.executable, "-c", SEALING_PROCESS, str(unsealed)],
        env=home.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sealing.stdin is not None and sealing.stdout is not None

    def seal(name: str) -> Path:
        sealing.stdin.write(f"{tmp_path / name}\n")
        sealing.stdin.flush()
        assert sealing.stdout.readline().strip() == "sealed"
        return tmp_path / name

    try:
        before = seal("before.pdf")
        home.pli("hsm", "rotate", "--key", "tsa")
        after = seal("after.pdf")
    finally:
        sealing.stdin.close()
        sealing.wait(timeout=60)

    assert sealing.returncode == 0
    for proof, tsa in [(before, "tsa.pem"), (after, "tsa.2.pem")]:
        _, pyhanko = proof_verdicts(proof, home.certs / "root.pem")
        assert "INTACT:TRUSTED" in pyhanko
        assert home.der(tsa) in dss_certificates(proof)


def test_a_retired_seal_key_stops_all_sealing_until_a_new_key_seals_itself(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path)
    home.deposit("before")

    home.pli("hsm", "retire", "--key", "seal")
    stored = len(home.events())
    failed = subprocess.run(
        [sys.executable, str(DEPOSIT), "while-retired"],
        env=home.env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert failed.returncode != 0 and "no active seal key" in failed.stderr
    assert len(home.events()) == stored

    home.pli("hsm", "rotate", "--key", "seal")
    home.deposit("after")

    new_key = home.key_id("seal.2.pem")
    assert [k for n, _, k in home.ceremonies() if n == "KeyGenerated"][-1] == new_key
    assert "clean" in home.pli("audit", "verify").stdout


def test_ceremonies_are_recorded_in_postgresql_too(
    tmp_path: Path, postgres_base: str
) -> None:
    from postgres import fresh_database

    with fresh_database(postgres_base) as dsn:
        home = new_home(tmp_path, PLI_DATABASE_URL=dsn)
        home.pli("hsm", "rotate", "--key", "seal")
        home.pli("hsm", "rotate", "--key", "tsa")

        keys = home.pli("hsm", "keys").stdout
        audit = home.pli("audit", "verify").stdout

    assert "pli-seal.2\tseal\tactive" in keys and "pli-tsa.2\ttsa\tactive" in keys
    assert "clean" in audit


def test_the_development_root_listed_as_qualified_stops_the_server_at_start(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path)
    home.extra_env["PLI_QUALIFIED_ROOTS"] = str(home.certs / "root.pem")
    home.extra_env["PLI_LISTEN"] = "127.0.0.1:0"

    serve = home.pli("serve", ok=False)
    rotate = home.pli("hsm", "rotate", "--key", "seal", ok=False)

    assert serve.returncode == 2 and "development root" in serve.stderr
    assert rotate.returncode == 2 and "development root" in rotate.stderr
    assert not (home.certs / "seal.2.pem").exists()
