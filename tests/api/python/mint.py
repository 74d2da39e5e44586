"""Prints tokens minted by jobcast.mint_token, one per line
(tests/api/python_client.rs). argv: MODE ... where MODE is
  hs256 SECRET SUB JOB          -> a watcher token naming JOB, a publisher token for JOB
  es256|rs256 PUBLIC_PEM_PATH SUB -> generates a key pair, writes the public PEM, prints a token for all jobs
  short                         -> exits 0 only if a short HS256 secret and a publisher token without jobs are refused
"""

import sys

import jobcast

mode = sys.argv[1]
if mode == "hs256":
    secret, sub, job = sys.argv[2:5]
    print(jobcast.mint_token(secret, sub, jobs=[job], ttl=120))
    print(jobcast.mint_token(secret, "svc", jobs=[job], roles=["publisher"], ttl=120))
elif mode in ("es256", "rs256"):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    path, sub = sys.argv[2:4]
    if mode == "es256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with open(path, "wb") as f:
        f.write(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    print(jobcast.mint_token(private_pem, sub, jobs="*", ttl=120, algorithm=mode.upper()))
elif mode == "short":
    for kwargs in ({"key": "too-short"}, {"key": "x" * 40, "roles": ["publisher"]}):
        key = kwargs.pop("key")
        try:
            jobcast.mint_token(key, "svc", **kwargs)
        except ValueError as e:
            print("refused:", e)
        else:
            sys.exit("not refused: %r" % (kwargs,))
else:
    sys.exit("unknown mode " + mode)
