// Compile-time checks of static/jobcast.d.ts (run by `tsc --noEmit` in the test
// suite): every option and callback is typed, and misuse is a type error
// (each @ts-expect-error line must fail to compile, or tsc reports it).
import { JobcastError, activeJobs, etaSmoother, forget, formatDuration, progressColor, rememberedGroup, smoothProgress, watch, watchGroup, watchMany } from 'jobcast';
import type { DonePayload, ProgressDocument, ProgressMeta, StreamJob, StreamProgressMeta, StreamWatch, TabRole, Transport, Watch, WatchState } from 'jobcast';

const w: Watch = watch('8ae7f267', {
  token: 'jwt',
  getToken: async () => 'fresh-jwt',
  baseUrl: 'https://push.example.com',
  onProgress: (doc: ProgressDocument, meta: ProgressMeta) => {
    const pct: number | undefined = doc.overall_progress;
    const eta: number | null | undefined = doc.eta_seconds;
    const via: Transport | null = meta.transport;
    void [pct, eta, via, meta.id, meta.cached, doc.stages?.[0]?.weight, doc.endpoints?.geo];
  },
  onDone: (doc: ProgressDocument, done: DonePayload) => void [doc.status, done.job_id],
  onError: (err: JobcastError) => void [err.code === 'forbidden', err.status, err.message],
  onTransport: (t: Transport) => void t,
  onState: (s: WatchState) => void s,
  onStalled: (seconds: number | null) => void seconds,
  transports: ['ws', 'poll'],
  connectTimeoutMs: 4000,
  minBackoffMs: 500,
  maxBackoffMs: 15000,
  terminalStatuses: ['completed', 'failed', 'cancelled'],
  withCredentials: true,
  resume: false,
});
const state: WatchState | null = w.state;
const last: string | null = w.lastEventId;
w.close();

const many: StreamWatch = watchMany(['a', 'b'], {
  token: 'jwt',
  getToken: () => 'fresh-jwt',
  onProgress: (jobId: string, doc: ProgressDocument, meta: StreamProgressMeta) =>
    void [jobId, doc.overall_progress, meta.id, meta.cached, meta.shared, meta.transport],
  onDone: (jobId: string, status: string | null, doc: ProgressDocument | null, meta: { cached: boolean }) =>
    void [jobId, status, doc?.seq, meta.cached],
  onStalled: (jobId: string, seconds: number | null) => void [jobId, seconds],
  onRole: (role: TabRole) => void role,
  onState: (s: WatchState) => void s,
  transports: ['sse', 'poll'],
  shared: false,
});
const group = watchGroup('project-7', { onJoined: (jobId: string) => void jobId, resume: true });
const row: StreamJob | undefined = group.jobs['a'];
const groupCursor: string | null = group.cursor;
const role: TabRole | null = many.role;
const kept: boolean | undefined = rememberedGroup('project-7', { baseUrl: '' })['a']?.ended;
void [row?.stalled, groupCursor, role, kept, new JobcastError('forbidden', 403).jobId];
many.close();
group.close();

const smooth = smoothProgress({ ease: 0.3 });
const shown: number = smooth(42) + smooth.tick() + smooth.done() + smooth.value;
const eta = etaSmoother(0.3);
const left: number | null = eta(120);
const colour: string = progressColor(50);
const text: string = formatDuration(null) + formatDuration(3600);
const remembered = activeJobs()['8ae7f267']?.lastId;
forget('8ae7f267');
const err = new JobcastError('not_found', 404);
void [state, last, shown, left, colour, text, remembered, err.code, window.jobcastReady];

// @ts-expect-error: transports are 'sse' | 'ws' | 'poll'
watch('j', { transports: ['carrier-pigeon'] });
// @ts-expect-error: the job id is a string
watch(42);
// @ts-expect-error: onProgress takes a document, not a string
watch('j', { onProgress: (doc: string) => doc });
// @ts-expect-error: no such option
watch('j', { retries: 3 });
// @ts-expect-error: watchMany takes a list of job ids
watchMany('a');
// @ts-expect-error: a stream's onProgress names the job first
watchMany(['a'], { onProgress: (doc: ProgressDocument) => doc });
// @ts-expect-error: not an error code
new JobcastError('teapot');
