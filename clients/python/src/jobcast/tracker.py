"""Progress trackers: one job's progress as a Python worker reports it.

The worker names weighted stages once, then says where it is
(``start_stage``, ``update_stage_progress(done, total)``, ``complete()``...);
every call writes the whole document with ONE atomic Redis round trip: a
MULTI/EXEC that SETs the state key with its TTL and PUBLISHes the same bytes on
the job channel (and, for a job in a group, adds it to the group's set with the
same TTL). ``ProgressTracker`` uses ``redis.Redis``; ``AsyncProgressTracker``
uses ``redis.asyncio.Redis``. Both share the pure core in ``progress.py``.

Given a Redis Cluster client (``redis.cluster.RedisCluster``, or
``redis.asyncio.cluster.RedisCluster``) the state is written by one script on
the slot's primary that SETs the key and SPUBLISHes on the job channel (a
shard channel there), and the group's set, which lives in another slot, gets
its SADD and EXPIRE right after.
"""

import asyncio
import json

from .progress import JobProgress, ProgressError, check_job_id, utc_now

DEFAULT_KEY_PREFIX = "progress:job:"
DEFAULT_GROUP_PREFIX = "progress:group:"
# Long enough for a watcher to come back after a lunch break, short enough
# that abandoned jobs leave Redis on their own (the gateway's default too).
DEFAULT_TTL_SECS = 7200
# The gateway's default JOBCAST_MAX_DOCUMENT_BYTES: a larger document would
# be dropped by the gateway, so the tracker refuses to write it.
DEFAULT_MAX_DOCUMENT_BYTES = 65536

# SET (with the TTL in seconds, 0: none) and SPUBLISH of the same bytes, as one
# step on the key's slot: the key and the channel share a name, hence a slot.
_CLUSTER_WRITE = """
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('SPUBLISH', KEYS[1], ARGV[1])
"""


def _is_cluster(client):
    """Whether ``client`` is redis-py's Redis Cluster client (sync or asyncio)."""
    kinds = []
    try:
        from redis.cluster import RedisCluster

        kinds.append(RedisCluster)
    except ImportError:
        pass
    try:
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

        kinds.append(AsyncRedisCluster)
    except ImportError:
        pass
    return bool(kinds) and isinstance(client, tuple(kinds))


class DocumentTooLarge(ProgressError):
    """The document is over the size the gateway accepts."""


class _Base:
    def __init__(
        self,
        redis,
        job_id,
        owner_id,
        stages,
        *,
        group=None,
        key_prefix=DEFAULT_KEY_PREFIX,
        group_prefix=DEFAULT_GROUP_PREFIX,
        ttl=DEFAULT_TTL_SECS,
        max_document_bytes=DEFAULT_MAX_DOCUMENT_BYTES,
        clock=utc_now,
    ):
        check_job_id(job_id)
        self.redis = redis
        self.cluster = _is_cluster(redis)
        self.clock = clock
        self.key = key_prefix + job_id
        self.group_key = None if group is None else group_prefix + group
        self.ttl = int(ttl)
        if self.ttl < 0:
            raise ProgressError("ttl must be 0 (no expiry) or a number of seconds")
        self.max_document_bytes = int(max_document_bytes)
        self.progress = JobProgress(job_id, owner_id, stages, clock(), group=group)

    @property
    def job_id(self):
        return self.progress.job_id

    @property
    def seq(self):
        return self.progress.seq

    def document(self):
        """The state as last changed (what the last write sent, or tried to)."""
        return self.progress.document()

    def resume_after_seq(self, floor):
        self.progress.resume_after_seq(floor)

    def _payload(self):
        payload = json.dumps(
            self.progress.document(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
        if len(payload) > self.max_document_bytes:
            raise DocumentTooLarge(
                "progress document is %d bytes, over the %d-byte limit the gateway accepts"
                % (len(payload), self.max_document_bytes)
            )
        return payload

    def _queue(self, tx, payload):
        # Queued on a MULTI pipeline: the commands run as one step, so nothing
        # that hears the PUBLISH can read an older state from the key, and a
        # worker dying between them cannot leave key and channel disagreeing.
        if self.ttl > 0:
            tx.set(self.key, payload, ex=self.ttl)
        else:
            tx.set(self.key, payload)
        tx.publish(self.key, payload)
        if self.group_key is not None:
            tx.sadd(self.group_key, self.job_id)
            if self.ttl > 0:
                tx.expire(self.group_key, self.ttl)

    def _change(self, method, *args):
        getattr(self.progress, method)(*args, self.clock())
        return self._payload()


class ProgressTracker(_Base):
    """Reports one job's progress to Redis (``redis.Redis``).

    Every method that changes the state writes it at once and returns after
    Redis answered; a write that fails raises, leaving the state changed, so
    the next call (or ``publish()``) sends it.

    As a context manager it marks the job failed when the block raises (with
    the exception as the reason; cancelled on KeyboardInterrupt) and completed
    when the block ends normally without having ended the job itself::

        with ProgressTracker(r, "8ae7f267", "user-42", [("load", 10), ("solve", 90)]) as job:
            job.start_stage("load")
            job.update_stage_progress(3, 10)
    """

    def _write(self, payload):
        if self.cluster:
            self.redis.eval(_CLUSTER_WRITE, 1, self.key, payload, self.ttl)
            if self.group_key is not None:
                self.redis.sadd(self.group_key, self.job_id)
                if self.ttl > 0:
                    self.redis.expire(self.group_key, self.ttl)
            return
        with self.redis.pipeline(transaction=True) as tx:
            self._queue(tx, payload)
            tx.execute()

    def start_stage(self, name):
        self._write(self._change("start_stage", name))

    def update_stage_progress(self, done, total):
        self._write(self._change("update_stage_progress", done, total))

    def set_stage_progress(self, pct):
        self._write(self._change("set_stage_progress", pct))

    def complete_stage(self):
        self._write(self._change("complete_stage"))

    def set_endpoint(self, name, status):
        self._write(self._change("set_endpoint", name, status))

    def set_message(self, message):
        self._write(self._change("set_message", message))

    def publish(self):
        """Writes the current state again with a new ``seq`` (renews the TTL:
        a heartbeat during a long step, or a retry after a failed write)."""
        self._write(self._change("touch"))

    def complete(self):
        self._write(self._change("complete"))

    def fail(self, error):
        self._write(self._change("fail", error))

    def cancel(self):
        self._write(self._change("cancel"))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.progress.finished:
            return False
        if _is_cancellation(exc):
            self.cancel()
        elif exc is not None:
            self.fail(_reason(exc))
        else:
            self.complete()
        return False


class AsyncProgressTracker(_Base):
    """``ProgressTracker`` for asyncio workers (``redis.asyncio.Redis``); the
    same methods, awaited, and ``async with`` for the same failure rule."""

    async def _write(self, payload):
        if self.cluster:
            await self.redis.eval(_CLUSTER_WRITE, 1, self.key, payload, self.ttl)
            if self.group_key is not None:
                await self.redis.sadd(self.group_key, self.job_id)
                if self.ttl > 0:
                    await self.redis.expire(self.group_key, self.ttl)
            return
        async with self.redis.pipeline(transaction=True) as tx:
            self._queue(tx, payload)
            await tx.execute()

    async def start_stage(self, name):
        await self._write(self._change("start_stage", name))

    async def update_stage_progress(self, done, total):
        await self._write(self._change("update_stage_progress", done, total))

    async def set_stage_progress(self, pct):
        await self._write(self._change("set_stage_progress", pct))

    async def complete_stage(self):
        await self._write(self._change("complete_stage"))

    async def set_endpoint(self, name, status):
        await self._write(self._change("set_endpoint", name, status))

    async def set_message(self, message):
        await self._write(self._change("set_message", message))

    async def publish(self):
        await self._write(self._change("touch"))

    async def complete(self):
        await self._write(self._change("complete"))

    async def fail(self, error):
        await self._write(self._change("fail", error))

    async def cancel(self):
        await self._write(self._change("cancel"))

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        if self.progress.finished:
            return False
        if _is_cancellation(exc):
            await self.cancel()
        elif exc is not None:
            await self.fail(_reason(exc))
        else:
            await self.complete()
        return False


def _is_cancellation(exc):
    # Stopped from outside (Ctrl-C, a cancelled asyncio task): the job did not
    # fail, it was cancelled.
    return isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))


def _reason(exc):
    text = str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__
