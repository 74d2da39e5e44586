"""Follows one job with jobcast.watch() and prints each document as one JSON
line, then "END" after done (tests/api/python_client.rs). argv: URL JOB TOKEN."""

import json
import sys

import jobcast

url, job, token = sys.argv[1:4]
for doc in jobcast.watch(url, job, token, give_up_after=30.0, max_backoff=1.0):
    print(json.dumps(doc), flush=True)
print("END", flush=True)
