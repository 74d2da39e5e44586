"""A Celery task that reports its progress to jobcast with the `jobcast`
Python package (pip install ./clients/python celery).

The web side (fastapi_app.py) creates the job, writes its first "pending"
state so that watchers can connect at once, and queues this task; the task
goes through weighted stages and ends the job: leaving the `with` block marks
it completed, an exception marks it failed (and still fails the Celery task).

    celery -A celery_task worker --loglevel=info

Reads REDIS_URL (the gateway's Redis, default redis://127.0.0.1:6379/0),
CELERY_BROKER_URL (default redis://127.0.0.1:6379/1) and STEP_SECONDS (pause
per item, default 0.2, to make the progress visible).
"""

import os
import time

import redis
from celery import Celery

import jobcast

app = Celery("reports", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"))
progress = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

STAGES = [("loading", 10), ("computing", 80), ("exporting", 10)]
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.2"))


@app.task
def build_report(job_id, owner_id, items, after_seq=0):
    with jobcast.ProgressTracker(progress, job_id, owner_id, STAGES) as job:
        # Above the "pending" state the web side wrote, even within its millisecond.
        job.resume_after_seq(after_seq)
        job.start_stage("loading")
        rows = list(range(items))
        time.sleep(STEP_SECONDS)

        job.start_stage("computing")
        for done, _row in enumerate(rows, start=1):
            time.sleep(STEP_SECONDS)  # the real work
            job.update_stage_progress(done, len(rows))

        job.start_stage("exporting")
        job.set_message("report ready")
    return job_id
