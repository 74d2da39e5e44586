"""Runs two short jobs (tests/api/python_client.rs): JOB_OK with
AsyncProgressTracker under `async with` (ends completed by leaving the block),
and JOB_FAIL with ProgressTracker under `with`, raising inside the block (ends
failed with the exception as the reason). argv: REDIS_URL JOB_OK JOB_FAIL OWNER."""

import asyncio
import sys

import redis
import redis.asyncio

import jobcast

url, job_ok, job_fail, owner = sys.argv[1:5]
STAGES = [("fetch", 40), ("compute", 60)]


async def run_ok():
    r = redis.asyncio.Redis.from_url(url)
    async with jobcast.AsyncProgressTracker(r, job_ok, owner, STAGES) as job:
        await job.start_stage("fetch")
        await job.update_stage_progress(1, 2)
        await job.start_stage("compute")
        await job.update_stage_progress(3, 4)
    await r.aclose() if hasattr(r, "aclose") else await r.close()


asyncio.run(run_ok())

try:
    with jobcast.ProgressTracker(redis.Redis.from_url(url), job_fail, owner, STAGES) as job:
        job.start_stage("fetch")
        raise RuntimeError("disk full")
except RuntimeError:
    pass
else:
    sys.exit("the exception did not propagate out of the with block")
print("ok", flush=True)
