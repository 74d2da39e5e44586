// jobcast demo page: what the single-job view (demo.js) and the project
// dashboard (dashboard.js) both use to show a job.

export const $ = (id) => document.getElementById(id);

/** The connection badge's words for each watch state. */
export const STATE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  failed: 'Disconnected',
  closed: 'Disconnected',
  done: 'Finished',
};

/** A document's overall percentage (whichever field the worker used), or null. */
export function pctOf(doc) {
  for (const k of ['overall_progress', 'progress', 'percent']) {
    const v = Number(doc[k]);
    if (doc[k] !== undefined && doc[k] !== null && Number.isFinite(v)) return v;
  }
  return null;
}

/** Sets a `.bar` to `pct` (clamped to 0–100), optionally in `color`. */
export function setBar(bar, pct, color) {
  const p = Math.max(0, Math.min(100, pct));
  bar.style.setProperty('--pct', p.toFixed(2) + '%');
  if (color) bar.style.setProperty('--fill', color);
  bar.setAttribute('aria-valuenow', String(Math.floor(p)));
}

/** Shows `state` on the badge element `el`. */
export function showState(el, state) {
  el.dataset.state = state;
  el.textContent = STATE_TEXT[state] || state;
}
