// TypeScript declarations for jobcast.js, the browser client of the jobcast
// push gateway: every option, callback, state and error code of `watch()`,
// `watchMany()` and `watchGroup()`, and the progress-UI helpers. Kept beside
// jobcast.js so that `npm install <path-to-jobcast>/static` gives typed
// imports; checked by `tsc --noEmit` in the test suite (examples/react).

/** Why a watch ended with an error; reported once, and the watch is closed. */
export type JobcastErrorCode =
  | 'token_expired'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'bad_request'
  | 'client_error';

/** The transports, in the default order of preference. */
export type Transport = 'sse' | 'ws' | 'poll';

/** The life of a watch, as reported to `onState`. */
export type WatchState = 'connecting' | 'live' | 'reconnecting' | 'done' | 'failed' | 'closed';

/** Per-endpoint statuses in a document's `endpoints` map. */
export type EndpointStatus = 'pending' | 'processing' | 'processed' | 'error';

/** One declared stage of a job and its share of the whole, in percent. */
export interface Stage {
  name: string;
  weight: number;
}

/**
 * A job's state as its worker wrote it (docs/protocol.md). The gateway reads
 * only `seq`, `status` and `owner_id`; the rest is the convention the trackers
 * follow, and anything else reaches the page as written.
 */
export interface ProgressDocument {
  seq?: number;
  /** `pending`, `running`, then `completed`, `failed` or `cancelled` (or the gateway's own terminal statuses). */
  status?: string;
  owner_id?: string;
  job_id?: string;
  group_id?: string;
  stage?: string | null;
  stage_index?: number | null;
  /** 0–100, the current stage's completion. */
  stage_progress?: number;
  /** 0–100, the whole job's completion; never goes back within a run. */
  overall_progress?: number;
  /** Whole seconds left, or null while unknown. */
  eta_seconds?: number | null;
  stages?: Stage[];
  /** RFC 3339 UTC. */
  started_at?: string;
  last_updated?: string;
  endpoints?: Record<string, EndpointStatus | string>;
  message?: string;
  error?: string;
  [field: string]: unknown;
}

/** The `done` payload: the job ended. */
export interface DonePayload {
  job_id: string;
  status?: string;
  [field: string]: unknown;
}

/** The second argument of `onProgress`. */
export interface ProgressMeta {
  /** The event id of this document (its `seq`), or null where it had none. */
  id: string | null;
  /** The transport that delivered it; null for the document replayed from localStorage. */
  transport: Transport | null;
  /** True for the document replayed from localStorage at start (before any connection). */
  cached: boolean;
}

export interface WatchOptions {
  /**
   * The JWT. Sent as `access_token` (SSE), as the `jobcast.bearer.<jwt>`
   * subprotocol (WebSocket) or `Authorization: Bearer` (long-poll). Without it
   * the `jobcast_token` cookie is relied on, unless `getToken` supplies one.
   */
  token?: string;
  /**
   * Called for a fresh token when the server says the token expired (and at
   * start when `token` is missing). Resolve to a falsy value to give up.
   */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Origin (and path prefix) of the gateway; '' (default) is the page's own. */
  baseUrl?: string;
  /** Every new document, in order, never a duplicate or a step back. */
  onProgress?: (doc: ProgressDocument, meta: ProgressMeta) => void;
  /** The job ended; `doc` is the last document. Nothing is called afterwards. */
  onDone?: (doc: ProgressDocument, done: DonePayload) => void;
  /** The running job has been silent `seconds` (the gateway's stall time); `null` once its next state cleared that. */
  onStalled?: (seconds: number | null) => void;
  /** A final error (401, 403, 404, a token that could not be renewed); `err.message` is for people. */
  onError?: (err: JobcastError) => void;
  /** The live transport changed. */
  onTransport?: (transport: Transport) => void;
  /** The watch's state changed. */
  onState?: (state: WatchState) => void;
  /** Transports to try, in order (default `['sse', 'ws', 'poll']`); one that has worked is tried first. */
  transports?: Transport[];
  /** How long a transport may take to say `connected` before the next is tried (default 4000). */
  connectTimeoutMs?: number;
  /** First reconnect delay, doubled per failure (default 500)… */
  minBackoffMs?: number;
  /** …up to this (default 15000); jitter spreads each delay over [d/2, d]. */
  maxBackoffMs?: number;
  /** Statuses that end the watch on transports without a `done` event (default completed, failed, cancelled). */
  terminalStatuses?: string[];
  /** Send cookies to another origin (default false). */
  withCredentials?: boolean;
  /** Use and update localStorage (`jobcast.jobs`) to resume after a reload (default true). */
  resume?: boolean;
}

/** A running watch. */
export interface Watch {
  /** Stops watching; nothing is called afterwards (state becomes `closed`). */
  close(): void;
  readonly state: WatchState | null;
  readonly transport: Transport | null;
  readonly lastEventId: string | null;
  readonly document: ProgressDocument | null;
}

/** Error given to `onError`. Always final: the watch is closed when it is reported. */
export class JobcastError extends Error {
  constructor(code: JobcastErrorCode, status?: number, message?: string, detail?: string);
  readonly name: 'JobcastError';
  readonly code: JobcastErrorCode;
  /** The HTTP status, where one was seen. */
  readonly status: number | undefined;
  /**
   * The gateway's own words on the cause (its JSON `message`, e.g. "the token
   * has expired (exp)"), where one was seen; also appended to `message`.
   */
  readonly detail: string | undefined;
  /** On a stream of many jobs: the job the gateway refused (its `job_id`). */
  readonly jobId: string | undefined;
}

/**
 * Watches one job's progress: SSE, then WebSocket, then long-poll; reconnects
 * with capped exponential backoff and jitter, resumes after the last event id,
 * renews an expired token through `getToken`.
 */
export function watch(jobId: string, options?: WatchOptions): Watch;

/** The third argument of a stream's `onProgress`: as `ProgressMeta`, plus where it came from. */
export interface StreamProgressMeta extends ProgressMeta {
  /** True when another tab's connection delivered it (this tab is a follower). */
  shared: boolean;
}

/** Whether this tab holds the stream's connection or follows the tab that does. */
export type TabRole = 'holder' | 'follower';

/** Options of `watchMany()` and `watchGroup()`: those of `watch()`, with callbacks that name the job. */
export interface StreamOptions extends Omit<WatchOptions, 'onProgress' | 'onDone' | 'onStalled'> {
  /** A job's new state, in order, never a duplicate or a step back for that job. */
  onProgress?: (jobId: string, doc: ProgressDocument, meta: StreamProgressMeta) => void;
  /** A job ended (once per job); `status` as the gateway said it, `doc` its last state. */
  onDone?: (jobId: string, status: string | null, doc: ProgressDocument | null, meta: { cached: boolean }) => void;
  /** A running job has been silent `seconds`; `null` once its next state cleared that. */
  onStalled?: (jobId: string, seconds: number | null) => void;
  /** Groups: a job is new to this watch (current members, later joiners, remembered ones); before its first state. */
  onJoined?: (jobId: string) => void;
  /** This tab became the holder of the connection, or a follower of another tab's. */
  onRole?: (role: TabRole) => void;
  /** Share one connection with the other tabs of this origin (default true). */
  shared?: boolean;
}

/** One job of a stream, as the handle's `jobs` shows it. */
export interface StreamJob {
  document: ProgressDocument | null;
  lastEventId: string | null;
  /** The status its `done` named, once ended. */
  status: string | null;
  ended: boolean;
  /** Seconds of silence while stalled, else null. */
  stalled: number | null;
}

/** A running `watchMany()` or `watchGroup()`. */
export interface StreamWatch {
  /** Stops watching in this tab (another tab may take the connection over). */
  close(): void;
  /** A follower shows the holder's state; a list whose jobs all ended is `done`. */
  readonly state: WatchState | null;
  readonly transport: Transport | null;
  readonly role: TabRole | null;
  /** The latest cursor, exactly as the gateway sent it (opaque). */
  readonly cursor: string | null;
  /** Every job of the stream and its latest state. */
  readonly jobs: Record<string, StreamJob>;
}

/**
 * Watches a list of jobs over one connection (`/events?job=…`, then `/ws`,
 * then `/poll`); resumes from the latest cursor; ends when every job ended.
 */
export function watchMany(jobIds: string[], options?: StreamOptions): StreamWatch;

/** Watches every job of a group, including jobs that join later; open until `close()`. */
export function watchGroup(group: string, options?: StreamOptions): StreamWatch;

/** A remembered job of a group (localStorage). */
export interface RememberedJob {
  lastId: string | null;
  doc: ProgressDocument | null;
  status: string | null;
  ended: boolean;
}

/** A group's jobs as this browser last knew them, without connecting. */
export function rememberedGroup(group: string, options?: { baseUrl?: string }): Record<string, RememberedJob>;

/** A remembered job (localStorage). */
export interface ActiveJob {
  lastId: string | null;
  doc: ProgressDocument | null;
  transport: Transport | null;
  updatedAt: number;
}

/** Jobs being watched (or watched before a refresh) in this browser. */
export function activeJobs(): Record<string, ActiveJob>;

/** Removes a job from the remembered active jobs (done automatically on `done`). */
export function forget(jobId: string): void;

/** A smoothed percentage; call with each raw value (0–100), show what it returns. */
export interface SmoothProgress {
  (raw?: number | null, done?: boolean): number;
  /** Eases further without new input (call it from an animation frame). */
  tick(): number;
  /** Jumps to 100. */
  done(): number;
  readonly value: number;
  readonly target: number;
}

/** Makes a progress value smoother; it never goes backwards and is exactly 100 once done. */
export function smoothProgress(options?: { ease?: number }): SmoothProgress;

/** An exponentially smoothed ETA in seconds (null while unknown) that counts down between calls. */
export interface EtaSmoother {
  (etaSeconds?: number | null): number | null;
  reset(): void;
}

/** Makes an ETA smoother; `alpha` (0–1, default 0.3) is the weight of the newest sample. */
export function etaSmoother(alpha?: number): EtaSmoother;

/** A red → yellow → green CSS colour (`hsl(…)`) for a percentage. */
export function progressColor(pct: number): string;

/** `45 s`, `3 min 20 s`, `1 h 05 min`; '' when unknown. */
export function formatDuration(seconds: number | null | undefined): string;

/** One self-test event as it arrived; `arrivedMs` counts from the start of the test. */
export interface SelfTestTick {
  n: number;
  sentAtMs: number;
  arrivedMs: number;
}

/** A likely cause of a buffered or blocked stream, and its fix, in plain words. */
export interface SelfTestCause {
  id: 'compression' | 'proxy_buffering' | 'http10_upstream' | 'unknown' | 'sse_blocked';
  text: string;
  fix: string;
}

/** What `selfTest()` found. */
export interface SelfTestResult {
  /** `passes`: events arrive one by one; `buffered`: in bursts; `blocked`: not at all. */
  verdict: 'passes' | 'buffered' | 'blocked';
  /** One or two sentences for people. */
  summary: string;
  causes: SelfTestCause[];
  /** Which transports got through; `null` where not tried (only a blocked stream tries the others). */
  transports: { sse: boolean; ws: boolean | null; poll: boolean | null };
  ticks: SelfTestTick[];
  /** What the page could see of the transport (headers, protocol, gaps between events). */
  details: {
    protocol: string | null;
    contentType: string | null;
    contentEncoding: string | null;
    accelBuffering: string | null;
    server: string | null;
    upstreamHttpVersion: string | null;
    proxied: boolean | null;
    eventsReceived: number;
    eventsSent: number;
    gapsMs: number[];
    bursts: number;
    error: string | null;
    ws?: string;
    poll?: string;
  };
}

/**
 * Checks whether the network between this browser and jobcast delivers events
 * one by one: opens `/debug/buffering` (no token needed) with EventSource and
 * times the arrivals; when nothing arrives, tries WebSocket and long-poll.
 */
export function selfTest(options?: {
  /** Where jobcast is ('' = this origin). */
  baseUrl?: string;
  onTick?: (tick: SelfTestTick) => void;
}): Promise<SelfTestResult>;

/**
 * Set by jobcast.global.js (the plain `<script>` form): the module's exports
 * once loaded, and a promise of them.
 */
declare global {
  interface Window {
    jobcast?: typeof import('./jobcast.js');
    jobcastReady?: Promise<typeof import('./jobcast.js')>;
  }
}
