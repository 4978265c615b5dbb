"""DPoP proofs and JWK thumbprints (secretgrants.dpop): known answers and every check."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from secretgrants.dpop import DPoPError, jwk_thumbprint, sign_proof, verify_proof

URL = "https://api.example/api/secrets/v1/namespaces/ns/grants/db"


def test_rfc7638_known_answer() -> None:
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
        "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
        "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate,
    ],
    ids=["ES256", "RS256", "EdDSA"],
)
def test_each_algorithm_round_trips(make: object) -> None:
    key = make()  # type: ignore[operator]
    proof = sign_proof(key, method="GET", url=URL + "?x=1", access_token="tok")
    checked = verify_proof(proof, method="get", url=URL, access_token="tok")
    other = sign_proof(make(), method="GET", url=URL, access_token="tok")  # type: ignore[operator]
    assert checked.jkt != verify_proof(other, method="GET", url=URL, access_token="tok").jkt


def test_every_check_refuses() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    good = sign_proof(key, method="GET", url=URL, access_token="tok", iat=now)
    verify_proof(good, method="GET", url=URL, access_token="tok", now=now)
    cases = {
        "htm": dict(method="POST", url=URL, access_token="tok", now=now),
        "htu": dict(method="GET", url=URL + "/other", access_token="tok", now=now),
        "ath": dict(method="GET", url=URL, access_token="another", now=now),
        "iat": dict(method="GET", url=URL, access_token="tok", now=now + 120),
    }
    cases["iat in the future"] = dict(method="GET", url=URL, access_token="tok", now=now - 50)
    for word, kwargs in cases.items():
        with pytest.raises(DPoPError, match=word.split()[0]):
            verify_proof(good, **kwargs)  # type: ignore[arg-type]
    verify_proof(good, method="GET", url=URL, access_token="tok", now=now - 5)  # clock skew
    verify_proof(good, method="GET", url=URL, access_token="tok", now=now + 60)
    head, claims, sig = good.split(".")
    tampered = f"{head}.{claims}.{sig[:-4]}AAAA"
    with pytest.raises(DPoPError, match="signature"):
        verify_proof(tampered, method="GET", url=URL, access_token="tok", now=now)
    with pytest.raises(DPoPError, match="compact JWS"):
        verify_proof("not-a-jwt", method="GET", url=URL, access_token="tok", now=now)
