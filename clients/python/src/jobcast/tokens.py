"""``mint_token``: the JWTs a backend (Django, FastAPI, Flask...) hands to
browsers and services so that they can watch jobs, or publish them, through a
jobcast gateway. HS256 with the gateway's ``JWT_SECRET``, or RS256 / ES256 with
the private key whose public half is the gateway's ``JWT_PUBLIC_KEY_FILE``.
"""

import time

import jwt

# The gateway refuses shorter HS256 secrets: they can be brute-forced.
MIN_SECRET_BYTES = 32
ASYMMETRIC = ("RS256", "ES256")


def _names(value, what):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    names = [str(v) for v in value]
    if any(not n for n in names):
        raise ValueError("%s must not contain empty names" % what)
    return names


def mint_token(
    secret,
    sub,
    jobs=None,
    groups=None,
    roles=None,
    ttl=3600,
    *,
    algorithm="HS256",
    audience=None,
    issuer=None,
    not_before=None,
    extra_claims=None,
    now=None,
):
    """A signed token for user (or service) ``sub``.

    ``secret`` is the shared ``JWT_SECRET`` (str or bytes, at least 32 bytes)
    for HS256, or the PEM private key for ``algorithm="RS256"`` / ``"ES256"``
    (needs ``pip install 'jobcast[crypto]'``).

    Claims: ``sub``, ``iat``, ``exp`` (``ttl`` seconds from now), and where
    given ``jobs`` (job ids the bearer may watch, ``"*"`` for all), ``groups``
    (job groups), ``roles`` (``admin``; ``publisher`` for ``POST /jobs/{id}``),
    ``aud``, ``iss``, ``nbf`` (seconds from now) and ``extra_claims``.

    A ``publisher`` token must name the jobs it may write (``jobs=[job_id]`` or
    ``jobs="*"``): the gateway refuses publishing for a job the token does not
    name, so minting one without ``jobs`` is refused here already.
    """
    if not isinstance(sub, str) or not sub:
        raise ValueError("sub must be a non-empty string")
    ttl = int(ttl)
    if ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    jobs = _names(jobs, "jobs")
    groups = _names(groups, "groups")
    roles = _names(roles, "roles")
    if "publisher" in roles and not jobs:
        raise ValueError('a publisher token must name its jobs (jobs=[job_id] or jobs="*")')

    if algorithm == "HS256":
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(
                "an HS256 secret must be at least %d bytes (the gateway refuses shorter ones)"
                % MIN_SECRET_BYTES
            )
        signing_key = raw
    elif algorithm in ASYMMETRIC:
        signing_key = secret
    else:
        raise ValueError("algorithm must be HS256, RS256 or ES256, not %r" % (algorithm,))

    issued = int(time.time() if now is None else now)
    claims = {"sub": sub, "iat": issued, "exp": issued + ttl}
    if jobs:
        claims["jobs"] = jobs
    if groups:
        claims["groups"] = groups
    if roles:
        claims["roles"] = roles
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    if not_before is not None:
        claims["nbf"] = issued + int(not_before)
    if extra_claims:
        claims.update(extra_claims)
    token = jwt.encode(claims, signing_key, algorithm=algorithm)
    # PyJWT 1.x returned bytes.
    return token.decode("ascii") if isinstance(token, bytes) else token
