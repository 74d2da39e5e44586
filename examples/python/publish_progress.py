#!/usr/bin/env python3
"""Report a job's progress to jobcast from Python (redis-py), as docs/protocol.md says.

    python3 examples/python/publish_progress.py JOB_ID [OWNER_ID]

Environment: REDIS_URL (default redis://127.0.0.1:6379/0), JOBCAST_KEY_PREFIX
(default progress:job:), JOB_ID / OWNER_ID when not given as arguments,
STEP_SECONDS (pause between updates, default 0.3). Needs `pip install redis`.

Every update is ONE atomic round trip: MULTI, SET the state key with a TTL,
PUBLISH the same JSON on the job channel, EXEC. `seq` increases with every
update (and across runs: it never falls below the clock in milliseconds).
"""

import json
import os
import sys
import time
from datetime import datetime, timezone

import redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("JOBCAST_KEY_PREFIX", "progress:job:")
TTL_SECONDS = 7200
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.3"))

# (stage, weight in % of the job, steps); the weights sum to 100.
STAGES = [("loading_data", 5, 3), ("clustering", 10, 4), ("solving", 60, 10),
          ("validating", 15, 4), ("exporting", 10, 3)]


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Job:
    def __init__(self, r, job_id, owner_id):
        self.r, self.key = r, PREFIX + job_id
        self.doc = {"job_id": job_id, "owner_id": owner_id, "seq": 0, "status": "running",
                    "stages": [{"name": n, "weight": w} for n, w, _ in STAGES],
                    "started_at": now_iso()}

    def publish(self, **fields):
        self.doc.update(fields)
        # Strictly increasing, and above anything an earlier run of this job wrote.
        self.doc["seq"] = max(self.doc["seq"] + 1, time.time_ns() // 1_000_000)
        self.doc["last_updated"] = now_iso()
        payload = json.dumps(self.doc, separators=(",", ":"))
        with self.r.pipeline(transaction=True) as tx:  # MULTI ... EXEC
            tx.set(self.key, payload, ex=TTL_SECONDS)
            tx.publish(self.key, payload)
            tx.execute()


def main():
    job_id = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("JOB_ID", "py-demo")
    owner_id = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("OWNER_ID", "demo-user")
    job = Job(redis.Redis.from_url(REDIS_URL), job_id, owner_id)
    started, done_weight = time.monotonic(), 0.0
    try:
        for name, weight, steps in STAGES:
            for step in range(steps + 1):
                stage_pct = 100.0 * step / steps
                overall = done_weight + weight * stage_pct / 100.0
                elapsed = time.monotonic() - started
                eta = round(elapsed * (100 - overall) / overall) if overall > 0 else None
                job.publish(stage=name, stage_progress=round(stage_pct, 2),
                            overall_progress=round(overall, 2), eta_seconds=eta)
                time.sleep(STEP_SECONDS)
            done_weight += weight
        job.publish(status="completed", stage_progress=100.0, overall_progress=100.0, eta_seconds=0)
    except Exception as e:  # tell the watchers (unless Redis itself failed), then fail loudly
        if not isinstance(e, redis.RedisError):
            job.publish(status="failed", error=str(e), message=str(e))
        raise
    print(f"{job_id}: completed (seq {job.doc['seq']})")


if __name__ == "__main__":
    main()
