"""OpenID Connect Core 3.1.3.7: only a sound ID token identifies a recipient."""

import base64
import datetime as dt
import hashlib
import hmac
import json
import stat
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pli.domain.values import Assurance
from pli.infrastructure.dev_idp import DEV_AUDIENCE, DEV_ISSUER, DevIdentityProvider
from pli.infrastructure.oidc import (
    IdTokenRejected,
    IdTokenVerifier,
    TrustedIssuersError,
    load_trusted_issuers,
)

AT = dt.datetime(2026, 3, 20, 9, 30, tzinfo=dt.UTC)
NONCE = "letter-7f3a-identification-91c2"
BORN = dt.date(1984, 7, 14)
PERSON = {"given_name": "Émilie Anne", "family_name": "Lefèvre", "birthdate": BORN}
# Values no refusal may contain: the person, the nonce, the subject.
SECRETS = ["Émilie", "Lefèvre", "1984", NONCE, "subject-4242"]


@pytest.fixture
def idp(tmp_path: Path) -> DevIdentityProvider:
    provider = DevIdentityProvider(tmp_path / "dev-idp")
    provider.ensure()
    return provider


@pytest.fixture
def verifier(idp: DevIdentityProvider) -> IdTokenVerifier:
    return IdTokenVerifier(load_trusted_issuers(idp.issuers_file))


def good_claims(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": DEV_ISSUER,
        "sub": "subject-4242",
        "aud": DEV_AUDIENCE,
        "iat": int(AT.timestamp()),
        "exp": int(AT.timestamp()) + 300,
        "nonce": NONCE,
        "acr": "eidas2",
        "given_name": "Émilie Anne",
        "family_name": "Lefèvre",
        "birthdate": "1984-07-14",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def dev_key(idp: DevIdentityProvider) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(idp.key_file.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def signed(claims: dict[str, object], key: object, **header: object) -> str:
    algorithm = str(header.pop("alg", "ES256"))
    return jwt.encode(claims, key, algorithm=algorithm, headers=header)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_token(claims: dict[str, object], secret: bytes, kid: str) -> str:
    """A token MACed with HS256, built by hand: PyJWT refuses to make one."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(mac)}"


def rejection(verifier: IdTokenVerifier, token: str, at: dt.datetime = AT) -> str:
    with pytest.raises(IdTokenRejected) as refused:
        verifier.verify(token, nonce=NONCE, at=at)
    reason = refused.value.reason
    assert all(secret not in reason for secret in SECRETS + [token] if secret)
    return reason


def test_a_sound_token_asserts_the_identity(
    idp: DevIdentityProvider, verifier: IdTokenVerifier
) -> None:
    token = idp.issue(**PERSON, nonce=NONCE, at=AT, siret="55210055400013")

    identity = verifier.verify(token, nonce=NONCE, at=AT + dt.timedelta(minutes=1))

    assert identity.issuer == DEV_ISSUER
    assert (identity.given_name, identity.family_name) == ("Émilie Anne", "Lefèvre")
    assert identity.birthdate == BORN
    assert identity.company_id == "55210055400013"
    assert identity.assurance is Assurance.SUBSTANTIAL
    assert identity.qualified is False
    assert len(identity.subject_digest) == 64


def test_the_subject_is_kept_only_as_a_digest(
    idp: DevIdentityProvider, verifier: IdTokenVerifier
) -> None:
    token = signed(good_claims(), dev_key(idp), kid=idp.kid)

    identity = verifier.verify(token, nonce=NONCE, at=AT)

    assert "subject-4242" not in repr(identity)
    again = verifier.verify(token, nonce=NONCE, at=AT + dt.timedelta(seconds=5))
    assert again.subject_digest == identity.subject_digest


@pytest.mark.parametrize(
    ("acr", "level"),
    [("eidas1", Assurance.LOW), ("eidas3", Assurance.HIGH)],
)
def test_acr_gives_the_eidas_level(
    idp: DevIdentityProvider, verifier: IdTokenVerifier, acr: str, level: Assurance
) -> None:
    token = idp.issue(**PERSON, acr=acr, nonce=NONCE, at=AT)

    assert verifier.verify(token, nonce=NONCE, at=AT).assurance is level


def test_a_partial_birthdate_counts_as_none(
    idp: DevIdentityProvider, verifier: IdTokenVerifier
) -> None:
    token = signed(good_claims(birthdate="1984"), dev_key(idp), kid=idp.kid)

    assert verifier.verify(token, nonce=NONCE, at=AT).birthdate is None


def test_several_audiences_need_this_desk_as_authorised_party(
    idp: DevIdentityProvider, verifier: IdTokenVerifier
) -> None:
    audiences = [DEV_AUDIENCE, "another-client"]
    token = signed(
        good_claims(aud=audiences, azp=DEV_AUDIENCE), dev_key(idp), kid=idp.kid
    )
    stolen = signed(
        good_claims(aud=audiences, azp="another-client"), dev_key(idp), kid=idp.kid
    )

    assert verifier.verify(token, nonce=NONCE, at=AT).issuer == DEV_ISSUER
    assert "authorised party" in rejection(verifier, stolen)


@pytest.mark.parametrize("algorithm", ["RS256", "PS256"])
def test_an_rsa_issuer_is_accepted(tmp_path: Path, algorithm: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "r1"}]}))
    config = {
        "issuers": [
            {
                "issuer": "https://idp.example",
                "audience": "pli-desk",
                "jwks_file": str(tmp_path / "jwks.json"),
                "qualified": True,
            }
        ]
    }
    (tmp_path / "issuers.json").write_text(json.dumps(config))
    verifier = IdTokenVerifier(load_trusted_issuers(tmp_path / "issuers.json"))
    claims = good_claims(iss="https://idp.example", aud="pli-desk")

    token = signed(claims, key, alg=algorithm, kid="r1")

    assert verifier.verify(token, nonce=NONCE, at=AT).qualified is True


def forged_by_another_key(idp: DevIdentityProvider) -> str:
    return signed(good_claims(), ec.generate_private_key(ec.SECP256R1()), kid=idp.kid)


def with_changed_claims(idp: DevIdentityProvider) -> str:
    header, _, signature = signed(good_claims(), dev_key(idp), kid=idp.kid).split(".")
    payload = b64(json.dumps(good_claims(family_name="Martin")).encode())
    return f"{header}.{payload}.{signature}"


def by_unknown_issuer(idp: DevIdentityProvider) -> str:
    claims = good_claims(iss="https://evil.invalid")
    return signed(claims, dev_key(idp), kid=idp.kid)


def without_alg(idp: DevIdentityProvider) -> str:
    return signed(good_claims(), None, alg="none", kid=idp.kid)


def hmac_with_public_key(idp: DevIdentityProvider) -> str:
    # Algorithm confusion: the public key, known to all, as an HMAC secret.
    return hmac_token(good_claims(), idp.jwks_file.read_bytes(), idp.kid)


def rsa_under_ec_key_id(idp: DevIdentityProvider) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return signed(good_claims(), key, alg="RS256", kid=idp.kid)


def without_kid(idp: DevIdentityProvider) -> str:
    return signed(good_claims(), dev_key(idp))


def without_signature(idp: DevIdentityProvider) -> str:
    token = signed(good_claims(), dev_key(idp), kid=idp.kid)
    return token.rpartition(".")[0] + "."


def with_unknown_kid(idp: DevIdentityProvider) -> str:
    return signed(good_claims(), dev_key(idp), kid="no-such-key")


TokenMaker = Callable[[DevIdentityProvider], str]


def claims_changed(**changes: object) -> TokenMaker:
    def make(idp: DevIdentityProvider) -> str:
        return signed(good_claims(**changes), dev_key(idp), kid=idp.kid)

    return make


def issued(**options: object) -> TokenMaker:
    def make(idp: DevIdentityProvider) -> str:
        return idp.issue(**PERSON, **{"nonce": NONCE, "at": AT, **options})

    return make


LATER = AT + dt.timedelta(minutes=30)

REFUSALS = [
    # token maker, verification instant, words the reason must contain
    (forged_by_another_key, AT, "signature does not verify"),
    (with_changed_claims, AT, "signature does not verify"),
    (without_signature, AT, "signature does not verify"),
    (by_unknown_issuer, AT, "issuer is not trusted"),
    (issued(audience="another-client"), AT, "audience"),
    (issued(), AT + dt.timedelta(minutes=6, seconds=1), "expired"),
    (issued(), AT - dt.timedelta(minutes=2), "issued in the future"),
    (issued(lifetime=dt.timedelta(hours=1)), LATER, "more than 600 seconds ago"),
    (issued(nonce="another-letter"), AT, "nonce does not match"),
    (claims_changed(nonce=None), AT, "no nonce"),
    (claims_changed(acr=None), AT, "no level of assurance (acr)"),
    (issued(acr="loa2"), AT, "acr 'loa2' is not an eIDAS level"),
    (claims_changed(acr="<script>"), AT, "acr is not an eIDAS level"),
    (claims_changed(sub=None), AT, "no 'sub' claim"),
    (claims_changed(given_name=None), AT, "no 'given_name' claim"),
    (claims_changed(family_name=" "), AT, "no 'family_name' claim"),
    (claims_changed(exp=None), AT, "no 'exp' claim"),
    (claims_changed(iat="yesterday"), AT, "'iat' is not a time"),
    (claims_changed(nbf=int(AT.timestamp()) + 600), AT, "not valid yet"),
    (claims_changed(siret="5521005540001X"), AT, "'siret' is not a SIRET"),
    (claims_changed(birthdate=19840714), AT, "'birthdate' is not a string"),
    (claims_changed(given_name="Emilie\x00"), AT, "not a printable name"),
    (without_alg, AT, "algorithm is not accepted"),
    (hmac_with_public_key, AT, "algorithm is not accepted"),
    (rsa_under_ec_key_id, AT, "algorithm does not fit the issuer's key"),
    (without_kid, AT, "names no key (kid)"),
    (with_unknown_kid, AT, "key id (kid) is not among the issuer's keys"),
]


@pytest.mark.parametrize(
    ("make", "at", "words"),
    REFUSALS,
    ids=[words for _, _, words in REFUSALS],
)
def test_an_unsound_token_is_refused_with_a_clear_reason(
    idp: DevIdentityProvider,
    verifier: IdTokenVerifier,
    make: TokenMaker,
    at: dt.datetime,
    words: str,
) -> None:
    assert words in rejection(verifier, make(idp), at)


@pytest.mark.parametrize(
    "token",
    ["", "not-a-token", "a.b.c", "a.b", "x" * 20_000, "e30.e30.", "WyJ4Il0.e30."],
    ids=[
        "empty",
        "one part",
        "junk parts",
        "two parts",
        "huge",
        "empty header",
        "list",
    ],
)
def test_a_malformed_token_is_refused(verifier: IdTokenVerifier, token: str) -> None:
    assert rejection(verifier, token) in (
        "token is not a well-formed JWT",
        "token algorithm is not accepted (ES256, RS256, PS256)",
    )


def test_the_dev_provider_is_created_once_with_a_private_key_file(
    idp: DevIdentityProvider,
) -> None:
    kid, jwks = idp.kid, idp.jwks_file.read_bytes()

    idp.ensure()

    assert (idp.kid, idp.jwks_file.read_bytes()) == (kid, jwks)
    assert stat.S_IMODE(idp.key_file.stat().st_mode) == 0o600
    assert "PRIVATE" not in jwks.decode()


def test_the_dev_provider_is_trusted_only_as_non_qualified(
    idp: DevIdentityProvider,
) -> None:
    [issuer] = load_trusted_issuers(idp.issuers_file)
    claims = jwt.decode(
        idp.issue(**PERSON, nonce=NONCE, at=AT), options={"verify_signature": False}
    )

    assert (issuer.issuer, issuer.qualified) == (DEV_ISSUER, False)
    assert claims["pli_dev"] is True


def write_config(tmp_path: Path, document: object, jwks: object = None) -> Path:
    (tmp_path / "keys.json").write_text(json.dumps(jwks or {"keys": []}))
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps(document))
    return path


def issuer_entry(**changes: object) -> dict[str, object]:
    entry = {
        "issuer": "https://idp.example",
        "audience": "pli-desk",
        "jwks_file": "keys.json",
        "qualified": True,
    }
    return {**entry, **changes}


def test_a_missing_configuration_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(TrustedIssuersError, match="cannot read"):
        load_trusted_issuers(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("document", "jwks", "message"),
    [
        ([], None, "'issuers' list"),
        ({"issuers": [issuer_entry(audience="")]}, None, "non-empty 'audience'"),
        ({"issuers": [issuer_entry(qualified="yes")]}, None, "must be true or false"),
        ({"issuers": [issuer_entry(jwks_file="nope.json")]}, None, "cannot read"),
        ({"issuers": [issuer_entry()]}, None, "no 'keys'"),
        (
            {"issuers": [issuer_entry()]},
            {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]},
            "not EC or RSA",
        ),
    ],
    ids=["no list", "no audience", "qualified", "missing key set", "empty", "hmac"],
)
def test_a_bad_configuration_is_refused(
    tmp_path: Path, document: object, jwks: object, message: str
) -> None:
    with pytest.raises(TrustedIssuersError, match=message):
        load_trusted_issuers(write_config(tmp_path, document, jwks))


def test_a_private_key_in_a_trusted_key_set_is_refused(
    tmp_path: Path, idp: DevIdentityProvider
) -> None:
    private = jwt.algorithms.ECAlgorithm.to_jwk(dev_key(idp), as_dict=True)
    path = write_config(
        tmp_path, {"issuers": [issuer_entry()]}, {"keys": [{**private, "kid": "k"}]}
    )

    with pytest.raises(TrustedIssuersError, match="is a private key"):
        load_trusted_issuers(path)
