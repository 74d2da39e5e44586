// useJobProgress — a React hook over jobcast's browser client: copy this file
// into your app (with `npm install <path-to-jobcast>/static`, which brings the
// client and its types). It watches one job while the component is mounted
// and re-renders on every new document, on connection changes and at the end.
import { useEffect, useRef, useState } from 'react';
import { watch } from 'jobcast';
import type { JobcastError, ProgressDocument, Transport, WatchOptions, WatchState } from 'jobcast';

export interface UseJobProgressOptions {
  /**
   * Returns a token for this job (from your backend, e.g. a FastAPI endpoint
   * that calls jobcast.mint_token). Called at start and again whenever the
   * gateway says the token expired; it may change identity between renders.
   */
  getToken: () => Promise<string | null | undefined> | string | null | undefined;
  /** The gateway's origin where it is not the page's own (it must allow this origin). */
  baseUrl?: string;
  transports?: WatchOptions['transports'];
}

export interface JobProgress {
  /** The latest document, or null before the first one. */
  doc: ProgressDocument | null;
  /** 0–100, the job's overall progress. */
  percent: number;
  state: WatchState | null;
  transport: Transport | null;
  /** A final error (forbidden, not found, a token that could not be renewed). */
  error: JobcastError | null;
  /** The job has ended (its last document is `doc`). */
  done: boolean;
}

const initial: JobProgress = { doc: null, percent: 0, state: null, transport: null, error: null, done: false };

export function useJobProgress(jobId: string | null | undefined, options: UseJobProgressOptions): JobProgress {
  const [progress, setProgress] = useState<JobProgress>(initial);
  // The latest getToken without restarting the watch when its identity changes.
  const getToken = useRef(options.getToken);
  getToken.current = options.getToken;
  const { baseUrl, transports } = options;
  const transportKey = transports?.join(',');

  useEffect(() => {
    setProgress(initial);
    if (!jobId) return undefined;
    const w = watch(jobId, {
      baseUrl,
      transports,
      getToken: () => getToken.current(),
      onProgress: (doc) =>
        setProgress((p) => ({ ...p, doc, percent: Number(doc.overall_progress ?? p.percent) })),
      onDone: (doc) => setProgress((p) => ({ ...p, doc, done: true })),
      onError: (error) => setProgress((p) => ({ ...p, error })),
      onState: (state) => setProgress((p) => ({ ...p, state })),
      onTransport: (transport) => setProgress((p) => ({ ...p, transport })),
    });
    return () => w.close();
    // transports is compared by value (transportKey); a new array each render must not restart the watch.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [jobId, baseUrl, transportKey]);

  return progress;
}
