"""The pure core of a job's progress: stage weights, clamping and rounding,
`seq`, the moving-average ETA and the document a tracker writes. No I/O: every
change takes the time as an argument, so the trackers (``tracker.py``) only add
a clock and the Redis write.

This mirrors the gateway's own Rust tracker (``crates/jobcast-publish``) number
for number: the same steps at the same times give the same document, which the
test suite checks by running both side by side.
"""

import math
import re
from collections import deque
from datetime import datetime, timedelta, timezone

# Points the ETA's moving average spans: enough to ride out one slow step, few
# enough that a change of pace (a slower stage) shows within ten updates.
ETA_WINDOW_POINTS = 10
# How far the stage weights may be from 100 (float sums of 33.33 + ...).
WEIGHT_SUM_TOLERANCE = 0.01
TERMINAL_STATUSES = ("completed", "failed", "cancelled")
ENDPOINT_STATUSES = ("pending", "processing", "processed", "error")

_JOB_ID = re.compile(r"[A-Za-z0-9._:\-]{1,200}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


class ProgressError(ValueError):
    """A caller's mistake, found without any I/O (unknown stage, bad weights,
    a change after the job ended...)."""


def check_job_id(job_id):
    """Job ids are 1-200 characters of ``A-Z a-z 0-9 . _ : -``; the gateway
    refuses anything else, so a tracker must never write one."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ProgressError(
            "invalid job id %r: 1-200 characters from A-Z a-z 0-9 . _ : -" % (job_id,)
        )
    return job_id


def _round_half_away(x):
    # Rust's f64::round (half away from zero); Python's round() is half-even.
    r = math.floor(x)
    if x - r >= 0.5:
        r += 1
    return float(r)


def round2(pct):
    """Clamps a percentage to 0-100 (NaN counts as 0) and rounds it to 2 places."""
    p = 0.0 if pct != pct else min(100.0, max(0.0, float(pct)))
    return _round_half_away(p * 100.0) / 100.0


def fraction_pct(done, total):
    """``done`` of ``total`` as a percentage; an empty stage (total 0) is done."""
    done, total = int(done), int(total)
    if done < 0 or total < 0:
        raise ProgressError("done and total must not be negative")
    if total == 0:
        return 100.0
    return 100.0 * float(min(done, total)) / float(total)


def validate_stages(stages):
    """``[(name, weight), ...]`` (or a dict in order): names unique and not
    empty, weights finite and not negative, summing to 100."""
    items = list(stages.items()) if isinstance(stages, dict) else list(stages)
    if not items:
        raise ProgressError("a job needs at least one stage")
    out = []
    for item in items:
        name, weight = item
        if not isinstance(name, str) or not name:
            raise ProgressError("stage names must not be empty")
        if any(s["name"] == name for s in out):
            raise ProgressError("stage %r is declared twice" % name)
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ProgressError("stage %r has a weight that is not a number" % name)
        if not math.isfinite(weight) or weight < 0.0:
            raise ProgressError("stage %r has a weight that is negative or not a number" % name)
        out.append({"name": name, "weight": weight})
    total = sum(s["weight"] for s in out)
    if abs(total - 100.0) > WEIGHT_SUM_TOLERANCE:
        raise ProgressError("stage weights must sum to 100, not %s" % round2(total))
    return out


def overall_pct(stages, index, stage_pct):
    """Overall percentage when stage ``index`` is ``stage_pct`` % done: the
    weights of every earlier stage plus this stage's share."""
    before = sum(s["weight"] for s in stages[:index])
    share = stages[index]["weight"] * min(100.0, max(0.0, stage_pct)) / 100.0
    return before + share


class EtaEstimator:
    """ETA from the average rate over the last ``ETA_WINDOW_POINTS`` (time,
    progress) points (the window's slope). Where the window says nothing (fewer
    than two points, no time passed, or no progress across it, as in a stall)
    it falls back to ``elapsed * remaining / done``."""

    def __init__(self):
        self._window = deque(maxlen=ETA_WINDOW_POINTS)

    def observe(self, t, progress):
        if not (math.isfinite(t) and math.isfinite(progress)):
            return
        if self._window and t < self._window[-1][0]:
            return  # a clock stepping back
        self._window.append((t, progress))

    def estimate(self, elapsed, progress):
        """Seconds left, or None while nothing is known."""
        if progress >= 100.0:
            return 0.0
        remaining = 100.0 - max(progress, 0.0)
        if self._window:
            (t0, p0), (t1, p1) = self._window[0], self._window[-1]
            dt, dp = t1 - t0, p1 - p0
            if dt > 0.0 and dp > 0.0:
                return remaining * dt / dp
        if progress > 0.0 and elapsed > 0.0:
            return elapsed * remaining / progress
        return None


def utc_now():
    return datetime.now(timezone.utc)


def _as_utc(t):
    if t.tzinfo is None:
        raise ProgressError("the clock must return timezone-aware datetimes")
    return t.astimezone(timezone.utc)


def millis(t):
    """Milliseconds since the Unix epoch (floored, like chrono's)."""
    return (_as_utc(t) - _EPOCH) // _MS


def rfc3339(t):
    """``2026-11-23T16:49:00.123Z``: RFC 3339, UTC, milliseconds."""
    t = _as_utc(t)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


def _secs_between(start, end):
    return max(0, (_as_utc(end) - _as_utc(start)) // _MS) / 1000.0


class JobProgress:
    """The whole state of one job's progress and the document it becomes.

    Invariant: ``seq`` strictly increases across every document, and never
    falls below the wall clock in milliseconds, so a later run of the same job
    id starts above every earlier one and the gateway never drops a fresh
    update as stale.
    """

    def __init__(self, job_id, owner_id, stages, now, group=None):
        self.job_id = check_job_id(job_id)
        if not isinstance(owner_id, str) or not owner_id:
            raise ProgressError("owner_id must be a non-empty string")
        if group is not None:
            check_job_id(group)
        self.owner_id = owner_id
        self.group = group
        self.stages = validate_stages(stages)
        self.current = None
        self._stage_progress = 0.0
        self._overall_progress = 0.0
        self.status = "pending"
        self.seq = 0
        self.started_at = now
        self.last_updated = now
        self.message = None
        self.error = None
        self.endpoints = {}
        self._eta = EtaEstimator()
        self._eta_seconds = None

    # --- reading ---------------------------------------------------------

    @property
    def stage(self):
        return None if self.current is None else self.stages[self.current]["name"]

    @property
    def stage_progress(self):
        return round2(self._stage_progress)

    @property
    def overall_progress(self):
        return round2(self._overall_progress)

    @property
    def eta_seconds(self):
        """Whole seconds left, or None while unknown."""
        if self._eta_seconds is None:
            return None
        return int(_round_half_away(self._eta_seconds))

    @property
    def finished(self):
        return self.status in TERMINAL_STATUSES

    # --- changes ---------------------------------------------------------

    def resume_after_seq(self, floor):
        """Makes the next ``seq`` greater than ``floor``."""
        self.seq = max(self.seq, int(floor))

    def _ensure_open(self):
        if self.finished:
            raise ProgressError(
                "the job already ended (%s); a new run needs a new tracker" % self.status
            )

    def start_stage(self, name, now):
        """Enters stage ``name`` at 0 %; every earlier stage counts as done."""
        self._ensure_open()
        index = next((i for i, s in enumerate(self.stages) if s["name"] == name), None)
        if index is None:
            raise ProgressError("no stage named %r was declared" % (name,))
        if self.current is not None and index < self.current:
            raise ProgressError(
                "stage %r comes before the current stage %r; progress only goes forward"
                % (name, self.stage)
            )
        self.current = index
        self.status = "running"
        self._set_stage_pct(0.0)
        self._stamp(now)

    def update_stage_progress(self, done, total, now):
        """``done`` of ``total`` items of the current stage are done."""
        self.set_stage_progress(fraction_pct(done, total), now)

    def set_stage_progress(self, pct, now):
        """The current stage is ``pct`` % done (clamped to 0-100)."""
        self._ensure_open()
        if self.current is None:
            raise ProgressError("no stage has been started")
        self._set_stage_pct(float(pct))
        self._stamp(now)

    def complete_stage(self, now):
        self.set_stage_progress(100.0, now)

    def set_endpoint(self, name, status, now):
        """One entry of the per-endpoint map (pending, processing, processed, error)."""
        self._ensure_open()
        if status not in ENDPOINT_STATUSES:
            raise ProgressError(
                "endpoint status must be one of %s, not %r" % (", ".join(ENDPOINT_STATUSES), status)
            )
        self.endpoints[str(name)] = status
        if self.status == "pending":
            self.status = "running"
        self._stamp(now)

    def set_message(self, message, now):
        self._ensure_open()
        self.message = None if message is None else str(message)
        self._stamp(now)

    def touch(self, now):
        """The state unchanged but for ``seq``/``last_updated`` (a heartbeat
        that also renews the key's TTL during a long step)."""
        self._ensure_open()
        self._stamp(now)

    def complete(self, now):
        self._ensure_open()
        self.status = "completed"
        if self.current is not None:
            self._stage_progress = 100.0
        self._overall_progress = 100.0
        self._stamp(now)

    def fail(self, error, now):
        """Ends the job as failed; ``error`` says why (sent as ``error`` and ``message``)."""
        self._ensure_open()
        self.status = "failed"
        self.error = str(error)
        self.message = str(error)
        self._stamp(now)

    def cancel(self, now):
        self._ensure_open()
        self.status = "cancelled"
        self._stamp(now)

    def _set_stage_pct(self, pct):
        # The overall percentage never goes back within a run: a progress bar
        # that shrinks reads as a bug.
        if self.current is None:
            return
        self._stage_progress = round2(pct)
        overall = overall_pct(self.stages, self.current, self._stage_progress)
        self._overall_progress = max(self._overall_progress, round2(overall))

    def _stamp(self, now):
        self.seq = max(self.seq + 1, millis(now))
        self.last_updated = now
        elapsed = _secs_between(self.started_at, now)
        if self.status == "completed":
            self._eta_seconds = 0.0
        elif self.status == "running":
            self._eta.observe(elapsed, self._overall_progress)
            self._eta_seconds = self._eta.estimate(elapsed, self._overall_progress)
        else:
            self._eta_seconds = None

    # --- the document ----------------------------------------------------

    def document(self):
        """The progress document, fields in the order a person reading it expects."""
        doc = {
            "job_id": self.job_id,
            "seq": self.seq,
            "status": self.status,
            "owner_id": self.owner_id,
        }
        if self.group is not None:
            doc["group_id"] = self.group
        doc.update(
            {
                "stage": self.stage,
                "stage_index": self.current,
                "stage_progress": self.stage_progress,
                "overall_progress": self.overall_progress,
                "eta_seconds": self.eta_seconds,
                "stages": [dict(s) for s in self.stages],
                "started_at": rfc3339(self.started_at),
                "last_updated": rfc3339(self.last_updated),
            }
        )
        if self.endpoints:
            doc["endpoints"] = dict(sorted(self.endpoints.items()))
        if self.message is not None:
            doc["message"] = self.message
        if self.error is not None:
            doc["error"] = self.error
        return doc
