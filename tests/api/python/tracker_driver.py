"""Drives a jobcast.ProgressTracker one step per stdin line, for the
cross-language test (tests/api/python_client.rs). Each line is JSON:
{"at_ms": <clock in ms>, "op": "<method>", "args": [...]}; after each write
the script prints "ok" (or "error <text>") and flushes. argv: REDIS_URL JOB OWNER
STAGES_JSON [GROUP]. The first line's at_ms is also the tracker's start time.
A `redis+cluster://host:port,...` URL gives the tracker a Redis Cluster client
(seeded with the first node).
"""

import json
import sys
from datetime import datetime, timedelta, timezone

import redis

import jobcast

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def client(url):
    if url.startswith("redis+cluster://"):
        from redis.cluster import RedisCluster

        host, port = url[len("redis+cluster://") :].split(",")[0].rsplit(":", 1)
        return RedisCluster(host=host, port=int(port))
    return redis.Redis.from_url(url)


def main():
    url, job, owner, stages = sys.argv[1:5]
    group = sys.argv[5] if len(sys.argv) > 5 else None
    now = {"ms": None}
    first = json.loads(sys.stdin.readline())
    now["ms"] = first["at_ms"]
    clock = lambda: EPOCH + timedelta(milliseconds=now["ms"])
    tracker = jobcast.ProgressTracker(
        client(url), job, owner, json.loads(stages), group=group, clock=clock
    )
    step = first
    while step is not None:
        now["ms"] = step["at_ms"]
        try:
            getattr(tracker, step["op"])(*step.get("args", []))
            print("ok", flush=True)
        except Exception as e:  # reported to the test, which decides
            print("error %s: %s" % (type(e).__name__, e), flush=True)
        line = sys.stdin.readline()
        step = json.loads(line) if line.strip() else None


main()
