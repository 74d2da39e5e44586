// jobcast.js — the browser client for jobcast (the wire protocol: README, "Wire protocol").
//
// One dependency-free ES module. `watch()` follows one job over Server-Sent
// Events, falls back to WebSocket and then to long-polling, reconnects with
// capped exponential backoff, resumes from the last event id and never hands
// the application a duplicate or a step backwards. `selfTest()` checks
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

const STORAGE_KEY = 'jobcast.jobs';
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
 */
export class JobcastError extends Error {
  constructor(code, status, message, detail) {
    const human = message || HUMAN_MESSAGES[code] || 'Something went wrong while watching this job.';
    super(detail ? `${human} (${detail})` : human);
    this.name = 'JobcastError';
    this.code = code;
    this.status = status;
    this.detail = detail || undefined;
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
  return new JobcastError(code, status, undefined, detailOf(body));
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

// ---------------------------------------------------------------------------
// localStorage: {jobId: {lastId, doc, transport, updatedAt}}. Never holds tokens.

function readStore() {
  try {
    const raw = globalThis.localStorage && localStorage.getItem(STORAGE_KEY);
    const obj = raw ? JSON.parse(raw) : {};
    return obj && typeof obj === 'object' && !Array.isArray(obj) ? obj : {};
  } catch {
    return {};
  }
}

function writeStore(obj) {
  try {
    if (globalThis.localStorage) localStorage.setItem(STORAGE_KEY, JSON.stringify(obj));
  } catch {
    // Quota exceeded or storage disabled (private mode): resuming is a nicety.
  }
}

function updateStore(jobId, patch) {
  const store = readStore();
  const now = Date.now();
  for (const [id, entry] of Object.entries(store)) {
    if (!entry || now - (entry.updatedAt || 0) > STORAGE_MAX_AGE_MS) delete store[id];
  }
  store[jobId] = { ...(store[jobId] || {}), ...patch, updatedAt: now };
  writeStore(store);
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
  const store = readStore();
  if (jobId in store) {
    delete store[jobId];
    writeStore(store);
  }
}

// ---------------------------------------------------------------------------
// Transports. Each opens one connection and reports through `cb`:
//   cb.connected()            the server said `connected` (poll: first answer)
//   cb.progress(id, doc)      a document
//   cb.done(payload)          the job ended
//   cb.expired()              the server said token_expired
//   cb.final(err)             a JobcastError from the server
//   cb.interrupted()          a connected stream is retrying by itself (SSE)
//   cb.failed(info)           the connection is gone; info: {needsProbe, status}
// and returns {close()}.

function openSse(w, cb) {
  const params = new URLSearchParams();
  if (w.token) params.set('access_token', w.token);
  // EventSource resends Last-Event-ID on its own reconnects; a new EventSource
  // cannot set the header, so the id goes in the query too.
  if (w.lastId !== null) params.set('last_event_id', w.lastId);
  const qs = params.toString();
  const url = `${w.baseUrl}/jobs/${pathId(w.jobId)}/events${qs ? '?' + qs : ''}`;
  const es = new EventSource(url, { withCredentials: w.withCredentials });
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

  es.addEventListener('connected', () => {
    everConnected = true;
    interrupted = false;
    clearWatchdog();
    cb.connected();
  });
  es.addEventListener('progress', (e) => {
    const doc = parseJson(e.data);
    if (doc && typeof doc === 'object') cb.progress(e.lastEventId, doc);
  });
  es.addEventListener('done', (e) => {
    close();
    cb.done(parseJson(e.data) || {});
  });
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
  const url = new URL(`${w.baseUrl}/jobs/${pathId(w.jobId)}/ws`, globalThis.location ? location.href : undefined);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (w.lastId !== null) url.searchParams.set('last_event_id', w.lastId);
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
    switch (frame.event) {
      case 'connected':
        connected = true;
        cb.connected();
        break;
      case 'progress':
        if (frame.data && typeof frame.data === 'object') cb.progress(frame.id, frame.data);
        break;
      case 'done': {
        close();
        const { event, ...payload } = frame;
        cb.done(payload);
        break;
      }
      case 'error':
        close();
        if (frame.error === 'token_expired') cb.expired();
        else if (HUMAN_MESSAGES[frame.error]) cb.final(new JobcastError(frame.error));
        else cb.failed({ needsProbe: !connected });
        break;
      default:
        break; // unknown frames are ignored, for forward compatibility
    }
  };
  ws.onclose = (e) => {
    if (finished) return;
    finished = true;
    // A refused handshake (401/403/404) shows up as a bare close (1006).
    cb.failed({ needsProbe: !connected, suggestedDelayMs: suggestedDelay(e) });
  };
  return { close };
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
    // The first request leaves out `after` so the server answers at once with
    // the current document: that answer is our "connected" (the seq gate drops
    // it if we already have it). Later requests wait for something newer.
    let first = true;
    while (!stopped) {
      const params = new URLSearchParams();
      if (!first && w.lastId !== null) params.set('after', w.lastId);
      params.set('timeout', String(POLL_TIMEOUT_SECS));
      const started = Date.now();
      let res;
      try {
        res = await fetch(`${w.baseUrl}/jobs/${pathId(w.jobId)}/poll?${params}`, {
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
          cb.connected();
        }
        if (res.status === 200) {
          let doc;
          try {
            doc = await res.json();
          } catch {
            doc = undefined;
          }
          if (stopped) return;
          if (doc && typeof doc === 'object') {
            cb.progress(res.headers.get('X-Jobcast-Event-Id'), doc);
            if (stopped) return; // a terminal document ended the watch
          }
        } else if (Date.now() - started < 500) {
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

class Watcher {
  constructor(jobId, opts) {
    this.jobId = String(jobId);
    this.token = opts.token || null;
    this.getToken = opts.getToken || null;
    this.baseUrl = (opts.baseUrl || '').replace(/\/+$/, '');
    this.onProgress = opts.onProgress;
    this.onDone = opts.onDone;
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

    this.lastId = null; // string id of the last delivered event
    this.lastN = NaN; // its numeric value
    this.lastDoc = null;
    this.lastDocJson = null; // for documents without a numeric id
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

  async start() {
    if (globalThis.addEventListener) addEventListener('online', this.onOnline);
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
    if (!this.token && this.getToken) {
      if (!(await this.refreshToken())) return;
    }
    this.setState('connecting');
    this.newRound();
  }

  // --- delivery ---------------------------------------------------------

  deliver(id, doc, meta = {}) {
    if (this.ended) return;
    let n = numericId(id);
    if (Number.isNaN(n) && Number.isInteger(doc.seq)) {
      n = doc.seq;
      id = String(n);
    }
    if (!Number.isNaN(n)) {
      if (!Number.isNaN(this.lastN) && n <= this.lastN) return; // duplicate or backwards
      this.lastN = n;
      this.lastId = String(id);
    } else if (JSON.stringify(doc) === this.lastDocJson) {
      return; // no id at all: drop a byte-identical repeat
    }
    this.lastDocJson = JSON.stringify(doc);
    this.lastDoc = doc;
    if (this.remember && !meta.cached) updateStore(this.jobId, { lastId: this.lastId, doc });
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
    this.teardown();
    if (this.remember && (err.code === 'forbidden' || err.code === 'not_found' || err.code === 'bad_request')) {
      forget(this.jobId);
    }
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
    this.gen++;
    if (this.current) this.current.close();
    this.current = null;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (globalThis.removeEventListener) removeEventListener('online', this.onOnline);
  }

  // --- connection management --------------------------------------------

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

    const cb = {
      connected: () => {
        if (!live()) return;
        everConnected = true;
        this.cancel(timer);
        this.connectedAt = Date.now();
        this.refreshes = 0;
        this.preferred = name;
        if (this.remember) updateStore(this.jobId, { lastId: this.lastId, doc: this.lastDoc, transport: name });
        if (this.transport !== name) {
          this.transport = name;
          this.safe(this.onTransport, name);
        }
        this.setState('live');
      },
      progress: (id, doc) => {
        if (!live()) return;
        this.deliver(id, doc);
        // Long-poll has no `done` event: a terminal document ends the watch.
        if (name === 'poll' && this.isTerminal(doc)) this.finish({ status: doc.status });
      },
      done: (payload) => {
        if (live()) this.finish(payload);
      },
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
    // The stream ended after the job's terminal document (e.g. SSE answered
    // 204 to our Last-Event-ID): the job is over, not the connection.
    if (this.isTerminal(this.lastDoc)) return this.finish({ status: this.lastDoc.status });
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
        if (this.isTerminal(probe.doc)) {
          this.deliver(probe.doc.seq, probe.doc);
          return this.finish({ status: probe.doc.status });
        }
        return this.tryNext(); // the server is fine: it is this transport that fails
      default:
        return this.scheduleRetry(); // the server itself is unreachable or unwell
    }
  }

  /** One GET /jobs/{id} with the Authorization header, to learn why a stream failed. */
  async probe() {
    const ctl = new AbortController();
    const t = this.later(() => ctl.abort(), Math.max(this.connectTimeoutMs, 2000));
    try {
      const res = await fetch(`${this.baseUrl}/jobs/${pathId(this.jobId)}`, {
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
      if (res.ok) return { kind: 'ok', doc: body && typeof body === 'object' ? body : null };
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
  return {
    close: () => w.close(),
    get state() {
      return w.state;
    },
    get transport() {
      return w.transport;
    },
    get lastEventId() {
      return w.lastId;
    },
    get document() {
      return w.lastDoc;
    },
  };
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
