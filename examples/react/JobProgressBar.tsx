// A page component using useJobProgress: a progress bar, the stage, the time
// left and a message once the job has ended. The token comes from your backend
// (examples/python/fastapi_app.py has an endpoint that mints one).
import { formatDuration } from 'jobcast';
import { useJobProgress } from './useJobProgress';

async function fetchToken(jobId: string): Promise<string> {
  const res = await fetch(`/api/jobs/${encodeURIComponent(jobId)}/token`, { method: 'POST', credentials: 'include' });
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}`);
  const body: { token: string } = await res.json();
  return body.token;
}

export function JobProgressBar({ jobId }: { jobId: string }) {
  const { doc, percent, state, error, done } = useJobProgress(jobId, { getToken: () => fetchToken(jobId) });
  if (error) return <p role="alert">{error.message}</p>;
  return (
    <section aria-busy={!done}>
      <progress max={100} value={percent} aria-label="Overall progress" />
      <p>
        {doc?.stage ?? 'Waiting…'} · {percent.toFixed(0)}%
        {doc?.eta_seconds != null && !done ? ` · ${formatDuration(doc.eta_seconds)} left` : ''}
        {state === 'reconnecting' ? ' · reconnecting…' : ''}
      </p>
      {done && <p>{doc?.status === 'completed' ? 'Done.' : `Ended: ${doc?.error ?? doc?.status}`}</p>}
    </section>
  );
}
