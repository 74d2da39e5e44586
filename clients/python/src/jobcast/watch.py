"""``watch()``: a job's states as an iterator, for services that consume
progress (a backend that relays it, a CLI, a test). It reads the gateway's
Server-Sent Events stream with the standard library only, reconnects on its
own (the server's ``retry:``, then capped exponential backoff) with
``Last-Event-ID`` so nothing is missed or repeated across a gateway restart,
and ends at ``done``.
"""

import json
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request


class WatchError(Exception):
    """The gateway refused the watch for good (400, 401, 403, 404, or a token
    that expired and could not be renewed), or it stayed unreachable for
    longer than ``give_up_after``. ``status`` is the HTTP status where one was
    seen; ``code`` the gateway's error code (``forbidden``, ``token_expired``...)."""

    def __init__(self, message, status=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


class _Retry(Exception):
    """This connection is over; connect again after a pause."""


# A refresh loop that never gets a working token must end.
_MAX_TOKEN_REFRESHES = 2


def watch(
    url,
    job,
    token,
    *,
    last_event_id=None,
    read_timeout=45.0,
    give_up_after=60.0,
    min_backoff=0.25,
    max_backoff=10.0,
    on_stalled=None,
):
    """Yields each new progress document (a dict) of ``job``, in order, and
    returns after the job's ``done``.

    ``url`` is the gateway's base URL (``http://127.0.0.1:8080``); ``token`` a
    JWT string, or a callable returning one (called again when the gateway
    says the token expired). ``last_event_id`` resumes after an id seen
    earlier. A document whose ``seq`` is not above the last one is never
    yielded twice. ``read_timeout`` must exceed the gateway's heartbeat (15 s).
    ``on_stalled`` is called with the seconds of silence when the gateway says
    the running job has had no new state for its stall period, and with
    ``None`` just before the next document is yielded.
    Raises ``WatchError`` when the watch cannot go on.
    """
    state = _State(url, job, token, last_event_id)
    backoff = min_backoff
    failing_since = None
    refreshes = 0
    stalled = False
    while True:
        try:
            for kind, payload in state.connect(read_timeout):
                if kind == "connected":
                    failing_since = None
                    backoff = min_backoff
                    refreshes = 0
                elif kind == "stalled":
                    stalled = True
                    if on_stalled is not None:
                        on_stalled(payload)
                elif kind == "progress":
                    if stalled:
                        stalled = False
                        if on_stalled is not None:
                            on_stalled(None)
                    yield payload
                elif kind == "done":
                    return
        except _TokenExpired as e:
            if not callable(token) or refreshes >= _MAX_TOKEN_REFRESHES:
                code = "unauthorized" if e.status == 401 else "token_expired"
                raise WatchError(str(e), status=e.status, code=code)
            refreshes += 1
            state.token = None  # ask the callable again
            continue
        except _Retry as e:
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > give_up_after:
                raise WatchError(
                    "gave up after %.0f s without a connection: %s" % (now - failing_since, e)
                )
            delay = max(backoff, state.retry_ms / 1000.0) if state.retry_ms else backoff
            # Jitter: many watchers of one restarted gateway do not come back together.
            time.sleep(delay * random.uniform(0.5, 1.0))
            backoff = min(max_backoff, backoff * 2)
        else:
            return  # 204: the job had ended and its end was already seen


class _TokenExpired(Exception):
    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class _State:
    def __init__(self, url, job, token, last_event_id):
        self.base = url.rstrip("/")
        self.job = job
        self.token_source = token
        self.token = None
        self.last_id = None if last_event_id is None else str(last_event_id)
        self.retry_ms = None

    def _token(self):
        if self.token is None:
            self.token = self.token_source() if callable(self.token_source) else self.token_source
        return self.token

    def _is_new(self, event_id):
        if event_id is None or self.last_id is None:
            return True
        try:
            return int(event_id) > int(self.last_id)
        except ValueError:
            return event_id != self.last_id

    def connect(self, read_timeout):
        """One connection: yields ("connected", None), ("progress", doc), ("done", payload)."""
        path = "/jobs/%s/events" % urllib.parse.quote(self.job, safe=":")
        headers = {
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
            "Authorization": "Bearer %s" % self._token(),
        }
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        req = urllib.request.Request(self.base + path, headers=headers)
        try:
            res = urllib.request.urlopen(req, timeout=read_timeout)
        except urllib.error.HTTPError as e:
            body = _json_body(e)
            code = body.get("error")
            message = "%s %s: %s" % (e.code, code or e.reason, body.get("message", ""))
            if e.code == 401:
                raise _TokenExpired(message, status=401)
            if e.code in (400, 403, 404):
                raise WatchError(message, status=e.code, code=code)
            raise _Retry(message)  # 429, 5xx, a proxy's 502
        except (urllib.error.URLError, OSError) as e:
            raise _Retry("cannot reach %s: %s" % (self.base, e))
        with res:
            if res.status == 204:
                return
            yield from self._events(res)
        raise _Retry("the stream ended before done")

    def _events(self, res):
        event, data, event_id = "", [], None
        while True:
            try:
                raw = res.readline()
            except (socket.timeout, OSError) as e:
                raise _Retry("reading the stream: %s" % (e,))
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if event or data:
                    item = self._dispatch(event or "message", "\n".join(data), event_id)
                    if item is not None:
                        yield item
                        if item[0] == "done":
                            return
                event, data, event_id = "", [], None
                continue
            if line.startswith(":"):
                continue  # heartbeat or padding
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
            elif field == "retry" and value.isdigit():
                self.retry_ms = int(value)

    def _dispatch(self, event, data, event_id):
        if event == "connected":
            return ("connected", None)
        if event == "progress":
            if not self._is_new(event_id):
                return None
            try:
                doc = json.loads(data)
            except ValueError:
                return None
            if event_id is not None:
                self.last_id = event_id
            return ("progress", doc)
        if event == "stalled":
            try:
                seconds = json.loads(data).get("seconds_since_update")
            except (ValueError, AttributeError):
                seconds = None
            return ("stalled", seconds if isinstance(seconds, int) else 0)
        if event == "done":
            try:
                return ("done", json.loads(data))
            except ValueError:
                return ("done", {})
        if event == "error":
            try:
                body = json.loads(data)
            except ValueError:
                body = {}
            if body.get("error") == "token_expired":
                raise _TokenExpired("the token expired during the watch")
            raise _Retry("the gateway sent error: %s" % (data,))
        return None


def _json_body(err):
    try:
        body = json.loads(err.read().decode("utf-8"))
        return body if isinstance(body, dict) else {}
    except Exception:
        return {}
