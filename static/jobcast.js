// jobcast.js — the browser client for jobcast (the wire protocol: README, "Wire protocol").
//
// One dependency-free ES module. `watch()` follows one job over Server-Sent
// Events, falls back to WebSocket and then to long-polling, reconnects with
// capped exponential backoff, resumes from the last event id and never hands
// the application a duplicate or a step backwards. `watchMany()` and
// `watchGroup()` do the same for many jobs (a list, or every job of a group)
// over one connection, which the tabs of a browser share. `selfTest()` checks
// whether the network in between delivers events one by one (the buffering
// self-test of static/buffering.html). The rest are small helpers for
// progress UIs.
//
// Invariants this file keeps (read them before changing anything below):
//  1. Exactly one transport is open at a time. Every callback a transport
//     gives us carries a generation number; callbacks of a superseded
//     transport are ignored, so a late event from a closed socket can never
//     be delivered or trigger a second reconnect.
//  2. A healthy connection is never restarted by us: we only act on a real
//     error or close (or on a connection that never said `connected`).
//  3. An event reaches `onProgress` only if its numeric id is greater than
//     the last one delivered (ids are the documents' `seq`).
//  4. After `done`, a final error or `close()`, nothing is called any more.
//  5. On a stream of many jobs, 3 and 4 hold per job: each job has its own
//     gate, and nothing is delivered for a job after its `done`.
//  6. The cursor of a stream of many jobs is stored (and passed to other
//     tabs) only after every state it covers was applied, and never parsed:
//     resuming from it can repeat a state (the gates drop it), never skip one.
//  7. Of the tabs watching the same stream, at most one holds a connection
//     (Web Locks, or the BroadcastChannel election where they are missing).

const STORAGE_KEY = 'jobcast.jobs';
const STREAMS_KEY = 'jobcast.streams';
const ALL_TRANSPORTS = ['sse', 'ws', 'poll'];
const DEFAULT_TERMINAL_STATUSES = ['completed', 'failed', 'cancelled'];
/** Long-poll wait the server is asked for, in seconds (server caps at 55). */
const POLL_TIMEOUT_SECS = 25;
/** A connection that stayed up this long resets the backoff to its start. */
const STABLE_CONNECTION_MS = 10_000;
/**
 * Longest `retry:` the server may send: 2 × JOBCAST_SSE_RETRY_MS on a stream,
 * up to JOBCAST_SHUTDOWN_SECS on a drain. An interrupted EventSource is left
 * to reconnect by itself for that long (plus the connect timeout) before the
 * watcher takes over.
 */
const MAX_SERVER_RETRY_MS = 30_000;
/** Extra random wait on top of a server-suggested reconnect delay, at most this. */
const SUGGESTED_DELAY_JITTER_MS = 1000;
/** Consecutive token refreshes without a successful connection before giving up. */
const MAX_TOKEN_REFRESHES = 2;
/** Entries in localStorage older than this are pruned (a job nobody resumed). */
const STORAGE_MAX_AGE_MS = 24 * 3600 * 1000;

const HUMAN_MESSAGES = {
  token_expired: 'Your session has expired. Sign in again to keep watching this job.',
  unauthorized: 'Your session has expired or is not valid. Sign in again to watch this job.',
  forbidden: "You don't have access to this job.",
  not_found: "This job doesn't exist.",
  bad_request: 'This job id is not valid.',
};

/**
 * Error given to `onError`. Always final: the watch is closed when it is reported.
 * @property {string} code   one of `token_expired`, `unauthorized`, `forbidden`,
 *                           `not_found`, `bad_request`, `client_error`
 * @property {number|undefined} status  the HTTP status, where one was seen
 * @property {string|undefined} detail  the server's own words on the cause (its
 *                           JSON `message`, e.g. "the token has expired (exp)"),
 *                           where one was seen; also appended to `message`
 * @property {string|undefined} jobId  on a stream of many jobs, the job that was refused
 */
export class JobcastError extends Error {
  constructor(code, status, message, detail) {
    const human = message || HUMAN_MESSAGES[code] || 'Something went wrong while watching this job.';
    super(detail ? `${human} (${detail})` : human);
    this.name = 'JobcastError';
    this.code = code;
    this.status = status;
    this.detail = detail || undefined;
    this.jobId = undefined;
  }
}

/** The server's `message` from an error body, if it sent one. */
function detailOf(body) {
  return body && typeof body.message === 'string' && body.message ? body.message : undefined;
}

function errorForStatus(status, body) {
  const code =
    (body && typeof body.error === 'string' && HUMAN_MESSAGES[body.error] && body.error) ||
    { 400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found' }[status] ||
    'client_error';
  const err = new JobcastError(code, status, undefined, detailOf(body));
  // A stream of many jobs names the job that was refused.
  if (body && typeof body.job_id === 'string') err.jobId = body.job_id;
  return err;
}

/** Job ids are `A-Z a-z 0-9 . _ : -`; keep `:` literal since path params are not percent-decoded everywhere. */
function pathId(jobId) {
  return encodeURIComponent(jobId).replace(/%3A/gi, ':');
}

function numericId(id) {
  if (id === null || id === undefined || id === '') return NaN;
  const n = Number(id);
  return Number.isFinite(n) ? n : NaN;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * Invariant 3: lets a state through only if it is newer than the last one
 * `g` let through (`g.lastN`, `g.lastId`, `g.docJson`, updated here): by its
 * event id, else its `seq`, else (neither) as long as it differs.
 */
function passGate(g, id, doc) {
  let n = numericId(id);
  if (Number.isNaN(n) && Number.isInteger(doc.seq)) {
    n = doc.seq;
    id = String(n);
  }
  const json = JSON.stringify(doc);
  if (!Number.isNaN(n)) {
    if (!Number.isNaN(g.lastN) && n <= g.lastN) return false; // duplicate or backwards
    g.lastN = n;
    g.lastId = String(id);
  } else if (json === g.docJson) {
    return false; // no id at all: drop a byte-identical repeat
  }
  g.docJson = json;
  return true;
}

// ---------------------------------------------------------------------------
// localStorage: `jobcast.jobs` {jobId: {lastId, doc, transport, updatedAt}} for
// `watch()`, `jobcast.streams` {stream: {cursor, transport, jobs, updatedAt}}
// for the streams of many jobs. Never holds tokens.

function readStore(storeKey = STORAGE_KEY) {
  try {
    const raw = globalThis.localStorage && localStorage.getItem(storeKey);
    const obj = raw ? JSON.parse(raw) : {};
    return obj && typeof obj === 'object' && !Array.isArray(obj) ? obj : {};
  } catch {
    return {};
  }
}

function writeStore(obj, storeKey = STORAGE_KEY) {
  try {
    if (globalThis.localStorage) localStorage.setItem(storeKey, JSON.stringify(obj));
  } catch {
    // Quota exceeded or storage disabled (private mode): resuming is a nicety.
  }
}

function updateStore(id, patch, storeKey = STORAGE_KEY) {
  const store = readStore(storeKey);
  const now = Date.now();
  for (const [k, entry] of Object.entries(store)) {
    if (!entry || now - (entry.updatedAt || 0) > STORAGE_MAX_AGE_MS) delete store[k];
  }
  store[id] = { ...(store[id] || {}), ...patch, updatedAt: now };
  writeStore(store, storeKey);
}

function removeFromStore(id, storeKey = STORAGE_KEY) {
  const store = readStore(storeKey);
  if (id in store) {
    delete store[id];
    writeStore(store, storeKey);
  }
}

/**
 * Jobs being watched (or watched before a refresh) in this browser, from localStorage.
 * @returns {Object<string, {lastId: string|null, doc: object|null, transport: string|null, updatedAt: number}>}
 */
export function activeJobs() {
  return readStore();
}

/**
 * Removes a job from the remembered active jobs (done automatically on `done`).
 * @param {string} jobId
 */
export function forget(jobId) {
  removeFromStore(jobId);
}

// ---------------------------------------------------------------------------
// Transports. Each opens one connection for a watcher `w` (a single job or a
// stream of many) and reports through `cb`:
//   cb.connected(info)        the server said `connected` (poll: first answer)
//   cb.progress(...)          a state   (single job: id, doc; many: jobId, id, doc, cursor)
//   cb.done(...)              a job ended (single job: payload; many: jobId, status, cursor)
//   cb.stalled / joined / refused / cursor / ended   (streams of many jobs only)
//   cb.expired()              the server said token_expired
//   cb.final(err)             a JobcastError from the server
//   cb.interrupted()          a connected stream is retrying by itself (SSE)
//   cb.failed(info)           the connection is gone; info: {needsProbe, status}
// and returns {close(), send?(frame)}. What a URL looks like and what each
// event means is the watcher's: `sseUrl()`, `sseEvents` + `sseEvent()`,
// `wsUrl()` + `wsFrame()`, `pollUrl()` + `pollAnswer()`.

function openSse(w, cb) {
  const es = new EventSource(w.sseUrl(), { withCredentials: w.withCredentials });
  let everConnected = false;
  let interrupted = false;
  let watchdog = null;
  const clearWatchdog = () => {
    clearTimeout(watchdog);
    watchdog = null;
  };
  const close = () => {
    clearWatchdog();
    es.close();
  };

  es.addEventListener('connected', (e) => {
    everConnected = true;
    interrupted = false;
    clearWatchdog();
    cb.connected(parseJson(e.data) || {});
  });
  for (const name of w.sseEvents) es.addEventListener(name, (e) => w.sseEvent(name, e, cb));
  es.addEventListener('error', (e) => {
    if (typeof e.data === 'string') {
      // A server-sent `event: error`, not a connection error.
      close();
      const body = parseJson(e.data) || {};
      if (body.error === 'token_expired') cb.expired();
      else if (HUMAN_MESSAGES[body.error]) cb.final(new JobcastError(body.error));
      else cb.failed({ needsProbe: !everConnected });
      return;
    }
    if (!everConnected) {
      // Never got `connected`: EventSource hides the status (401? 502? 204?),
      // so stop it from retrying blindly and let the watcher probe.
      close();
      cb.failed({ needsProbe: true });
    } else if (es.readyState === EventSource.CLOSED || interrupted) {
      // The browser gave up (a non-200 answer, or 204 = the job had ended),
      // or its own retry failed too: the watcher takes over, with backoff.
      close();
      cb.failed({ needsProbe: false });
    } else {
      // The stream dropped; the browser is reconnecting by itself with
      // Last-Event-ID after the server's `retry:` (drawn per connection, and
      // spread over the drain window when the server restarts, so clients do
      // not return together). Leave it alone, but do not wait forever for it.
      interrupted = true;
      cb.interrupted();
      watchdog = setTimeout(() => {
        close();
        cb.failed({ needsProbe: false });
      }, w.connectTimeoutMs + MAX_SERVER_RETRY_MS);
    }
  });
  return { close };
}

function openWs(w, cb) {
  const url = new URL(w.wsUrl(), globalThis.location ? location.href : undefined);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const protocols = ['jobcast.v1'];
  if (w.token) protocols.push('jobcast.bearer.' + w.token);
  let ws;
  try {
    ws = new WebSocket(url.toString(), protocols);
  } catch {
    // e.g. a token with characters a subprotocol cannot carry.
    setTimeout(() => cb.failed({ needsProbe: true }), 0);
    return { close() {} };
  }
  let connected = false;
  let finished = false;
  const close = () => {
    finished = true;
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
  };
  ws.onmessage = (e) => {
    if (finished) return;
    const frame = typeof e.data === 'string' ? parseJson(e.data) : undefined;
    if (!frame || typeof frame !== 'object') return;
    // Single-job frames name their kind in `event`, multi-job frames in `type`.
    const kind = frame.event || frame.type;
    if (kind === 'connected') {
      connected = true;
      cb.connected(frame);
    } else if (w.wsFrame(kind, frame, cb)) {
      // the watcher's own frame
    } else if (kind === 'error') {
      close();
      if (frame.error === 'token_expired') cb.expired();
      else if (HUMAN_MESSAGES[frame.error]) cb.final(new JobcastError(frame.error));
      else cb.failed({ needsProbe: !connected });
    }
    // unknown frames are ignored, for forward compatibility
  };
  ws.onclose = (e) => {
    if (finished) return;
    finished = true;
    // A refused handshake (401/403/404) shows up as a bare close (1006).
    cb.failed({ needsProbe: !connected, suggestedDelayMs: suggestedDelay(e) });
  };
  const send = (frame) => {
    if (!finished && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  };
  return { close, send };
}

/**
 * The reconnect delay a draining server names in its 1012 close reason
 * ("gateway restarting; reconnect in 3412 ms"), or undefined.
 */
function suggestedDelay(closeEvent) {
  if (!closeEvent || closeEvent.code !== 1012) return undefined;
  const m = /reconnect in (\d+) ms/.exec(closeEvent.reason || '');
  return m ? Math.min(Number(m[1]), MAX_SERVER_RETRY_MS) : undefined;
}

function openPoll(w, cb) {
  const ctl = new AbortController();
  let stopped = false;
  let connected = false;
  const close = () => {
    stopped = true;
    ctl.abort();
  };
  (async () => {
    // The first request is answered at once (the watcher's `pollUrl(true)`
    // asks for the current state): that answer is our "connected". Later
    // requests wait for something newer.
    let first = true;
    while (!stopped) {
      const started = Date.now();
      const wasFirst = first;
      let res;
      try {
        res = await fetch(w.pollUrl(first), {
          headers: w.authHeaders(),
          credentials: w.withCredentials ? 'include' : 'same-origin',
          cache: 'no-store',
          signal: ctl.signal,
        });
      } catch {
        if (!stopped) cb.failed({ needsProbe: false, network: true });
        return;
      }
      if (stopped) return;
      if (res.status === 200 || res.status === 204) {
        first = false;
        if (!connected) {
          connected = true;
          cb.connected({});
        }
        if (res.status === 200) {
          let body;
          try {
            body = await res.json();
          } catch {
            body = undefined;
          }
          if (stopped) return;
          if (body && typeof body === 'object') {
            w.pollAnswer(res, body, cb);
            if (stopped) return; // the answer ended the watch
          }
        } else if (w.pollNoNews) {
          // Nothing new; the job may have gone silent (X-Jobcast-Stalled).
          w.pollNoNews(res, cb);
        }
        if (res.status === 204 && !wasFirst && Date.now() - started < 500) {
          // A 204 that came back at once means something between us and the
          // server does not hold the request: do not spin.
          await new Promise((r) => setTimeout(r, 1000));
        }
        continue;
      }
      let body;
      try {
        body = await res.json();
      } catch {
        body = undefined;
      }
      if (stopped) return;
      if (res.status === 401) {
        if (body && body.error === 'token_expired') cb.expired();
        else cb.failed({ needsProbe: false, status: 401, body });
      } else if (res.status === 400 || res.status === 403 || res.status === 404) {
        cb.final(errorForStatus(res.status, body));
      } else {
        // 429 from JOBCAST_MAX_CONNECT_RATE names when to come back.
        const retryAfter = Number(res.headers.get('Retry-After'));
        const suggestedDelayMs = retryAfter > 0 ? Math.min(retryAfter * 1000, MAX_SERVER_RETRY_MS) : undefined;
        cb.failed({ needsProbe: false, status: res.status, suggestedDelayMs });
      }
      return;
    }
  })();
  return { close };
}

const OPENERS = { sse: openSse, ws: openWs, poll: openPoll };

// ---------------------------------------------------------------------------
// The connection ladder, shared by `watch()` and the streams of many jobs:
// which transport to try next, backoff, the probe that learns why a stream
// failed, token renewal. A subclass says where to connect and what the
// events mean (the hooks listed at the top of the transports above, plus
// `connectedVia`, `gotProgress`, `gotDone`, `endedByServer`, `probeUrl`,
// `probeSaysEnded`, `finish`).

class Connection {
  constructor(opts) {
    this.token = opts.token || null;
    this.getToken = opts.getToken || null;
    this.baseUrl = (opts.baseUrl || '').replace(/\/+$/, '');
    this.onError = opts.onError;
    this.onTransport = opts.onTransport;
    this.onState = opts.onState;
    this.transports = (opts.transports || ALL_TRANSPORTS).filter((t) => OPENERS[t]);
    if (!this.transports.length) this.transports = ALL_TRANSPORTS.slice();
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 4000;
    this.minBackoffMs = opts.minBackoffMs ?? 500;
    this.maxBackoffMs = opts.maxBackoffMs ?? 15000;
    this.withCredentials = !!opts.withCredentials;
    this.terminal = (opts.terminalStatuses || DEFAULT_TERMINAL_STATUSES).map((s) => String(s).toLowerCase());
    this.remember = opts.resume !== false;

    this.state = null;
    this.transport = null; // the transport that is (or was last) live
    this.preferred = null; // a transport that has worked for this watch
    this.ended = false;
    this.gen = 0;
    this.current = null;
    this.queue = [];
    this.attempt = 0;
    this.timers = new Set();
    this.connectedAt = 0;
    this.refreshes = 0;
    this.authDetail = undefined; // the server's cause of the last 401
    this.retryNow = null;
    this.onOnline = () => this.retryNow && this.retryNow();
  }

  authHeaders() {
    return this.token ? { Authorization: 'Bearer ' + this.token } : {};
  }

  later(fn, ms) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.ended) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  cancel(t) {
    clearTimeout(t);
    this.timers.delete(t);
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.safe(this.onState, s);
  }

  setTransport(name) {
    if (this.transport === name) return;
    this.transport = name;
    this.safe(this.onTransport, name);
  }

  safe(fn, ...args) {
    if (typeof fn !== 'function') return;
    try {
      fn(...args);
    } catch (e) {
      // An application callback must not break the connection logic.
      setTimeout(() => {
        throw e;
      }, 0);
    }
  }

  isTerminal(doc) {
    return !!doc && typeof doc.status === 'string' && this.terminal.includes(doc.status.toLowerCase());
  }

  /** Gets a token if there is none yet, then starts the first round of transports. */
  async connect() {
    if (globalThis.addEventListener) addEventListener('online', this.onOnline);
    if (!this.token && this.getToken) {
      if (!(await this.refreshToken())) return;
    }
    if (this.ended) return;
    this.setState('connecting');
    this.newRound();
  }

  fail(err) {
    if (this.ended) return;
    this.teardown();
    this.setState('failed');
    this.safe(this.onError, err);
  }

  close() {
    if (this.ended) return;
    this.teardown();
    this.setState('closed');
  }

  teardown() {
    this.ended = true;
    this.disconnect();
  }

  /** Closes the transport and every timer; the watch itself may go on (a follower tab). */
  disconnect() {
    this.gen++;
    if (this.current) this.current.close();
    this.current = null;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.retryNow = null;
    if (globalThis.removeEventListener) removeEventListener('online', this.onOnline);
  }

  orderedTransports() {
    const list = this.transports.slice();
    if (this.preferred && list.includes(this.preferred)) {
      list.splice(list.indexOf(this.preferred), 1);
      list.unshift(this.preferred);
    }
    return list;
  }

  newRound() {
    this.queue = this.orderedTransports();
    this.tryNext();
  }

  tryNext() {
    if (this.ended) return;
    const name = this.queue.shift();
    if (!name) this.scheduleRetry();
    else this.open(name);
  }

  /**
   * Waits (capped exponential backoff with jitter, or the delay the server
   * suggested plus jitter), then tries every transport again.
   */
  scheduleRetry(suggestedDelayMs) {
    if (this.current) this.current.close();
    this.current = null;
    this.setState('reconnecting');
    const cap = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    const delay =
      typeof suggestedDelayMs === 'number'
        ? suggestedDelayMs + Math.random() * Math.min(SUGGESTED_DELAY_JITTER_MS, suggestedDelayMs / 2 + 100)
        : cap / 2 + Math.random() * (cap / 2);
    const t = this.later(() => {
      this.retryNow = null;
      this.newRound();
    }, delay);
    this.retryNow = () => {
      this.retryNow = null;
      this.cancel(t);
      this.newRound();
    };
  }

  open(name) {
    const gen = ++this.gen;
    if (this.current) this.current.close();
    this.current = null;
    let everConnected = false;
    const live = () => gen === this.gen && !this.ended;
    const timer = this.later(() => {
      if (!live() || everConnected) return;
      // Nothing within connectTimeoutMs: a buffering proxy, a blocked route…
      this.gen++;
      if (this.current) this.current.close();
      this.current = null;
      this.tryNext();
    }, this.connectTimeoutMs);
    // Events of a superseded transport are dropped here (invariant 1).
    const route = (method) => (...args) => {
      if (live()) this[method](name, ...args);
    };

    const cb = {
      connected: (info) => {
        if (!live()) return;
        everConnected = true;
        this.cancel(timer);
        this.connectedAt = Date.now();
        this.refreshes = 0;
        this.preferred = name;
        this.connectedVia(name, info || {});
        this.setTransport(name);
        this.setState('live');
      },
      progress: route('gotProgress'),
      done: route('gotDone'),
      stalled: route('gotStalled'),
      joined: route('gotJoined'),
      refused: route('gotRefused'),
      cursor: route('gotCursor'),
      ended: route('gotEnded'),
      expired: () => {
        if (!live()) return;
        this.gen++;
        this.current = null;
        this.setState('reconnecting');
        this.refreshToken().then((ok) => ok && !this.ended && this.open(name));
      },
      final: (err) => {
        if (live()) this.fail(err);
      },
      interrupted: () => {
        if (!live()) return;
        this.setState('reconnecting');
      },
      failed: (info) => {
        if (!live()) return;
        this.gen++;
        this.current = null;
        this.cancel(timer);
        this.handleFailure(name, info, everConnected);
      },
    };
    this.current = OPENERS[name](this, cb);
  }

  async handleFailure(name, info, wasConnected) {
    // The stream ended because the job (or every job) had ended: the watch
    // is over, not the connection.
    if (this.endedByServer()) return;
    if (info.status === 401) return this.onUnauthorized(name, info.body);
    if (wasConnected) {
      // It worked, so it is preferred: back off (or wait as long as a
      // draining server asked), then start over with it.
      if (Date.now() - this.connectedAt >= STABLE_CONNECTION_MS) this.attempt = 0;
      return this.scheduleRetry(info.suggestedDelayMs);
    }
    if (info.network) return this.scheduleRetry();
    if (info.status === 429 && info.suggestedDelayMs !== undefined) return this.scheduleRetry(info.suggestedDelayMs);
    if (info.status) return this.tryNext(); // 429, 5xx from poll: try what is left, then back off
    if (!info.needsProbe) return this.tryNext();

    const probe = await this.probe();
    if (this.ended) return;
    switch (probe.kind) {
      case 'auth':
        return this.onUnauthorized(name, probe.body);
      case 'final':
        return this.fail(probe.error);
      case 'ok':
        if (this.probeSaysEnded(probe.body)) return;
        return this.tryNext(); // the server is fine: it is this transport that fails
      default:
        return this.scheduleRetry(); // the server itself is unreachable or unwell
    }
  }

  /** One plain GET with the Authorization header (`probeUrl()`), to learn why a stream failed. */
  async probe() {
    const ctl = new AbortController();
    const t = this.later(() => ctl.abort(), Math.max(this.connectTimeoutMs, 2000));
    try {
      const res = await fetch(this.probeUrl(), {
        headers: this.authHeaders(),
        credentials: this.withCredentials ? 'include' : 'same-origin',
        cache: 'no-store',
        signal: ctl.signal,
      });
      let body;
      try {
        body = await res.json();
      } catch {
        body = undefined;
      }
      if (res.ok) return { kind: 'ok', body: body && typeof body === 'object' ? body : null };
      if (res.status === 401) return { kind: 'auth', body };
      if (res.status === 400 || res.status === 403 || res.status === 404) {
        return { kind: 'final', error: errorForStatus(res.status, body) };
      }
      return { kind: 'unavailable', status: res.status };
    } catch {
      return { kind: 'network' };
    } finally {
      this.cancel(t);
    }
  }

  /** A 401: `body` is the server's JSON error, whose `message` names the cause (RFC 6750). */
  async onUnauthorized(name, body) {
    this.authDetail = detailOf(body);
    if (!this.getToken) {
      return this.fail(new JobcastError(this.token ? 'token_expired' : 'unauthorized', 401, undefined, this.authDetail));
    }
    this.setState('reconnecting');
    if (await this.refreshToken()) this.open(name);
  }

  /** Asks getToken() for a new token; reports a final error when that is impossible. */
  async refreshToken() {
    if (!this.getToken || this.refreshes >= MAX_TOKEN_REFRESHES) {
      this.fail(new JobcastError('token_expired', 401, undefined, this.authDetail));
      return false;
    }
    this.refreshes++;
    let token;
    try {
      token = await this.getToken();
    } catch {
      token = null;
    }
    if (this.ended) return false;
    if (!token) {
      this.fail(new JobcastError('token_expired', 401));
      return false;
    }
    this.token = String(token);
    return true;
  }
}

// ---------------------------------------------------------------------------
// One job: `watch()`.

class Watcher extends Connection {
  constructor(jobId, opts) {
    super(opts);
    this.jobId = String(jobId);
    this.onProgress = opts.onProgress;
    this.onDone = opts.onDone;
    this.onStalled = opts.onStalled;
    this.stalled = null; // seconds of silence the server reported, until the next state
    this.lastId = null; // string id of the last delivered event
    this.lastN = NaN; // its numeric value
    this.lastDoc = null;
    this.docJson = null; // for documents without a numeric id
    this.sseEvents = ['progress', 'done', 'stalled'];
  }

  async start() {
    if (this.remember) {
      const saved = readStore()[this.jobId];
      if (saved) {
        if (saved.transport && this.transports.includes(saved.transport)) this.preferred = saved.transport;
        if (saved.doc && typeof saved.doc === 'object' && saved.lastId != null) {
          // Show what this browser already knew, then resume after it.
          this.deliver(String(saved.lastId), saved.doc, { cached: true });
        }
      }
    }
    await this.connect();
  }

  // --- where to connect, what the events mean ---------------------------

  sseUrl() {
    const params = new URLSearchParams();
    if (this.token) params.set('access_token', this.token);
    // EventSource resends Last-Event-ID on its own reconnects; a new EventSource
    // cannot set the header, so the id goes in the query too.
    if (this.lastId !== null) params.set('last_event_id', this.lastId);
    const qs = params.toString();
    return `${this.baseUrl}/jobs/${pathId(this.jobId)}/events${qs ? '?' + qs : ''}`;
  }

  sseEvent(name, e, cb) {
    if (name === 'done') return cb.done(parseJson(e.data) || {});
    if (name === 'stalled') return cb.stalled((parseJson(e.data) || {}).seconds_since_update);
    const doc = parseJson(e.data);
    if (doc && typeof doc === 'object') cb.progress(e.lastEventId, doc);
  }

  wsUrl() {
    const params = new URLSearchParams();
    if (this.lastId !== null) params.set('last_event_id', this.lastId);
    const qs = params.toString();
    return `${this.baseUrl}/jobs/${pathId(this.jobId)}/ws${qs ? '?' + qs : ''}`;
  }

  wsFrame(kind, frame, cb) {
    if (kind === 'progress') {
      if (frame.data && typeof frame.data === 'object') cb.progress(frame.id, frame.data);
      return true;
    }
    if (kind === 'done') {
      const { event, ...payload } = frame;
      cb.done(payload);
      return true;
    }
    if (kind === 'stalled') {
      cb.stalled(frame.seconds_since_update ?? (frame.data && frame.data.seconds_since_update));
      return true;
    }
    return false;
  }

  pollUrl(first) {
    // The first request leaves out `after` so the server answers at once with
    // the current document (the seq gate drops it if we already have it).
    const params = new URLSearchParams();
    if (!first && this.lastId !== null) params.set('after', this.lastId);
    params.set('timeout', String(POLL_TIMEOUT_SECS));
    return `${this.baseUrl}/jobs/${pathId(this.jobId)}/poll?${params}`;
  }

  pollAnswer(res, doc, cb) {
    cb.progress(res.headers.get('X-Jobcast-Event-Id'), doc);
    if (!this.ended) this.pollNoNews(res, cb);
  }

  pollNoNews(res, cb) {
    // A running job silent past its stall period: seconds since its last state.
    const stalled = res.headers.get('X-Jobcast-Stalled');
    if (stalled !== null) cb.stalled(stalled);
  }

  probeUrl() {
    return `${this.baseUrl}/jobs/${pathId(this.jobId)}`;
  }

  // --- what happens on them ---------------------------------------------

  connectedVia(name) {
    if (this.remember) updateStore(this.jobId, { lastId: this.lastId, doc: this.lastDoc, transport: name });
  }

  gotProgress(name, id, doc) {
    this.deliver(id, doc);
    // Long-poll has no `done` event: a terminal document ends the watch.
    if (name === 'poll' && this.isTerminal(doc)) this.finish({ status: doc.status });
  }

  gotDone(name, payload) {
    this.finish(payload);
  }

  gotStalled(name, seconds) {
    const s = Number(seconds);
    this.stalled = Number.isFinite(s) ? s : 0;
    this.safe(this.onStalled, this.stalled);
  }

  endedByServer() {
    // E.g. SSE answered 204 to our Last-Event-ID: the job had ended.
    if (!this.isTerminal(this.lastDoc)) return false;
    this.finish({ status: this.lastDoc.status });
    return true;
  }

  probeSaysEnded(doc) {
    if (!this.isTerminal(doc)) return false;
    this.deliver(doc.seq, doc);
    this.finish({ status: doc.status });
    return true;
  }

  deliver(id, doc, meta = {}) {
    if (this.ended || !passGate(this, id, doc)) return;
    this.lastDoc = doc;
    if (this.remember && !meta.cached) updateStore(this.jobId, { lastId: this.lastId, doc });
    if (this.stalled !== null) {
      this.stalled = null;
      this.safe(this.onStalled, null);
    }
    this.safe(this.onProgress, doc, { id: this.lastId, transport: meta.cached ? null : this.transport, cached: !!meta.cached });
  }

  finish(payload) {
    if (this.ended) return;
    const doc = this.lastDoc;
    const done = { job_id: this.jobId, ...(doc && doc.status ? { status: doc.status } : {}), ...(payload || {}) };
    this.teardown();
    if (this.remember) forget(this.jobId);
    this.setState('done');
    this.safe(this.onDone, doc || done, done);
  }

  fail(err) {
    if (this.ended) return;
    if (this.remember && (err.code === 'forbidden' || err.code === 'not_found' || err.code === 'bad_request')) {
      forget(this.jobId);
    }
    super.fail(err);
  }
}

/**
 * Watches one job's progress and calls back on every new document.
 *
 * Tries Server-Sent Events, then WebSocket, then long-polling (or the order of
 * `transports`, with a transport that has worked before moved first).
 * Reconnects by itself with capped exponential backoff and jitter, resumes
 * after the last event id, and never delivers a duplicate or an older document.
 * The last document is kept in localStorage (`jobcast.jobs`) so that a page
 * refresh or a second tab resumes where it was.
 *
 * @param {string} jobId
 * @param {object} [options]
 * @param {string} [options.token]  JWT. Sent as `access_token` (SSE), as the
 *   `jobcast.bearer.<jwt>` subprotocol (WebSocket) or `Authorization: Bearer` (poll).
 *   Without it the `jobcast_token` cookie is relied on.
 * @param {() => (string|Promise<string>)} [options.getToken]  called for a fresh
 *   token when the server says the token expired (and at start when `token` is missing).
 * @param {string} [options.baseUrl='']  origin (and path prefix) of the gateway.
 * @param {(doc: object, meta: {id: string|null, transport: string|null, cached: boolean}) => void} [options.onProgress]
 *   every new document; `cached` is true for the one replayed from localStorage.
 * @param {(doc: object, done: {job_id: string, status?: string}) => void} [options.onDone]
 *   the job ended; `doc` is the last document. Nothing else is called afterwards.
 * @param {(seconds: number|null) => void} [options.onStalled]  the running job has been
 *   silent `seconds` (the gateway's JOBCAST_STALL_SECS); `null` once its next state cleared that.
 * @param {(err: JobcastError) => void} [options.onError]  a final error (401, 403,
 *   404, expired token that could not be renewed); `err.message` is for people.
 * @param {(transport: 'sse'|'ws'|'poll') => void} [options.onTransport]  the live transport changed.
 * @param {(state: 'connecting'|'live'|'reconnecting'|'done'|'failed'|'closed') => void} [options.onState]
 * @param {Array<'sse'|'ws'|'poll'>} [options.transports=['sse','ws','poll']]
 * @param {number} [options.connectTimeoutMs=4000]  how long a transport may take to say `connected`.
 * @param {number} [options.minBackoffMs=500]  first reconnect delay, doubled per failure…
 * @param {number} [options.maxBackoffMs=15000]  …up to this; jitter spreads it over [d/2, d].
 * @param {string[]} [options.terminalStatuses=['completed','failed','cancelled']]
 *   statuses that end the watch on transports without a `done` event (long-poll).
 * @param {boolean} [options.withCredentials=false]  send cookies to another origin.
 * @param {boolean} [options.resume=true]  use and update localStorage.
 * @returns {{close(): void, readonly state: string|null, readonly transport: string|null, readonly lastEventId: string|null, readonly document: object|null}}
 */
export function watch(jobId, options = {}) {
  const w = new Watcher(jobId, options);
  w.start();
  return handleOf(w, {
    state: () => w.state,
    transport: () => w.transport,
    lastEventId: () => w.lastId,
    document: () => w.lastDoc,
  });
}

/** What `watch()` and the streams return: `close()` and read-only views of the watcher. */
function handleOf(w, getters) {
  const handle = { close: () => w.close() };
  for (const [name, get] of Object.entries(getters)) Object.defineProperty(handle, name, { get, enumerable: true });
  return handle;
}

// ---------------------------------------------------------------------------
// Many jobs on one connection: `watchMany()` (a list) and `watchGroup()` (a
// project). One tab per browser holds the connection; the others follow it.
//
// Sharing between tabs: every watch of the same stream (same gateway, same
// list or group) in this origin joins a BroadcastChannel and asks for a Web
// Lock of the same name. The tab that holds the lock holds the connection
// and posts every state it applies, then the cursor that covers it; the
// others apply the same states through the same per-job gates and keep the
// latest cursor. When the holder goes (its tab closes, or close()), the lock
// passes to a waiting tab, which connects from the last cursor it was sent:
// the server re-sends whatever came after it, so no `done` is lost. Where
// Web Locks are missing (an insecure origin), the tabs elect a holder over
// the channel itself: it beats every second; a silent or departed holder is
// replaced by the lowest-id tab that claims.

/** Finished jobs of a group kept in localStorage (for a finished list after a reload). */
const MAX_ENDED_REMEMBERED = 50;
/** localStorage is written at most this often by a busy stream (and at once on `done`). */
const STORE_THROTTLE_MS = 250;
/** Fallback election: the holder beats this often… */
const BEAT_MS = 1000;
/** …a holder silent this long is replaced… */
const HOLDER_SILENT_MS = 3000;
/** …a new tab waits this long for a beat before it claims… */
const FIRST_BEAT_WAIT_MS = 600;
/** …and a claim stands if no lower-id tab claims within this. */
const CLAIM_MS = 300;
const ELECTION_TICK_MS = 150;
/** Tab states the followers mirror from the holder. */
const MIRRORED_STATES = ['connecting', 'live', 'reconnecting'];

function randomId() {
  const a = new Uint32Array(2);
  globalThis.crypto.getRandomValues(a);
  return a[0].toString(36) + a[1].toString(36);
}

class StreamWatcher extends Connection {
  constructor(kind, target, opts) {
    super(opts);
    this.kind = kind; // 'jobs' | 'group'
    this.group = kind === 'group' ? String(target) : null;
    this.listed = kind === 'jobs' ? [...new Set(Array.from(target || [], String))] : null;
    this.key = `${this.baseUrl}|${kind === 'group' ? 'group:' + this.group : 'jobs:' + this.listed.slice().sort().join(',')}`;
    this.onProgress = opts.onProgress;
    this.onDone = opts.onDone;
    this.onStalled = opts.onStalled;
    this.onJoined = opts.onJoined;
    this.onRole = opts.onRole;
    this.shared = opts.shared !== false && typeof globalThis.BroadcastChannel === 'function';
    this.sseEvents = ['progress', 'done', 'stalled', 'joined'];

    /** jobId → {lastId, lastN, doc, docJson, status, ended, stalled, at} */
    this.jobs = new Map();
    this.cursor = null; // the latest cursor, exactly as the server sent it
    this.role = null; // 'holder' | 'follower'
    this.tabId = randomId();
    this.channel = null;
    this.releaseLock = null;
    this.lockAbort = null;
    this.election = null; // the fallback election's interval
    this.lastBeat = 0;
    this.claimUntil = 0;
    this.startedAt = Date.now();
    this.saveTimer = null;
    this.onPageHide = () => {
      this.save();
      if (this.role === 'holder' && this.election) this.post({ t: 'bye', from: this.tabId });
    };
    if (this.listed) for (const id of this.listed) this.jobs.set(id, newEntry());
  }

  start() {
    if (globalThis.addEventListener) addEventListener('pagehide', this.onPageHide);
    this.restore();
    if (this.ended) return;
    if (!this.shared) return this.becomeHolder();
    this.channel = new BroadcastChannel('jobcast:' + this.key);
    this.channel.onmessage = (e) => this.onMessage(e.data);
    this.setState('connecting');
    this.post({ t: 'hello', from: this.tabId });
    const locks = globalThis.navigator && navigator.locks;
    if (locks && typeof locks.request === 'function') {
      this.lockAbort = new AbortController();
      locks
        .request('jobcast:' + this.key, { signal: this.lockAbort.signal }, () => {
          if (this.ended) return undefined;
          return new Promise((release) => {
            this.releaseLock = release;
            this.becomeHolder();
          });
        })
        .catch(() => {}); // aborted: this watch closed while waiting
    } else {
      this.election = setInterval(() => this.electionTick(), ELECTION_TICK_MS);
    }
  }

  // --- roles ------------------------------------------------------------

  setRole(role) {
    if (this.role === role) return;
    this.role = role;
    this.safe(this.onRole, role);
  }

  becomeHolder() {
    if (this.ended) return;
    this.setRole('holder');
    this.state = null; // announce our own 'connecting' to the followers
    this.connect();
  }

  /** Fallback election (no Web Locks): see the comment at the top of this section. */
  electionTick() {
    if (this.ended) return;
    const now = Date.now();
    if (this.role === 'holder') {
      if (now - this.lastBeat >= BEAT_MS) {
        this.lastBeat = now;
        this.post({ t: 'beat', from: this.tabId });
      }
      return;
    }
    if (this.claimUntil) {
      if (now >= this.claimUntil) {
        this.claimUntil = 0;
        this.lastBeat = 0;
        this.becomeHolder();
      }
      return;
    }
    const silent = this.lastBeat ? now - this.lastBeat >= HOLDER_SILENT_MS : now - this.startedAt >= FIRST_BEAT_WAIT_MS;
    if (silent) {
      this.claimUntil = now + CLAIM_MS;
      this.post({ t: 'claim', from: this.tabId });
    }
  }

  onElectionMessage(m) {
    if (m.t === 'beat') {
      if (this.role === 'holder') {
        // Two holders: the higher id steps down (the other hears our beat and stays).
        if (m.from < this.tabId) {
          this.disconnect();
          this.setRole('follower');
          this.lastBeat = Date.now();
        }
        return;
      }
      this.lastBeat = Date.now();
      this.claimUntil = 0;
    } else if (m.t === 'claim') {
      if (this.role === 'holder') {
        this.lastBeat = Date.now();
        this.post({ t: 'beat', from: this.tabId });
      } else if (this.claimUntil && m.from < this.tabId) {
        this.claimUntil = 0;
        this.lastBeat = Date.now();
      }
    } else if (m.t === 'bye' && this.role !== 'holder') {
      this.lastBeat = 1; // long ago: claim on the next tick
    }
  }

  post(msg) {
    if (!this.channel) return;
    try {
      this.channel.postMessage(msg);
    } catch {
      // closed channel, or a document that cannot be cloned
    }
  }

  /** The holder tells the followers what it applied. */
  tell(msg) {
    if (this.role === 'holder') this.post(msg);
  }

  onMessage(m) {
    if (this.ended || !m || typeof m !== 'object') return;
    if (m.t === 'beat' || m.t === 'claim' || m.t === 'bye') {
      if (this.election) this.onElectionMessage(m);
      if (m.t === 'bye' && this.role !== 'holder' && MIRRORED_STATES.includes(this.state)) this.setState('reconnecting');
      return;
    }
    if (m.t === 'hello') {
      if (this.role === 'holder') this.post(this.snapshot());
      return;
    }
    if (this.role === 'holder') return; // another holder's echo during a fallback election
    if (this.election) this.lastBeat = Date.now(); // the holder spoke: it is alive
    const via = { transport: m.transport || this.transport, shared: true };
    switch (m.t) {
      case 'snapshot':
        this.setRole('follower');
        for (const [id, s] of m.jobs || []) {
          if (!this.entry(id)) continue;
          if (s.doc) this.applyProgress(id, s.lastId, s.doc, via);
          if (s.stalled !== null && s.stalled !== undefined) this.applyStalled(id, s.stalled);
          if (s.ended) this.applyDone(id, s.status, via);
        }
        this.applyCursor(m.cursor);
        this.mirror(m);
        break;
      case 'state':
        this.setRole('follower');
        this.mirror(m);
        break;
      case 'progress':
        this.applyProgress(m.job, m.id, m.doc, via);
        break;
      case 'done':
        this.applyDone(m.job, m.status, via);
        break;
      case 'stalled':
        this.applyStalled(m.job, m.seconds);
        break;
      case 'joined':
        this.entry(m.job);
        break;
      case 'cursor':
        this.applyCursor(m.cursor);
        break;
      default:
        return;
    }
    this.checkAllEnded();
  }

  /** A follower shows the holder's connection state and transport as its own. */
  mirror(m) {
    if (m.transport) this.setTransport(m.transport);
    if (MIRRORED_STATES.includes(m.state)) this.setState(m.state);
  }

  snapshot() {
    const jobs = [];
    for (const [id, j] of this.jobs) {
      jobs.push([id, { lastId: j.lastId, doc: j.doc, status: j.status, ended: j.ended, stalled: j.stalled }]);
    }
    return { t: 'snapshot', cursor: this.cursor, state: this.state, transport: this.transport, jobs };
  }

  setState(s) {
    const changed = this.state !== s;
    super.setState(s);
    if (changed && MIRRORED_STATES.includes(s)) this.tell({ t: 'state', state: s, transport: this.transport });
  }

  setTransport(name) {
    const changed = this.transport !== name;
    super.setTransport(name);
    if (changed) this.tell({ t: 'state', state: this.state, transport: name });
  }

  // --- where to connect, what the events mean ---------------------------

  path(route) {
    return this.group !== null ? `${this.baseUrl}/groups/${pathId(this.group)}/${route}` : `${this.baseUrl}/${route}`;
  }

  params() {
    const params = new URLSearchParams();
    for (const id of this.listed || []) params.append('job', id);
    // EventSource resends the cursor as Last-Event-ID on its own reconnects;
    // a new EventSource cannot set the header, so it goes in the query too.
    if (this.cursor) params.set('cursor', this.cursor);
    return params;
  }

  sseUrl() {
    const params = this.params();
    if (this.token) params.set('access_token', this.token);
    return `${this.path('events')}?${params}`;
  }

  sseEvent(name, e, cb) {
    const d = parseJson(e.data);
    if (!d || typeof d !== 'object' || d.job_id === undefined) return;
    if (name === 'progress') {
      if (d.document && typeof d.document === 'object') cb.progress(d.job_id, d.id, d.document, e.lastEventId);
    } else if (name === 'done') cb.done(d.job_id, d.status, e.lastEventId);
    else if (name === 'stalled') cb.stalled(d.job_id, d.seconds_since_update);
    else if (name === 'joined') cb.joined(d.job_id);
  }

  wsUrl() {
    return `${this.path('ws')}?${this.params()}`;
  }

  wsFrame(kind, frame, cb) {
    switch (kind) {
      case 'progress':
        if (frame.document && typeof frame.document === 'object') {
          cb.progress(frame.job_id, frame.id, frame.document, frame.cursor);
        }
        return true;
      case 'done':
        cb.done(frame.job_id, frame.status, frame.cursor);
        return true;
      case 'stalled':
        cb.stalled(frame.job_id, frame.seconds_since_update);
        return true;
      case 'joined':
        cb.joined(frame.job_id);
        return true;
      case 'watching':
      case 'unwatching':
        return true;
      case 'error':
        // An in-band refusal of one `watch` names its job; the connection stays.
        return frame.job !== undefined;
      default:
        return false;
    }
  }

  pollUrl(first) {
    // The first request asks for no wait: it answers at once with whatever
    // the cursor has not seen (or 204), and that answer is "connected".
    const params = this.params();
    params.set('timeout', String(first ? 0 : POLL_TIMEOUT_SECS));
    return `${this.path('poll')}?${params}`;
  }

  pollAnswer(res, body, cb) {
    for (const ev of Array.isArray(body.events) ? body.events : []) {
      if (!ev || typeof ev !== 'object') continue;
      if (ev.type === 'progress' && ev.document && typeof ev.document === 'object') {
        cb.progress(ev.job_id, ev.id, ev.document);
      } else if (ev.type === 'done') cb.done(ev.job_id, ev.status);
      else if (ev.type === 'stalled') cb.stalled(ev.job_id, ev.seconds_since_update);
      else if (ev.type === 'joined') cb.joined(ev.job_id);
    }
    cb.cursor(body.cursor);
    if (body.ended === true) cb.ended();
  }

  probeUrl() {
    return this.pollUrl(true);
  }

  // --- what happens on them (holder) ------------------------------------

  connectedVia(name, info) {
    if (this.group !== null && Array.isArray(info.jobs)) for (const id of info.jobs) this.entry(id);
    this.dirty();
  }

  gotProgress(name, jobId, id, doc, cursor) {
    this.applyProgress(jobId, id, doc, { transport: name });
    this.applyCursor(cursor);
    this.checkAllEnded();
  }

  gotDone(name, jobId, status, cursor) {
    this.applyDone(jobId, status, { transport: name });
    this.applyCursor(cursor);
    this.checkAllEnded();
  }

  gotStalled(name, jobId, seconds) {
    this.applyStalled(jobId, seconds);
  }

  gotJoined(name, jobId) {
    this.entry(jobId);
  }

  gotCursor(name, cursor) {
    this.applyCursor(cursor);
    this.checkAllEnded();
  }

  gotEnded() {
    this.finish();
  }

  endedByServer() {
    return this.checkAllEnded();
  }

  probeSaysEnded(body) {
    if (!body) return false; // 204: nothing new, and the server is fine
    // The probe is a real long-poll answer: take what it brought.
    this.pollAnswer(null, body, {
      progress: (...a) => this.gotProgress('poll', ...a),
      done: (...a) => this.gotDone('poll', ...a),
      stalled: (...a) => this.gotStalled('poll', ...a),
      joined: (...a) => this.gotJoined('poll', ...a),
      cursor: (c) => this.gotCursor('poll', c),
      ended: () => this.finish(),
    });
    return this.ended;
  }

  // --- the per-job state (holder and followers alike) -------------------

  /** The job's entry; a group creates it (and says `onJoined`), a list knows only its own. */
  entry(jobId) {
    if (jobId === undefined || jobId === null || jobId === '') return null;
    const id = String(jobId);
    let j = this.jobs.get(id);
    if (!j && this.group !== null && !this.ended) {
      j = newEntry();
      this.jobs.set(id, j);
      this.tell({ t: 'joined', job: id });
      this.dirty();
      this.safe(this.onJoined, id);
    }
    return j || null;
  }

  /** Invariants 3 and 5: a job's state is delivered only if it is newer than the last one. */
  applyProgress(jobId, id, doc, meta) {
    const j = this.entry(jobId);
    if (!j || j.ended || this.ended || !passGate(j, id, doc)) return;
    j.doc = doc;
    j.at = Date.now();
    const wasStalled = j.stalled !== null;
    j.stalled = null;
    this.tell({ t: 'progress', job: String(jobId), id: j.lastId, doc, transport: this.transport });
    if (!meta.cached) this.dirty();
    if (wasStalled) this.safe(this.onStalled, String(jobId), null);
    this.safe(this.onProgress, String(jobId), doc, {
      id: j.lastId,
      transport: meta.cached ? null : meta.transport || this.transport,
      cached: !!meta.cached,
      shared: !!meta.shared,
    });
  }

  applyDone(jobId, status, meta = {}) {
    const j = this.entry(jobId);
    if (!j || j.ended || this.ended) return;
    j.ended = true;
    j.status = typeof status === 'string' && status ? status : (j.doc && j.doc.status) || null;
    j.stalled = null;
    j.at = Date.now();
    this.tell({ t: 'done', job: String(jobId), status: j.status });
    if (!meta.cached) this.dirty(true);
    this.safe(this.onDone, String(jobId), j.status, j.doc, { cached: !!meta.cached });
  }

  applyStalled(jobId, seconds) {
    const j = this.entry(jobId);
    if (!j || j.ended || this.ended) return;
    const s = Number(seconds);
    j.stalled = Number.isFinite(s) ? s : 0;
    this.tell({ t: 'stalled', job: String(jobId), seconds: j.stalled });
    this.safe(this.onStalled, String(jobId), j.stalled);
  }

  /** Invariant 6: called only after the states the cursor covers were applied. */
  applyCursor(cursor) {
    if (typeof cursor !== 'string' || !cursor || this.ended) return;
    this.cursor = cursor;
    this.tell({ t: 'cursor', cursor });
    this.dirty();
  }

  /** A list ends when every listed job has ended; a group never does. */
  checkAllEnded() {
    if (this.ended) return true;
    if (!this.listed || !this.listed.every((id) => this.jobs.get(id).ended)) return false;
    this.finish();
    return true;
  }

  finish() {
    if (this.ended) return;
    this.teardown();
    if (this.remember) removeFromStore(this.key, STREAMS_KEY);
    this.setState('done');
  }

  teardown() {
    const wasHolder = this.role === 'holder';
    if (wasHolder) this.save();
    super.teardown();
    clearTimeout(this.saveTimer);
    clearInterval(this.election);
    if (wasHolder && this.election) this.post({ t: 'bye', from: this.tabId });
    if (this.releaseLock) this.releaseLock();
    if (this.lockAbort) this.lockAbort.abort();
    if (this.channel) this.channel.close();
    this.channel = null;
    if (globalThis.removeEventListener) removeEventListener('pagehide', this.onPageHide);
  }

  // --- localStorage: {key: {cursor, transport, jobs: {id: {lastId, doc, status, ended, at}}, updatedAt}}

  restore() {
    if (!this.remember) return;
    const saved = readStore(STREAMS_KEY)[this.key];
    if (!saved || typeof saved !== 'object') return;
    if (saved.transport && this.transports.includes(saved.transport)) this.preferred = saved.transport;
    const jobs = saved.jobs && typeof saved.jobs === 'object' ? saved.jobs : {};
    // Show what this browser already knew (finished jobs too), then resume after it.
    for (const [id, s] of Object.entries(jobs)) {
      if (!s || typeof s !== 'object' || !this.entry(id)) continue;
      if (s.doc && typeof s.doc === 'object') this.applyProgress(id, s.lastId, s.doc, { cached: true });
      if (s.ended) this.applyDone(id, s.status, { cached: true });
    }
    if (typeof saved.cursor === 'string' && saved.cursor) this.cursor = saved.cursor;
    this.checkAllEnded();
  }

  /** Something changed: the holder writes localStorage soon (at once when `now`). */
  dirty(now = false) {
    if (!this.remember || this.role !== 'holder') return;
    if (now) return this.save();
    if (this.saveTimer === null) this.saveTimer = setTimeout(() => this.save(), STORE_THROTTLE_MS);
  }

  save() {
    clearTimeout(this.saveTimer);
    this.saveTimer = null;
    if (!this.remember || this.role !== 'holder') return;
    const ended = [...this.jobs.entries()].filter(([, j]) => j.ended).sort((a, b) => b[1].at - a[1].at);
    const dropped = new Set(ended.slice(MAX_ENDED_REMEMBERED).map(([id]) => id));
    const jobs = {};
    for (const [id, j] of this.jobs) {
      if (dropped.has(id)) continue;
      jobs[id] = { lastId: j.lastId, doc: j.doc, status: j.status, ended: j.ended, at: j.at };
    }
    updateStore(this.key, { cursor: this.cursor, transport: this.preferred, jobs }, STREAMS_KEY);
  }

  /** What the handle's `jobs` shows: every job of the stream and its latest state. */
  view() {
    const out = {};
    for (const [id, j] of this.jobs) {
      out[id] = { document: j.doc, lastEventId: j.lastId, status: j.status, ended: j.ended, stalled: j.stalled };
    }
    return out;
  }
}

function newEntry() {
  return { lastId: null, lastN: NaN, doc: null, docJson: null, status: null, ended: false, stalled: null, at: 0 };
}

function streamHandle(s) {
  return handleOf(s, {
    state: () => s.state,
    transport: () => s.transport,
    role: () => s.role,
    cursor: () => s.cursor,
    jobs: () => s.view(),
  });
}

/**
 * Watches a list of jobs over one connection (`/events?job=A&job=B…`, then
 * `/ws`, then `/poll`): the same ladder, backoff, resume and token renewal as
 * `watch()`, with per-job callbacks. Resumes from the latest cursor the
 * server sent (kept as it came, never parsed). Ends (state `done`) when every
 * listed job has ended. Tabs of this origin watching the same list share one
 * connection (see `shared`).
 *
 * @param {string[]} jobIds
 * @param {object} [options]  everything `watch()` takes, except that the callbacks name the job:
 * @param {(jobId: string, doc: object, meta: {id: string|null, transport: string|null, cached: boolean, shared: boolean}) => void} [options.onProgress]
 *   a job's new state, never a duplicate or a step back per job; `shared` is true
 *   when another tab's connection delivered it.
 * @param {(jobId: string, status: string|null, doc: object|null, meta: {cached: boolean}) => void} [options.onDone]
 *   a job ended (once per job).
 * @param {(jobId: string, seconds: number|null) => void} [options.onStalled]
 *   a running job has been silent `seconds`; `null` when its next state cleared that.
 * @param {(role: 'holder'|'follower') => void} [options.onRole]
 *   whether this tab holds the connection or follows the tab that does.
 * @param {boolean} [options.shared=true]  share one connection with the other tabs
 *   of this origin (BroadcastChannel + Web Locks); false: this tab connects itself.
 * @returns {{close(): void, readonly state: string|null, readonly transport: string|null,
 *   readonly role: string|null, readonly cursor: string|null, readonly jobs: object}}
 */
export function watchMany(jobIds, options = {}) {
  const s = new StreamWatcher('jobs', jobIds, options);
  s.start();
  return streamHandle(s);
}

/**
 * Watches every job of a group (a project): its current jobs, then jobs that
 * join later (`onJoined`, before a job's first state). Like `watchMany()`,
 * but the stream stays open until `close()`. The token needs the group in
 * its `groups` claim (or role `admin`). localStorage remembers the group's
 * jobs, finished ones too, so a reload shows them at once and resumes.
 *
 * @param {string} group
 * @param {object} [options]  as `watchMany()`, plus:
 * @param {(jobId: string) => void} [options.onJoined]  a job is new to this watch.
 * @returns the same handle as `watchMany()`.
 */
export function watchGroup(group, options = {}) {
  const s = new StreamWatcher('group', group, options);
  s.start();
  return streamHandle(s);
}

/**
 * A group's jobs as this browser last knew them (localStorage), without connecting.
 * @param {string} group
 * @param {{baseUrl?: string}} [options]
 * @returns {Object<string, {lastId: string|null, doc: object|null, status: string|null, ended: boolean}>}
 */
export function rememberedGroup(group, { baseUrl = '' } = {}) {
  const key = `${String(baseUrl).replace(/\/+$/, '')}|group:${group}`;
  const saved = readStore(STREAMS_KEY)[key];
  const out = {};
  for (const [id, s] of Object.entries((saved && saved.jobs) || {})) {
    if (s && typeof s === 'object') out[id] = { lastId: s.lastId ?? null, doc: s.doc ?? null, status: s.status ?? null, ended: !!s.ended };
  }
  return out;
}

// ---------------------------------------------------------------------------
// Helpers for progress UIs.

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

/**
 * Makes a progress smoother: call it with each raw percentage (0–100) and
 * show what it returns. The value never goes backwards, moves a share
 * (`ease`) of the way toward the highest target seen on each call, and is
 * exactly 100 once `done` is passed.
 *
 * @param {{ease?: number}} [options]  share of the remaining gap closed per call (0–1, default 0.5)
 * @returns {((raw?: number|null, done?: boolean) => number) & {tick(): number, done(): number, readonly value: number, readonly target: number}}
 *   `tick()` eases further without new input (call it from an animation frame);
 *   `done()` jumps to 100.
 * @example
 *   const smooth = smoothProgress();
 *   bar.style.width = smooth(doc.overall_progress) + '%';
 */
export function smoothProgress({ ease = 0.5 } = {}) {
  const k = clamp(Number(ease) || 0.5, 0.01, 1);
  let shown = 0;
  let target = 0;
  const step = (raw, done = false) => {
    if (done || target >= 100 && shown >= 100) {
      target = shown = 100;
      return 100;
    }
    const x = Number(raw);
    if (raw !== null && raw !== undefined && Number.isFinite(x)) target = Math.max(target, clamp(x, 0, 100));
    shown += (target - shown) * k;
    if (target - shown < 0.05) shown = target;
    return shown;
  };
  step.tick = () => step(null);
  step.done = () => step(null, true);
  Object.defineProperties(step, {
    value: { get: () => shown },
    target: { get: () => target },
  });
  return step;
}

/**
 * Makes an ETA smoother: call it with each raw `eta_seconds`; it returns an
 * exponentially smoothed estimate in seconds (or null while none is known).
 * Between calls the previous estimate counts down with the clock, so a steady
 * job's ETA is not dragged upwards by the smoothing.
 *
 * @param {number} [alpha=0.3]  weight of the newest sample (0–1)
 * @returns {((etaSeconds?: number|null) => number|null) & {reset(): void}}
 */
export function etaSmoother(alpha = 0.3) {
  const a = clamp(Number(alpha) || 0.3, 0.01, 1);
  let est = null;
  let at = 0;
  const step = (eta) => {
    const now = Date.now();
    if (est !== null) est = Math.max(0, est - (now - at) / 1000);
    at = now;
    const x = Number(eta);
    if (eta !== null && eta !== undefined && Number.isFinite(x) && x >= 0) {
      est = est === null ? x : a * x + (1 - a) * est;
    }
    return est;
  };
  step.reset = () => {
    est = null;
  };
  return step;
}

/**
 * A continuous red → yellow → green colour for a percentage.
 * @param {number} pct  0–100 (clamped)
 * @returns {string} a CSS colour such as `hsl(60, 80%, 40%)`
 */
export function progressColor(pct) {
  const p = clamp(Number(pct) || 0, 0, 100);
  const hue = Math.round(p * 1.2 * 10) / 10; // 0 red, 60 yellow, 120 green
  return `hsl(${hue}, 80%, 40%)`;
}

/**
 * Formats seconds for people: `45 s`, `3 min 20 s`, `1 h 05 min`.
 * @param {number|null|undefined} seconds
 * @returns {string} `''` when unknown
 */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return '';
  const s = Math.max(0, Math.round(Number(seconds)));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

// ---------------------------------------------------------------------------
// The buffering self-test (static/buffering.html): is this connection fit for
// streaming? Uses jobcast's `/debug/` routes, which need no token.

/** Ticks the server sends, and their spacing (src/http/selftest.rs). */
const SELFTEST_TICKS = 10;
const SELFTEST_INTERVAL_MS = 200;
/** Two ticks arriving closer than this came in one burst (they were sent 200 ms apart). */
const SELFTEST_BURST_GAP_MS = 80;
/** Bursty gaps tolerated before the stream counts as buffered (a busy tab can merge two). */
const SELFTEST_BURSTS_TOLERATED = 2;
/** No tick by then: Server-Sent Events do not get through. */
const SELFTEST_FIRST_TICK_MS = 6000;
/** Bound on the whole stream (it takes 2 s; a buffering proxy may hold it all back). */
const SELFTEST_STREAM_MS = 15000;
/** Bound on each of the header, WebSocket and long-poll probes. */
const SELFTEST_PROBE_MS = 5000;

/** Opens the self-test stream with EventSource and times each tick's arrival. */
function selfTestStream(base, onTick) {
  return new Promise((resolve) => {
    const ticks = [];
    let facts = null;
    let es;
    try {
      es = new EventSource(`${base}/debug/buffering`);
    } catch (e) {
      resolve({ ticks, facts, error: `EventSource could not start: ${e.message}` });
      return;
    }
    const t0 = performance.now();
    let finished = false;
    let firstTimer = null;
    let allTimer = null;
    const finish = (error) => {
      if (finished) return;
      finished = true;
      clearTimeout(firstTimer);
      clearTimeout(allTimer);
      es.close();
      resolve({ ticks, facts, error });
    };
    firstTimer = setTimeout(() => {
      if (!ticks.length) finish(`no event arrived within ${SELFTEST_FIRST_TICK_MS / 1000} s`);
    }, SELFTEST_FIRST_TICK_MS);
    allTimer = setTimeout(
      () => finish(`the stream did not end within ${SELFTEST_STREAM_MS / 1000} s`),
      SELFTEST_STREAM_MS,
    );
    es.addEventListener('tick', (e) => {
      const d = parseJson(e.data) || {};
      const tick = { n: d.n, sentAtMs: d.sent_at_ms, arrivedMs: Math.round(performance.now() - t0) };
      ticks.push(tick);
      if (onTick) {
        try {
          onTick(tick);
        } catch (err) {
          console.error('selfTest onTick threw', err);
        }
      }
    });
    es.addEventListener('verdict', (e) => {
      facts = parseJson(e.data) || {};
      finish(null);
    });
    es.addEventListener('error', () => {
      finish(ticks.length ? `the stream broke off after ${ticks.length} events` : 'the connection was refused or failed');
    });
  });
}

/** The response headers of the self-test stream, as this page sees them (same origin only). */
async function selfTestHeaders(base) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), SELFTEST_PROBE_MS);
  try {
    const res = await fetch(`${base}/debug/buffering`, { signal: ctl.signal, cache: 'no-store' });
    const h = (name) => res.headers.get(name);
    return {
      status: res.status,
      contentType: h('content-type'),
      contentEncoding: h('content-encoding'),
      accelBuffering: h('x-accel-buffering'),
      cacheControl: h('cache-control'),
      via: h('via'),
      server: h('server'),
    };
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
    ctl.abort(); // only the headers were wanted
  }
}

/** Does a WebSocket to `/debug/ws` deliver a frame? */
function selfTestWs(base) {
  return new Promise((resolve) => {
    let ws;
    try {
      const url = new URL(`${base}/debug/ws`, globalThis.location ? location.href : undefined);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      ws = new WebSocket(url.toString());
    } catch (e) {
      resolve({ ok: false, detail: e.message });
      return;
    }
    let settled = false;
    const done = (ok, detail) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        ws.close();
      } catch {
        // already closing
      }
      resolve({ ok, detail });
    };
    const timer = setTimeout(() => done(false, `no frame within ${SELFTEST_PROBE_MS / 1000} s`), SELFTEST_PROBE_MS);
    ws.onmessage = () => done(true, 'a frame arrived');
    ws.onclose = (e) => done(false, `closed before any frame (code ${e.code})`);
  });
}

/** Does a plain request to `/debug/poll` get its JSON answer? */
async function selfTestPoll(base) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), SELFTEST_PROBE_MS);
  try {
    const res = await fetch(`${base}/debug/poll`, { signal: ctl.signal, cache: 'no-store' });
    const body = res.ok ? await res.json() : null;
    return body && body.transport === 'poll'
      ? { ok: true, detail: 'answered' }
      : { ok: false, detail: `HTTP ${res.status}` };
  } catch (e) {
    return { ok: false, detail: e.name === 'AbortError' ? 'no answer in time' : e.message };
  } finally {
    clearTimeout(timer);
  }
}

/** The transport protocol the browser used for the self-test (`http/1.1`, `h2`…), if it says. */
function selfTestProtocol() {
  try {
    const entries = performance.getEntriesByType('resource').filter((e) => e.name.includes('/debug/buffering'));
    const last = entries[entries.length - 1];
    return (last && last.nextHopProtocol) || null;
  } catch {
    return null;
  }
}

/** Why a stream that got through arrived in bursts, from what the page could see. */
function bufferingCauses(headers, facts) {
  const causes = [];
  const enc = headers && headers.contentEncoding;
  if (enc && !/^\s*identity\s*$/i.test(enc)) {
    causes.push({
      id: 'compression',
      text: `A proxy compresses the event stream (it arrived with Content-Encoding: ${enc}). A compressor holds bytes back until it has enough to compress.`,
      fix: 'Exclude text/event-stream from compression: in nginx, leave it out of gzip_types or put "gzip off;" in the location for jobcast; on a CDN, switch compression off for these paths.',
    });
  }
  // jobcast answers without a Server header: one that names nginx comes from
  // a proxy. nginx never passes X-Accel-Buffering on, so its absence alone
  // says nothing behind nginx.
  const server = (headers && headers.server) || '';
  if (/nginx|openresty/i.test(server)) {
    causes.push({
      id: 'proxy_buffering',
      text: `An nginx on the way (Server: ${server}) buffers the response although jobcast sends "X-Accel-Buffering: no": it is told to ignore that header (proxy_ignore_headers X-Accel-Buffering), or it stands in front of another nginx, which uses the header up and does not pass it on.`,
      fix: 'Put "proxy_buffering off;" in the location for jobcast\'s streams, on every nginx on the way (see nginx/jobcast.conf).',
    });
  } else if (headers && !headers.accelBuffering) {
    causes.push({
      id: 'proxy_buffering',
      text: 'A proxy removed the "X-Accel-Buffering: no" header that jobcast sends, and buffers the response.',
      fix: 'Turn response buffering off for jobcast\'s streams (nginx "proxy_buffering off;", Apache "flushpackets=on") and let X-Accel-Buffering through.',
    });
  }
  if (facts && facts.http_version === 'HTTP/1.0') {
    causes.push({
      id: 'http10_upstream',
      text: 'The proxy speaks HTTP/1.0 to jobcast. HTTP/1.0 has no chunked responses, and proxies then often collect the whole response first.',
      fix: 'Make the proxy speak HTTP/1.1 to jobcast: in nginx, "proxy_http_version 1.1;".',
    });
  }
  if (!causes.length) {
    causes.push({
      id: 'unknown',
      text: 'Something between this browser and jobcast collects the stream and passes it on in bursts, while leaving jobcast\'s headers alone: another proxy or CDN, or a virus scanner or company web filter.',
      fix: 'Turn response buffering off for jobcast on every proxy on the way (nginx "proxy_buffering off;", Apache "flushpackets=on", a CDN\'s streaming setting) and exclude text/event-stream from compression.',
    });
  }
  return causes;
}

/**
 * Checks whether this connection to jobcast — through every proxy on the way —
 * streams events as they happen. Opens `/debug/buffering` with EventSource
 * (ten 1 KiB events, 200 ms apart) and times their arrival; when nothing
 * arrives, tries a WebSocket and a long-poll request instead.
 *
 * @param {object} [options]
 * @param {string} [options.baseUrl='']  where jobcast is ('' = this origin).
 * @param {(tick: {n: number, sentAtMs: number, arrivedMs: number}) => void} [options.onTick]
 *   called as each event arrives (`arrivedMs` counts from the start).
 * @returns {Promise<{verdict: 'passes'|'buffered'|'blocked', summary: string,
 *   causes: {id: string, text: string, fix: string}[],
 *   transports: {sse: boolean, ws: boolean|null, poll: boolean|null},
 *   ticks: object[], details: object}>}
 * @example
 *   const r = await jobcast.selfTest();
 *   console.log(r.verdict, r.summary);
 */
export async function selfTest({ baseUrl = '', onTick } = {}) {
  const base = String(baseUrl).replace(/\/+$/, '');
  const stream = await selfTestStream(base, onTick);
  const headers = await selfTestHeaders(base);
  const ticks = stream.ticks;
  const gaps = ticks.slice(1).map((t, i) => t.arrivedMs - ticks[i].arrivedMs);
  const bursts = gaps.filter((g) => g < SELFTEST_BURST_GAP_MS).length;
  const details = {
    protocol: selfTestProtocol(),
    contentType: headers ? headers.contentType : null,
    contentEncoding: headers ? headers.contentEncoding : null,
    accelBuffering: headers ? headers.accelBuffering : null,
    server: headers ? headers.server : null,
    upstreamHttpVersion: stream.facts ? stream.facts.http_version : null,
    proxied: stream.facts ? Boolean(stream.facts.via || stream.facts.forwarded) : null,
    eventsReceived: ticks.length,
    eventsSent: stream.facts ? stream.facts.ticks : SELFTEST_TICKS,
    gapsMs: gaps,
    bursts,
    error: stream.error,
  };
  if (!ticks.length) {
    const [ws, poll] = await Promise.all([selfTestWs(base), selfTestPoll(base)]);
    const fallback = ws.ok
      ? 'WebSocket works, so jobcast.js falls back to it by itself and progress still arrives live.'
      : poll.ok
        ? 'WebSocket is blocked too; long-polling works, so jobcast.js falls back to it (updates arrive, a little less promptly).'
        : 'WebSocket and long-polling are blocked too: this browser cannot reach jobcast\'s live routes at all.';
    return {
      verdict: 'blocked',
      summary: `Blocked: no Server-Sent Event got through (${stream.error}). ${fallback}`,
      causes: [
        {
          id: 'sse_blocked',
          text: 'Something on the way refuses or drops text/event-stream responses: a proxy rule, a company web filter or a load balancer that does not allow long responses.',
          fix: 'Let jobcast\'s event routes through: /jobs/{id}/events and /debug/buffering, with long read timeouts (see nginx/jobcast.conf).',
        },
      ],
      transports: { sse: false, ws: ws.ok, poll: poll.ok },
      ticks,
      details: { ...details, ws: ws.detail, poll: poll.detail },
    };
  }
  const expected = (ticks.length - 1) * SELFTEST_INTERVAL_MS;
  const spread = ticks[ticks.length - 1].arrivedMs - ticks[0].arrivedMs;
  const oneByOne = bursts <= SELFTEST_BURSTS_TOLERATED && spread >= expected * 0.6;
  if (oneByOne) {
    return {
      verdict: 'passes',
      summary: `Passes: events arrive one by one, as they are sent (${ticks.length} events over ${(spread / 1000).toFixed(1)} s). Progress bars move smoothly through this connection.`,
      causes: [],
      transports: { sse: true, ws: null, poll: null },
      ticks,
      details,
    };
  }
  const causes = bufferingCauses(headers, stream.facts);
  return {
    verdict: 'buffered',
    summary: `Buffered: events arrive in bursts (${bursts} of ${gaps.length} arrived together) instead of one by one, so a progress bar would jump, or sit at 0 and leap to 100 at the end. Likely cause: ${causes.map((c) => c.id.replace(/_/g, ' ')).join(', ')}.`,
    causes,
    transports: { sse: true, ws: null, poll: null },
    ticks,
    details,
  };
}
