"""Follows one job with jobcast.watch() and prints each document as one JSON
line, then "END" after done (tests/api/python_client.rs).
argv: URL JOB TOKEN, or URL JOB --mint SECRET SUB TTL to pass watch() a callable
that mints a fresh TTL-second token each time it is called (printing
"TOKEN <n>" when it does). A stalled job prints "STALLED <seconds>", and
"STALLED None" when its next state clears it."""

import json
import sys

import jobcast

url, job = sys.argv[1:3]
if sys.argv[3] == "--mint":
    secret, sub, ttl = sys.argv[4], sys.argv[5], int(sys.argv[6])
    calls = {"n": 0}

    def token():
        calls["n"] += 1
        print("TOKEN %d" % calls["n"], flush=True)
        return jobcast.mint_token(secret, sub, jobs=[job], ttl=ttl)

else:
    token = sys.argv[3]

on_stalled = lambda seconds: print("STALLED %s" % seconds, flush=True)
for doc in jobcast.watch(
    url, job, token, give_up_after=30.0, max_backoff=1.0, on_stalled=on_stalled
):
    print(json.dumps(doc), flush=True)
print("END", flush=True)
