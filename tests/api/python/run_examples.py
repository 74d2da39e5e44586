"""Runs examples/python/fastapi_app.py and celery_task.py in-process
(tests/api/python_client.rs): Celery executes tasks eagerly, FastAPI is called
through its TestClient. Prints one JSON line: the created job, a renewed token,
and the status of a token request for someone else's job.
argv: EXAMPLES_DIR (REDIS_URL, JWT_SECRET, DEMO_USER in the environment)."""

import json
import os
import sys

os.environ.setdefault("STEP_SECONDS", "0")
sys.path.insert(0, sys.argv[1])

from fastapi.testclient import TestClient  # noqa: E402

import celery_task  # noqa: E402
import fastapi_app  # noqa: E402

celery_task.app.conf.task_always_eager = True
client = TestClient(fastapi_app.app)
created = client.post("/api/jobs", params={"items": 4})
assert created.status_code == 201, created.text
job = created.json()
renewed = client.post("/api/jobs/%s/token" % job["job_id"])
assert renewed.status_code == 200, renewed.text
other = client.post("/api/jobs/not-mine/token")
print(json.dumps({"job": job, "renewed": renewed.json()["token"], "other_status": other.status_code}))
