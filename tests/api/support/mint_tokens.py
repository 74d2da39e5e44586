#!/usr/bin/env python3
"""Keys and tokens made by an independent JWT library (PyJWT + cryptography),
for jobcast's JWK Set tests: what an identity provider would publish and sign.

Reads a JSON spec on stdin:
  {"keys":   [{"kid": "A", "kty": "RSA" | "EC"}],
   "tokens": [{"name": "a", "alg": "RS256", "key": "A", "kid": "A", "claims": {...}},
              {"name": "h", "alg": "HS256", "secret": "...", "kid": "A", "claims": {...}}]}
("kid" is the header's key id, and may name another key than the one that
signs, or be left out.) Writes on stdout:
  {"jwks": {kid: public JWK}, "pem": {kid: public key PEM}, "tokens": {name: jwt}}
"""
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def public_jwk(algorithm, public_key):
    jwk = algorithm.to_jwk(public_key)
    # Older PyJWT returns a JSON string, newer ones can return a dict.
    return json.loads(jwk) if isinstance(jwk, str) else dict(jwk)


def main():
    spec = json.load(sys.stdin)
    private, jwks, pems = {}, {}, {}
    for k in spec["keys"]:
        if k["kty"] == "RSA":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = public_jwk(RSAAlgorithm, key.public_key())
            jwk["alg"] = "RS256"
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            jwk = public_jwk(ECAlgorithm, key.public_key())
            jwk["alg"] = "ES256"
        jwk["kid"] = k["kid"]
        jwk["use"] = "sig"
        private[k["kid"]] = key
        jwks[k["kid"]] = jwk
        pems[k["kid"]] = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
            .decode()
        )
    tokens = {}
    for t in spec["tokens"]:
        alg = t["alg"]
        key = t["secret"] if alg.startswith("HS") else private[t["key"]]
        headers = {"kid": t["kid"]} if t.get("kid") else None
        tokens[t["name"]] = jwt.encode(t["claims"], key, algorithm=alg, headers=headers)
    json.dump({"jwks": jwks, "pem": pems, "tokens": tokens}, sys.stdout)


if __name__ == "__main__":
    main()
