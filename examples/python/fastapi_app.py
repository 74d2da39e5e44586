"""A FastAPI backend that starts jobs and hands browsers the tokens to watch
them on jobcast (pip install ./clients/python fastapi uvicorn celery).

    POST /api/jobs                 -> {"job_id", "token", "events_url"}: creates a job
                                      for the signed-in user, queues the Celery task
    POST /api/jobs/{job_id}/token  -> {"token"}: a fresh token for a job the user owns
                                      (the browser client's getToken calls this)

    JWT_SECRET=... JOBCAST_URL=http://127.0.0.1:8080 uvicorn fastapi_app:app

JWT_SECRET is the gateway's (at least 32 bytes); tokens name the one job they
open and live 10 minutes: the browser client asks for a new one when the
gateway says a token expired.
"""

import json
import os
import uuid

import redis
from fastapi import Depends, FastAPI, HTTPException

import jobcast
from celery_task import STAGES, build_report

app = FastAPI()
progress = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
JOBCAST_URL = os.environ.get("JOBCAST_URL", "http://127.0.0.1:8080")
TOKEN_TTL = 600


def current_user() -> str:
    # Your authentication goes here (session cookie, OAuth...).
    return os.environ.get("DEMO_USER", "user-42")


def watch_token(user: str, job_id: str) -> str:
    return jobcast.mint_token(os.environ["JWT_SECRET"], user, jobs=[job_id], ttl=TOKEN_TTL)


@app.post("/api/jobs", status_code=201)
def create_job(items: int = 20, user: str = Depends(current_user)):
    job_id = uuid.uuid4().hex[:12]
    # The first state is written before answering: a browser that connects at
    # once finds the job (pending) instead of a 404.
    pending = jobcast.ProgressTracker(progress, job_id, user, STAGES)
    pending.publish()
    build_report.delay(job_id, user, items, after_seq=pending.seq)
    return {
        "job_id": job_id,
        "token": watch_token(user, job_id),
        "events_url": f"{JOBCAST_URL}/jobs/{job_id}/events",
    }


@app.post("/api/jobs/{job_id}/token")
def renew_token(job_id: str, user: str = Depends(current_user)):
    # Your jobs table knows the owner; here the job's state in Redis does.
    raw = progress.get(jobcast.DEFAULT_KEY_PREFIX + job_id)
    try:
        owner = json.loads(raw)["owner_id"] if raw else None
    except (ValueError, KeyError, TypeError):
        owner = None
    if owner != user:
        raise HTTPException(status_code=404, detail="no such job")
    return {"token": watch_token(user, job_id)}
